"""Statistics of a sweep: spread over seeds/folds, and paired bootstrap differences against a reference.

Own code rather than a library because scipy's ``bootstrap`` resamples one statistic of arrays,
while a paired difference of two *macro* metrics, resampled within each (seed, fold) validation set
and pooled, needs the metric inside the resampling loop; the metric functions here are vectorised
over the bootstrap replicates and equal :func:`fusionkit.metrics.isic_metrics` on the full set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

_THRESHOLD = 0.5  # the ISIC scorer's binarisation (fusionkit.metrics.isic)


def mean_std_ci(values: Sequence[float], *, level: float = 0.95) -> dict[str, float | list[float] | None]:
    """Mean, sample std (ddof 1) and the Student-t ``level`` interval of the mean.

    With one value the std and the interval are undefined (None).
    """
    x = np.asarray([float(v) for v in values], dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "std": None, "ci95": None}
    std = float(x.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, df=x.size - 1)) * std / math.sqrt(x.size)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def macro_dice(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Macro Dice (2TP / (2TP + FP + FN), 1.0 for 0/0, per class then mean) over the last two axes.

    ``labels`` (..., n) class indices, ``probs`` (..., n, k); a class is predicted when its
    probability is above 0.5, as in the ISIC scorer. Returns shape (...).
    """
    k = probs.shape[-1]
    truth = labels[..., None] == np.arange(k)
    pred = probs > _THRESHOLD
    tp = np.sum(truth & pred, axis=-2)
    fp = np.sum(~truth & pred, axis=-2)
    fn = np.sum(truth & ~pred, axis=-2)
    denom = 2 * tp + fp + fn
    dice = np.where(denom == 0, 1.0, 2 * tp / np.maximum(denom, 1))
    return dice.mean(axis=-1)


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest ROC AUC (Mann-Whitney with tied ranks averaged), classes without
    positives or negatives left out; shapes as in :func:`macro_dice`. NaN if no class has both."""
    k = probs.shape[-1]
    n = labels.shape[-1]
    out = []
    for j in range(k):
        pos = labels == j
        n_pos = pos.sum(axis=-1)
        n_neg = n - n_pos
        ranks = scipy_stats.rankdata(probs[..., j], axis=-1)
        u = np.sum(ranks * pos, axis=-1) - n_pos * (n_pos + 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan))
    stacked = np.stack(out, axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicate: NaN, as isic_metrics
        return np.nanmean(stacked, axis=-1)


METRIC_FUNCTIONS = {"dice": macro_dice, "auc": macro_auc}
"""The metrics the paired comparison reports."""


@dataclass(frozen=True)
class PairedRun:
    """One seed (and fold): the variant's and the reference's posteriors on the same lesions."""

    labels: np.ndarray
    """(n,) class indices of the validation lesions."""
    variant: np.ndarray
    """(n, k) the variant's posteriors, rows in the same lesion order."""
    reference: np.ndarray
    """(n, k) the reference's posteriors."""


def paired_difference(
    pairs: Sequence[PairedRun], metric: str, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, list[float]]:
    """Mean over pairs of ``metric(variant) - metric(reference)``, and its percentile bootstrap interval.

    Each replicate resamples, with replacement, the lesions of every pair independently (draws in
    pair order from ``numpy.random.default_rng(seed)``: ``integers(0, n, size=(n_boot, n))`` per
    pair), scores both models on the same resampled lesions, and averages the differences over
    pairs; the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles.
    """
    if not pairs:
        raise ValueError("no paired runs")
    fn = METRIC_FUNCTIONS[metric]
    rng = np.random.default_rng(seed)
    point = float(np.mean([fn(p.labels, p.variant) - fn(p.labels, p.reference) for p in pairs]))
    boot = np.zeros(n_boot)
    for p in pairs:
        idx = rng.integers(0, len(p.labels), size=(n_boot, len(p.labels)))
        boot += fn(p.labels[idx], p.variant[idx]) - fn(p.labels[idx], p.reference[idx])
    boot /= len(pairs)
    lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return point, [float(lo), float(hi)]
