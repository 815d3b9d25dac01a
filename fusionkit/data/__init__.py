"""MILK10k data: reading the official layout, metadata encoding, splits, transforms, cache, loaders.

See :mod:`fusionkit.data.milk10k` for the item/batch format and :mod:`fusionkit.data.synthetic`
for the synthetic generator's label rule.
"""

from fusionkit.data.cache import ImageCache
from fusionkit.data.device_augment import AugmentParams, DeviceAugment, batch_generator
from fusionkit.data.images import ImageSource, scan_images
from fusionkit.data.layout import Milk10kFiles, find_split
from fusionkit.data.loader import make_loader, seed_worker
from fusionkit.data.metadata import MetadataEncoder
from fusionkit.data.milk10k import Milk10kDataset, ToFloat, lesion_labels
from fusionkit.data.preprocessing import INTERPOLATIONS, ImagePreprocessing
from fusionkit.data.schema import (
    CLASS_NAMES,
    GROUND_TRUTH_COLUMNS,
    METADATA_COLUMNS,
    MODALITIES,
    MONET_COLUMNS,
    SITES,
)
from fusionkit.data.splits import (
    Split,
    kfold_splits,
    kfold_test_splits,
    read_split_file,
    train_val_split,
    train_val_test_split,
)
from fusionkit.data.synthetic import (
    SYNTHETIC_CLINICAL_CLASSES,
    SYNTHETIC_DERM_CLASSES,
    SYNTHETIC_METADATA_CLASSES,
    SYNTHETIC_SITE_OF_CLASS,
    make_synthetic_milk10k,
    synthetic_class_counts,
)
from fusionkit.data.tables import ImageRecord, LesionRecord, Milk10kTable, read_milk10k
from fusionkit.data.transforms import (
    AugmentConfig,
    ImageTransform,
    backbone_preprocessing,
    build_transforms,
    normalize_batch,
)

__all__ = [
    "CLASS_NAMES",
    "GROUND_TRUTH_COLUMNS",
    "INTERPOLATIONS",
    "METADATA_COLUMNS",
    "MODALITIES",
    "MONET_COLUMNS",
    "SITES",
    "SYNTHETIC_CLINICAL_CLASSES",
    "SYNTHETIC_DERM_CLASSES",
    "SYNTHETIC_METADATA_CLASSES",
    "SYNTHETIC_SITE_OF_CLASS",
    "AugmentConfig",
    "AugmentParams",
    "DeviceAugment",
    "ImageCache",
    "ImagePreprocessing",
    "ImageRecord",
    "ImageSource",
    "ImageTransform",
    "LesionRecord",
    "MetadataEncoder",
    "Milk10kDataset",
    "Milk10kFiles",
    "Milk10kTable",
    "Split",
    "ToFloat",
    "backbone_preprocessing",
    "batch_generator",
    "build_transforms",
    "find_split",
    "kfold_splits",
    "kfold_test_splits",
    "lesion_labels",
    "make_loader",
    "make_synthetic_milk10k",
    "normalize_batch",
    "read_milk10k",
    "read_split_file",
    "scan_images",
    "seed_worker",
    "synthetic_class_counts",
    "train_val_split",
    "train_val_test_split",
]
