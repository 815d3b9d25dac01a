"""Writing results down: JSON-safe values and Markdown tables, one way for every report and summary."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fusionkit.utils.io import atomic_write_text


def json_value(value: Any) -> Any:
    """A JSON-safe copy: NaN becomes ``None``, tuples become lists, numbers (numpy, 0-d tensors) Python floats."""
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    number = float(value)
    return None if math.isnan(number) else number


def write_json(path: str | os.PathLike[str], value: Any) -> None:
    """Write :func:`json_value` of ``value`` as indented JSON, atomically (NaN as ``null``, never ``NaN``)."""
    atomic_write_text(path, json.dumps(json_value(value), indent=2, allow_nan=False) + "\n")


def markdown_row(cells: Iterable[object]) -> str:
    """One Markdown table row: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], *, align: str = "") -> list[str]:
    """A Markdown table's lines: the header, the separator and one line per row.

    ``align`` gives each column's alignment, ``l`` or ``r`` (numbers); columns it does not reach are ``l``.
    """
    marks = [("---:" if align[j : j + 1] == "r" else "---") for j in range(len(header))]
    return [markdown_row(header), markdown_row(marks), *(markdown_row(r) for r in rows)]
