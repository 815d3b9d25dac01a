"""Intervals of a sweep that include the training noise: a two-level (hierarchical) bootstrap over
runs and lesions, for a variant's macro metrics and for its paired difference from the reference.

One replicate of the bootstrap (:func:`hierarchical_bootstrap`):

1. draws the seeds with replacement (as many as there are);
2. within each drawn seed, draws its folds with replacement (one "fold" per seed without ``--folds``);
3. within each drawn run, draws the validation lesions with replacement *within each class*
   (stratified: every class keeps its number of lesions, so a resample never drops a rare class and
   scores both models 1.0 on it by the 0/0 rule, which biased the old lesion bootstrap toward zero);

and averages the drawn runs' scores. The interval is the percentile interval of the replicates, so
it stays inside the metric's range (a difference inside [-1, 1]). Resampling the lesions as well as
the runs counts the test-set noise twice (a run's score already carries its own), which makes the
interval a little wide, never narrow; with one run only level 3 is left and the interval covers
test-set sampling only (:attr:`PairedDifference.covers` says which).

Own code rather than a library: ``scipy.stats.bootstrap`` resamples one level of independent
observations, and rliable's stratified bootstrap resamples runs within tasks but not the lesions
inside a run; neither takes a macro metric over classes, which must be computed inside the
resampling loop. The resampled lesions are represented as multiplicity weights (how often each
lesion is drawn), so the metrics here are weighted versions of :func:`fusionkit.metrics.isic_metrics`'s
macro metrics, vectorised over replicates, and equal it on the full set (weights of one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fusionkit.metrics.bootstrap import resample_weights
from fusionkit.metrics.bootstrap import weighted_macro_metrics as _weighted_macro_metrics

METRICS: tuple[str, ...] = ("auc", "ppv", "accuracy", "sensitivity", "specificity", "dice")
"""The macro metrics the bootstrap computes (the paper's Table 2-3 columns)."""
MIN_CLASS_LESIONS = 5
"""The small-split rule: a class with fewer validation lesions than this in a run makes the split too
small to say much about that class (one lesion moves its Dice by 0.2 or more, the macro Dice by about
0.02), and the summary warns."""
_CHUNK = 256  # lesion resamples scored at a time (bounds memory: CHUNK x lesions weights)


# -- weighted macro metrics and stratified resamples: fusionkit.metrics.bootstrap -----------------------
def weighted_macro_metrics(
    labels: np.ndarray, probs: np.ndarray, weights: np.ndarray, metrics: Sequence[str] = METRICS
) -> np.ndarray:
    """Macro metrics of lesions counted ``weights`` times, shape (m, len(metrics)): the metrics layer's
    :func:`fusionkit.metrics.bootstrap.weighted_macro_metrics` with the paper's Table 2-3 columns by
    default (with weights of one it is :func:`fusionkit.metrics.isic_metrics`'s ``"macro"``)."""
    return _weighted_macro_metrics(labels, probs, weights, metrics)


def stratified_weights(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` class-stratified resamples of the lesions as multiplicity weights, shape (size, n)
    (:func:`fusionkit.metrics.bootstrap.resample_weights`: every resample keeps each class's count)."""
    return resample_weights(labels, size, rng, stratified=True)


Statistic = Callable[[int, np.ndarray], np.ndarray]
"""``stat(run, weights)``: the statistic(s) of run ``run`` on its lesions counted ``weights`` (m, n)
times, shape (m, s)."""


def hierarchical_bootstrap(
    groups: Sequence[Sequence[int]],
    labels: Sequence[np.ndarray],
    stat: Statistic,
    *,
    n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Replicates (n_boot, s) of the mean over runs of ``stat``, resampling seeds, folds and lesions.

    ``groups`` lists the run indices of each seed (its folds); ``labels[r]`` are run ``r``'s
    validation labels. Draw order: the seeds ``rng.integers(0, G, (n_boot, G))``, then
    ``rng.random((n_boot, G, F))`` (F the most folds of a seed) picks ``floor(u * folds)`` of each drawn
    seed, then for each run in index order its lesion resamples (:func:`stratified_weights`, in
    chunks of 256), assigned to its draws in row-major order. A replicate averages all drawn runs.
    """
    if not groups or not all(groups):
        raise ValueError("every seed needs at least one run")
    n_groups = len(groups)
    n_folds = np.array([len(g) for g in groups])
    table = np.full((n_groups, n_folds.max()), -1)
    for g, runs in enumerate(groups):
        table[g, : len(runs)] = runs
    seeds = rng.integers(0, n_groups, size=(n_boot, n_groups))
    u = rng.random((n_boot, n_groups, table.shape[1]))
    folds_of = n_folds[seeds][..., None]
    valid = np.arange(table.shape[1]) < folds_of
    drawn = np.where(valid, table[seeds[..., None], np.minimum((u * folds_of).astype(int), folds_of - 1)], -1)
    drawn = drawn.reshape(n_boot, -1)
    total: np.ndarray | None = None
    for run in np.unique(table[table >= 0]):
        rows, _ = np.nonzero(drawn == run)
        pieces = []
        for start in range(0, rows.size, _CHUNK):
            size = min(_CHUNK, rows.size - start)
            pieces.append(np.asarray(stat(int(run), stratified_weights(labels[run], size, rng)), dtype=float))
        if not pieces:
            continue
        values = np.concatenate(pieces).reshape(rows.size, -1)
        if total is None:
            total = np.zeros((n_boot, values.shape[1]))
        np.add.at(total, rows, values)
    assert total is not None
    return total / (drawn >= 0).sum(axis=1, keepdims=True)


def _percentile(replicates: np.ndarray, level: float) -> list[float]:
    lo, hi = np.nanquantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def _groups(seeds: Sequence[int | None]) -> list[list[int]]:
    """Run indices per seed in first-seen order; runs without a seed are a seed each."""
    keyed: dict[object, list[int]] = {}
    for i, seed in enumerate(seeds):
        keyed.setdefault(("run", i) if seed is None else seed, []).append(i)
    return list(keyed.values())


def coverage(groups: Sequence[Sequence[int]]) -> str:
    """What an interval over these runs covers: ``"runs and lesions"`` or, with one run, ``"lesions"``."""
    return "lesions" if sum(len(g) for g in groups) == 1 else "runs and lesions"


# -- a variant alone ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ScoredRun:
    """One finished run of a variant: its posteriors on its validation lesions."""

    labels: np.ndarray
    """(n,) class indices of the validation lesions."""
    probs: np.ndarray
    """(n, k) posteriors, rows in the same lesion order."""
    seed: int | None = None
    """The run's seed (runs of one seed are its folds); None: a seed of its own."""
    fold: int | None = None
    """The run's fold (None without ``--folds``)."""


@dataclass(frozen=True, kw_only=True)
class MetricIntervals:
    """A variant's macro metrics: mean over runs and the two-level bootstrap interval of that mean."""

    mean: dict[str, float]
    """Mean over runs of each metric."""
    interval: dict[str, list[float]]
    """The ``level`` percentile interval of each metric, inside [0, 1]."""
    n_runs: int
    """How many runs the interval rests on."""
    n_seeds: int
    """How many seeds those runs come from."""
    covers: str
    """``"runs and lesions"``, or ``"lesions"`` (test-set sampling only) with one run."""


def metric_intervals(
    runs: Sequence[ScoredRun],
    *,
    metrics: Sequence[str] = METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> MetricIntervals:
    """Mean over runs of each macro metric and its two-level bootstrap interval (module docstring).

    Replicates come from :func:`hierarchical_bootstrap` with ``numpy.random.default_rng(seed)``.
    """
    if not runs:
        raise ValueError("no runs")
    groups = _groups([r.seed for r in runs])
    point = np.mean(
        [weighted_macro_metrics(r.labels, r.probs, np.ones((1, len(r.labels))), metrics)[0] for r in runs], axis=0
    )
    boot = hierarchical_bootstrap(
        groups,
        [r.labels for r in runs],
        lambda i, w: weighted_macro_metrics(runs[i].labels, runs[i].probs, w, metrics),
        n_boot=n_boot,
        rng=np.random.default_rng(seed),
    )
    return MetricIntervals(
        mean={m: float(point[j]) for j, m in enumerate(metrics)},
        interval={m: _percentile(boot[:, j], level) for j, m in enumerate(metrics)},
        n_runs=len(runs),
        n_seeds=len(groups),
        covers=coverage(groups),
    )


# -- a variant against the reference ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PairedRun:
    """One seed (and fold): the variant's and the reference's posteriors on the same lesions."""

    labels: np.ndarray
    """(n,) class indices of the validation lesions."""
    variant: np.ndarray
    """(n, k) the variant's posteriors, rows in the same lesion order."""
    reference: np.ndarray
    """(n, k) the reference's posteriors."""
    seed: int | None = None
    """The seed both ran with (pairs of one seed are its folds); None: a seed of its own."""
    fold: int | None = None
    """The fold (None without ``--folds``)."""
    n_train: int | None = None
    """Training lesions of the split (for the corrected t-test's test/train ratio); None: unknown."""


@dataclass(frozen=True, kw_only=True)
class PairedDifference:
    """``metric(variant) - metric(reference)``: mean over runs, its interval, and each run's difference."""

    estimate: float
    """Mean over runs of the difference on all validation lesions."""
    interval: list[float]
    """The ``level`` percentile interval of the two-level bootstrap, inside [-1, 1]."""
    run_differences: list[float]
    """Each run's difference, in the order of the pairs."""
    n_runs: int
    """How many runs (seed x fold pairs) the interval rests on."""
    n_seeds: int
    """How many seeds those runs come from."""
    covers: str
    """``"runs and lesions"``, or ``"lesions"`` (test-set sampling only) with one run."""


def paired_difference(
    pairs: Sequence[PairedRun], metric: str, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> PairedDifference:
    """Mean over pairs of ``metric(variant) - metric(reference)`` and its two-level bootstrap interval.

    Each replicate resamples the seeds, the folds within a seed and the lesions within each class of
    every drawn run (:func:`hierarchical_bootstrap`, ``numpy.random.default_rng(seed)``), scores both
    models on the same resampled lesions and averages the differences over the drawn runs; the
    interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles. With one pair it covers
    test-set sampling only (``covers == "lesions"``).
    """
    if not pairs:
        raise ValueError("no paired runs")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: one of {', '.join(METRICS)}")

    def diff(i: int, w: np.ndarray) -> np.ndarray:
        p = pairs[i]
        return weighted_macro_metrics(p.labels, p.variant, w, [metric]) - weighted_macro_metrics(
            p.labels, p.reference, w, [metric]
        )

    runs = [float(diff(i, np.ones((1, len(p.labels))))[0, 0]) for i, p in enumerate(pairs)]
    groups = _groups([p.seed for p in pairs])
    boot = hierarchical_bootstrap(
        groups, [p.labels for p in pairs], diff, n_boot=n_boot, rng=np.random.default_rng(seed)
    )
    return PairedDifference(
        estimate=float(np.mean(runs)),
        interval=_percentile(boot[:, 0], level),
        run_differences=runs,
        n_runs=len(pairs),
        n_seeds=len(groups),
        covers=coverage(groups),
    )


def small_classes(labels: np.ndarray, n_classes: int, *, minimum: int = MIN_CLASS_LESIONS) -> dict[int, int]:
    """Classes with fewer than ``minimum`` validation lesions (:data:`MIN_CLASS_LESIONS`): {class: count}."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    return {c: int(n) for c, n in enumerate(counts) if n < minimum}
