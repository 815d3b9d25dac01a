"""fusionkit: multimodal fusion components for skin-lesion classification (the JI-ADF paper).

Compose a model from a spec::

    import fusionkit as fk

    spec = fk.load_preset("ji-adf", {"image_encoder": {"model_name": "test_efficientnet",
                                                        "pretrained": False}})
    model = fk.build_model(spec, metadata_width=35)
    out = model({"derm": derm, "clinical": clinical, "meta": meta})
    out.probs, out.logits["joint"], out.weights
"""

from fusionkit import specs
from fusionkit.errors import (
    ConfigError,
    DataError,
    FusionkitError,
    MissingModalityError,
    PretrainedWeightsError,
)
from fusionkit.losses import JointIndividualLoss, LossBreakdown
from fusionkit.model import FusionModel, FusionOutput, build_model
from fusionkit.presets import list_presets, load_preset, load_spec
from fusionkit.registry import (
    COMPONENT_KINDS,
    PluginWarning,
    list_components,
    load_plugins,
    register,
    registry,
)
from fusionkit.specs import ModelSpec, dump_spec, spec_json_schema

__version__ = "0.1.0"

__all__ = [
    "COMPONENT_KINDS",
    "ConfigError",
    "DataError",
    "FusionModel",
    "FusionPipeline",
    "FusionOutput",
    "FusionkitError",
    "JointIndividualLoss",
    "LossBreakdown",
    "MissingModalityError",
    "ModelSpec",
    "PluginWarning",
    "PretrainedWeightsError",
    "build_model",
    "dump_spec",
    "list_components",
    "list_presets",
    "load_plugins",
    "load_preset",
    "load_spec",
    "register",
    "registry",
    "specs",
    "spec_json_schema",
]

load_plugins()


def __getattr__(name: str):
    """Lazy public names: ``FusionPipeline`` imports the inference layer on first use."""
    if name == "FusionPipeline":
        from fusionkit.inference.pipeline import FusionPipeline

        return FusionPipeline
    raise AttributeError(f"module 'fusionkit' has no attribute {name!r}")
