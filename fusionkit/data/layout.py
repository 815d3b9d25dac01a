"""Locate the files of one MILK10k split inside a root folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fusionkit.data.schema import (
    SPLIT_NAMES,
    ground_truth_file_name,
    input_dir_name,
    metadata_file_name,
    supplement_file_name,
)
from fusionkit.errors import DataError


@dataclass(frozen=True)
class Milk10kFiles:
    """The files of one MILK10k split.

    Attributes:
        split: ``"Training"`` or ``"Test"``.
        metadata_csv: the per-image metadata CSV.
        ground_truth_csv: the per-lesion one-hot CSV, or ``None`` for an unlabelled split.
        image_dir: the ``MILK10k_<split>_Input`` folder; images are searched recursively under it,
            so the doubled folder the official zip extracts to is accepted.
        supplement_csv: the supplement CSV if present (never needed for training).
    """

    split: str
    metadata_csv: Path
    ground_truth_csv: Path | None
    image_dir: Path
    supplement_csv: Path | None = None


def find_split(root: str | Path, split: str = "Training") -> Milk10kFiles:
    """Find the metadata CSV, the ground truth (if any) and the image folder of ``split`` in ``root``.

    Raises:
        DataError: ``root`` is not a folder in the MILK10k layout (the message lists what was
            expected and what the folder holds).
    """
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_NAMES)}", path=root)
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a folder; expected a folder holding the MILK10k files", path=root)
    metadata = root / metadata_file_name(split)
    image_dir = root / input_dir_name(split)
    problems = []
    if not metadata.is_file():
        problems.append(f"no {metadata.name}")
    if not image_dir.is_dir():
        problems.append(f"no {image_dir.name}/ folder")
    if problems:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
        shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "") if found else "nothing"
        raise DataError(
            f"not in the MILK10k layout for split {split!r} ({'; '.join(problems)}); expected "
            f"{metadata.name}, {image_dir.name}/ and optionally {ground_truth_file_name(split)}; found: {shown}",
            path=root,
        )
    ground_truth = root / ground_truth_file_name(split)
    supplement = root / supplement_file_name(split)
    return Milk10kFiles(
        split=split,
        metadata_csv=metadata,
        ground_truth_csv=ground_truth if ground_truth.is_file() else None,
        image_dir=image_dir,
        supplement_csv=supplement if supplement.is_file() else None,
    )
