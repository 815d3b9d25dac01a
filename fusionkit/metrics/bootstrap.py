"""Percentile bootstrap confidence intervals of the macro ISIC metrics.

Lesions are resampled with replacement ``n_boot`` times from one seeded generator, the macro metric
is recomputed on every resample exactly as :func:`~fusionkit.metrics.isic.isic_metrics` computes it,
and the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the replicates
(NaN replicates, e.g. an AUC on a resample with one class, are left out). Macro Dice,
``multiclass_accuracy`` and macro AUC are computed for all resamples at once from the resampling
counts (weighted confusion counts; the AUC as the weighted Mann-Whitney statistic, ties counting
one half, which is the area :func:`sklearn.metrics.roc_auc_score` computes), fast enough for
thousands of replicates; every other metric calls :func:`isic_metrics` per resample.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fusionkit.metrics.isic import _argmax_labels, _truth_matrix, check_class_names, check_probs, isic_metrics

__all__ = ["bootstrap_ci", "bootstrap_counts"]

_FAST = ("dice", "multiclass_accuracy", "auc")


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n)`` resampling counts: how often each of ``n`` lesions is drawn in each resample."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    flat = (draws + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _fast_replicates(metric: str, truth: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    if metric == "dice":
        t = truth > 0.5
        p = probs > 0.5
        tp = counts @ (t & p)
        fp = counts @ (~t & p)
        fn = counts @ (t & ~p)
        denominator = 2 * tp + fp + fn
        dice = np.divide(2 * tp, denominator, out=np.ones_like(tp), where=denominator > 0)
        return dice.mean(axis=1)
    if metric == "auc":
        return _macro_auc(truth, probs, counts)
    truth_labels = _argmax_labels(truth)
    kept = truth_labels >= 0
    correct = ((_argmax_labels(probs) == truth_labels) & kept).astype(np.float64)
    total = counts @ kept.astype(np.float64)
    return np.divide(counts @ correct, total, out=np.full_like(total, np.nan), where=total > 0)


def _macro_auc(truth: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Macro AUC of every resample (NaN-skipping mean over classes, as in isic_metrics)."""
    per_class = np.full((counts.shape[0], truth.shape[1]), np.nan)
    for c in range(truth.shape[1]):
        if not np.all((truth[:, c] == 0.0) | (truth[:, c] == 1.0)):
            continue  # soft truth: isic_metrics has no AUC either
        order = np.argsort(probs[:, c], kind="stable")
        scores = probs[order, c]
        starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
        positive = truth[order, c] == 1.0
        w = counts[:, order]
        pos = np.add.reduceat(w * positive, starts, axis=1)
        neg = np.add.reduceat(w * ~positive, starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        area = (pos * (below + 0.5 * neg)).sum(axis=1)
        defined = (n_pos > 0) & (n_neg > 0)
        per_class[defined, c] = area[defined] / (n_pos[defined] * n_neg[defined])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no defined class: NaN
        return np.nanmean(per_class, axis=1)


def bootstrap_ci(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    *,
    metrics: Sequence[str] = ("dice",),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
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

    Returns:
        ``{metric: (low, high)}``; ``(nan, nan)`` where every replicate is NaN.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    names = check_class_names(class_names)
    p = check_probs(probs, len(names))
    t = _truth_matrix(y_true, p.shape)
    counts = bootstrap_counts(len(p), n_boot, seed)
    replicates: dict[str, np.ndarray] = {m: _fast_replicates(m, t, p, counts) for m in metrics if m in _FAST}
    slow = [m for m in metrics if m not in _FAST]
    if slow:
        rows = np.repeat(np.arange(len(p))[None, :], n_boot, axis=0)
        values: dict[str, list[float]] = {m: [] for m in slow}
        for b in range(n_boot):
            index = np.repeat(rows[b], counts[b].astype(np.int64))
            macro = isic_metrics(t[index], p[index], names)["macro"]
            for m in slow:
                if m not in macro:
                    raise ValueError(f"unknown metric {m!r}; expected one of {', '.join(macro)}")
                values[m].append(macro[m])
        replicates.update({m: np.asarray(v, dtype=np.float64) for m, v in values.items()})
    out = {}
    for m in metrics:
        kept = replicates[m][~np.isnan(replicates[m])]
        if kept.size == 0:
            out[m] = (float("nan"), float("nan"))
            continue
        low, high = np.percentile(kept, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
        out[m] = (float(low), float(high))
    return out
