"""The decision rule of a submission: what the MILK10k metric (macro Dice at ``> 0.5``) is given.

The official score binarises every class column at ``> 0.5``, so a calibrated posterior whose top
class is at most 0.5 counts as negative for every class. Three rules turn posteriors into the
values a submission holds:

- ``probs``: the posteriors as they are (best for ranking metrics such as AUC);
- ``argmax``: one-hot of the top class (every lesion gets exactly one positive class; AUC loses
  the ranking within each class);
- ``thresholds``: per class a threshold t_c fitted on the validation split to maximise that
  class's Dice, applied as the monotone rescaling :func:`rescale` (``p > t_c`` exactly when the
  rescaled value is ``> 0.5``), so the ranking (AUC) of every class is kept.

Written here rather than taken from scikit-learn: the rule is the challenge's own ``> 0.5``
binarisation, which no library threshold search targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

DECISION_RULES = ("probs", "argmax", "thresholds")
"""The decision rules a submission can use (see the module docstring)."""

DecisionRule = Literal["probs", "argmax", "thresholds"]

_OFFICIAL = 0.5
_EPS = 1e-6


def check_decision(name: str) -> str:
    """``name`` if it is a decision rule, else ``ValueError`` naming the choices."""
    if name not in DECISION_RULES:
        raise ValueError(f"unknown decision rule {name!r}; expected one of {', '.join(DECISION_RULES)}")
    return name


def one_hot_argmax(probs: Any) -> np.ndarray:
    """One-hot (n, N) float64 of each row's top class (ties: the first)."""
    p = np.asarray(probs, dtype=np.float64)
    out = np.zeros_like(p)
    out[np.arange(len(p)), p.argmax(axis=1)] = 1.0
    return out


def rescale(probs: Any, thresholds: Sequence[float]) -> np.ndarray:
    """Map each class's probability piecewise-linearly so that ``t_c`` lands on 0.5.

    ``r = 0.5 p / t`` for ``p <= t`` and ``0.5 + 0.5 (p - t) / (1 - t)`` above: monotone, in [0, 1],
    and ``r > 0.5`` exactly when ``p > t``. Thresholds of 0.5 leave the values unchanged.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)[None, :]
    low = 0.5 * p / t
    high = 0.5 + 0.5 * (p - t) / (1.0 - t)
    return np.clip(np.where(p > t, np.maximum(high, np.nextafter(0.5, 1.0)), low), 0.0, 1.0)


def _dice_by_threshold(truth: np.ndarray, scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Dice of ``scores > t`` against the bool ``truth`` for each candidate t (1.0 when 2TP+FP+FN = 0)."""
    order = np.sort(scores)
    pos = np.sort(scores[truth])
    predicted = len(scores) - np.searchsorted(order, candidates, side="right")
    tp = len(pos) - np.searchsorted(pos, candidates, side="right")
    fp = predicted - tp
    fn = len(pos) - tp
    denominator = 2 * tp + fp + fn
    return np.where(denominator == 0, 1.0, 2 * tp / np.maximum(denominator, 1))


def fit_thresholds(labels: Any, probs: Any) -> tuple[float, ...]:
    """Per-class thresholds maximising each class's Dice of ``probs > t`` on labelled data.

    Macro Dice is the mean of per-class Dice and each class is binarised on its own, so each class
    is fitted alone. The candidates are 0.5 and the midpoints between consecutive distinct scores;
    ties go to the candidate nearest 0.5, so the fitted rule never scores below the plain ``> 0.5``
    rule on the data it was fitted on.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    out = []
    for c in range(p.shape[1]):
        scores = p[:, c]
        distinct = np.unique(scores)
        mids = (distinct[1:] + distinct[:-1]) / 2.0
        candidates = np.clip(np.concatenate([[_OFFICIAL], mids, [distinct[0] - _EPS, distinct[-1]]]), _EPS, 1 - _EPS)
        dice = _dice_by_threshold(y == c, scores, candidates)
        best = np.flatnonzero(dice >= dice.max() - 1e-12)
        out.append(float(candidates[best[np.argmin(np.abs(candidates[best] - _OFFICIAL))]]))
    return tuple(out)


def apply_decision(probs: Any, rule: str, *, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """The values a submission holds under ``rule`` (``thresholds`` needed for ``thresholds``)."""
    check_decision(rule)
    p = np.asarray(probs, dtype=np.float64)
    if rule == "argmax":
        return one_hot_argmax(p)
    if rule == "thresholds":
        if thresholds is None or len(thresholds) != p.shape[1]:
            raise ValueError(f"the thresholds rule needs one threshold per class ({p.shape[1]})")
        return rescale(p, thresholds)
    return p


def macro_f1_argmax(labels: Any, probs: Any) -> float:
    """Macro F1 of the argmax prediction (sklearn ``f1_score(average="macro")`` over the classes present)."""
    from sklearn.metrics import f1_score

    p = np.asarray(probs)
    y = np.asarray(labels, dtype=np.int64)
    classes = np.arange(p.shape[1])
    return float(f1_score(y, p.argmax(axis=1), labels=classes[np.isin(classes, y)], average="macro", zero_division=0))
