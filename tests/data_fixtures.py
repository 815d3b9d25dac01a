"""Helpers shared by the tests/test_data_*.py files: tiny synthetic MILK10k sets and CSV edits."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusionkit.data import Milk10kFiles, make_synthetic_milk10k  # noqa: E402

#: Image size of the tiny test sets, (width, height) as in the real files' 600x450.
TINY = (32, 24)


def make_set(root: Path, *, n_lesions: int = 40, seed: int = 0, **kwargs) -> Milk10kFiles:
    """A tiny synthetic split under ``root``."""
    return make_synthetic_milk10k(root, n_lesions=n_lesions, photo_size=TINY, seed=seed, **kwargs)


def read_rows(path: Path) -> list[list[str]]:
    """All rows of a CSV, header included."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def write_rows(path: Path, rows: list[list[str]]) -> None:
    """Write rows as the generator does."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def edit_csv(path: Path, edit: Callable[[list[list[str]]], None]) -> list[list[str]]:
    """Apply ``edit`` to the rows of ``path`` in place and write them back."""
    rows = read_rows(path)
    edit(rows)
    write_rows(path, rows)
    return rows
