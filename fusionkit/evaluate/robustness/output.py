"""Write a :class:`~fusionkit.evaluate.robustness.runner.RobustnessTable`: ``robustness.json``,
``robustness.md`` and ``robustness.png`` (macro Dice against severity, one panel per modality)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from fusionkit.errors import DataError
from fusionkit.evaluate.plots import class_colors, save_figure
from fusionkit.evaluate.robustness.catalog import ABSENT, SEVERITIES
from fusionkit.evaluate.robustness.runner import RobustnessTable
from fusionkit.utils.io import atomic_write_text
from fusionkit.utils.tables import markdown_row, markdown_table, write_json

__all__ = ["ROBUSTNESS_FILES", "load_robustness", "plot_robustness", "robustness_markdown", "write_robustness"]

#: File names written by :func:`write_robustness`.
ROBUSTNESS_FILES = {"json": "robustness.json", "markdown": "robustness.md", "figure": "robustness.png"}

_MODALITY_NAMES = {"derm": "dermoscopic photo", "clinical": "clinical photo", "meta": "metadata"}


def write_robustness(table: RobustnessTable, out_dir: str | Path) -> dict[str, Path]:
    """Write the three files into ``out_dir`` atomically; returns ``{"json"|"markdown"|"figure": path}``."""
    out = Path(out_dir)
    paths = {key: out / name for key, name in ROBUSTNESS_FILES.items()}
    write_json(paths["json"], table.to_dict())
    atomic_write_text(paths["markdown"], robustness_markdown(table))
    plot_robustness(table, paths["figure"])
    return paths


def load_robustness(path: str | Path) -> RobustnessTable:
    """Read a ``robustness.json`` (e.g. a baseline run's, for the mCE).

    Raises:
        DataError: the file is missing, not JSON or not a robustness document (the message names it).
    """
    path = Path(path)
    try:
        return RobustnessTable.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise DataError(
            "no such file; expected the robustness.json of a run scored with robustness", path=path
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"not a robustness.json document ({exc})", path=path) from None


def _cell(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def robustness_markdown(table: RobustnessTable, *, digits: int = 3) -> str:
    """The ``robustness.md`` text: clean metrics, macro Dice per corruption and severity for each
    modality (with the mean relative drop), which modality's corruption hurts most, and the mCE."""
    severities = sorted({r["severity"] for r in table.results if r["severity"] is not None}) or list(SEVERITIES)
    lines = [
        "# Robustness per modality",
        "",
        f"{table.n_lesions} lesions, seed {table.seed}. Clean: "
        + ", ".join(f"{k} {_cell(v, digits)}" for k, v in table.baseline.items())
        + f" (macro Dice 95 % CI {_cell(table.baseline_dice_ci95[0])}-{_cell(table.baseline_dice_ci95[1])}).",
        "",
    ]
    summary = table.summary()
    for modality in summary:
        rows = [r for r in table.results if r["modality"] == modality]
        lines += [
            f"## {_MODALITY_NAMES.get(modality, modality)} (`{modality}`): macro Dice [95 % CI]",
            "",
            *markdown_table(["corruption", *[f"severity {s}" for s in severities], "mean drop"], []),
        ]
        for name in dict.fromkeys(r["corruption"] for r in rows):
            own = {r["severity"]: r for r in rows if r["corruption"] == name}
            if name == ABSENT:
                r = own[None]
                cells = [f"{_cell(r['metrics']['dice'])} (whole modality absent)"] + [""] * (len(severities) - 1)
                lines.append(markdown_row([name, *cells, _pct(r["relative_drop"])]))
                continue
            cells = []
            for s in severities:
                got = own.get(s)
                cells.append(
                    ""
                    if got is None
                    else f"{_cell(got['metrics']['dice'])} [{_cell(got['dice_ci95'][0])}, {_cell(got['dice_ci95'][1])}]"
                )
            drops = [r["relative_drop"] for r in own.values() if not math.isnan(r["relative_drop"])]
            lines.append(markdown_row([name, *cells, _pct(sum(drops) / len(drops) if drops else math.nan)]))
        lines.append("")
    ranked = sorted(
        (m for m in summary if not math.isnan(summary[m]["mean_relative_drop"])),
        key=lambda m: -summary[m]["mean_relative_drop"],
    )
    if ranked:
        lines += ["## Which modality's corruption hurts most", ""]
        if any("mean_relative_drop_ci95" in summary[m] for m in ranked):
            lines += [
                "Mean relative drop of the macro Dice over the graded corruptions and severities, with its "
                "bootstrap 95 % interval (lesions resampled within each class, the same resamples for the clean "
                "and every corrupted set), and the share of resamples in which the modality's drop is the largest.",
                "",
                markdown_row(["modality", "mean relative drop [95 % CI]", "hurts most in", "whole modality absent"]),
                markdown_row(["---"] * 4),
            ]
            for m in ranked:
                entry = summary[m]
                lines.append(
                    markdown_row(
                        [
                            f"{_MODALITY_NAMES.get(m, m)} (`{m}`)",
                            f"{_pct(entry['mean_relative_drop'])} {_pct_ci(entry.get('mean_relative_drop_ci95'))}",
                            _pct(entry.get("hurts_most_share", math.nan), 0) + " of resamples",
                            f"{_pct(entry.get('absent_relative_drop', math.nan))} "
                            f"{_pct_ci(entry.get('absent_relative_drop_ci95'))}",
                        ]
                    )
                )
            lines.append("")
        else:
            lines += [
                "Mean relative drop of the macro Dice over the graded corruptions and severities: "
                + ", ".join(f"{_MODALITY_NAMES.get(m, m)} {_pct(summary[m]['mean_relative_drop'])}" for m in ranked)
                + ".",
                "",
            ]
    if table.mce is not None:
        mce = table.mce
        lines += [
            f"## Mean corruption error (error = 1 - {mce['metric']}, normalised by the reference run)",
            "",
            *markdown_table(["modality", "mCE", "relative mCE"], []),
        ]
        for modality, values in mce["per_modality"].items():
            lines.append(markdown_row([modality, _cell(values["mce"]), _cell(values["relative_mce"])]))
        lines.append(markdown_row(["**all**", _cell(mce["mce"]), _cell(mce["relative_mce"])]))
        if mce["skipped"]:
            lines += ["", "Not in the reference (left out): " + ", ".join(mce["skipped"]) + "."]
        lines.append("")
    return "\n".join(lines)


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.{digits}f} %"


def _pct_ci(interval: Sequence[float] | None) -> str:
    """``[lo, hi] %`` of a relative-drop interval ("" without one)."""
    if not interval or any(v is None or math.isnan(v) for v in interval):
        return ""
    return f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}] %"


def plot_robustness(table: RobustnessTable, path: str | Path, *, metric: str = "dice") -> Path:
    """Macro ``metric`` against severity, one panel per modality and one line per corruption
    (Dice panels carry the bootstrap 95 % interval as error bars); the clean value is a dashed
    line and the whole-modality-absent value a dotted one."""
    modalities = list(dict.fromkeys(r["modality"] for r in table.results))
    if not modalities:
        raise ValueError("the table has no results to plot")
    fig = Figure(figsize=(4.6 * len(modalities), 4.2), dpi=120)
    axes = fig.subplots(1, len(modalities), sharey=True, squeeze=False)[0]
    for ax, modality in zip(axes, modalities, strict=True):
        rows = [r for r in table.results if r["modality"] == modality]
        names = [n for n in dict.fromkeys(r["corruption"] for r in rows) if n != ABSENT]
        colours = class_colors(max(len(names), 1))
        for colour, name in zip(colours, names, strict=False):
            own = sorted((r for r in rows if r["corruption"] == name), key=lambda r: r["severity"])
            x = [r["severity"] for r in own]
            y = [r["metrics"][metric] for r in own]
            if metric == "dice":
                low = [max(0.0, v - r["dice_ci95"][0]) for v, r in zip(y, own, strict=True)]
                high = [max(0.0, r["dice_ci95"][1] - v) for v, r in zip(y, own, strict=True)]
                ax.errorbar(x, y, yerr=[low, high], marker="o", ms=3, lw=1.2, capsize=2, color=colour, label=name)
            else:
                ax.plot(x, y, marker="o", ms=3, lw=1.2, color=colour, label=name)
        ax.axhline(table.baseline[metric], color="black", linestyle="--", lw=1, label="clean")
        for r in rows:
            if r["corruption"] == ABSENT:
                ax.axhline(r["metrics"][metric], color="grey", linestyle=":", lw=1.5, label="modality absent")
        ax.set_title(_MODALITY_NAMES.get(modality, modality))
        ax.set_xlabel("severity")
        ax.set_xticks(list(SEVERITIES))
        ax.legend(fontsize=6, ncol=2, loc="lower left")
    axes[0].set_ylabel(f"macro {metric}")
    fig.suptitle(f"Robustness per modality ({table.n_lesions} lesions, seed {table.seed})")
    fig.tight_layout()
    return save_figure(fig, path)
