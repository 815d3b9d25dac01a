"""fusionkit: multimodal fusion components for skin-lesion classification."""
__version__ = "0.1.0"
