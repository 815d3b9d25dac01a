"""Ensembles of runs (seeds, folds) and competition submissions: TTA, mean posterior, decision rule.

An ensemble's posterior is the mean of its runs' posteriors P_final (each run encodes the metadata
and resizes the images its own way, so fold runs with their own fitted statistics combine). Runs
must agree on the number of classes and the metadata encoding's features. A directory that is not
a run is searched for runs under ``runs/**/`` (a sweep or k-fold output).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionkit.data import CLASS_NAMES, find_split
from fusionkit.errors import ConfigError, FusionkitError
from fusionkit.evaluate.inference import LoadedRun, load_run
from fusionkit.metrics.decision import apply_decision, check_decision, fit_thresholds
from fusionkit.metrics.submission import write_submission
from fusionkit.runtime.predict import Predictions
from fusionkit.runtime.rundir import RunFiles
from fusionkit.runtime.tta import check_tta
from fusionkit.utils.io import atomic_write_text

DEFAULT_DECISION = "thresholds"
"""The decision rule ``fusionkit predict`` uses unless told otherwise (see docs/how-to/best-model.md)."""


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories: each path itself when it holds ``config.yaml``, else the runs under ``runs/**/``."""
    found: list[Path] = []
    for path in map(Path, paths):
        if RunFiles(path).config.is_file():
            found.append(path)
            continue
        inside = sorted(p.parent for p in (path / "runs").glob("**/config.yaml"))
        if not inside:
            raise ConfigError(f"{path}: neither a fusionkit run (no config.yaml) nor a sweep (no runs/**/config.yaml)")
        found += inside
    if not found:
        raise ConfigError("no runs given")
    return found


def load_runs(paths: Iterable[str | Path], *, checkpoint: str = "best", device: str | None = None) -> list[LoadedRun]:
    """Load every run of :func:`find_runs` and check that they can be averaged."""
    runs = [load_run(p, checkpoint=checkpoint, device=device) for p in find_runs(paths)]
    first = runs[0]
    for run in runs[1:]:
        if run.config.model.num_classes != first.config.model.num_classes:
            raise ConfigError(
                f"{run.run_dir}: {run.config.model.num_classes} classes, but {first.run_dir} has "
                f"{first.config.model.num_classes}; an ensemble needs one class list"
            )
        if run.encoder.feature_names != first.encoder.feature_names:
            raise ConfigError(
                f"{run.run_dir}: its metadata encoding differs from {first.run_dir}'s; an ensemble needs one encoding"
            )
    return runs


def mean_predictions(parts: Sequence[Predictions]) -> Predictions:
    """The mean posterior (and fusion weights, where every part has them) of predictions of the same lesions."""
    first = parts[0]
    for p in parts[1:]:
        if p.lesion_ids != first.lesion_ids:
            raise FusionkitError("ensemble members predicted different lesions")
    if len(parts) == 1:
        return first
    probs = np.mean([p.probs for p in parts], axis=0)
    weights = None
    if all(p.weights is not None for p in parts):
        weights = np.mean([p.weights for p in parts], axis=0)
    return Predictions(
        lesion_ids=list(first.lesion_ids),
        probs=probs,
        log_probs=np.log(np.maximum(probs, np.finfo(np.float32).tiny)),
        labels=first.labels,
        weights=weights,
        present=dict(first.present),
    )


def ensemble_predict(
    runs: Sequence[LoadedRun],
    *,
    data_root: str | Path | None = None,
    split: str = "Training",
    lesion_ids: Sequence[str] | None = None,
    tta: str = "none",
    progress: bool = False,
) -> Predictions:
    """The ensemble's mean posterior over ``split`` of ``data_root`` (default: each run's own data)."""
    check_tta(tta)
    return mean_predictions(
        [
            run.predict(
                run.dataset(data_root=data_root, split=split, lesion_ids=lesion_ids),
                tta=tta,
                progress=progress,
                desc=f"predict {run.run_dir.name}",
            )
            for run in runs
        ]
    )


def fit_ensemble_thresholds(
    runs: Sequence[LoadedRun], *, tta: str = "none", progress: bool = False, fallback_root: str | Path | None = None
) -> tuple[float, ...]:
    """Per-class thresholds of the ``thresholds`` rule, fitted on validation data the runs never trained on.

    When every run has the same validation split (seeds), they are fitted on the ensemble's posterior
    over it; otherwise (folds) each run's thresholds are fitted on its own validation split and
    averaged. The validation lesions are read from the folder each run trained on, or from
    ``fallback_root`` where that folder is gone (a moved MILK10k copy).
    """

    def root(run: LoadedRun) -> Path | None:
        return None if run.data_root.is_dir() or fallback_root is None else Path(fallback_root)

    parts = [
        r.predict(r.dataset(data_root=root(r), lesion_ids=r.split["val"]), tta=tta, progress=progress) for r in runs
    ]
    if all(r.split["val"] == runs[0].split["val"] for r in runs):
        preds = mean_predictions(parts)
        return fit_thresholds(preds.labels, preds.probs)
    fitted = [fit_thresholds(p.labels, p.probs) for p in parts]
    return tuple(float(t) for t in np.mean(fitted, axis=0))


def _auto_split(root: Path, split: str) -> str:
    """``auto`` is the Test split; never a silent fall-back to Training (a submission of the wrong lesions)."""
    if split != "auto":
        return split
    try:
        find_split(root, "Test")
    except FusionkitError as exc:
        raise ConfigError(
            f"--split auto predicts the Test split, but {exc}; pass --split Training to predict the training lesions"
        ) from exc
    return "Test"


def predict_split(
    run_dirs: str | Path | Sequence[str | Path],
    *,
    data_root: str | Path,
    out: str | Path,
    split: str = "auto",
    checkpoint: str = "best",
    tta: str = "none",
    decision: str = DEFAULT_DECISION,
    progress: bool = True,
) -> Path:
    """Predict a split with one run or an ensemble and write the submission CSV (official MILK10k format).

    ``tta`` averages dihedral views, ``decision`` is ``probs``, ``argmax`` or ``thresholds``
    (:mod:`fusionkit.metrics.decision`). Beside the CSV, ``<out>.json`` records the runs, TTA,
    decision rule and thresholds that produced it.
    """
    try:
        check_tta(tta)
        check_decision(decision)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if Path(out).is_dir():
        raise ConfigError(f"{out} is a directory; give a file name")
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    runs = load_runs(run_dirs, checkpoint=checkpoint)
    split = _auto_split(Path(data_root), split)
    preds = ensemble_predict(runs, data_root=data_root, split=split, tta=tta, progress=progress)
    thresholds = (
        fit_ensemble_thresholds(runs, tta=tta, progress=progress, fallback_root=data_root)
        if decision == "thresholds"
        else None
    )
    values = apply_decision(preds.probs, decision, thresholds=thresholds)
    path = write_submission(out, preds.lesion_ids, values, CLASS_NAMES)
    record: dict[str, Any] = {
        "runs": [str(r.run_dir) for r in runs],
        "checkpoint": checkpoint,
        "data": str(data_root),
        "split": split,
        "tta": tta,
        "decision": decision,
        "thresholds": None if thresholds is None else dict(zip(CLASS_NAMES, thresholds, strict=True)),
        "lesions": len(preds),
    }
    atomic_write_text(Path(out).with_suffix(".json"), json.dumps(record, indent=2))
    return path


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
    from fusionkit.evaluate.decisions import decision_markdown, decision_rows
    from fusionkit.evaluate.tables import table5_markdown, write_table5
    from fusionkit.metrics import isic_metrics

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
