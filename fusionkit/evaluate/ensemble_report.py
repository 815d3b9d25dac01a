"""The evaluation report of an ensemble of runs (seeds, folds): Table 5 metrics of the mean posterior,
and the TTA and decision-rule table. Predicting goes through :mod:`fusionkit.inference.ensemble`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fusionkit.data import CLASS_NAMES
from fusionkit.errors import ConfigError, FusionkitError
from fusionkit.evaluate.decisions import decision_markdown, decision_rows
from fusionkit.evaluate.tables import table5_markdown, write_table5
from fusionkit.inference.ensemble import ensemble_predict, load_runs
from fusionkit.inference.tta import check_tta
from fusionkit.metrics import isic_metrics
from fusionkit.utils.io import atomic_write_text


def evaluate_ensemble(
    run_dirs: Sequence[str | Path],
    *,
    out: str | Path,
    data_root: str | Path | None = None,
    tta: str = "none",
    checkpoint: str = "best",
    progress: bool = False,
) -> Path:
    """Evaluate an ensemble on the validation split its runs share (or a labelled ``data_root``).

    Writes into ``out``: ``metrics.{md,csv,json}`` (Table 5 layout, the mean posterior with
    ``tta``), ``decision.json`` and ``report.md`` (macro Dice and AUC under each decision rule,
    with and without TTA; thresholds fitted on the shared validation split). Returns report.md.
    """

    try:
        check_tta(tta)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    runs = load_runs(run_dirs, checkpoint=checkpoint)
    val_ids = runs[0].split["val"]
    different = [str(r.run_dir) for r in runs if r.split["val"] != val_ids]
    if different:
        raise ConfigError(
            f"{different[0]}: its validation split differs from {runs[0].run_dir}'s; an ensemble is evaluated "
            "on the validation split its runs share (folds: use 'fusionkit predict' on held-out data)"
        )
    out = Path(out)
    modes = ("none",) if tta == "none" else ("none", tta)
    validation = {m: ensemble_predict(runs, lesion_ids=val_ids, tta=m, progress=progress) for m in modes}
    evaluated = (
        validation
        if data_root is None
        else {m: ensemble_predict(runs, data_root=data_root, tta=m, progress=progress) for m in modes}
    )
    preds = evaluated[tta]
    if preds.labels is None:
        raise FusionkitError(f"{data_root}: evaluation needs a labelled split (ground truth)")
    metrics = isic_metrics(preds.labels, preds.probs, CLASS_NAMES)
    write_table5(metrics, out, stem="metrics")
    rows = decision_rows(evaluated, validation)
    atomic_write_text(
        out / "decision.json", json.dumps({"runs": [str(r.run_dir) for r in runs], "rows": rows}, indent=2)
    )
    where = "their shared validation split" if data_root is None else f"`{data_root}`"
    report = "\n".join(
        [
            f"# fusionkit ensemble report ({len(runs)} runs)",
            "",
            "Runs: " + ", ".join(f"`{r.run_dir}`" for r in runs) + f". Evaluated on {where} ({len(preds)} lesions), "
            f"mean posterior, TTA `{tta}`.",
            "",
            f"**Macro Dice {metrics['macro']['dice']:.3f}**, macro AUC {metrics['macro']['auc']:.3f}.",
            "",
            "## Metrics (Table 5 layout)",
            "",
            table5_markdown(metrics),
            "",
            "## Test-time augmentation and decision rule",
            "",
            decision_markdown(rows),
            "",
        ]
    )
    path = out / "report.md"
    atomic_write_text(path, report)
    return path
