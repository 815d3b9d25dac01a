"""Bootstrap confidence intervals of the macro ISIC metrics, vectorised over resamples.

A resample is represented by multiplicity weights (how often each lesion is drawn), so one matrix
product scores thousands of resamples at once: :func:`weighted_macro_metrics` is the weighted
version of :func:`~fusionkit.metrics.isic.isic_metrics`'s ``"macro"`` values (a class predicted
above 0.5, the scorer's 0/0 "freebie" 1.0, the AUC as the weighted Mann-Whitney statistic with ties
counting one half, which is the area :func:`sklearn.metrics.roc_auc_score` computes, over the
classes with positives and negatives), equal to it with weights of one, and a weight ``w`` equals
the lesion repeated ``w`` times.

:func:`bootstrap_ci` draws the resamples *within each class* by default (stratified: every resample
keeps each class's number of lesions, so a rare class is never dropped from a resample and handed
the freebie Dice of 1.0, which would bias the interval upward) and returns the percentile interval.
Metrics without a weighted form here (``ap``, ``auc_sens_80``, ``balanced_accuracy``) call
:func:`isic_metrics` once per resample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fusionkit.metrics.isic import (
    METRIC_KEYS,
    POSITIVE_THRESHOLD,
    argmax_labels,
    check_class_names,
    check_probs,
    isic_metrics,
    truth_matrix,
)

__all__ = ["WEIGHTED_METRICS", "bootstrap_ci", "resample_weights", "weighted_macro_metrics"]

#: Macro metrics :func:`weighted_macro_metrics` computes: Table 5's, less the two it does not
#: resample (``auc_sens_80``, ``ap``), and the multiclass accuracy.
WEIGHTED_METRICS: tuple[str, ...] = (
    *(k for k in METRIC_KEYS if k not in ("auc_sens_80", "ap")),
    "multiclass_accuracy",
)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, the scorer's "freebie" 1.0 where the denominator is 0."""
    return np.where(denominator == 0, 1.0, numerator / np.where(denominator == 0, 1.0, denominator))


def _auc(truth: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of one class for weighted lesions, ``(m,)``; NaN without positives or
    negatives. ``truth`` (n,) bool, ``scores`` (n,), ``weights`` (m, n)."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(w * truth[order], starts, axis=1)
    neg = np.add.reduceat(w * ~truth[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    u = np.sum(pos * (below + 0.5 * neg), axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def weighted_macro_metrics(
    labels: Any, probs: Any, weights: Any, metrics: Sequence[str] = WEIGHTED_METRICS
) -> np.ndarray:
    """Macro metrics of lesions counted ``weights`` times, shape ``(m, len(metrics))``.

    Args:
        labels: class indices ``(n,)`` or a one-hot ``(n, k)`` truth (as for ``isic_metrics``).
        probs: posteriors ``(n, k)``.
        weights: ``(m, n)`` (or ``(n,)``) multiplicities, one row per resample.
        metrics: names in :data:`WEIGHTED_METRICS`.
    """
    p = check_probs(probs)
    t = truth_matrix(labels, p.shape)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != len(p):
        raise ValueError(f"weights have {w.shape[1]} columns but there are {len(p)} lesions")
    unknown = [m for m in metrics if m not in WEIGHTED_METRICS]
    if unknown:
        raise ValueError(f"no weighted form of {', '.join(unknown)}; expected some of {', '.join(WEIGHTED_METRICS)}")
    truth, pred = t > POSITIVE_THRESHOLD, p > POSITIVE_THRESHOLD
    tp, fp = w @ (truth & pred), w @ (~truth & pred)
    fn, tn = w @ (truth & ~pred), w @ (~truth & ~pred)
    hard = np.all((t == 0.0) | (t == 1.0), axis=0)  # soft truth columns have no AUC (isic_metrics)
    per_class = {
        "accuracy": lambda: (tp + tn) / (tp + tn + fp + fn),
        "sensitivity": lambda: _ratio(tp, tp + fn),
        "specificity": lambda: _ratio(tn, tn + fp),
        "dice": lambda: _ratio(2 * tp, 2 * tp + fp + fn),
        "ppv": lambda: _ratio(tp, tp + fp),
        "npv": lambda: _ratio(tn, tn + fn),
        "auc": lambda: np.stack(
            [_auc(t[:, j] == 1.0, p[:, j], w) if hard[j] else np.full(len(w), np.nan) for j in range(p.shape[1])],
            axis=1,
        ),
    }
    out = []
    for name in metrics:
        if name == "multiclass_accuracy":
            truth_labels = argmax_labels(t)
            kept = (truth_labels >= 0).astype(np.float64)
            correct = (argmax_labels(p) == truth_labels) * kept
            total = w @ kept
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(np.where(total > 0, (w @ correct) / np.where(total > 0, total, 1.0), np.nan))
            continue
        values = per_class[name]()
        defined = ~np.isnan(values)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(defined.any(axis=1), np.nansum(values, axis=1) / defined.sum(axis=1), np.nan))
    return np.stack(out, axis=1)


def resample_weights(labels: Any, size: int, rng: np.random.Generator, *, stratified: bool = True) -> np.ndarray:
    """``size`` bootstrap resamples of ``n`` lesions as multiplicity weights, shape ``(size, n)``.

    ``stratified``: within each class (ascending class index, one ``rng.multinomial`` call each)
    the class's lesions are drawn with replacement as many times as the class has lesions, so every
    resample keeps each class's count; otherwise all ``n`` lesions are drawn together. ``labels``
    are class indices ``(n,)`` (or an ``(n, k)`` truth, whose row argmax is used).
    """
    y = np.asarray(labels)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    if y.ndim != 1 or y.size == 0 or size < 1:
        raise ValueError(f"need (n,) labels with n >= 1 and size >= 1, got shape {y.shape} and size {size}")
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratified else [np.arange(y.size)]
    weights = np.zeros((size, y.size))
    for members in groups:
        weights[:, members] = rng.multinomial(members.size, np.full(members.size, 1 / members.size), size=size)
    return weights


def bootstrap_ci(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    *,
    metrics: Sequence[str] = ("dice",),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    stratified: bool = True,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each macro metric in ``metrics``.

    Args:
        y_true: class indices ``(n,)`` or a one-hot matrix, as for :func:`~fusionkit.metrics.isic.isic_metrics`.
        probs: posteriors ``(n, k)``.
        class_names: the ``k`` class names.
        metrics: keys of ``isic_metrics(...)["macro"]``.
        n_boot: number of resamples.
        seed: seed of the resampling (the same seed gives the same intervals).
        level: the interval's coverage, in (0, 1).
        stratified: resample within each class (module docstring).

    Returns:
        ``{metric: (low, high)}``; ``(nan, nan)`` where every replicate is NaN.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    names = check_class_names(class_names)
    p = check_probs(probs, len(names))
    t = truth_matrix(y_true, p.shape)
    weights = resample_weights(t, n_boot, np.random.default_rng(seed), stratified=stratified)
    fast = [m for m in metrics if m in WEIGHTED_METRICS]
    replicates: dict[str, np.ndarray] = {}
    if fast:
        values = weighted_macro_metrics(t, p, weights, fast)
        replicates.update({m: values[:, i] for i, m in enumerate(fast)})
    slow = [m for m in metrics if m not in WEIGHTED_METRICS]
    if slow:
        collected: dict[str, list[float]] = {m: [] for m in slow}
        for row in weights.astype(np.int64):
            index = np.repeat(np.arange(len(p)), row)
            macro = isic_metrics(t[index], p[index], names)["macro"]
            for m in slow:
                if m not in macro:
                    raise ValueError(f"unknown metric {m!r}; expected one of {', '.join(macro)}")
                collected[m].append(macro[m])
        replicates.update({m: np.asarray(v, dtype=np.float64) for m, v in collected.items()})
    out = {}
    for m in metrics:
        kept = replicates[m][~np.isnan(replicates[m])]
        if kept.size == 0:
            out[m] = (float("nan"), float("nan"))
            continue
        low, high = np.percentile(kept, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
        out[m] = (float(low), float(high))
    return out
