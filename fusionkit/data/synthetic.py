"""Write a synthetic MILK10k split in the exact official layout, with a known label rule.

The files are those of the real archive: ``MILK10k_<split>_Input/<lesion_id>/<isic_id>.jpg``,
``MILK10k_<split>_Metadata.csv`` (exact header, vocabularies, rows sorted by lesion id with the
clinical row first), ``MILK10k_<split>_GroundTruth.csv`` (``0.0``/``1.0``) and optionally
``MILK10k_<split>_Supplement.csv``. The same arguments give byte-identical files.

The label rule (each class is visible through exactly one modality)
--------------------------------------------------------------------
Every image shows a skin-coloured background (colour from ``skin_tone_class``, a gentle linear
shading) with one filled ellipse, the "lesion", near the centre: centre offset up to 8 % of the
width/height, semi-axes ``min(W, H)`` x 0.28-0.36 (dermoscopic) or 0.18-0.26 (clinical), each
x 0.8-1.2. The ellipse colour carries the class:

* **dermoscopic-only classes** ``MEL``, ``NV``, ``BKL``, ``DF``: the *dermoscopic* ellipse has the
  class colour (MEL blue ``(35, 60, 200)``, NV green ``(40, 165, 60)``, BKL yellow
  ``(225, 200, 40)``, DF magenta ``(200, 40, 200)``); the clinical ellipse is the neutral brown;
* **clinical-only classes** ``BCC``, ``SCCKA``, ``AKIEC``, ``VASC``: the *clinical* ellipse has the
  class colour (BCC red ``(225, 35, 35)``, SCCKA cyan ``(40, 200, 215)``, AKIEC white
  ``(245, 245, 245)``, VASC black ``(20, 20, 20)``); the dermoscopic ellipse is the neutral brown;
* **metadata-only classes** ``INF``, ``BEN_OTH``, ``MAL_OTH``: both ellipses are the neutral brown
  ``(128, 84, 56)``; the class is given by ``site``, which is reserved for them: INF ``hand``,
  BEN_OTH ``foot``, MAL_OTH ``genital``. Every other class draws its site from ``trunk``,
  ``head_neck_face``, ``lower_extremity``, ``upper_extremity`` (or blank).

Each ellipse colour gets a per-lesion jitter (normal, sd 8 per channel) and every pixel uniform
noise in [-10, 10] (sd about 6). Age, sex, skin tone, the 14 MONET scores and the ``altered``
flags are drawn independently of the class (nuisance variables), as are the ellipse geometry and
shading. Hence a model that sees one modality can single out only that modality's classes (4, 4
or 3 of 11) and must guess among the rest, while a model that sees all three can classify every
lesion: the trimodal ceiling is 100 % accuracy (macro F1 1.0); every unimodal ceiling is far below.

Class frequencies follow the real training imbalance scaled to ``n_lesions`` (every class at
least one lesion from 11 lesions on, at least two from 60 on) or, with
``class_balance="uniform"``, are equal.
Blank ages and sites occur at the real rates (20 and 31 per 5,240 lesions), at least one of each
from 50 lesions on; blank sites fall only on lesions of image-visible classes.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Final, Literal

import numpy as np
from PIL import Image

from fusionkit.data.layout import Milk10kFiles, find_split
from fusionkit.data.schema import (
    ATTRIBUTION,
    CLASS_NAMES,
    CLINICAL,
    COPYRIGHT_LICENSE,
    DERMOSCOPIC,
    GROUND_TRUTH_COLUMNS,
    METADATA_COLUMNS,
    SEXES,
    SPLIT_NAMES,
    SUPPLEMENT_COLUMNS,
    TRAINING_CLASS_COUNTS,
    ground_truth_file_name,
    input_dir_name,
    metadata_file_name,
    supplement_file_name,
)
from fusionkit.errors import FusionkitError

#: Classes whose colour shows only in the dermoscopic image.
SYNTHETIC_DERM_CLASSES: Final[tuple[str, ...]] = ("MEL", "NV", "BKL", "DF")
#: Classes whose colour shows only in the clinical image.
SYNTHETIC_CLINICAL_CLASSES: Final[tuple[str, ...]] = ("BCC", "SCCKA", "AKIEC", "VASC")
#: Classes given away only by the metadata (their reserved site).
SYNTHETIC_METADATA_CLASSES: Final[tuple[str, ...]] = ("INF", "BEN_OTH", "MAL_OTH")
#: The site reserved for each metadata-only class.
SYNTHETIC_SITE_OF_CLASS: Final[dict[str, str]] = {"INF": "hand", "BEN_OTH": "foot", "MAL_OTH": "genital"}
#: Ellipse colour of each image-visible class, in the modality that shows it.
SYNTHETIC_CLASS_COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "MEL": (35, 60, 200),
    "NV": (40, 165, 60),
    "BKL": (225, 200, 40),
    "DF": (200, 40, 200),
    "BCC": (225, 35, 35),
    "SCCKA": (40, 200, 215),
    "AKIEC": (245, 245, 245),
    "VASC": (20, 20, 20),
}
#: Ellipse colour where the class is not visible.
SYNTHETIC_NEUTRAL_COLOUR: Final[tuple[int, int, int]] = (128, 84, 56)

_COMMON_SITES: Final[tuple[str, ...]] = ("trunk", "head_neck_face", "lower_extremity", "upper_extremity")
_COMMON_SITE_WEIGHTS: Final[tuple[float, ...]] = (0.4, 0.3, 0.15, 0.15)
_SKIN_COLOURS: Final[tuple[tuple[int, int, int], ...]] = (
    (246, 226, 210),
    (234, 200, 172),
    (214, 174, 140),
    (184, 138, 104),
    (140, 98, 68),
    (92, 62, 44),
)
_SKIN_TONE_WEIGHTS: Final[tuple[float, ...]] = (0.002, 0.12, 0.38, 0.32, 0.13, 0.048)
_AGES: Final[tuple[int, ...]] = tuple(range(5, 90, 5))
_MISSING_AGE_RATE: Final[float] = 20 / 5240
_MISSING_SITE_RATE: Final[float] = 31 / 5240
_ALTERED_RATE: Final[dict[str, float]] = {CLINICAL: 0.057, DERMOSCOPIC: 0.007}
_JPEG_QUALITY: Final[int] = 90


def synthetic_class_counts(n_lesions: int, *, class_balance: Literal["real", "uniform"] = "real") -> dict[str, int]:
    """Lesions per class for ``n_lesions`` (``CLASS_NAMES`` order).

    ``"real"`` scales the official training counts (at least 1 per class, at least 2 from 60
    lesions on; rounding by largest remainder); ``"uniform"`` splits evenly. With fewer than 11
    lesions not every class can occur: the ``n_lesions`` largest classes (``"real"``) or the
    first ones in ``CLASS_NAMES`` order (``"uniform"``) get one lesion each.
    """
    if n_lesions < 1:
        raise ValueError(f"n_lesions must be at least 1, got {n_lesions}")
    if class_balance not in ("real", "uniform"):
        raise ValueError(f"class_balance must be 'real' or 'uniform', got {class_balance!r}")
    if n_lesions < len(CLASS_NAMES):  # too few for every class: one lesion each for the first classes
        order = sorted(CLASS_NAMES, key=lambda c: -TRAINING_CLASS_COUNTS[c]) if class_balance == "real" else CLASS_NAMES
        chosen = set(order[:n_lesions])
        return {name: int(name in chosen) for name in CLASS_NAMES}
    if class_balance == "uniform":
        base, extra = divmod(n_lesions, len(CLASS_NAMES))
        return {name: base + (i < extra) for i, name in enumerate(CLASS_NAMES)}
    minimum = 2 if n_lesions >= 60 else 1
    total = sum(TRAINING_CLASS_COUNTS.values())
    quota = {name: n_lesions * TRAINING_CLASS_COUNTS[name] / total for name in CLASS_NAMES}
    counts = {name: max(minimum, int(quota[name])) for name in CLASS_NAMES}
    while sum(counts.values()) > n_lesions:  # take from the class most above its quota
        name = max((c for c in CLASS_NAMES if counts[c] > minimum), key=lambda c: counts[c] - quota[c])
        counts[name] -= 1
    while sum(counts.values()) < n_lesions:  # give to the class most below its quota
        name = max(CLASS_NAMES, key=lambda c: quota[c] - counts[c])
        counts[name] += 1
    return counts


def _missing_count(n_lesions: int, rate: float) -> int:
    count = round(n_lesions * rate)
    return max(count, 1) if n_lesions >= 50 else count


def _draw_image(
    rng: np.random.Generator,
    size: tuple[int, int],
    skin: tuple[int, int, int],
    colour: tuple[int, int, int],
    dermoscopic: bool,
) -> np.ndarray:
    width, height = size
    ys = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    gx, gy = rng.uniform(-1, 1, size=2).astype(np.float32)
    shade = 1.0 + 0.08 * (xs * gx + ys * gy)
    scale = min(width, height) * (rng.uniform(0.28, 0.36) if dermoscopic else rng.uniform(0.18, 0.26))
    rx, ry = scale * rng.uniform(0.8, 1.2, size=2)
    cx, cy = 0.08 * rng.uniform(-1, 1, size=2)  # centre offset, as a fraction of the size
    inside = ((xs - cx) * (width / rx)) ** 2 + ((ys - cy) * (height / ry)) ** 2 <= 1.0
    tint = np.asarray(colour, np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    base = np.where(inside[..., None], tint, np.asarray(skin, np.float32) * shade[..., None])
    noise = rng.integers(-10, 11, size=(height, width, 3), dtype=np.int16)  # uniform, sd about 6
    return np.clip(np.rint(base).astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _jpeg_bytes(array: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make_synthetic_milk10k(
    root: str | Path,
    *,
    n_lesions: int,
    photo_size: tuple[int, int] | int = (600, 450),
    seed: int = 0,
    split: str = "Training",
    with_ground_truth: bool = True,
    with_supplement: bool = False,
    class_balance: Literal["real", "uniform"] = "real",
    overwrite: bool = False,
) -> Milk10kFiles:
    """Write a synthetic split under ``root`` and return its files (see the module docstring).

    Args:
        root: the folder to write into (created if needed).
        n_lesions: number of lesions (two images each); from 11 on every class occurs.
        photo_size: ``(width, height)`` of every JPEG, or one int for square photos.
        seed: the same seed gives byte-identical files.
        split: ``"Training"`` or ``"Test"`` (names the files).
        with_ground_truth: write ``MILK10k_<split>_GroundTruth.csv`` (the real test split has none).
        with_supplement: also write ``MILK10k_<split>_Supplement.csv``.
        class_balance: ``"real"`` (scaled official imbalance) or ``"uniform"``.
        overwrite: replace this split's files if they exist (otherwise that is an error).

    Raises:
        FusionkitError: the split's files already exist and ``overwrite`` is False.
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    width, height = (photo_size, photo_size) if isinstance(photo_size, int) else photo_size
    if width < 4 or height < 4:
        raise ValueError(f"photo_size must be at least 4x4, got {width}x{height}")
    root = Path(root)
    targets = [
        root / input_dir_name(split),
        root / metadata_file_name(split),
        root / ground_truth_file_name(split),
        root / supplement_file_name(split),
    ]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise FusionkitError(f"{existing[0]} already exists; pass overwrite=True to replace the {split} split")
    for target in existing:
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    counts = synthetic_class_counts(n_lesions, class_balance=class_balance)
    rng = np.random.default_rng(seed)
    lesion_ids = [f"IL_{x:07d}" for x in np.sort(rng.choice(10_000_000, size=n_lesions, replace=False))]
    image_ids = [f"ISIC_{x:07d}" for x in rng.choice(10_000_000, size=2 * n_lesions, replace=False)]
    labels = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), [counts[c] for c in CLASS_NAMES]))
    sexes = rng.choice(SEXES, size=n_lesions)
    age_weights = np.linspace(0.3, 1.0, len(_AGES))
    ages: list[int | None] = list(rng.choice(_AGES, size=n_lesions, p=age_weights / age_weights.sum()))
    tones = rng.choice(6, size=n_lesions, p=np.asarray(_SKIN_TONE_WEIGHTS) / sum(_SKIN_TONE_WEIGHTS))
    sites: list[str | None] = [
        SYNTHETIC_SITE_OF_CLASS.get(CLASS_NAMES[y]) or str(rng.choice(_COMMON_SITES, p=_COMMON_SITE_WEIGHTS))
        for y in labels
    ]
    for i in rng.choice(n_lesions, size=_missing_count(n_lesions, _MISSING_AGE_RATE), replace=False):
        ages[i] = None
    visible = [i for i, y in enumerate(labels) if CLASS_NAMES[y] not in SYNTHETIC_METADATA_CLASSES]
    n_blank_sites = min(_missing_count(n_lesions, _MISSING_SITE_RATE), len(visible))
    for i in rng.choice(visible, size=n_blank_sites, replace=False):
        sites[i] = None
    monet = np.round(rng.beta(0.6, 2.5, size=(n_lesions, 2, 7)), 6)
    altered = {t: rng.random(n_lesions) < rate for t, rate in _ALTERED_RATE.items()}

    image_dir = root / input_dir_name(split)
    metadata_rows: list[list[str]] = []
    for i, lesion_id in enumerate(lesion_ids):
        name = CLASS_NAMES[labels[i]]
        age = ages[i]
        colour = SYNTHETIC_CLASS_COLOURS.get(name, SYNTHETIC_NEUTRAL_COLOUR)
        lesion_rng = np.random.default_rng([seed, 7919, i])
        folder = image_dir / lesion_id
        folder.mkdir(parents=True, exist_ok=True)
        for j, image_type in enumerate((CLINICAL, DERMOSCOPIC)):
            shows = SYNTHETIC_CLINICAL_CLASSES if image_type == CLINICAL else SYNTHETIC_DERM_CLASSES
            array = _draw_image(
                lesion_rng,
                (width, height),
                _SKIN_COLOURS[tones[i]],
                colour if name in shows else SYNTHETIC_NEUTRAL_COLOUR,
                dermoscopic=image_type == DERMOSCOPIC,
            )
            isic_id = image_ids[2 * i + j]
            (folder / f"{isic_id}.jpg").write_bytes(_jpeg_bytes(array, _JPEG_QUALITY))
            scores = monet[i, 1 if image_type == DERMOSCOPIC else 0]
            metadata_rows.append(
                [
                    lesion_id,
                    image_type,
                    isic_id,
                    ATTRIBUTION,
                    COPYRIGHT_LICENSE,
                    "altered" if altered[image_type][i] else "instrument only",
                    "" if age is None else str(int(age)),
                    str(sexes[i]),
                    str(int(tones[i])),
                    sites[i] or "",
                    *(f"{s:.6f}" for s in scores),
                ]
            )
    _write_csv(root / metadata_file_name(split), METADATA_COLUMNS, metadata_rows)
    if with_ground_truth:
        rows = [
            [lesion_id, *("1.0" if k == labels[i] else "0.0" for k in range(len(CLASS_NAMES)))]
            for i, lesion_id in enumerate(lesion_ids)
        ]
        _write_csv(root / ground_truth_file_name(split), GROUND_TRUTH_COLUMNS, rows)
    if with_supplement:
        rows = [
            [row[2], f"Synthetic::{CLASS_NAMES[labels[k // 2]]}", "histopathology", ""]
            for k, row in enumerate(metadata_rows)
        ]
        _write_csv(root / supplement_file_name(split), SUPPLEMENT_COLUMNS, rows)
    return find_split(root, split)
