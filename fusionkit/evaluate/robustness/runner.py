"""Run a predictor under every corruption and score it: :func:`robustness_table` and the mCE.

The seam is ``predict_fn(perturbation) -> posteriors``: given ``None`` it returns the clean
posteriors ``(n, k)``; given a :class:`~fusionkit.evaluate.robustness.catalog.Perturbation` it
returns the posteriors of the same lesions, in the same order, with that perturbation applied
(see the catalog module for what that means). :func:`array_predictor` builds one from images and
records held in memory and a function of the model; a trained run binds the same seam to its own
data loading.

Every result is scored with :func:`~fusionkit.metrics.isic.isic_metrics` (macro values), with a
percentile bootstrap 95 % interval of the macro Dice and the relative drop of the macro Dice
against the clean posteriors, ``(clean - corrupted) / clean``. The bootstrap resamples (lesions
drawn within each class, :func:`~fusionkit.metrics.bootstrap.resample_weights`) are the same for
the clean set and every corruption, so they are paired: each resample also gives every modality's
mean relative drop, whose percentile interval and the share of resamples in which that modality's
drop is the largest say, with their uncertainty, which modality's corruption hurts most.

Mean corruption error (ImageNet-C, Hendrycks and Dietterich 2019): with the error
``E = 1 - metric`` (macro Dice by default), the corruption error of corruption ``c`` on modality
``m`` is ``CE = sum_s E(m, c, s) / sum_s E_ref(m, c, s)`` over the severities both tables hold,
normalised by a reference (baseline) run's table of the same corruptions; the mCE of a modality is
the mean CE over its corruptions, and the overall mCE the mean over all (modality, corruption)
pairs. The relative CE uses ``E - E_clean`` in numerator and denominator instead. The whole-modality
``"absent"`` entry has no severities and is left out of the mCE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fusionkit.data.schema import MODALITIES
from fusionkit.data.tables import LesionRecord
from fusionkit.errors import ConfigError
from fusionkit.evaluate.robustness.catalog import ABSENT, CORRUPTIONS, SEVERITIES, Perturbation, corruptions_for
from fusionkit.metrics.bootstrap import resample_weights, weighted_macro_metrics
from fusionkit.metrics.isic import check_class_names, check_probs, isic_metrics, truth_matrix

__all__ = [
    "HEADLINE_METRICS",
    "ModelFn",
    "PredictFn",
    "RobustnessTable",
    "array_predictor",
    "mean_corruption_error",
    "robustness_table",
]

#: What a predictor is: ``None`` (clean) or a perturbation -> posteriors ``(n, k)``.
PredictFn = Callable[[Perturbation | None], Any]
#: What :func:`array_predictor` wraps: ``(derm, clinical, records, absent) -> posteriors``.
ModelFn = Callable[[Sequence[Any], Sequence[Any], Sequence[LesionRecord], tuple[str, ...]], Any]

#: Macro metrics kept for every result (keys of ``isic_metrics(...)["macro"]``).
HEADLINE_METRICS: tuple[str, ...] = ("dice", "auc", "accuracy", "multiclass_accuracy", "balanced_accuracy")


@dataclass(frozen=True, kw_only=True)
class RobustnessTable:
    """The scores of one model under every corruption (the content of ``robustness.json``).

    Attributes:
        baseline: macro metrics on the clean inputs (``{"dice": ..., "auc": ..., ...}``).
        baseline_dice_ci95: bootstrap 95 % interval of the clean macro Dice.
        results: one dict per (modality, corruption, severity): ``modality``, ``corruption``,
            ``family``, ``severity`` (``None`` for ``"absent"``), ``metrics``, ``dice_ci95``,
            ``relative_drop``.
        seed: the corruption and bootstrap seed.
        n_lesions: lesions scored.
        class_names: the class names.
        mce: the mean corruption error against a reference table (:func:`mean_corruption_error`),
            or ``None`` when no reference was given.
        drop_intervals: per modality, ``{"mean_relative_drop_ci95": [lo, hi],
            "absent_relative_drop_ci95": [lo, hi], "hurts_most_share": float}`` from the paired
            bootstrap (module docstring); ``hurts_most_share`` is the share of resamples in which
            this modality's mean relative drop over its graded corruptions is the largest of the
            modalities scored. Empty for a table read from a file written before they existed.
    """

    baseline: dict[str, float]
    baseline_dice_ci95: tuple[float, float]
    results: tuple[dict[str, Any], ...]
    seed: int
    n_lesions: int
    class_names: tuple[str, ...]
    mce: dict[str, Any] | None = None
    drop_intervals: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def result(self, modality: str, corruption: str, severity: int | None) -> dict[str, Any]:
        """The result of one (modality, corruption, severity); KeyError if the table lacks it."""
        for row in self.results:
            if (row["modality"], row["corruption"], row["severity"]) == (modality, corruption, severity):
                return row
        raise KeyError(f"no result for {modality}/{corruption}@{severity}")

    def summary(self, metric: str = "dice") -> dict[str, dict[str, Any]]:
        """Per modality: the mean ``metric`` and mean relative Dice drop over its graded
        corruptions (``"absent"`` left out), the worst graded result, the ``"absent"`` value, and
        the bootstrap intervals of :attr:`drop_intervals` when the table has them."""
        out: dict[str, dict[str, Any]] = {}
        for modality in dict.fromkeys(row["modality"] for row in self.results):
            rows = [r for r in self.results if r["modality"] == modality and r["corruption"] != ABSENT]
            absent = [r for r in self.results if r["modality"] == modality and r["corruption"] == ABSENT]
            entry: dict[str, Any] = {
                f"mean_{metric}": _nanmean([r["metrics"][metric] for r in rows]),
                "mean_relative_drop": _nanmean([r["relative_drop"] for r in rows]),
            }
            if rows:
                worst = min(rows, key=lambda r: _sort_key(r["metrics"][metric]))
                entry["worst"] = {k: worst[k] for k in ("corruption", "severity")} | {metric: worst["metrics"][metric]}
            if absent:
                entry[f"absent_{metric}"] = absent[0]["metrics"][metric]
                entry["absent_relative_drop"] = absent[0]["relative_drop"]
            entry.update(self.drop_intervals.get(modality, {}))
            out[modality] = entry
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ``robustness.json`` document (NaN left as float; the writer turns it into null)."""
        document: dict[str, Any] = {
            "baseline": dict(self.baseline),
            "baseline_dice_ci95": list(self.baseline_dice_ci95),
            "results": [dict(r) for r in self.results],
            "summary": self.summary(),
            "seed": self.seed,
            "n_lesions": self.n_lesions,
            "class_names": list(self.class_names),
        }
        if self.mce is not None:
            document["mce"] = self.mce
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> RobustnessTable:
        """Rebuild a table from a ``robustness.json`` document (``null`` read back as NaN)."""
        try:
            results = tuple(
                {
                    **row,
                    "metrics": {k: _nan(v) for k, v in row["metrics"].items()},
                    "dice_ci95": [_nan(v) for v in row["dice_ci95"]],
                    "relative_drop": _nan(row["relative_drop"]),
                }
                for row in document["results"]
            )
            return cls(
                baseline={k: _nan(v) for k, v in document["baseline"].items()},
                baseline_dice_ci95=tuple(_nan(v) for v in document.get("baseline_dice_ci95", (None, None))),  # type: ignore[arg-type]
                results=results,
                seed=int(document["seed"]),
                n_lesions=int(document["n_lesions"]),
                class_names=tuple(document["class_names"]),
                mce=document.get("mce"),
                drop_intervals={
                    modality: {k: _nan_tree(v) for k, v in entry.items() if k in _INTERVAL_KEYS}
                    for modality, entry in document.get("summary", {}).items()
                    if any(k in _INTERVAL_KEYS for k in entry)
                },
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a robustness.json document: {exc!r}") from exc


def robustness_table(
    predict_fn: PredictFn,
    y_true: Any,
    class_names: Sequence[str],
    *,
    modalities: Sequence[str] = MODALITIES,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    n_boot: int = 1000,
    metrics: Sequence[str] = HEADLINE_METRICS,
    reference: RobustnessTable | None = None,
    error_metric: str = "dice",
    progress: Callable[[str], None] | None = None,
    clean_probs: Any = None,
) -> RobustnessTable:
    """Score ``predict_fn`` clean and under each corruption of each modality at each severity.

    Args:
        predict_fn: the seam (see the module docstring); must return ``(n, k)`` probabilities.
        y_true: the ``n`` true class indices (or one-hot rows), in ``predict_fn``'s lesion order.
        class_names: the ``k`` class names.
        modalities: which modalities to corrupt, one at a time.
        corruptions: names in :data:`~fusionkit.evaluate.robustness.catalog.CORRUPTIONS` (default:
            all); each is run on the modalities it applies to; ``"absent"`` once per modality.
        severities: which of 1..5 to run.
        seed: seed of the corruptions and of the bootstrap.
        n_boot: bootstrap resamples of the Dice interval.
        metrics: macro metrics to keep (must include ``"dice"``).
        reference: a baseline run's table; when given, :attr:`RobustnessTable.mce` is filled.
        error_metric: the metric whose ``1 - value`` is the mCE's error.
        progress: called with each perturbation's label before it runs (e.g. a logger).
        clean_probs: the clean posteriors when the caller already has them (e.g. the report's
            own prediction); ``predict_fn(None)`` is then not called.
    """
    names = tuple(check_class_names(class_names))
    if "dice" not in metrics:
        raise ValueError("metrics must include 'dice' (the relative drop and the interval are of the Dice)")
    severities = tuple(severities)
    for s in severities:
        if s not in SEVERITIES:
            raise ValueError(f"severity must be in 1..5, got {s!r}")
    if corruptions is not None:
        unused = [n for n in corruptions if not any(n in corruptions_for(m, [n]) for m in modalities)]
        if unused:
            raise ValueError(
                f"corruption(s) {', '.join(unused)} apply to none of the modalities {', '.join(modalities)}"
            )
    perturbations: list[Perturbation] = []
    for modality in modalities:
        for name in corruptions_for(modality, corruptions):
            if CORRUPTIONS[name].kind == "absent":
                perturbations.append(Perturbation(modality=modality, corruption=name, severity=None, seed=seed))
            else:
                perturbations += [
                    Perturbation(modality=modality, corruption=name, severity=s, seed=seed) for s in severities
                ]

    # the resamples of fusionkit.metrics.bootstrap.bootstrap_ci(..., seed=seed), drawn once and shared
    truth = truth_matrix(y_true, (len(np.asarray(y_true)), len(names)))
    weights = resample_weights(truth, n_boot, np.random.default_rng(seed), stratified=True)

    def score(probs: Any) -> tuple[dict[str, float], tuple[float, float], np.ndarray]:
        p = check_probs(probs, len(names))
        macro = isic_metrics(y_true, p, names)["macro"]
        replicates = weighted_macro_metrics(truth, p, weights, ("dice",))[:, 0]
        return {m: float(macro[m]) for m in metrics}, _percentile_ci(replicates), replicates

    if clean_probs is None:
        if progress:
            progress("clean")
        clean_probs = predict_fn(None)
    clean, clean_ci, clean_replicates = score(clean_probs)
    results = []
    drop_replicates: list[np.ndarray] = []
    for perturbation in perturbations:
        if progress:
            progress(perturbation.label)
        values, ci, replicates = score(predict_fn(perturbation))
        drop_replicates.append(_relative_drop(clean_replicates, replicates))
        drop = (clean["dice"] - values["dice"]) / clean["dice"] if clean["dice"] > 0 else math.nan
        results.append(
            {
                "modality": perturbation.modality,
                "corruption": perturbation.corruption,
                "family": CORRUPTIONS[perturbation.corruption].family,
                "severity": perturbation.severity,
                "metrics": values,
                "dice_ci95": list(ci),
                "relative_drop": drop,
            }
        )
    table = RobustnessTable(
        baseline=clean,
        baseline_dice_ci95=clean_ci,
        results=tuple(results),
        seed=seed,
        n_lesions=len(np.asarray(y_true)),
        class_names=names,
        drop_intervals=_drop_intervals(perturbations, drop_replicates),
    )
    if reference is None:
        return table
    return replace(table, mce=mean_corruption_error(table, reference, metric=error_metric))


def mean_corruption_error(
    table: RobustnessTable, reference: RobustnessTable, *, metric: str = "dice"
) -> dict[str, Any]:
    """ImageNet-C's mean corruption error of ``table`` normalised by ``reference`` (module docstring).

    Returns:
        ``{"metric", "per_corruption": {"modality/corruption": {"ce", "relative_ce"}},
        "per_modality": {modality: {"mce", "relative_mce"}}, "mce", "relative_mce", "skipped"}``,
        where ``skipped`` names the (modality, corruption) pairs the reference lacks or whose
        reference error sums to 0 (the CE is undefined there).

    Raises:
        ConfigError: the two tables were not scored on comparable inputs (other classes, another
            number of lesions or another corruption seed).
    """
    mine_key = (table.class_names, table.n_lesions, table.seed)
    their_key = (reference.class_names, reference.n_lesions, reference.seed)
    if mine_key != their_key:
        raise ConfigError(
            f"the reference robustness table was scored on {reference.n_lesions} lesions with seed {reference.seed} "
            f"and {len(reference.class_names)} classes, this one on {table.n_lesions} lesions with seed {table.seed} "
            f"and {len(table.class_names)} classes; score both on the same lesions with the same seed"
        )

    def errors(t: RobustnessTable) -> dict[tuple[str, str], dict[int, float]]:
        out: dict[tuple[str, str], dict[int, float]] = {}
        for row in t.results:
            if row["corruption"] == ABSENT:
                continue
            out.setdefault((row["modality"], row["corruption"]), {})[row["severity"]] = 1.0 - row["metrics"][metric]
        return out

    mine, theirs = errors(table), errors(reference)
    clean, clean_ref = 1.0 - table.baseline[metric], 1.0 - reference.baseline[metric]
    per_corruption: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    for key, by_severity in mine.items():
        label = f"{key[0]}/{key[1]}"
        shared = sorted(set(by_severity) & set(theirs.get(key, {})))
        ref_sum = sum(theirs[key][s] for s in shared) if shared else 0.0
        if not shared or ref_sum <= 0.0:
            skipped.append(label)
            continue
        ce = sum(by_severity[s] for s in shared) / ref_sum
        ref_rel = sum(theirs[key][s] - clean_ref for s in shared)
        rel = sum(by_severity[s] - clean for s in shared) / ref_rel if ref_rel != 0 else math.nan
        per_corruption[label] = {"ce": ce, "relative_ce": rel}
    per_modality = {}
    for modality in dict.fromkeys(label.split("/")[0] for label in per_corruption):
        rows = [v for k, v in per_corruption.items() if k.split("/")[0] == modality]
        per_modality[modality] = {
            "mce": _nanmean([r["ce"] for r in rows]),
            "relative_mce": _nanmean([r["relative_ce"] for r in rows]),
        }
    return {
        "metric": metric,
        "per_corruption": per_corruption,
        "per_modality": per_modality,
        "mce": _nanmean([r["ce"] for r in per_corruption.values()]),
        "relative_mce": _nanmean([r["relative_ce"] for r in per_corruption.values()]),
        "skipped": skipped,
    }


def array_predictor(
    model_fn: ModelFn,
    *,
    derm: Sequence[Any],
    clinical: Sequence[Any],
    records: Sequence[LesionRecord],
) -> PredictFn:
    """A predictor over lesions held in memory.

    Args:
        model_fn: ``(derm_images, clinical_images, records, absent) -> (n, k)`` posteriors, where
            the images are the (possibly corrupted) uint8 images and ``absent`` the modalities to
            mask out.
        derm: one uint8 dermoscopic image per lesion (``None`` where absent), in lesion order.
        clinical: one uint8 clinical image per lesion (``None`` where absent), in lesion order.
        records: the lesion records, in the same order (their ``lesion_id`` seeds the corruptions).
    """
    if not len(derm) == len(clinical) == len(records):
        raise ValueError(f"derm, clinical and records differ in length: {len(derm)}, {len(clinical)}, {len(records)}")
    ids = [r.lesion_id for r in records]

    def predict(perturbation: Perturbation | None) -> Any:
        if perturbation is None:
            return model_fn(list(derm), list(clinical), list(records), ())
        d = [None if x is None else perturbation.image("derm", x, i) for x, i in zip(derm, ids, strict=True)]
        c = [None if x is None else perturbation.image("clinical", x, i) for x, i in zip(clinical, ids, strict=True)]
        r = [perturbation.record(x) for x in records]
        return model_fn(d, c, r, perturbation.absent)

    return predict


#: The keys :attr:`RobustnessTable.drop_intervals` adds to a modality's summary entry.
_INTERVAL_KEYS = ("mean_relative_drop_ci95", "absent_relative_drop_ci95", "hurts_most_share")


def _percentile_ci(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the non-NaN replicates (as :func:`~fusionkit.metrics.bootstrap.bootstrap_ci`)."""
    kept = replicates[~np.isnan(replicates)]
    if kept.size == 0:
        return (math.nan, math.nan)
    low, high = np.percentile(kept, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return (float(low), float(high))


def _relative_drop(clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """``(clean - corrupted) / clean`` per resample, NaN where the clean Dice is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(clean > 0, (clean - corrupted) / np.where(clean > 0, clean, 1.0), np.nan)


def _drop_intervals(perturbations: Sequence[Perturbation], drops: Sequence[np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per modality, from the paired resamples: the interval of the mean relative drop over its
    graded corruptions, the interval of the ``"absent"`` drop, and the share of resamples in which
    its mean drop is the largest of the modalities with graded corruptions."""
    out: dict[str, dict[str, Any]] = {}
    means: dict[str, np.ndarray] = {}
    for modality in dict.fromkeys(p.modality for p in perturbations):
        graded = [d for p, d in zip(perturbations, drops, strict=True) if p.modality == modality and p.severity]
        absent = [d for p, d in zip(perturbations, drops, strict=True) if p.modality == modality and not p.severity]
        entry: dict[str, Any] = {}
        if graded:
            stacked = np.stack(graded)
            with np.errstate(invalid="ignore"):
                counts = (~np.isnan(stacked)).sum(axis=0)
                means[modality] = np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)
            entry["mean_relative_drop_ci95"] = list(_percentile_ci(means[modality]))
        if absent:
            entry["absent_relative_drop_ci95"] = list(_percentile_ci(absent[0]))
        out[modality] = entry
    if means:
        order = list(means)
        stacked = np.stack([means[m] for m in order])  # (modalities, n_boot)
        valid = ~np.isnan(stacked).any(axis=0)
        first = np.argmax(np.where(np.isnan(stacked), -np.inf, stacked), axis=0)
        for i, modality in enumerate(order):
            out[modality]["hurts_most_share"] = float((first[valid] == i).mean()) if valid.any() else math.nan
    return out


def _nan_tree(value: Any) -> Any:
    """``null`` read back as NaN, inside lists too."""
    return [_nan(v) for v in value] if isinstance(value, list) else _nan(value)


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _nanmean(values: Sequence[float]) -> float:
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _sort_key(value: float) -> float:
    return math.inf if math.isnan(value) else value
