"""Selective prediction: refer the least confident lesions and score the rest.

The confidence of a lesion is its top posterior. Sorting lesions from most to least confident
(ties kept in input order), the risk at coverage ``m / n`` is the share of the ``m`` most
confident lesions whose argmax class is wrong; the risk-coverage curve is that risk for
``m = 1..n`` and the AURC its mean (Geifman and El-Yaniv 2017). ``e_aurc`` subtracts the AURC of
an ideal ranking of the same predictions (all right ones first), so 0 is a perfect ranking of
confidence. :func:`referral_metrics` gives the macro ISIC metrics of the lesions kept when the
least confident 10, 20, 30 % are referred.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusionkit.metrics.isic import check_class_names, check_probs, isic_metrics

__all__ = ["RiskCoverage", "referral_metrics", "risk_coverage"]


@dataclass(frozen=True)
class RiskCoverage:
    """The risk-coverage curve of a prediction set.

    Attributes:
        coverage: ``m / n`` for ``m = 1..n``.
        risk: error rate of the ``m`` most confident lesions.
        aurc: mean of ``risk``.
        e_aurc: ``aurc`` minus that of an ideal confidence ranking.
    """

    coverage: tuple[float, ...]
    risk: tuple[float, ...]
    aurc: float
    e_aurc: float


def _order(p: np.ndarray) -> np.ndarray:
    return np.argsort(-p.max(axis=1), kind="stable")


def _labels(y_true: Any, n: int, k: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != n or np.any((y < 0) | (y >= k)):
        raise ValueError(f"y_true must be {n} integer class indices in [0, {k})")
    return y


def risk_coverage(probs: Any, y_true: Any) -> RiskCoverage:
    """The risk-coverage curve and AURC of posteriors ``(n, k)`` against class indices ``(n,)``."""
    p = check_probs(probs)
    y = _labels(y_true, len(p), p.shape[1])
    wrong = (p.argmax(axis=1) != y).astype(np.float64)[_order(p)]
    m = np.arange(1, len(p) + 1)
    risk = np.cumsum(wrong) / m
    ideal = np.cumsum(np.sort(wrong)) / m
    return RiskCoverage(
        coverage=tuple((m / len(p)).tolist()),
        risk=tuple(risk.tolist()),
        aurc=float(risk.mean()),
        e_aurc=float(risk.mean() - ideal.mean()),
    )


def referral_metrics(
    probs: Any,
    y_true: Any,
    class_names: Sequence[str],
    *,
    fractions: Sequence[float] = (0.0, 0.1, 0.2, 0.3),
    metrics: Sequence[str] = ("dice", "auc", "multiclass_accuracy"),
) -> list[dict[str, Any]]:
    """Macro ISIC metrics of the lesions kept when the ``ceil(f * n)`` least confident are referred.

    Returns:
        one dict per fraction: ``{"referred_fraction", "referred", "kept", "metrics": {...}}``.
    """
    names = check_class_names(class_names)
    p = check_probs(probs, len(names))
    y = _labels(y_true, len(p), len(names))
    order = _order(p)
    rows = []
    for f in fractions:
        if not 0.0 <= f < 1.0:
            raise ValueError(f"referred fractions must be in [0, 1), got {f}")
        referred = math.ceil(f * len(p) - 1e-9)
        kept = order[: len(p) - referred]
        macro = isic_metrics(y[kept], p[kept], names)["macro"]
        rows.append(
            {
                "referred_fraction": float(f),
                "referred": int(referred),
                "kept": int(len(kept)),
                "metrics": {m: float(macro[m]) for m in metrics},
            }
        )
    return rows
