"""The sweep's summary: ``summary.json`` / ``summary.csv`` / ``summary.md``, ``figure3.png``, and
Table 2 / Table 3 in the paper's row layout, rebuilt from the run records on disk.

``summary.json``::

    {"reference": str, "variants": {preset: {"n_runs": int,
        "metrics": {"dice"|"auc"|"ppv"|"accuracy"|"sensitivity"|"specificity":
                    {"mean": float, "std": float|null, "ci95": [lo, hi]|null}},
        "vs_reference": {"dice_diff", "dice_ci95", "auc_diff", "auc_ci95"} | null}},
     "runs": [{"preset", "seed", "fold", "status", "run_dir", "seconds", "metrics", ...}]}

``std`` and ``ci95`` are null for a variant with one finished run; ``vs_reference`` is null when
no seed (fold) has both the variant and the reference finished.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionkit.sweep.execute import MACRO_KEYS, RECORD_FILE
from fusionkit.sweep.plan import FIGURE3_BARS, TABLE2_ROWS, TABLE3_ROWS
from fusionkit.sweep.stats import PairedRun, mean_std_ci, paired_difference
from fusionkit.utils.io import atomic_write_bytes, atomic_write_text

COLUMN_TITLES: dict[str, str] = {
    "auc": "AUC",
    "ppv": "Precision",
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "dice": "Dice",
}
"""The paper's column names for the macro metrics (Precision is the PPV)."""
FIGURE3_METRICS: tuple[str, ...] = ("auc", "ppv", "sensitivity", "dice")
"""The four metrics of figure3.png (the paper's Figure 3 names four without listing them: fusionkit's choice)."""


def collect_records(out: Path) -> list[dict[str, Any]]:
    """Every run record under ``OUT/runs``, sorted by preset, seed, fold."""
    records = []
    for path in sorted((out / "runs").glob(f"*/seed*/{RECORD_FILE}")) + sorted(
        (out / "runs").glob(f"*/seed*/fold*/{RECORD_FILE}")
    ):
        records.append(json.loads(path.read_text()))
    return sorted(records, key=lambda r: (r["preset"], r["seed"], -1 if r["fold"] is None else r["fold"]))


def _posteriors(record: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    with open(Path(record["run_dir"]) / "predictions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    return [r[0] for r in rows[1:]], np.asarray([[float(v) for v in r[1:]] for r in rows[1:]])


def paired_runs(variant: list[dict[str, Any]], reference: list[dict[str, Any]]) -> list[PairedRun]:
    """The (seed, fold) pairs where both finished, posteriors aligned on the validation lesions."""
    from fusionkit.data import CLASS_NAMES

    ref = {(r["seed"], r["fold"]): r for r in reference}
    pairs = []
    for record in variant:
        other = ref.get((record["seed"], record["fold"]))
        if other is None:
            continue
        ids, probs = _posteriors(record)
        ref_ids, ref_probs = _posteriors(other)
        if ids != ref_ids:
            raise ValueError(f"{record['run_dir']} and {other['run_dir']} were validated on different lesions")
        labels = np.asarray([CLASS_NAMES.index(record["val_labels"][i]) for i in ids])
        pairs.append(PairedRun(labels=labels, variant=probs, reference=ref_probs))
    return pairs


def summarize(
    records: Sequence[dict[str, Any]], *, reference: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The summary.json mapping (see the module docstring) from run records."""
    records = sorted(records, key=lambda r: (r["preset"], r["seed"], -1 if r["fold"] is None else r["fold"]))
    ok: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "ok":
            ok.setdefault(r["preset"], []).append(r)
    variants: dict[str, Any] = {}
    for preset, runs in ok.items():
        entry: dict[str, Any] = {
            "n_runs": len(runs),
            "metrics": {k: mean_std_ci([r["metrics"][k] for r in runs]) for k in MACRO_KEYS},
            "vs_reference": None,
        }
        pairs = paired_runs(runs, ok.get(reference, []))
        if pairs:
            dice, dice_ci = paired_difference(pairs, "dice", n_boot=n_boot, seed=seed)
            auc, auc_ci = paired_difference(pairs, "auc", n_boot=n_boot, seed=seed)
            entry["vs_reference"] = {"dice_diff": dice, "dice_ci95": dice_ci, "auc_diff": auc, "auc_ci95": auc_ci}
        variants[preset] = entry
    keep = (
        "preset",
        "seed",
        "fold",
        "status",
        "reason",
        "run_dir",
        "seconds",
        "best_epoch",
        "samples_per_s",
        "peak_gpu_mem_gib",
        "device",
        "torch",
        "timm",
        "metrics",
    )
    return {"reference": reference, "variants": variants, "runs": [{k: r.get(k) for k in keep} for r in records]}


# -- rendering ----------------------------------------------------------------------------------------
def _cell(stat: dict[str, Any]) -> str:
    if stat["std"] is None:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _interval(value: float, ci: list[float]) -> str:
    return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def paper_table(summary: dict[str, Any], rows: Sequence[tuple[str, str]], first: str) -> str | None:
    """A table in the paper's row layout (mean ± std over runs), or None if a row's variant is missing."""
    variants = summary["variants"]
    if not all(p in variants for _, p in rows):
        return None
    body = [[label, *(_cell(variants[p]["metrics"][k]) for k in COLUMN_TITLES)] for label, p in rows]
    return _table([first, *COLUMN_TITLES.values()], body)


def summary_markdown(summary: dict[str, Any], *, figure: str | None = None) -> str:
    """summary.md: variants (mean ± std, 95% CI of Dice and AUC), paired differences, the paper's tables, runs."""
    ref = summary["reference"]
    variants = summary["variants"]
    lines = [
        "# fusionkit sweep summary",
        "",
        "Macro metrics over the 11 classes on each run's validation split (`fusionkit.metrics`): "
        "mean ± sample std over seeds (and folds), with the Student-t 95% interval of the mean for "
        "Dice and AUC.",
        "",
    ]
    rows = []
    for preset, v in variants.items():
        m = v["metrics"]
        ci = [f"[{m[k]['ci95'][0]:.3f}, {m[k]['ci95'][1]:.3f}]" if m[k]["ci95"] else "-" for k in ("dice", "auc")]
        rows.append([f"`{preset}`", str(v["n_runs"]), *(_cell(m[k]) for k in COLUMN_TITLES), *ci])
    lines += [_table(["Variant", "Runs", *COLUMN_TITLES.values(), "Dice 95% CI", "AUC 95% CI"], rows), ""]
    lines += [
        f"## Against the reference `{ref}`",
        "",
        "Paired difference (variant minus reference) on the same validation lesions, mean over "
        "seeds (folds), with the 95% paired-bootstrap interval over lesions.",
        "",
    ]
    rows = [
        [
            f"`{p}`",
            _interval(v["vs_reference"]["dice_diff"], v["vs_reference"]["dice_ci95"]),
            _interval(v["vs_reference"]["auc_diff"], v["vs_reference"]["auc_ci95"]),
        ]
        for p, v in variants.items()
        if v["vs_reference"] is not None and p != ref
    ]
    lines += [
        _table(["Variant", "Δ macro Dice [95% CI]", "Δ macro AUC [95% CI]"], rows) if rows else "No paired runs.",
        "",
    ]
    for title, layout, first in (
        ("Table 2 (modality configurations)", TABLE2_ROWS, "Config."),
        ("Table 3 (MMFA branches)", TABLE3_ROWS, "Fusion Variant"),
    ):
        table = paper_table(summary, layout, first)
        if table:
            lines += [f"## {title}", "", table, ""]
    if figure:
        lines += ["## Figure 3 layout", "", f"![Fusion variants, mean and std over runs]({figure})", ""]
    lines += ["## Runs", ""]
    rows = []
    for r in summary["runs"]:
        dice = f"{r['metrics']['dice']:.3f}" if r.get("metrics") else "-"
        mem = f"{r['peak_gpu_mem_gib']:.2f}" if r.get("peak_gpu_mem_gib") is not None else "-"
        sps = f"{r['samples_per_s']:.1f}" if r.get("samples_per_s") is not None else "-"
        secs = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-"
        rows.append(
            [
                f"`{r['preset']}`",
                str(r["seed"]),
                "-" if r["fold"] is None else str(r["fold"]),
                r["status"],
                secs,
                str(r.get("best_epoch") or "-"),
                sps,
                mem,
                str(r.get("device") or "-"),
                f"{r.get('torch') or '-'} / {r.get('timm') or '-'}",
                dice,
            ]
        )
    lines += [
        _table(
            [
                "Variant",
                "Seed",
                "Fold",
                "Status",
                "Seconds",
                "Best epoch",
                "Samples/s",
                "Peak GPU GiB",
                "Device",
                "torch / timm",
                "Dice",
            ],
            rows,
        ),
        "",
    ]
    failed = [r for r in summary["runs"] if r["status"] != "ok"]
    if failed:
        lines += (
            ["## Failed runs", ""]
            + [
                f"- `{r['preset']}` seed {r['seed']}"
                + ("" if r["fold"] is None else f" fold {r['fold']}")
                + f": {r['status']}: {r.get('reason') or 'no reason recorded'}"
                for r in failed
            ]
            + [""]
        )
    return "\n".join(lines)


def summary_csv(summary: dict[str, Any]) -> str:
    """summary.csv: one row per variant (mean, std, CI of each metric; the paired differences)."""
    header = ["preset", "n_runs"]
    for k in MACRO_KEYS:
        header += [f"{k}_mean", f"{k}_std", f"{k}_ci95_lo", f"{k}_ci95_hi"]
    header += [
        "dice_diff",
        "dice_diff_ci95_lo",
        "dice_diff_ci95_hi",
        "auc_diff",
        "auc_diff_ci95_lo",
        "auc_diff_ci95_hi",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for preset, v in summary["variants"].items():
        row: list[Any] = [preset, v["n_runs"]]
        for k in MACRO_KEYS:
            s = v["metrics"][k]
            row += [s["mean"], s["std"], *(s["ci95"] or [None, None])]
        vs = v["vs_reference"]
        row += [vs["dice_diff"], *vs["dice_ci95"], vs["auc_diff"], *vs["auc_ci95"]] if vs else [None] * 6
        writer.writerow(["" if x is None else x for x in row])
    return buffer.getvalue()


def plot_figure3(summary: dict[str, Any], path: Path, *, metrics: Sequence[str] = FIGURE3_METRICS) -> Path:
    """Grouped bars (one group per metric, one bar per variant, std error bars), as the paper's Figure 3.

    The Figure 3 variants in the paper's order when they ran, else every variant of the sweep.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = summary["variants"]
    paper = all(p in variants for _, p in FIGURE3_BARS)
    bars = list(FIGURE3_BARS) if paper else [(p, p) for p in variants]
    fig = Figure(figsize=(2.0 + 1.6 * len(metrics), 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(bars), 1)
    x = np.arange(len(metrics))
    for i, (label, preset) in enumerate(bars):
        stats = [variants[preset]["metrics"][k] for k in metrics]
        ax.bar(
            x + (i - (len(bars) - 1) / 2) * width,
            [s["mean"] for s in stats],
            width,
            yerr=[s["std"] or 0.0 for s in stats],
            capsize=2,
            label=label,
        )
    ax.set_xticks(x, [COLUMN_TITLES[k] for k in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("macro score (mean ± std over runs)")
    ax.set_title(
        "Fusion architecture ablation: multimetric comparison" if paper else "Variants: multimetric comparison"
    )
    ax.legend(fontsize=7, ncols=min(len(bars), 3), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_summary(
    out: Path, *, reference: str, records: Sequence[dict[str, Any]] | None = None, n_boot: int = 1000
) -> dict[str, Any]:
    """Write summary.json/csv/md and figure3.png into ``out``; returns the summary mapping."""
    records = collect_records(out) if records is None else list(records)
    summary = summarize(records, reference=reference, n_boot=n_boot)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "summary.csv", summary_csv(summary))
    figure = None
    if summary["variants"]:
        plot_figure3(summary, out / "figure3.png")
        figure = "figure3.png"
    atomic_write_text(out / "summary.md", summary_markdown(summary, figure=figure))
    return summary
