"""The evaluation report of an ensemble of runs (seeds, folds): Table 5 metrics of the mean posterior,
and the TTA and decision-rule table. Predicting goes through :mod:`fusionkit.inference.ensemble`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fusionkit.data import CLASS_NAMES
from fusionkit.errors import ConfigError, FusionkitError
from fusionkit.evaluate.rule_table import rule_table_markdown, rule_table_rows
from fusionkit.evaluate.scope import IN_SAMPLE_LABEL
from fusionkit.evaluate.tables import table5_markdown, write_table5
from fusionkit.inference.ensemble import ensemble_predict, load_runs
from fusionkit.metrics import isic_metrics
from fusionkit.runtime.rundir import RunDir
from fusionkit.runtime.tta import check_tta
from fusionkit.utils.io import atomic_write_text


def evaluate_ensemble(
    run_dirs: Sequence[str | Path],
    *,
    out: str | Path,
    data_root: str | Path | None = None,
    tta: str = "none",
    checkpoint: str = "best",
    progress: bool = False,
    allow_training_lesions: bool = False,
) -> Path:
    """Evaluate an ensemble on the held-out test part its runs share, else on the validation split
    they share (or on a labelled ``data_root``).

    Writes into ``out``: ``metrics.{md,csv,json}`` (Table 5 layout, the mean posterior with
    ``tta``), ``decision.json`` and ``report.md`` (macro Dice and AUC under each decision rule,
    with and without TTA; thresholds fitted on the shared validation split). Returns report.md.
    A ``data_root`` holding lesions any of the runs trained on is refused unless
    ``allow_training_lesions`` (the report is then labelled in-sample).
    """

    check_tta(tta)
    runs = load_runs(run_dirs, checkpoint=checkpoint)
    val_ids = runs[0].split["val"]
    different = [str(r.run_dir) for r in runs if r.split["val"] != val_ids]
    if different:
        raise ConfigError(
            f"{different[0]}: its validation split differs from {runs[0].run_dir}'s; an ensemble is evaluated "
            "on the validation split its runs share (folds: use 'fusionkit predict' on held-out data)"
        )
    out = Path(out)
    test_ids = runs[0].split.get("test") or []
    shared_test = bool(test_ids) and all((r.split.get("test") or []) == test_ids for r in runs)
    seen: list[str] = []
    if data_root is not None:
        trained = {x for r in runs for x in r.split.get("train", [])}
        folder = runs[0].dataset(data_root=data_root).lesion_ids
        seen = [x for x in folder if x in trained]
        if seen and not allow_training_lesions:
            raise ConfigError(
                f"{data_root}: {len(seen)} of its {len(folder)} lesions (e.g. {seen[0]}) are training lesions of the "
                'runs (their split.json lists them under "train"); pass --allow-training-lesions for a report '
                f"labelled {IN_SAMPLE_LABEL}"
            )
    modes = ("none",) if tta == "none" else ("none", tta)
    validation = {m: ensemble_predict(runs, lesion_ids=val_ids, tta=m, progress=progress) for m in modes}
    if data_root is not None:
        evaluated = {m: ensemble_predict(runs, data_root=data_root, tta=m, progress=progress) for m in modes}
    elif shared_test:
        evaluated = {m: ensemble_predict(runs, lesion_ids=test_ids, tta=m, progress=progress) for m in modes}
    else:
        evaluated = validation
    preds = evaluated[tta]
    if preds.labels is None:
        raise FusionkitError(f"{data_root}: evaluation needs a labelled split (ground truth)")
    metrics = isic_metrics(preds.labels, preds.probs, CLASS_NAMES)
    write_table5(metrics, out, stem="metrics")
    rows = rule_table_rows(evaluated, validation)
    atomic_write_text(
        out / "decision.json", json.dumps({"runs": [str(r.run_dir) for r in runs], "rows": rows}, indent=2)
    )
    if data_root is not None:
        where = f"`{data_root}`" + (f", **{IN_SAMPLE_LABEL}**: {len(seen)} of them trained on" if seen else "")
    elif shared_test:
        where = "their shared held-out **test part** (no checkpoint selection or threshold fitting saw it)"
    else:
        where = (
            "their shared **validation split**, which selected the checkpoints and fitted the thresholds "
            "(optimistic; set `data.test_fraction` for a held-out test part)"
        )
    report = "\n".join(
        [
            f"# fusionkit ensemble report ({len(runs)} runs)" + (f", {IN_SAMPLE_LABEL}" if seen else ""),
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
            rule_table_markdown(rows),
            "",
        ]
    )
    path = out / RunDir(out).report.name
    atomic_write_text(path, report)
    return path
