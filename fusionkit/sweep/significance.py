"""Tests of a sweep's comparisons: the corrected resampled t-test, Holm's adjustment, the minimum
detectable effect, and DeLong's test of a macro AUC difference on the same lesions.

- :func:`corrected_ttest`: the Nadeau-Bengio (2003) corrected resampled t-test over the runs'
  differences. Neither scipy nor statsmodels has it (their paired t-tests assume independent runs,
  which runs sharing training lesions are not, so they are anti-conservative); it is the plain
  one-sample t statistic with the variance inflated by ``n_test / n_train``, computed here with
  ``scipy.stats.t``.
- :func:`holm`: ``statsmodels.stats.multitest.multipletests(method="holm")``.
- :func:`minimum_detectable_effect`: ``statsmodels.stats.power.TTestPower`` solved for the effect
  size, rescaled by the observed spread and the Nadeau-Bengio inflation.
- :func:`delong_macro_auc`: the fast DeLong algorithm (Sun & Xu 2014) in numpy. Own code because no
  well-kept package ships it (scikit-learn, scipy and statsmodels have no DeLong test; the PyPI
  packages that do are single-author snippets without releases or tests), and because the macro
  AUC averages one-vs-rest AUCs whose positives and negatives differ per class, which the binary
  algorithm does not cover: each lesion's structural components (Sun & Xu's V10 / V01, the share of
  the other side it outranks) are summed over the classes into one influence per lesion, and the
  variance is the sum over true classes of ``n_c`` times the sample variance of that influence
  within the class. For one binary class this is exactly DeLong's ``S10 / m + S01 / n``; over
  several classes it is DeLong's estimator conditioned on the class counts, as the stratified
  bootstrap of :mod:`fusionkit.sweep.stats` is.

statsmodels is an optional extra (``pip install 'jiadf-fusion[stats]'``): without it :func:`holm`
and :func:`minimum_detectable_effect` raise :class:`~fusionkit.errors.ConfigError` with that line,
and the summary leaves those columns empty and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from fusionkit.errors import ConfigError

ALPHA = 0.05
"""The two-sided significance level of the tests and of the detectable effect."""
POWER = 0.8
"""The power at which :func:`minimum_detectable_effect` is stated."""
STATSMODELS_MISSING = (
    "Holm-adjusted p-values and detectable effects need statsmodels: pip install 'jiadf-fusion[stats]'"
)
"""The one line said when statsmodels is not installed."""


def statsmodels_available() -> bool:
    """Whether ``statsmodels`` imports."""
    try:
        import statsmodels.stats.multitest  # noqa: F401
    except ImportError:
        return False
    return True


def _require_statsmodels() -> None:
    if not statsmodels_available():
        raise ConfigError(STATSMODELS_MISSING)


@dataclass(frozen=True, kw_only=True)
class TTest:
    """A corrected resampled t-test: statistic, degrees of freedom and two-sided p-value."""

    t: float
    """The corrected t statistic (inf when every run shows the same nonzero difference)."""
    df: int
    """Degrees of freedom: runs minus one."""
    p: float
    """Two-sided p-value."""
    ratio: float
    """The ``n_test / n_train`` inflation the variance was corrected with (0: the plain t-test)."""


def split_ratio(n_test: Sequence[int], n_train: Sequence[int | None]) -> float:
    """Mean ``n_test / n_train`` over the runs (0.0, the uncorrected test, if a split size is unknown)."""
    if not n_train or any(n is None or n <= 0 for n in n_train):
        return 0.0
    return float(np.mean([t / float(n) for t, n in zip(n_test, n_train, strict=True) if n is not None]))


def corrected_ttest(differences: Sequence[float], *, ratio: float) -> TTest:
    """Nadeau & Bengio's corrected resampled t-test of mean difference 0 over J runs.

    ``t = mean(d) / sqrt((1 / J + ratio) * var(d))`` with ``var`` the sample variance (ddof 1),
    ``ratio = n_test / n_train`` of the splits, ``J - 1`` degrees of freedom, two-sided. It holds
    for repeated random splits and, with ``J = folds x seeds``, for repeated k-fold (Bouckaert &
    Frank 2004). With zero spread the p-value is 0 for a nonzero mean and 1 for a zero mean.
    """
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        raise ValueError("the t-test needs at least two runs")
    mean, var = float(d.mean()), float(d.var(ddof=1))
    df = d.size - 1
    if var == 0.0:
        return TTest(t=math.copysign(math.inf, mean) if mean else 0.0, df=df, p=0.0 if mean else 1.0, ratio=ratio)
    t = mean / math.sqrt((1 / d.size + ratio) * var)
    return TTest(t=t, df=df, p=float(2 * scipy_stats.t.sf(abs(t), df)), ratio=ratio)


def holm(p_values: Sequence[float], *, alpha: float = ALPHA) -> list[float]:
    """Holm-adjusted p-values (``statsmodels.stats.multitest.multipletests``), in the input order."""
    _require_statsmodels()
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    return [float(p) for p in multipletests(list(p_values), alpha=alpha, method="holm")[1]]


def minimum_detectable_effect(
    spread: float, n_runs: int, *, ratio: float = 0.0, alpha: float = ALPHA, power: float = POWER
) -> float:
    """The smallest true mean difference the corrected t-test finds with ``power`` (two-sided ``alpha``).

    ``spread`` is the sample std of the runs' differences. The corrected test's noncentrality is
    ``delta / (spread * sqrt(1 / J + ratio))`` on ``J - 1`` degrees of freedom, which is
    ``TTestPower``'s ``d * sqrt(J)`` with ``d = delta / (spread * sqrt(1 + J * ratio))``; so the
    effect is ``TTestPower().solve_power(nobs=J)`` times ``spread * sqrt(1 + J * ratio)``.
    """
    _require_statsmodels()
    from statsmodels.stats.power import TTestPower

    if n_runs < 2:
        raise ValueError("a detectable effect needs at least two runs")
    d = TTestPower().solve_power(effect_size=None, nobs=n_runs, alpha=alpha, power=power, alternative="two-sided")
    return float(np.asarray(d).item()) * spread * math.sqrt(1 + n_runs * ratio)


@dataclass(frozen=True, kw_only=True)
class DeLong:
    """DeLong's test of ``macro AUC(a) - macro AUC(b)`` on the same lesions."""

    difference: float
    """``macro AUC(a) - macro AUC(b)``."""
    se: float
    """Its standard error (test-set sampling only)."""
    z: float
    """``difference / se``."""
    p: float
    """Two-sided normal p-value (1.0 when both are equal on every lesion)."""


def _midrank(x: np.ndarray) -> np.ndarray:
    """Sun & Xu's midranks (ties averaged), 1-based; ``scipy.stats.rankdata(method="average")``."""
    return scipy_stats.rankdata(x, method="average")


def _components(truth: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """One class's AUC and each lesion's structural component minus the AUC (Sun & Xu 2014, eqs 6-8).

    For a positive lesion V10 is the share of negatives it outranks (ties half); for a negative,
    V01 the share of positives that outrank it; computed from midranks of the positives, the
    negatives and all lesions: ``V10 = (T_z - T_x) / n``, ``V01 = 1 - (T_z - T_y) / m``.
    """
    pos, neg = scores[truth], scores[~truth]
    m, n = pos.size, neg.size
    tz = _midrank(np.concatenate([pos, neg]))
    v10 = (tz[:m] - _midrank(pos)) / n
    v01 = 1.0 - (tz[m:] - _midrank(neg)) / m
    auc = float(v10.mean())
    out = np.empty(scores.size)
    out[truth] = v10 - auc
    out[~truth] = v01 - auc
    return auc, out


def delong_macro_auc(labels: Any, probs_a: Any, probs_b: Any) -> DeLong:
    """DeLong's test of the macro (one-vs-rest, mean over classes) AUC difference of two models.

    Fast DeLong (Sun & Xu 2014) per class, combined over the classes with positives and negatives as
    the module docstring says: lesion ``i``'s influence is ``sum_c (comp_a - comp_b)_c(i) / (K * s_c(i))``
    with ``s_c(i)`` the number of lesions on its side (positives or negatives) for class ``c`` and K the
    classes scored, and the variance is ``sum over true classes y of n_y * var(influence | y)`` (ddof 1).
    """
    labels = np.asarray(labels)
    a, b = np.asarray(probs_a, dtype=float), np.asarray(probs_b, dtype=float)
    k = a.shape[1]
    scored = [j for j in range(k) if 0 < np.sum(labels == j) < labels.size]
    if not scored:
        raise ValueError("no class has both positive and negative lesions")
    influence = np.zeros(labels.size)
    diff = 0.0
    for j in scored:
        truth = labels == j
        auc_a, comp_a = _components(truth, a[:, j])
        auc_b, comp_b = _components(truth, b[:, j])
        side = np.where(truth, truth.sum(), (~truth).sum())
        influence += (comp_a - comp_b) / side / len(scored)
        diff += (auc_a - auc_b) / len(scored)
    var = 0.0
    for y in np.unique(labels):
        group = influence[labels == y]
        if group.size > 1:
            var += group.size * float(group.var(ddof=1))
    se = math.sqrt(var)
    if se == 0.0:
        return DeLong(
            difference=diff, se=0.0, z=0.0 if diff == 0 else math.copysign(math.inf, diff), p=float(diff == 0)
        )
    z = diff / se
    return DeLong(difference=diff, se=se, z=z, p=float(2 * scipy_stats.norm.sf(abs(z))))
