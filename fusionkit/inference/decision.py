"""The decision rule of a submission: what the MILK10k metric (macro Dice at ``> 0.5``) is given.

The official score binarises every class column at ``> 0.5``, so a calibrated posterior whose top
class is at most 0.5 counts as negative for every class. Three rules turn posteriors into the
values a submission holds:

- ``probs``: the posteriors as they are (best for ranking metrics such as AUC);
- ``argmax``: one-hot of the top class (every lesion gets exactly one positive class; AUC loses
  the ranking within each class);
- ``thresholds``: per class a threshold t_c fitted on the validation split to maximise that
  class's Dice, applied as the monotone rescaling :func:`rescale` (``p > t_c`` exactly when the
  rescaled value is ``> 0.5``), so the ranking (AUC) of every class is kept. The values are then
  decision scores, not probabilities: a row no longer sums to 1.

A threshold is fitted only for a class with at least :data:`MIN_POSITIVES` validation positives;
a rarer class keeps 0.5 (a threshold fitted on one or two lesions is noise). The fitted rule is a
:class:`DecisionRecord`, fitted once at the end of training (:func:`fit_decision`) and stored with
the model (the run's ``decision_rule.json``, a saved pipeline's ``config.json``, the ONNX sidecar),
so predicting never needs the training data again.

Written here rather than taken from scikit-learn: the rule is the challenge's own ``> 0.5``
binarisation, which no library threshold search targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from fusionkit.errors import ConfigError
from fusionkit.metrics.isic import POSITIVE_THRESHOLD

DECISION_RULES = ("probs", "argmax", "thresholds")
"""The decision rules a submission can use (see the module docstring)."""

DecisionRule = Literal["probs", "argmax", "thresholds"]

DEFAULT_DECISION = "thresholds"
"""The decision rule ``fusionkit predict`` uses unless told otherwise (see docs/how-to/best-model.md)."""

MIN_POSITIVES = 5
"""Fewest validation positives a class needs for its threshold to be fitted (below: it keeps 0.5)."""

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


def fit_thresholds(labels: Any, probs: Any, *, min_positives: int = 0) -> tuple[float, ...]:
    """Per-class thresholds maximising each class's Dice of ``probs > t`` on labelled data.

    Macro Dice is the mean of per-class Dice and each class is binarised on its own, so each class
    is fitted alone. The candidates are 0.5 and the midpoints between consecutive distinct scores;
    ties go to the candidate nearest 0.5, so the fitted rule never scores below the plain ``> 0.5``
    rule on the data it was fitted on. A class with fewer than ``min_positives`` positives keeps
    0.5 (the default 0 fits every class).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    out = []
    for c in range(p.shape[1]):
        if int(np.sum(y == c)) < min_positives:
            out.append(POSITIVE_THRESHOLD)
            continue
        scores = p[:, c]
        distinct = np.unique(scores)
        mids = (distinct[1:] + distinct[:-1]) / 2.0
        candidates = np.clip(
            np.concatenate([[POSITIVE_THRESHOLD], mids, [distinct[0] - _EPS, distinct[-1]]]), _EPS, 1 - _EPS
        )
        dice = _dice_by_threshold(y == c, scores, candidates)
        best = np.flatnonzero(dice >= dice.max() - 1e-12)
        out.append(float(candidates[best[np.argmin(np.abs(candidates[best] - POSITIVE_THRESHOLD))]]))
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


@dataclass(frozen=True)
class DecisionRecord:
    """A decision rule with what it was fitted on: what travels with a trained model.

    ``thresholds`` holds one value per class (0.5 for a class left unfitted); ``fitted`` says per
    class whether its threshold was fitted (it had at least ``min_positives`` of the ``positives``
    validation lesions); ``lesions`` is the size of the validation split it was fitted on and
    ``tta`` the test-time augmentation of those predictions.
    """

    rule: str
    class_names: tuple[str, ...]
    thresholds: tuple[float, ...] | None = None
    fitted: tuple[bool, ...] | None = None
    positives: tuple[int, ...] | None = None
    min_positives: int = MIN_POSITIVES
    lesions: int = 0
    tta: str = "none"

    def apply(self, probs: Any) -> np.ndarray:
        """The values this rule gives ``probs`` (n, N) (see :func:`apply_decision`).

        Raises:
            ConfigError: the ``thresholds`` rule without thresholds (a run that stored none).
        """
        if self.rule == "thresholds" and self.thresholds is None:
            raise ConfigError(
                "the thresholds decision rule has no thresholds (the run stored no inference.json): fit them "
                "with FusionPipeline.refit_decision() or `fusionkit predict --rule argmax`"
            )
        return apply_decision(probs, self.rule, thresholds=self.thresholds)

    def predicted(self, probs: Any) -> list[list[str]]:
        """Per row, the classes this rule predicts: those whose value is ``> 0.5`` (the official binarisation)."""
        values = self.apply(probs)
        return [[c for c, v in zip(self.class_names, row, strict=True) if v > POSITIVE_THRESHOLD] for row in values]

    def with_rule(self, rule: str) -> DecisionRecord:
        """The same record under another rule (``thresholds`` needs fitted thresholds)."""
        check_decision(rule)
        if rule == "thresholds" and self.thresholds is None:
            raise ValueError("the thresholds rule needs thresholds fitted on a validation split; none are stored")
        return DecisionRecord(**{**asdict(self), "rule": rule})

    def describe(self) -> str:
        """One line: what a CSV under this rule holds."""
        if self.rule == "probs":
            return "the class probabilities (posterior P_final; each row sums to 1)"
        if self.rule == "argmax":
            return "the one-hot top class (1.0 for the predicted class, 0.0 elsewhere)"
        fitted = [c for c, f in zip(self.class_names, self.fitted or (), strict=False) if f]
        return (
            f"decision scores, not probabilities: each class rescaled so that > 0.5 means its threshold "
            f"is passed (thresholds fitted on {self.lesions} validation lesions for {len(fitted)} of "
            f"{len(self.class_names)} classes, the others keep 0.5; rows need not sum to 1)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (thresholds by class name)."""
        out: dict[str, Any] = {"format": "fusionkit.decision", "version": 1, "rule": self.rule}
        out["class_names"] = list(self.class_names)
        if self.thresholds is not None:
            out["thresholds"] = dict(zip(self.class_names, self.thresholds, strict=True))
            out["fitted"] = dict(zip(self.class_names, self.fitted or (True,) * len(self.class_names), strict=True))
            out["positives"] = dict(zip(self.class_names, self.positives or (0,) * len(self.class_names), strict=True))
        out.update(min_positives=self.min_positives, lesions=self.lesions, tta=self.tta)
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DecisionRecord:
        """Rebuild a record from :meth:`to_dict` output (``ValueError`` when malformed)."""
        try:
            if state.get("format") != "fusionkit.decision":
                raise ValueError(f"format {state.get('format')!r}; expected 'fusionkit.decision'")
            names = tuple(str(c) for c in state["class_names"])
            rule = check_decision(state["rule"])
            by = lambda key, kind: None if key not in state else tuple(kind(state[key][c]) for c in names)  # noqa: E731
            return cls(
                rule=rule,
                class_names=names,
                thresholds=by("thresholds", float),
                fitted=by("fitted", bool),
                positives=by("positives", int),
                min_positives=int(state.get("min_positives", MIN_POSITIVES)),
                lesions=int(state.get("lesions", 0)),
                tta=str(state.get("tta", "none")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed decision record ({exc!r})") from None


def fit_decision(
    labels: Any,
    probs: Any,
    class_names: Sequence[str],
    *,
    rule: str = DEFAULT_DECISION,
    min_positives: int = MIN_POSITIVES,
    tta: str = "none",
) -> DecisionRecord:
    """Fit the per-class thresholds on validation predictions and return the record of ``rule``.

    Thresholds are fitted (and stored) whatever ``rule`` is, so the rule can be switched later
    without the validation data; classes with fewer than ``min_positives`` positives keep 0.5.
    """
    check_decision(rule)
    y = np.asarray(labels, dtype=np.int64)
    positives = tuple(int(np.sum(y == c)) for c in range(len(class_names)))
    return DecisionRecord(
        rule=rule,
        class_names=tuple(class_names),
        thresholds=fit_thresholds(y, probs, min_positives=min_positives),
        fitted=tuple(n >= min_positives for n in positives),
        positives=positives,
        min_positives=min_positives,
        lesions=len(y),
        tta=tta,
    )


def average_decisions(records: Sequence[DecisionRecord]) -> DecisionRecord:
    """One record for an ensemble: the members' thresholds averaged (a class counts as fitted
    when any member fitted it), the first member's rule."""
    first = records[0]
    if len(records) == 1 or first.thresholds is None or any(r.thresholds is None for r in records):
        return first
    return DecisionRecord(
        rule=first.rule,
        class_names=first.class_names,
        thresholds=tuple(float(t) for t in np.mean([list(r.thresholds or ()) for r in records], axis=0)),
        fitted=tuple(bool(any(f)) for f in zip(*(r.fitted or () for r in records), strict=True)),
        positives=tuple(int(sum(p)) for p in zip(*(r.positives or () for r in records), strict=True)),
        min_positives=first.min_positives,
        lesions=sum(r.lesions for r in records),
        tta=first.tta,
    )
