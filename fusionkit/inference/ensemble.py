"""Ensembles of runs (seeds, folds) and competition submissions: TTA, mean posterior, decision rule.

An ensemble is a list of :class:`~fusionkit.inference.pipeline.FusionPipeline`; its posterior is the
mean of its members' posteriors P_final (each member encodes the metadata and resizes the images
its own way, so fold runs with their own fitted statistics combine). Members must agree on the
number of classes and the metadata encoding's features. A directory that is not a run is searched
for runs under ``runs/**/`` (a sweep or k-fold output).

The decision rule is the one each run stored at the end of training (an ensemble averages its
members' thresholds), so predicting reads only the folder it predicts; ``refit=True`` fits the
thresholds again on the runs' validation lesions (reading the training folder).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionkit.data import find_split
from fusionkit.errors import ConfigError, FusionkitError
from fusionkit.inference.decision import (
    DEFAULT_DECISION,
    MIN_POSITIVES,
    DecisionRecord,
    average_decisions,
    check_decision,
    fit_decision,
)
from fusionkit.inference.outputs import OutputPair, writing_output
from fusionkit.inference.pipeline import FusionPipeline
from fusionkit.inference.submission import write_submission
from fusionkit.metrics.conformal import ConformalCalibration, calibrate_conformal, sets_path, write_prediction_sets
from fusionkit.runtime.predict import Predictions
from fusionkit.runtime.rundir import RunDir
from fusionkit.runtime.tta import check_tta

logger = logging.getLogger("fusionkit.inference")


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Models to predict with: each path itself when it is a run directory (``config.yaml``) or a
    saved pipeline folder (``config.json``), else the runs under ``runs/**/`` (a sweep or k-fold output)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if RunDir(path).config.is_file() or _is_saved_pipeline(path):
            found.append(path)
            continue
        inside = sorted(p.parent for p in (path / "runs").glob("**/config.yaml"))
        if not inside:
            raise ConfigError(
                f"{path}: neither a fusionkit run (no config.yaml), a saved pipeline (no config.json) "
                "nor a sweep (no runs/**/config.yaml)"
            )
        found += inside
    if not found:
        raise ConfigError("no runs given")
    return found


def _is_saved_pipeline(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def load_runs(
    paths: Iterable[str | Path], *, checkpoint: str = "best", device: str | None = None
) -> list[FusionPipeline]:
    """The pipelines of every run of :func:`find_runs`, checked that they can be averaged."""
    runs = [
        FusionPipeline.from_pretrained(p, device=device)
        if _is_saved_pipeline(p) and not RunDir(p).config.is_file()
        else FusionPipeline.from_run(p, checkpoint=checkpoint, device=device)
        for p in find_runs(paths)
    ]
    first = runs[0]
    for run in runs[1:]:
        if run.config.model.num_classes != first.config.model.num_classes:
            raise ConfigError(
                f"{run.origin}: {run.config.model.num_classes} classes, but {first.origin} has "
                f"{first.config.model.num_classes}; an ensemble needs one class list"
            )
        if _features(run) != _features(first):
            raise ConfigError(
                f"{run.origin}: its metadata encoding differs from {first.origin}'s; an ensemble needs one encoding"
            )
    return runs


def _features(run: FusionPipeline) -> tuple[str, ...]:
    return run.encoder.feature_names if run.encoder is not None else ()


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
    gate = [p.weights for p in parts if p.weights is not None]
    if len(gate) == len(parts):
        weights = np.mean(gate, axis=0)
    return Predictions(
        lesion_ids=list(first.lesion_ids),
        probs=probs,
        log_probs=np.log(np.maximum(probs, np.finfo(np.float32).tiny)),
        labels=first.labels,
        weights=weights,
        present=dict(first.present),
    )


def ensemble_predict(
    runs: Sequence[FusionPipeline],
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
            run.predict_dataset(
                run.dataset(data_root=data_root, split=split, lesion_ids=lesion_ids),
                tta=tta,
                progress=progress,
                desc=f"predict {run.origin.name}",
            )
            for run in runs
        ]
    )


def fit_ensemble_decision(
    runs: Sequence[FusionPipeline],
    *,
    rule: str = DEFAULT_DECISION,
    tta: str = "none",
    progress: bool = False,
    fallback_root: str | Path | None = None,
    min_positives: int = MIN_POSITIVES,
) -> DecisionRecord:
    """Fit the thresholds again on validation data the runs never trained on (reads the training folder).

    When every run has the same validation split (seeds), they are fitted on the ensemble's posterior
    over it; otherwise (folds) each run's thresholds are fitted on its own validation split and
    averaged. The validation lesions are read from the folder each run trained on, or from
    ``fallback_root`` where that folder is gone (a moved MILK10k copy).
    """

    def root(run: FusionPipeline) -> Path | None:
        return None if run.data_root.is_dir() or fallback_root is None else Path(fallback_root)

    names = runs[0].class_names
    parts = [r.predict_dataset(r.validation_dataset(data_root=root(r)), tta=tta, progress=progress) for r in runs]
    if all(r.split["val"] == runs[0].split["val"] for r in runs):
        preds = mean_predictions(parts)
        return fit_decision(preds.labels, preds.probs, names, rule=rule, min_positives=min_positives, tta=tta)
    return average_decisions(
        [fit_decision(p.labels, p.probs, names, rule=rule, min_positives=min_positives, tta=tta) for p in parts]
    )


def fit_ensemble_thresholds(runs: Sequence[FusionPipeline], **kwargs: Any) -> tuple[float, ...]:
    """The thresholds of :func:`fit_ensemble_decision`."""
    thresholds = fit_ensemble_decision(runs, **kwargs).thresholds
    assert thresholds is not None
    return thresholds


def ensemble_decision(
    runs: Sequence[FusionPipeline],
    rule: str,
    *,
    refit: bool = False,
    tta: str = "none",
    progress: bool = False,
    fallback_root: str | Path | None = None,
) -> tuple[DecisionRecord, str]:
    """The decision record an ensemble predicts with, and where it came from (``stored`` or ``refit``).

    The stored records (fitted at the end of training) are averaged; ``refit`` fits them again on
    the validation split, as does a ``thresholds`` rule for runs that stored none (trained before
    fusionkit stored them).
    """
    check_decision(rule)
    stored = [r.decision for r in runs]
    missing = [str(r.origin) for r in runs if r.decision.thresholds is None]
    if rule == "thresholds" and (refit or missing):
        if missing and not refit:
            logger.warning(
                "%s stores no thresholds (trained before fusionkit stored them): fitting them on its validation split",
                missing[0],
            )
        record = fit_ensemble_decision(runs, rule=rule, tta=tta, progress=progress, fallback_root=fallback_root)
        return record, "refit"
    if refit and rule != "thresholds":
        logger.info("--refit-thresholds has no effect with the %r rule", rule)
    base = average_decisions(stored) if not missing else stored[0]
    try:
        return base.with_rule(rule), "stored"
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def ensemble_conformal(
    runs: Sequence[FusionPipeline],
    *,
    alpha: float,
    method: str = "lac",
    class_conditional: bool = False,
    tta: str = "none",
    fallback_root: str | Path | None = None,
) -> tuple[ConformalCalibration, str]:
    """Split-conformal thresholds for the ensemble's mean posterior, calibrated on the validation
    split the runs share (:meth:`FusionPipeline.validation_posteriors`: stored at the end of
    training, so no training data is read without TTA). Returns ``(calibration, origin)``.

    Raises:
        ConfigError: a saved pipeline (no validation split), or runs with different validation
            splits (k folds: no lesion is held out from every member, so no set is calibrated).
    """
    saved = [str(r.origin) for r in runs if r.source is None]
    if saved:
        raise ConfigError(f"{saved[0]}: conformal sets need run directories (a saved pipeline has no validation split)")
    if any(r.split.get("val") != runs[0].split.get("val") for r in runs):
        raise ConfigError(
            "conformal sets for an ensemble need runs that share one validation split (seeds), not k folds"
        )

    def root(run: FusionPipeline) -> Path | None:
        return None if run.data_root.is_dir() or fallback_root is None else Path(fallback_root)

    parts = [r.validation_posteriors(tta=tta, data_root=root(r)) for r in runs]
    preds = mean_predictions([p for p, _ in parts])
    if preds.labels is None:
        raise ConfigError("conformal calibration needs a labelled validation split")
    try:
        calibration = calibrate_conformal(
            preds.probs,
            preds.labels,
            runs[0].class_names,
            alpha=alpha,
            method=method,  # type: ignore[arg-type]
            class_conditional=class_conditional,
        )
    except ValueError as exc:
        raise ConfigError(f"--conformal: {exc}") from None
    return calibration, parts[0][1]


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
    refit_thresholds: bool = False,
    progress: bool = True,
    conformal: float | None = None,
    conformal_method: str = "lac",
    class_conditional: bool = False,
) -> Path:
    """Predict a split with one run or an ensemble and write the submission CSV (official MILK10k format).

    ``tta`` averages dihedral views, ``decision`` is ``probs``, ``argmax`` or ``thresholds``
    (:mod:`fusionkit.inference.decision`), with the thresholds stored at the end of training
    (``refit_thresholds``: fitted again on the runs' validation split, which reads the training
    folder). Beside the CSV, ``<out>.json`` records the runs, TTA, decision rule, thresholds,
    what the CSV's values are and the SHA-256 of the files it describes; it is removed before the
    CSV is replaced and written last (:mod:`fusionkit.inference.outputs`), and a second process
    writing the same ``out`` is refused.

    ``conformal`` (a miscoverage level alpha, e.g. 0.1): also write split-conformal prediction
    sets beside the CSV (``sub.csv`` -> ``sub.sets.csv``, columns ``lesion_id,prediction_set``,
    class names joined by ``|``), calibrated with ``conformal_method`` (``lac`` or ``aps``,
    ``class_conditional`` for one threshold per class) on the runs' validation posteriors; the
    submission CSV itself is unchanged.
    """
    check_tta(tta)
    try:
        check_decision(decision)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if Path(out).is_dir():
        raise ConfigError(f"{out} is a directory; give a file name")
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    with writing_output(out, also=[sets_path(out)]) as pair:  # refuses a second writer of --out
        return _predict_split(
            run_dirs,
            pair=pair,
            data_root=data_root,
            split=split,
            checkpoint=checkpoint,
            tta=tta,
            decision=decision,
            refit_thresholds=refit_thresholds,
            progress=progress,
            conformal=conformal,
            conformal_method=conformal_method,
            class_conditional=class_conditional,
        )


def _predict_split(
    run_dirs: Sequence[str | Path],
    *,
    pair: OutputPair,
    data_root: str | Path,
    split: str,
    checkpoint: str,
    tta: str,
    decision: str,
    refit_thresholds: bool,
    progress: bool,
    conformal: float | None,
    conformal_method: str,
    class_conditional: bool,
) -> Path:
    out = pair.out
    runs = load_runs(run_dirs, checkpoint=checkpoint)
    split = _auto_split(Path(data_root), split)
    preds = ensemble_predict(runs, data_root=data_root, split=split, tta=tta, progress=progress)
    record, origin = ensemble_decision(
        runs, decision, refit=refit_thresholds, tta=tta, progress=progress, fallback_root=data_root
    )
    calibration = None
    if conformal is not None:
        if conformal_method not in ("lac", "aps"):
            raise ConfigError(f"--conformal-method {conformal_method!r}: expected lac or aps")
        calibration, calibrated_on = ensemble_conformal(
            runs,
            alpha=conformal,
            method=conformal_method,
            class_conditional=class_conditional,
            tta=tta,
            fallback_root=data_root,
        )
    pair.begin()
    path = write_submission(out, preds.lesion_ids, record.apply(preds.probs), record.class_names)
    written = [path]
    if calibration is not None:
        written.append(
            write_prediction_sets(
                sets_path(out), preds.lesion_ids, calibration.predict_sets(preds.probs), calibration.class_names
            )
        )
    state: dict[str, Any] = {
        "runs": [str(r.origin) for r in runs],
        "checkpoint": checkpoint,
        "data": str(data_root),
        "split": split,
        "tta": tta,
        "decision": decision,
        "values": record.describe(),
        "thresholds": None
        if decision != "thresholds" or record.thresholds is None
        else dict(zip(record.class_names, record.thresholds, strict=True)),
        "thresholds_from": origin if decision == "thresholds" else None,
        "fitted": None if decision != "thresholds" else record.to_dict().get("fitted"),
        "lesions": len(preds),
    }
    if calibration is not None:
        state["conformal"] = {
            "sets": str(sets_path(out)),
            **calibration.to_dict(),
            "calibrated_on": calibrated_on,
            "always_included": calibration.always_included,
        }
    pair.commit(state, files=written)  # last, with the files' SHA-256: never a sidecar of other files
    return path
