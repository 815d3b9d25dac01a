"""Names, headers and vocabularies of the MILK10k files, exactly as the ISIC archive writes them.

This module is the single source of truth for the layout: the reader validates against it and the
synthetic generator writes from it, so the two can never drift apart.
"""

from __future__ import annotations

from typing import Final, Literal

#: The 11 MILK10k diagnosis classes, in the column order of the ground-truth CSV.
CLASS_NAMES: Final[tuple[str, ...]] = (
    "AKIEC",
    "BCC",
    "BEN_OTH",
    "BKL",
    "DF",
    "INF",
    "MAL_OTH",
    "MEL",
    "NV",
    "SCCKA",
    "VASC",
)

#: Full diagnosis name of each MILK10k class (the ISIC archive's diagnosis groups behind the codes).
CLASS_FULL_NAMES: Final[dict[str, str]] = {
    "AKIEC": "Actinic keratosis / intraepidermal carcinoma",
    "BCC": "Basal cell carcinoma",
    "BEN_OTH": "Other benign proliferations",
    "BKL": "Benign keratinocytic lesion",
    "DF": "Dermatofibroma",
    "INF": "Inflammatory and infectious conditions",
    "MAL_OTH": "Other malignant proliferations",
    "MEL": "Melanoma",
    "NV": "Melanocytic nevus",
    "SCCKA": "Squamous cell carcinoma / keratoacanthoma",
    "VASC": "Vascular lesions and hemorrhage",
}

#: Lesion counts per class over the 5,240 official training lesions (same order as CLASS_NAMES).
TRAINING_CLASS_COUNTS: Final[dict[str, int]] = {
    "AKIEC": 303,
    "BCC": 2522,
    "BEN_OTH": 44,
    "BKL": 544,
    "DF": 52,
    "INF": 50,
    "MAL_OTH": 9,
    "MEL": 450,
    "NV": 746,
    "SCCKA": 473,
    "VASC": 47,
}

Modality = Literal["derm", "clinical", "meta"]
"""The three inputs: dermoscopic image, clinical close-up image, patient metadata."""

#: The three input modalities of a lesion, in the order used throughout fusionkit.
MODALITIES: Final[tuple[Modality, ...]] = ("derm", "clinical", "meta")
#: The modalities whose input is a photo, in batch order.
IMAGE_MODALITIES: Final[tuple[str, ...]] = ("derm", "clinical")

#: A dataset split as named in the MILK10k file names.
SplitName = Literal["Training", "Test"]
SPLIT_NAMES: Final[tuple[str, ...]] = ("Training", "Test")

DERMOSCOPIC: Final[str] = "dermoscopic"
CLINICAL: Final[str] = "clinical: close-up"
#: Values of the ``image_type`` column, clinical first (the order of a lesion's two rows).
IMAGE_TYPES: Final[tuple[str, ...]] = (CLINICAL, DERMOSCOPIC)

#: Values of the ``image_manipulation`` column.
MANIPULATIONS: Final[tuple[str, ...]] = ("instrument only", "altered")
ALTERED: Final[str] = "altered"

#: Values of the ``sex`` column (a blank cell is read as unknown).
SEXES: Final[tuple[str, ...]] = ("male", "female")

#: Values of the ``site`` column (a blank cell is read as unknown).
SITES: Final[tuple[str, ...]] = (
    "trunk",
    "head_neck_face",
    "lower_extremity",
    "upper_extremity",
    "hand",
    "foot",
    "genital",
)

#: Values of the ``skin_tone_class`` column.
SKIN_TONES: Final[tuple[int, ...]] = (0, 1, 2, 3, 4, 5)

#: Accepted range of ``age_approx`` (the official files hold 5..85 in steps of 5).
AGE_RANGE: Final[tuple[float, float]] = (0.0, 120.0)

#: The seven MONET concept-score columns; each image row carries its own seven scores.
MONET_COLUMNS: Final[tuple[str, ...]] = (
    "MONET_ulceration_crust",
    "MONET_hair",
    "MONET_vasculature_vessels",
    "MONET_erythema",
    "MONET_pigmented",
    "MONET_gel_water_drop_fluid_dermoscopy_liquid",
    "MONET_skin_markings_pen_ink_purple_pen",
)

#: The metadata CSV header, exactly and in this order.
METADATA_COLUMNS: Final[tuple[str, ...]] = (
    "lesion_id",
    "image_type",
    "isic_id",
    "attribution",
    "copyright_license",
    "image_manipulation",
    "age_approx",
    "sex",
    "skin_tone_class",
    "site",
    *MONET_COLUMNS,
)

#: The ground-truth CSV header, exactly and in this order.
GROUND_TRUTH_COLUMNS: Final[tuple[str, ...]] = ("lesion_id", *CLASS_NAMES)

#: The supplement CSV header (not needed for training; written by the synthetic generator).
SUPPLEMENT_COLUMNS: Final[tuple[str, ...]] = (
    "isic_id",
    "diagnosis_full",
    "diagnosis_confirm_type",
    "invasion_thickness_interval",
)

#: Constant values of the attribution and licence columns in the official files.
ATTRIBUTION: Final[str] = "MILK study team"
COPYRIGHT_LICENSE: Final[str] = "CC-BY-NC"


def input_dir_name(split: str) -> str:
    """Name of a split's image folder, e.g. ``MILK10k_Training_Input``."""
    return f"MILK10k_{split}_Input"


def metadata_file_name(split: str) -> str:
    """Name of a split's metadata CSV, e.g. ``MILK10k_Training_Metadata.csv``."""
    return f"MILK10k_{split}_Metadata.csv"


def ground_truth_file_name(split: str) -> str:
    """Name of a split's ground-truth CSV, e.g. ``MILK10k_Training_GroundTruth.csv``."""
    return f"MILK10k_{split}_GroundTruth.csv"


def supplement_file_name(split: str) -> str:
    """Name of a split's supplement CSV, e.g. ``MILK10k_Training_Supplement.csv``."""
    return f"MILK10k_{split}_Supplement.csv"
