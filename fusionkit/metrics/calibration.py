"""Calibration: top-label expected calibration error, reliability curves, temperature scaling.

Binning follows Guo et al. (2017), "On Calibration of Modern Neural Networks": the confidence of a
sample is its top probability, the interval [0, 1] is cut into ``n_bins`` equal-width bins that
are closed on the right (``(lo, hi]``, the first one ``[0, hi]``), and the ECE is the
count-weighted mean of ``|accuracy - confidence|`` over the non-empty bins.

Temperature scaling divides the logits by one scalar ``T > 0`` fitted on a validation split by
minimising the negative log-likelihood. The NLL is convex in ``1 / T``, so it is unimodal in
``log T`` and a bounded Brent search over ``log T`` (deterministic, no random starts) finds the
minimum.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from fusionkit.metrics.isic import check_probs

__all__ = [
    "ReliabilityCurve",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_curve",
]


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of top-label confidence against accuracy.

    Attributes:
        bin_edges: the ``n_bins + 1`` equal-width edges from 0 to 1.
        confidence: mean top probability per bin (NaN for an empty bin).
        accuracy: fraction of correct argmax predictions per bin (NaN for an empty bin).
        count: number of samples per bin.
    """

    bin_edges: tuple[float, ...]
    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    count: tuple[int, ...]

    @property
    def n_samples(self) -> int:
        """Total number of samples over all bins."""
        return sum(self.count)

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean ``|accuracy - confidence|``."""
        total = self.n_samples
        return math.fsum(
            c / total * abs(a - f) for c, a, f in zip(self.count, self.accuracy, self.confidence, strict=True) if c
        )


def reliability_curve(probs: Any, y_true: Any, *, n_bins: int = 15) -> ReliabilityCurve:
    """Bin the top-label confidences of ``probs`` and compare them with the accuracy per bin.

    Args:
        probs: probabilities, shape ``(n, k)``, in ``[0, 1]``.
        y_true: class indices ``(n,)`` or a one-hot / soft ``(n, k)`` matrix (argmax = label).
        n_bins: number of equal-width confidence bins.

    Raises:
        ValueError: on bad shapes or values, or ``n_bins < 1``.
    """
    p = check_probs(probs)
    labels = _labels(y_true, p.shape)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        mean_acc = np.where(count > 0, acc_sum / count, np.nan)
    return ReliabilityCurve(
        bin_edges=tuple(float(e) for e in edges),
        confidence=tuple(float(v) for v in mean_conf),
        accuracy=tuple(float(v) for v in mean_acc),
        count=tuple(int(c) for c in count),
    )


def expected_calibration_error(probs: Any, y_true: Any, *, n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins (see module doc)."""
    return reliability_curve(probs, y_true, n_bins=n_bins).ece


def negative_log_likelihood(logits: Any, y_true: Any, *, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against class indices ``y_true``."""
    z = _check_logits(logits)
    labels = _labels(y_true, z.shape)
    t = _check_temperature(temperature)
    log_probs = _log_softmax(z / t)
    return float(-np.mean(log_probs[np.arange(z.shape[0]), labels]))


def fit_temperature(
    logits: Any,
    y_true: Any,
    *,
    bounds: tuple[float, float] = (0.05, 20.0),
    xatol: float = 1e-7,
) -> float:
    """Fit the temperature that minimises the NLL of ``softmax(logits / T)`` on ``y_true``.

    Fit on the validation split, never on the test split. The search is a deterministic bounded
    Brent search over ``log T`` in ``bounds``.

    Args:
        logits: pre-softmax scores, shape ``(n, k)``.
        y_true: class indices ``(n,)`` or a one-hot ``(n, k)`` matrix.
        bounds: ``(T_min, T_max)``, both > 0.
        xatol: absolute tolerance on ``log T``.

    Returns:
        The temperature as a Python float. When the optimum lies on a bound (e.g. perfectly
        separated validation logits, whose NLL keeps falling as ``T -> 0``) the bound is
        returned and a :class:`RuntimeWarning` is issued.
    """
    z = _check_logits(logits)
    labels = _labels(y_true, z.shape)
    lo, hi = (float(b) for b in bounds)
    if not (0.0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"bounds must satisfy 0 < T_min < T_max < inf, got {bounds!r}")
    rows = np.arange(z.shape[0])
    log_lo, log_hi = math.log(lo), math.log(hi)

    def nll(log_t: float) -> float:
        return float(-np.mean(_log_softmax(z / math.exp(log_t))[rows, labels]))

    result = minimize_scalar(nll, bounds=(log_lo, log_hi), method="bounded", options={"xatol": xatol})
    # The bounded search never evaluates the end points themselves: compare with them explicitly.
    _, best_log_t = min((nll(x), x) for x in (float(result.x), log_lo, log_hi))
    temperature = math.exp(best_log_t)
    if min(best_log_t - log_lo, log_hi - best_log_t) <= 10 * xatol:
        warnings.warn(
            f"fitted temperature {temperature:.4g} lies on the search bound {bounds}; "
            "the validation logits may be degenerate (e.g. perfectly separated)",
            RuntimeWarning,
            stacklevel=2,
        )
    return temperature


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / temperature)``, float64 ``(n, k)``."""
    z = _check_logits(logits)
    t = _check_temperature(temperature)
    return np.exp(_log_softmax(z / t))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")
    return t


def _check_logits(logits: Any) -> np.ndarray:
    z = np.asarray(logits)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (n_samples >= 1, n_classes >= 2), got {z.shape}")
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)):
        raise ValueError(f"logits must be numeric, got dtype {z.dtype}")
    z = z.astype(np.float64)
    if not np.all(np.isfinite(z)):
        raise ValueError("logits hold NaN or infinite values")
    return z


def _labels(y_true: Any, shape: tuple[int, int]) -> np.ndarray:
    """Class indices from ``(n,)`` integer labels or the argmax of an ``(n, k)`` matrix."""
    n, k = shape
    t = np.asarray(y_true)
    if t.ndim == 2:
        if t.shape != (n, k):
            raise ValueError(f"y_true has shape {t.shape}, expected {(n, k)}")
        if not np.all(np.isfinite(t.astype(np.float64))):
            raise ValueError("y_true holds NaN or infinite values")
        return t.argmax(axis=1)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"y_true has shape {t.shape}, expected ({n},) class indices or {(n, k)}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"1-D y_true must hold integer class indices, got dtype {t.dtype}")
    if np.any((t < 0) | (t >= k)):
        bad = t[(t < 0) | (t >= k)][:10].tolist()
        raise ValueError(f"class index out of range [0, {k}): {bad}")
    return t.astype(np.int64)
