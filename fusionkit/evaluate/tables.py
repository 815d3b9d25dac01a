"""Result tables: the paper's Table 5 layout and side-by-side ablation tables.

Table 5 of the JI-ADF paper has one row per metric (AUC; AUC, Sens > 80%; Average Precision;
Accuracy; Sensitivity; Specificity; Dice Coefficient; PPV; NPV) and the columns ``Mean`` (the
macro average) followed by one column per class. :func:`write_table5` writes it from the output
of :func:`fusionkit.metrics.isic_metrics` as GitHub Markdown (3 decimals), CSV and JSON (full
precision); every file is written atomically. An undefined value (NaN, see
:mod:`fusionkit.metrics.isic`) is written as ``n/a`` in Markdown, an empty cell in CSV and
``null`` in JSON.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusionkit.utils.io import atomic_write_text
from fusionkit.utils.tables import json_value, markdown_row, markdown_table, write_json

__all__ = ["TABLE5_ROWS", "ablation_table", "table5_markdown", "table5_rows", "write_table5"]

#: ``(metric key, row label)`` pairs of Table 5, in the paper's order.
TABLE5_ROWS: tuple[tuple[str, str], ...] = (
    ("auc", "AUC"),
    ("auc_sens_80", "AUC, Sens > 80%"),
    ("ap", "Average Precision"),
    ("accuracy", "Accuracy"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("dice", "Dice Coefficient"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
)
_LABELS = dict(TABLE5_ROWS) | {
    "accuracy": "Accuracy (one-vs-rest mean)",
    "balanced_accuracy": "Balanced Accuracy",
    "multiclass_accuracy": "Multiclass Accuracy",
}
ACCURACY_NOTE = (
    "Accuracy (the official ISIC definition) is the mean over classes of each class's one-vs-rest "
    "accuracy, not the share of lesions classified correctly"
)
"""What the Table 5 "Accuracy" row is, written under the Markdown table."""


def table5_rows(metrics: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Table 5 as data: ``(columns, rows)`` with columns ``["Mean", class, ...]`` and rows
    ``[(label, [mean, value per class, ...]), ...]`` in the paper's order.

    Args:
        metrics: the dict returned by :func:`fusionkit.metrics.isic_metrics`.
    """
    try:
        per_class, macro = metrics["per_class"], metrics["macro"]
        classes = list(per_class[TABLE5_ROWS[0][0]])
        rows = [
            (label, [float(macro[key]), *(float(per_class[key][c]) for c in classes)]) for key, label in TABLE5_ROWS
        ]
    except (KeyError, TypeError) as exc:
        raise ValueError(
            "metrics must be the output of fusionkit.metrics.isic_metrics "
            f"(with 'per_class' and 'macro' for every Table 5 metric); missing {exc}"
        ) from exc
    return ["Mean", *classes], rows


def table5_markdown(metrics: Mapping[str, Any], *, digits: int = 3) -> str:
    """Table 5 as a GitHub Markdown table with ``digits`` decimals (NaN written ``n/a``), then a
    line saying what its "Accuracy" row is, with the multiclass and balanced accuracy beside it."""
    columns, rows = table5_rows(metrics)
    lines = [
        *markdown_table(
            ["Metric", *columns],
            ([label, *(_fmt(v, digits) for v in values)] for label, values in rows),
            align="l" + "r" * len(columns),
        ),
    ]
    macro = metrics["macro"]
    note = ACCURACY_NOTE
    if "multiclass_accuracy" in macro and "balanced_accuracy" in macro:
        note += (
            f": multiclass accuracy {_fmt(_float_or_nan(macro['multiclass_accuracy']), digits)}, "
            f"balanced accuracy {_fmt(_float_or_nan(macro['balanced_accuracy']), digits)}"
        )
    lines += ["", f"{note}."]
    return "\n".join(lines) + "\n"


def write_table5(
    metrics: Mapping[str, Any], out_dir: str | os.PathLike[str], *, stem: str = "metrics"
) -> dict[str, Path]:
    """Write Table 5 as ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` under ``out_dir``.

    The Markdown has 3 decimals; the CSV and JSON carry full float precision. The JSON also keeps
    the complete metrics dict (``per_class``, ``macro`` including ``balanced_accuracy``,
    ``empty_classes``, ``undefined``) under ``"metrics"``. ``out_dir`` is created if missing.

    Returns:
        ``{"md": path, "csv": path, "json": path}``.
    """
    columns, rows = table5_rows(metrics)
    out = Path(out_dir)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Metric", *columns])
    for label, values in rows:
        writer.writerow([label, *("" if math.isnan(v) else repr(v) for v in values)])

    document = {
        "columns": columns,
        "rows": [
            {"metric": label, "values": dict(zip(columns, map(json_value, values), strict=True))}
            for label, values in rows
        ],
        "metrics": json_value(metrics),
    }
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    atomic_write_text(paths["md"], table5_markdown(metrics))
    atomic_write_text(paths["csv"], buffer.getvalue())
    write_json(paths["json"], document)
    return paths


def ablation_table(
    results: Mapping[str, Mapping[str, Any]],
    *,
    metrics: Sequence[str] | None = None,
    digits: int = 3,
    bold_best: bool = True,
) -> str:
    """Compare several runs (or modality maskings) side by side as a GitHub Markdown table.

    Args:
        results: ``{run name: macro metrics}``; a value may also be the full output of
            :func:`fusionkit.metrics.isic_metrics`, whose ``"macro"`` part is then used.
        metrics: metric keys to show as columns (default: the Table 5 metrics, plus
            ``multiclass_accuracy`` and ``balanced_accuracy`` when every run has them).
        digits: decimals shown.
        bold_best: bold the highest value of each column (every metric here is
            higher-is-better); ties are all bolded.

    Returns:
        The Markdown text, one row per run in the given order; a missing or NaN value is ``n/a``.
    """
    if not results:
        raise ValueError("results is empty: nothing to compare")
    macros = {name: (r["macro"] if "macro" in r else r) for name, r in results.items()}
    if metrics is None:
        keys = [key for key, _ in TABLE5_ROWS]
        keys += [k for k in ("multiclass_accuracy", "balanced_accuracy") if all(k in m for m in macros.values())]
    else:
        keys = list(metrics)
    values = {name: [_float_or_nan(m.get(key)) for key in keys] for name, m in macros.items()}
    best = []
    for j in range(len(keys)):
        column = [v[j] for v in values.values() if not math.isnan(v[j])]
        best.append(round(max(column), digits) if column else None)

    lines = [
        *markdown_table(["Run", *(_LABELS.get(k, k) for k in keys)], [], align="l" + "r" * len(keys)),
    ]
    for name, row in values.items():
        cells = []
        for j, v in enumerate(row):
            text = _fmt(v, digits)
            is_best = best[j] is not None and not math.isnan(v) and round(v, digits) == best[j]
            if bold_best and is_best:
                text = f"**{text}**"
            cells.append(text)
        lines.append(markdown_row([_md_escape(name), *cells]))
    return "\n".join(lines) + "\n"


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _fmt(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")
