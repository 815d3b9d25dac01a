"""Write prediction CSVs in the layout the ISIC archive and the official scorer accept.

The MILK10k template (``MILK10k_Sample_Submit.csv``) has the header
``lesion_id,AKIEC,BCC,...`` and one row per lesion sorted by ``lesion_id``, with every value
written as a float (``0.0``, never ``0``). The scorer pinned in fusionkit's dev extra,
``isic-challenge-scoring`` 5.6.0, only knows the older ``image`` id column (its ``parse_csv``
fails with ``Missing column in CSV: 'image'`` otherwise); pass ``id_column="image"`` to score a
file locally with that version.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionkit.utils.io import atomic_write_text

__all__ = ["write_submission"]


def write_submission(
    path: str | os.PathLike[str],
    lesion_ids: Sequence[str],
    probs: Any,
    class_names: Sequence[str],
    *,
    id_column: str = "lesion_id",
) -> Path:
    """Write a submission CSV atomically (temporary file + rename) and return its path.

    Args:
        path: destination file; its folder is created if missing.
        lesion_ids: one id per row of ``probs`` (e.g. ``IL_0000652``), unique.
        probs: probabilities, shape ``(n, k)``, finite, in ``[0, 1]``.
        class_names: the ``k`` column names, in the order of ``probs``' columns.
        id_column: name of the id column: ``"lesion_id"`` (MILK10k) or ``"image"`` (the id column
            that ``isic-challenge-scoring`` 5.6.0 requires).

    Rows are sorted by id; each value is written with Python's shortest round-trip ``repr`` of
    the float64 value (``0.0``, ``0.25``, ``1e-05``), so a reader gets back exactly the numbers
    that were scored.

    Raises:
        ValueError: on duplicate or empty ids, a length or shape mismatch, or values that are not
            finite probabilities.
    """
    ids = [str(i) for i in lesion_ids]
    names = [str(c) for c in class_names]
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (len(ids), len(names)):
        raise ValueError(
            f"probs has shape {p.shape}, expected ({len(ids)}, {len(names)}) (one row per id, one column per class)"
        )
    if not ids:
        raise ValueError("no rows to write")
    if any(not i for i in ids):
        raise ValueError("empty lesion id")
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate lesion ids: {dupes[:10]}")
    if len(set(names)) != len(names) or id_column in names:
        raise ValueError(f"column names must be unique and differ from {id_column!r}: {names}")
    if not np.all(np.isfinite(p)) or np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("probs must be finite and in [0, 1]")

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([id_column, *names])
    for row in sorted(range(len(ids)), key=ids.__getitem__):
        writer.writerow([ids[row], *(repr(float(v)) for v in p[row])])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)
