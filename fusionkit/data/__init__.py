"""MILK10k data: reading the official layout, metadata encoding, splits, transforms, cache, loaders.

See :mod:`fusionkit.data.milk10k` for the item/batch format and :mod:`fusionkit.data.synthetic`
for the synthetic generator's label rule.

``import fusionkit.data`` imports no torch: each public name is imported from its module when first
used (PEP 562, as :mod:`fusionkit` does), so :mod:`fusionkit.data.schema` (the format's vocabulary)
serves the torch-free layers above.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "AugmentConfig": "fusionkit.data.transforms",
    "AugmentParams": "fusionkit.data.device_augment",
    "CLASS_NAMES": "fusionkit.data.schema",
    "DeviceAugment": "fusionkit.data.device_augment",
    "GROUND_TRUTH_COLUMNS": "fusionkit.data.schema",
    "INTERPOLATIONS": "fusionkit.data.preprocessing",
    "ImageCache": "fusionkit.data.cache",
    "ImagePreprocessing": "fusionkit.data.preprocessing",
    "ImageRecord": "fusionkit.data.tables",
    "ImageSource": "fusionkit.data.images",
    "ImageTransform": "fusionkit.data.transforms",
    "LesionRecord": "fusionkit.data.tables",
    "METADATA_COLUMNS": "fusionkit.data.schema",
    "MODALITIES": "fusionkit.data.schema",
    "MONET_COLUMNS": "fusionkit.data.schema",
    "MetadataEncoder": "fusionkit.data.metadata",
    "Milk10kDataset": "fusionkit.data.milk10k",
    "Milk10kFiles": "fusionkit.data.layout",
    "Milk10kTable": "fusionkit.data.tables",
    "SITES": "fusionkit.data.schema",
    "SYNTHETIC_CLINICAL_CLASSES": "fusionkit.data.synthetic",
    "SYNTHETIC_DERM_CLASSES": "fusionkit.data.synthetic",
    "SYNTHETIC_METADATA_CLASSES": "fusionkit.data.synthetic",
    "SYNTHETIC_SITE_OF_CLASS": "fusionkit.data.synthetic",
    "Split": "fusionkit.data.splits",
    "ToFloat": "fusionkit.data.milk10k",
    "backbone_preprocessing": "fusionkit.data.transforms",
    "batch_generator": "fusionkit.data.device_augment",
    "build_transforms": "fusionkit.data.transforms",
    "find_split": "fusionkit.data.layout",
    "kfold_splits": "fusionkit.data.splits",
    "kfold_test_splits": "fusionkit.data.splits",
    "lesion_labels": "fusionkit.data.milk10k",
    "make_loader": "fusionkit.data.loader",
    "make_synthetic_milk10k": "fusionkit.data.synthetic",
    "normalize_batch": "fusionkit.data.transforms",
    "read_milk10k": "fusionkit.data.tables",
    "read_split_file": "fusionkit.data.splits",
    "scan_images": "fusionkit.data.images",
    "seed_worker": "fusionkit.data.loader",
    "synthetic_class_counts": "fusionkit.data.synthetic",
    "train_val_split": "fusionkit.data.splits",
    "train_val_test_split": "fusionkit.data.splits",
}
"""The public names and the module each is imported from on first use."""

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

if TYPE_CHECKING:  # what type checkers and IDEs see: the eager imports the lazy names stand for
    from fusionkit.data.cache import (
        ImageCache,
    )
    from fusionkit.data.device_augment import (
        AugmentParams,
        DeviceAugment,
        batch_generator,
    )
    from fusionkit.data.images import (
        ImageSource,
        scan_images,
    )
    from fusionkit.data.layout import (
        Milk10kFiles,
        find_split,
    )
    from fusionkit.data.loader import (
        make_loader,
        seed_worker,
    )
    from fusionkit.data.metadata import (
        MetadataEncoder,
    )
    from fusionkit.data.milk10k import (
        Milk10kDataset,
        ToFloat,
        lesion_labels,
    )
    from fusionkit.data.preprocessing import (
        INTERPOLATIONS,
        ImagePreprocessing,
    )
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
    from fusionkit.data.tables import (
        ImageRecord,
        LesionRecord,
        Milk10kTable,
        read_milk10k,
    )
    from fusionkit.data.transforms import (
        AugmentConfig,
        ImageTransform,
        backbone_preprocessing,
        build_transforms,
        normalize_batch,
    )


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule, ``fusionkit.data.transforms``) on first use (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'fusionkit.data' has no attribute {name!r}")
    globals()[name] = value  # later uses are plain attribute reads
    return value


def __dir__() -> list[str]:
    """The public names and the module's own attributes."""
    return sorted({*globals(), *__all__})
