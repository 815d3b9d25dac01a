"""The sweep's summary: ``summary.json`` / ``summary.csv`` / ``summary.md``, ``figure3.png``, and
Table 2 / Table 3 in the paper's row layout, rebuilt from the run records on disk.

``summary.json``::

    {"reference": str, "reported_split": "test"|"validation"|"test and validation", "warnings": [str],
     "variants": {preset: {"n_runs": int,
        "interval": {"n_runs": int, "n_seeds": int, "covers": "runs and lesions"|"lesions"},
        "metrics": {"dice"|"auc"|"ppv"|"accuracy"|"sensitivity"|"specificity":
                    {"mean": float, "std": float|null, "ci95": [lo, hi]}},
        "vs_reference": {"n_runs", "n_seeds", "covers", "ratio",
                         "dice_diff", "dice_ci95", "dice_p", "dice_p_holm", "dice_mde",
                         "auc_diff", "auc_ci95", "auc_p", "auc_p_holm", "auc_mde",
                         "auc_delong": [{"seed", "fold", "diff", "z", "p"}]} | null,
        "robustness": {"n_runs", "mean_relative_drop": {modality: float}, "mce": float|null}
                      (only with ``sweep --robustness``, :mod:`fusionkit.sweep.robustness`)}},
     "runs": [{"preset", "seed", "fold", "status", "run_dir", "seconds", "metrics", ...}]}

``std`` is null for a variant with one finished run; ``ci95`` is the two-level bootstrap interval
(:mod:`fusionkit.sweep.stats`: seeds, folds and lesions within classes resampled; lesions only with
one run, ``covers`` says which). ``vs_reference`` is null for the reference itself and when no seed
(fold) has both the variant and the reference finished; its ``*_p`` is the Nadeau-Bengio corrected t-test over the runs
(``ratio`` = test/train lesions), ``*_p_holm`` that p adjusted by Holm over the variants compared with
the reference, ``*_mde`` the smallest difference the test detects with 80% power given the runs'
spread (null with one run, and the Holm and detectable figures null without statsmodels, which
``warnings`` then says); ``auc_delong`` is DeLong's test of the macro AUC difference on each run's
lesions. ``warnings`` also names the scored splits too small to say much
(:data:`~fusionkit.sweep.stats.MIN_CLASS_LESIONS`).

Every number is computed on each run's *reported* split (the record's ``reported_split``): its
held-out test part when the runs hold one out (``data.test_fraction`` or a split file's ``"test"``),
which no checkpoint selection, threshold or early stopping saw; else the validation split that
selected the checkpoint, which ``reported_split`` and ``summary.md`` then say.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionkit.runtime.rundir import RunDir
from fusionkit.sweep.execute import MACRO_KEYS, RECORD_FILE
from fusionkit.sweep.plan import FIGURE3_BARS, TABLE2_ROWS, TABLE3_ROWS
from fusionkit.sweep.robustness import robustness_summary
from fusionkit.sweep.significance import (
    STATSMODELS_MISSING,
    corrected_ttest,
    delong_macro_auc,
    holm,
    minimum_detectable_effect,
    split_ratio,
    statsmodels_available,
)
from fusionkit.sweep.stats import (
    MIN_CLASS_LESIONS,
    PairedRun,
    ScoredRun,
    metric_intervals,
    paired_difference,
    small_classes,
)
from fusionkit.utils.io import atomic_write_bytes, atomic_write_text
from fusionkit.utils.tables import markdown_table

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


def reported_labels(record: dict[str, Any]) -> dict[str, str]:
    """The class name of each lesion a run's metrics and posteriors are computed on: its test part's
    when the record's ``reported_split`` is ``test``, else its validation split's."""
    return record["test_labels"] if record.get("reported_split") == "test" else record["val_labels"]


def reported_split(records: Sequence[dict[str, Any]]) -> str:
    """``test``, ``validation`` or ``test and validation``: the splits the finished runs report."""
    found = sorted({r.get("reported_split", "validation") for r in records if r["status"] == "ok"})
    return " and ".join(found) if found else "validation"


def _labels(record: dict[str, Any], ids: list[str]) -> np.ndarray:
    from fusionkit.data import CLASS_NAMES

    label_of = reported_labels(record)
    return np.asarray([CLASS_NAMES.index(label_of[i]) for i in ids])


def _n_train(record: dict[str, Any]) -> int | None:
    path = RunDir(record["run_dir"]).split
    return len(json.loads(path.read_text())["train"]) if path.is_file() else None


def scored_runs(runs: list[dict[str, Any]]) -> list[ScoredRun]:
    """A variant's finished runs as posteriors on their validation lesions."""
    out = []
    for record in runs:
        ids, probs = _posteriors(record)
        out.append(ScoredRun(labels=_labels(record, ids), probs=probs, seed=record["seed"], fold=record["fold"]))
    return out


def paired_runs(variant: list[dict[str, Any]], reference: list[dict[str, Any]]) -> list[PairedRun]:
    """The (seed, fold) pairs where both finished, posteriors aligned on the validation lesions."""
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
        pairs.append(
            PairedRun(
                labels=_labels(record, ids),
                variant=probs,
                reference=ref_probs,
                seed=record["seed"],
                fold=record["fold"],
                n_train=_n_train(record),
            )
        )
    return pairs


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    x = np.asarray(values, dtype=float)
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def _run_name(seed: Any, fold: Any) -> str:
    return f"seed {seed}" + ("" if fold is None else f" fold {fold}")


def _vs_reference(pairs: list[PairedRun], *, n_boot: int, seed: int, with_statsmodels: bool) -> dict[str, Any]:
    """The paired comparison of one variant (before Holm, which needs every variant's p)."""
    ratio = split_ratio([len(p.labels) for p in pairs], [p.n_train for p in pairs])
    entry: dict[str, Any] = {}
    for metric in ("dice", "auc"):
        diff = paired_difference(pairs, metric, n_boot=n_boot, seed=seed)
        entry.update(n_runs=diff.n_runs, n_seeds=diff.n_seeds, covers=diff.covers, ratio=ratio)
        entry[f"{metric}_diff"] = diff.estimate
        entry[f"{metric}_ci95"] = diff.interval
        entry[f"{metric}_p"] = entry[f"{metric}_p_holm"] = entry[f"{metric}_mde"] = None
        if diff.n_runs > 1:
            entry[f"{metric}_p"] = corrected_ttest(diff.run_differences, ratio=ratio).p
            if with_statsmodels:
                spread = float(np.std(diff.run_differences, ddof=1))
                entry[f"{metric}_mde"] = minimum_detectable_effect(spread, diff.n_runs, ratio=ratio)
    entry["auc_delong"] = []
    for p in pairs:
        try:
            test = delong_macro_auc(p.labels, p.variant, p.reference)
        except ValueError:  # no class with positives and negatives: no AUC to compare
            continue
        entry["auc_delong"].append({"seed": p.seed, "fold": p.fold, "diff": test.difference, "z": test.z, "p": test.p})
    return entry


def _split_warnings(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per reported split (test part or validation) with a class under :data:`MIN_CLASS_LESIONS` lesions."""
    from fusionkit.data import CLASS_NAMES

    seen: dict[tuple[Any, Any], list[str]] = {}
    for r in records:
        if r["status"] != "ok" or (r["seed"], r["fold"]) in seen or not r.get("val_labels"):
            continue
        labels = np.asarray([CLASS_NAMES.index(c) for c in reported_labels(r).values()])
        counts = small_classes(labels, len(CLASS_NAMES))
        seen[(r["seed"], r["fold"])] = [f"{CLASS_NAMES[c]} {n}" for c, n in counts.items()]
    same: dict[tuple[str, ...], list[str]] = {}  # runs whose splits fall short on the same classes
    for key, short in sorted(seen.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
        if short:
            same.setdefault(tuple(short), []).append(_run_name(*key))
    return [
        f"{', '.join(runs).capitalize()}: the {_split_name(reported_split(records))} has fewer than "
        f"{MIN_CLASS_LESIONS} lesions of "
        f"{len(short)} class(es) ({', '.join(short)}); their per-class scores, and so the macro scores and "
        "intervals, rest on too few lesions to say much."
        for short, runs in same.items()
    ]


def summarize(
    records: Sequence[dict[str, Any]], *, reference: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The summary.json mapping (see the module docstring) from run records."""
    records = sorted(records, key=lambda r: (r["preset"], r["seed"], -1 if r["fold"] is None else r["fold"]))
    with_statsmodels = statsmodels_available()
    ok: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "ok":
            ok.setdefault(r["preset"], []).append(r)
    variants: dict[str, Any] = {}
    for preset, runs in ok.items():
        intervals = metric_intervals(scored_runs(runs), n_boot=n_boot, seed=seed)
        metrics = {}
        for k in MACRO_KEYS:
            mean, std = _mean_std([r["metrics"][k] for r in runs])
            metrics[k] = {"mean": mean, "std": std, "ci95": intervals.interval[k]}
        entry: dict[str, Any] = {
            "n_runs": len(runs),
            "interval": {"n_runs": intervals.n_runs, "n_seeds": intervals.n_seeds, "covers": intervals.covers},
            "metrics": metrics,
            "vs_reference": None,
        }
        pairs = paired_runs(runs, ok.get(reference, []))
        if pairs and preset != reference:
            entry["vs_reference"] = _vs_reference(pairs, n_boot=n_boot, seed=seed, with_statsmodels=with_statsmodels)
        variants[preset] = entry
    if with_statsmodels:
        for metric in ("dice", "auc"):
            tested = [
                v["vs_reference"]
                for p, v in variants.items()
                if p != reference and v["vs_reference"] and v["vs_reference"][f"{metric}_p"] is not None
            ]
            for vs, adjusted in zip(tested, holm([vs[f"{metric}_p"] for vs in tested]), strict=True):
                vs[f"{metric}_p_holm"] = adjusted
    warnings = _split_warnings(records)
    if not with_statsmodels:
        warnings.append(STATSMODELS_MISSING + ".")
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
        "reported_split",
    )
    for preset, entry in robustness_summary(records).items():
        if preset in variants:
            variants[preset]["robustness"] = entry
    return {
        "reference": reference,
        "reported_split": reported_split(records),
        "warnings": warnings,
        "variants": variants,
        "runs": [{k: r.get(k) for k in keep} for r in records],
    }


# -- rendering ----------------------------------------------------------------------------------------
def _cell(stat: dict[str, Any]) -> str:
    if stat["std"] is None:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _interval(value: float, ci: list[float]) -> str:
    return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(markdown_table(header, rows, align="l" + "r" * (len(header) - 1)))


def paper_table(summary: dict[str, Any], rows: Sequence[tuple[str, str]], first: str) -> str | None:
    """A table in the paper's row layout (mean ± std over runs), or None if a row's variant is missing."""
    variants = summary["variants"]
    if not all(p in variants for _, p in rows):
        return None
    body = [[label, *(_cell(variants[p]["metrics"][k]) for k in COLUMN_TITLES)] for label, p in rows]
    return _table([first, *COLUMN_TITLES.values()], body)


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _runs_phrase(n_runs: int, n_seeds: int) -> str:
    runs = f"{n_runs} run" + ("" if n_runs == 1 else "s")
    return runs if n_runs == n_seeds else f"{runs} ({n_seeds} seed{'' if n_seeds == 1 else 's'} x folds)"


def interval_sentences(summary: dict[str, Any]) -> list[str]:
    """The plain-language lines under the tables: what each interval and test covers."""
    variants = summary["variants"]
    counts = sorted({v["interval"]["n_runs"] for v in variants.values()})
    one_run = counts == [1]
    lines = [
        "How to read the intervals:",
        "",
        "- **95% CI of a variant** (Dice, AUC and the other columns in `summary.csv`): the range in "
        "which the variant's average score would likely fall if the whole experiment were repeated, "
        "retraining the model with new seeds (and folds) and scoring a new set of patients like these; "
        "it resamples the runs and, within each run, the validation lesions class by class "
        "(two-level bootstrap), so it never leaves the score's 0-1 range.",
        "- **Δ [95% CI] against the reference**: the same for the difference between the variant and "
        "the reference scored on the same lesions; if the interval includes 0, the sweep cannot tell "
        "the two apart.",
        "- **p (Holm)**: how surprising the difference would be if the two were really equal, from the "
        "Nadeau-Bengio corrected t-test over the runs (corrected because runs share training lesions), "
        "raised by Holm's method because several variants are compared with the same reference; "
        "the raw p is in brackets.",
        "- **Detectable**: the smallest true difference this sweep would find 4 times out of 5 (80% power, "
        "two-sided 5% level) given how much the runs disagree; a non-significant difference smaller than "
        "this means too few runs, not equal models.",
        "- **DeLong p per run**: for AUC, a test on each run's validation lesions alone (both models "
        "scored on the same lesions); it covers which patients were sampled, not retraining.",
        "",
    ]
    if one_run:
        lines += [
            "With one run per variant, every interval covers test-set sampling only (which patients happen "
            "to be in the validation split), not the variation from retraining; the t-test and the "
            "detectable effect need at least two runs.",
            "",
        ]
    else:
        lines += [
            "Intervals rest on " + ", ".join(str(c) for c in counts) + " run(s) per variant (the Runs "
            "column); a variant with one run has an interval over test-set sampling only. With fewer than "
            "about 10 runs the bootstrap sees no more spread than the runs happened to show, so its interval can "
            "be too narrow: when it excludes 0 but the corrected test's p is above 0.05, trust the p and add seeds.",
            "",
        ]
    return lines


def _split_name(split: str) -> str:
    return {"test": "held-out test part", "validation": "validation split"}.get(split, "test part or validation split")


def _split_sentence(split: str) -> str:
    """What the sweep's numbers are computed on, in a sentence."""
    if split == "test":
        return (
            "**Reported on each run's held-out test part**: lesions that no checkpoint selection, threshold "
            "fitting or early stopping saw."
        )
    if split == "validation":
        return (
            "**Reported on the validation split**, the lesions that selected each run's checkpoint, so the "
            "numbers are optimistic; set `data.test_fraction` to hold out a test part that no selection sees."
        )
    return (
        "**Mixed**: some runs report a held-out test part, others the validation split that selected their "
        "checkpoint; the numbers are not comparable across them."
    )


def summary_markdown(summary: dict[str, Any], *, figure: str | None = None) -> str:
    """summary.md: variants (mean ± std, 95% intervals), paired differences and tests, the paper's tables, runs."""
    ref = summary["reference"]
    variants = summary["variants"]
    lines = [
        "# fusionkit sweep summary",
        "",
        f"Macro metrics over the 11 classes on each run's {_split_name(summary.get('reported_split', 'validation'))} "
        "(`fusionkit.metrics`): mean ± sample std over seeds (and folds), with the 95% two-level bootstrap "
        "interval of the mean for Dice and AUC (explained below the tables).",
        "",
        _split_sentence(summary.get("reported_split", "validation")),
        "",
    ]
    for warning in summary.get("warnings", []):
        lines += [f"> **Warning:** {warning}", ""]
    rows = []
    for preset, v in variants.items():
        m = v["metrics"]
        ci = [f"[{m[k]['ci95'][0]:.3f}, {m[k]['ci95'][1]:.3f}]" for k in ("dice", "auc")]
        runs = _runs_phrase(v["interval"]["n_runs"], v["interval"]["n_seeds"])
        rows.append([f"`{preset}`", runs, *(_cell(m[k]) for k in COLUMN_TITLES), *ci])
    lines += [_table(["Variant", "Runs", *COLUMN_TITLES.values(), "Dice 95% CI", "AUC 95% CI"], rows), ""]
    lines += _robustness_lines(variants, ref)
    compared = {p: v["vs_reference"] for p, v in variants.items() if v["vs_reference"] is not None and p != ref}
    lines += [
        f"## Against the reference `{ref}`",
        "",
        f"Paired difference (variant minus reference) on the same {_split_name(summary.get('reported_split', 'validation'))} "
        "lesions, mean over "
        "seeds (folds), with the 95% two-level bootstrap interval (runs and lesions resampled), the "
        f"corrected t-test's p-value Holm-adjusted over the {len(compared)} variant(s) of this table, "
        "and the smallest difference the runs could detect.",
        "",
    ]
    rows = []
    for p, vs in compared.items():
        row = [f"`{p}`", _runs_phrase(vs["n_runs"], vs["n_seeds"])]
        for metric in ("dice", "auc"):
            lo, hi = vs[f"{metric}_ci95"]
            disagree = vs[f"{metric}_p"] is not None and vs[f"{metric}_p"] >= 0.05 and (lo > 0 or hi < 0)
            row += [
                _interval(vs[f"{metric}_diff"], vs[f"{metric}_ci95"]) + (" †" if disagree else ""),
                "-" if vs[f"{metric}_p"] is None else f"{_p(vs[f'{metric}_p_holm'])} ({_p(vs[f'{metric}_p'])})",
                "-" if vs[f"{metric}_mde"] is None else f"{vs[f'{metric}_mde']:.3f}",
            ]
        row.append(", ".join(_p(d["p"]) for d in vs["auc_delong"]) or "-")
        rows.append(row)
    header = [
        "Variant",
        "Runs",
        "Δ macro Dice [95% CI]",
        "Dice p Holm (raw)",
        "Dice detectable",
        "Δ macro AUC [95% CI]",
        "AUC p Holm (raw)",
        "AUC detectable",
        "AUC DeLong p per run",
    ]
    lines += [_table(header, rows) if rows else "No paired runs.", ""]
    if any("†" in cell for row in rows for cell in row):
        lines += [
            "† The interval excludes 0 but the corrected t-test does not find the difference (raw p >= 0.05): "
            "too few runs to call it.",
            "",
        ]
    lines += interval_sentences(summary) if variants else []
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


def _robustness_lines(variants: dict[str, Any], reference: str) -> list[str]:
    """The robustness table (``sweep --robustness``): mean relative Dice drop per corrupted modality."""
    scored = {p: v["robustness"] for p, v in variants.items() if v.get("robustness")}
    if not scored:
        return []
    modalities = list(dict.fromkeys(m for r in scored.values() for m in r["mean_relative_drop"]))

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [
        [f"`{p}`", str(r["n_runs"]), *(number(r["mean_relative_drop"].get(m)) for m in modalities), number(r["mce"])]
        for p, r in scored.items()
    ]
    header = ["Variant", "Runs", *(f"drop, {m} corrupted" for m in modalities), f"mCE vs `{reference}`"]
    return [
        "## Robustness per modality",
        "",
        "Mean relative macro-Dice drop, (clean - corrupted) / clean, over the graded corruptions and severities "
        "of one modality at a time on each run's validation split (`robustness.json` in each run; lower is more "
        f"robust), averaged over runs; mCE (ImageNet-C) against the `{reference}` run of the same seed (below 1: "
        "more robust than the reference).",
        "",
        _table(header, rows),
        "",
    ]


def summary_csv(summary: dict[str, Any]) -> str:
    """summary.csv: one row per variant (mean, std, interval of each metric; the paired comparison)."""
    header = ["preset", "n_runs", "covers"]
    for k in MACRO_KEYS:
        header += [f"{k}_mean", f"{k}_std", f"{k}_ci95_lo", f"{k}_ci95_hi"]
    paired = []
    for metric in ("dice", "auc"):
        paired += [f"{metric}_diff", f"{metric}_diff_ci95_lo", f"{metric}_diff_ci95_hi"]
        paired += [f"{metric}_p", f"{metric}_p_holm", f"{metric}_mde"]
    header += paired
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for preset, v in summary["variants"].items():
        row: list[Any] = [preset, v["n_runs"], v["interval"]["covers"]]
        for k in MACRO_KEYS:
            s = v["metrics"][k]
            row += [s["mean"], s["std"], *s["ci95"]]
        vs = v["vs_reference"]
        if vs is None:
            row += [None] * len(paired)
        else:
            for metric in ("dice", "auc"):
                row += [vs[f"{metric}_diff"], *vs[f"{metric}_ci95"]]
                row += [vs[f"{metric}_p"], vs[f"{metric}_p_holm"], vs[f"{metric}_mde"]]
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
