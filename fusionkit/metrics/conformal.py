"""Split-conformal prediction sets from posteriors: LAC and APS, marginal or class-conditional.

Given calibration posteriors ``P`` (``n x k``) with true labels ``y``, a score ``s(x, c)`` measures
how unusual class ``c`` is for ``x``; the threshold ``q`` is the ``ceil((n + 1)(1 - alpha)) / n``
empirical quantile of the true-class scores ``s(x_i, y_i)``; the set of a new ``x`` is
``{c : s(x, c) <= q}``. If calibration and test lesions are exchangeable, the set holds the true
class with probability at least ``1 - alpha`` (Vovk et al. 2005; Angelopoulos and Bates 2021).

* ``"lac"`` (least ambiguous set-valued classifier, Sadinle et al. 2019): ``s(x, c) = 1 - p_c``;
  the smallest sets on average.
* ``"aps"`` (adaptive prediction sets, Romano et al. 2020), non-randomised:
  ``s(x, c) = sum of p_j over the classes j ranked at or above c`` (ties broken by class index);
  sets grow where the model is unsure.
* ``class_conditional=True`` (Mondrian): one threshold per class from that class's calibration
  lesions only, so the guarantee holds for every class separately, the rare ones included. A class
  with fewer than ``1 / alpha - 1`` calibration lesions cannot reach the quantile and gets
  ``q = inf``: it is in every set (stated in :attr:`ConformalCalibration.always_included`).

An empty set (possible under LAC when no class is likely enough) means "none is plausible":
refer. MAPIE (1.x) and TorchCP were considered: MAPIE calibrates a scikit-learn estimator it calls
itself, TorchCP a torch model or its logits, and neither takes the posteriors fusionkit already
has (possibly temperature-scaled or ensembled) without wrapping them in a fake model; the few
lines here take them as they are.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fusionkit.metrics.isic import check_class_names, check_probs
from fusionkit.utils.io import atomic_write_text

__all__ = [
    "ConformalCalibration",
    "ConformalMethod",
    "calibrate_conformal",
    "conformal_scores",
    "set_coverage",
    "split_conformal_evaluation",
    "sets_path",
    "write_prediction_sets",
]

ConformalMethod = Literal["lac", "aps"]


def conformal_scores(probs: Any, method: ConformalMethod) -> np.ndarray:
    """The ``(n, k)`` non-conformity scores ``s(x, c)`` of every class (module docstring)."""
    p = check_probs(probs)
    if method == "lac":
        return 1.0 - p
    if method == "aps":
        order = np.argsort(-p, axis=1, kind="stable")
        cumulative = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
        scores = np.empty_like(p)
        np.put_along_axis(scores, order, cumulative, axis=1)
        return scores
    raise ValueError(f"method must be 'lac' or 'aps', got {method!r}")


def _labels(y_true: Any, n: int, k: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must be 1-D integer class indices, got shape {y.shape} dtype {y.dtype}")
    if len(y) != n:
        raise ValueError(f"y_true has {len(y)} labels but probs has {n} rows")
    if np.any((y < 0) | (y >= k)):
        raise ValueError(f"class index out of range [0, {k})")
    return y.astype(np.int64)


def _quantile(scores: np.ndarray, alpha: float) -> float:
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    if rank > n:
        return math.inf
    return float(np.sort(scores)[rank - 1])


@dataclass(frozen=True, kw_only=True)
class ConformalCalibration:
    """Calibrated thresholds: turn posteriors into prediction sets with :meth:`predict_sets`.

    Attributes:
        method: ``"lac"`` or ``"aps"``.
        alpha: the miscoverage level (sets hold the truth with probability >= ``1 - alpha``).
        class_conditional: one threshold per class (True) or one for all (False).
        thresholds: the ``k`` thresholds (all equal when marginal); ``inf`` for a class in every set.
        class_names: the ``k`` class names.
        n_calibration: calibration lesions per class.
    """

    method: ConformalMethod
    alpha: float
    class_conditional: bool
    thresholds: tuple[float, ...]
    class_names: tuple[str, ...]
    n_calibration: tuple[int, ...]

    @property
    def always_included(self) -> list[str]:
        """Classes whose threshold is infinite (too few calibration lesions): in every set."""
        return [c for c, q in zip(self.class_names, self.thresholds, strict=True) if math.isinf(q)]

    def predict_sets(self, probs: Any) -> np.ndarray:
        """Boolean ``(n, k)`` membership: ``sets[i, c]`` is whether class ``c`` is in lesion ``i``'s set."""
        scores = conformal_scores(check_probs(probs, len(self.class_names)), self.method)
        return scores <= np.asarray(self.thresholds)[None, :]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (an infinite threshold is written as ``null``)."""
        return {
            "method": self.method,
            "alpha": self.alpha,
            "class_conditional": self.class_conditional,
            "thresholds": [None if math.isinf(q) else q for q in self.thresholds],
            "class_names": list(self.class_names),
            "n_calibration": list(self.n_calibration),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConformalCalibration:
        """The inverse of :meth:`to_dict`."""
        return cls(
            method=data["method"],
            alpha=float(data["alpha"]),
            class_conditional=bool(data["class_conditional"]),
            thresholds=tuple(math.inf if q is None else float(q) for q in data["thresholds"]),
            class_names=tuple(data["class_names"]),
            n_calibration=tuple(int(n) for n in data["n_calibration"]),
        )


def calibrate_conformal(
    probs: Any,
    y_true: Any,
    class_names: Sequence[str],
    *,
    alpha: float = 0.1,
    method: ConformalMethod = "lac",
    class_conditional: bool = False,
) -> ConformalCalibration:
    """Calibrate split-conformal thresholds on labelled posteriors (the validation split's).

    Args:
        probs: calibration posteriors ``(n, k)``.
        y_true: their true class indices ``(n,)``.
        class_names: the ``k`` class names.
        alpha: miscoverage level in (0, 1), e.g. 0.1 for 90 % sets.
        method: ``"lac"`` or ``"aps"``.
        class_conditional: a threshold per class (Mondrian conformal).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    names = tuple(check_class_names(class_names))
    p = check_probs(probs, len(names))
    y = _labels(y_true, len(p), len(names))
    true_scores = conformal_scores(p, method)[np.arange(len(p)), y]
    counts = tuple(int(np.sum(y == c)) for c in range(len(names)))
    if class_conditional:
        thresholds = tuple(_quantile(true_scores[y == c], alpha) if counts[c] else math.inf for c in range(len(names)))
    else:
        thresholds = (_quantile(true_scores, alpha),) * len(names)
    return ConformalCalibration(
        method=method,
        alpha=float(alpha),
        class_conditional=class_conditional,
        thresholds=thresholds,
        class_names=names,
        n_calibration=counts,
    )


def set_coverage(sets: Any, y_true: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Empirical coverage and mean set size, overall and per true class.

    Returns:
        ``{"coverage", "mean_size", "empty", "per_class": {class: {"n", "coverage", "mean_size"}}}``;
        a class without lesions has ``n`` 0 and NaN coverage and size.
    """
    names = list(check_class_names(class_names))
    s = np.asarray(sets, dtype=bool)
    if s.ndim != 2 or s.shape[1] != len(names):
        raise ValueError(f"sets must be (n, {len(names)}) booleans, got shape {s.shape}")
    y = _labels(y_true, len(s), len(names))
    covered = s[np.arange(len(s)), y]
    sizes = s.sum(axis=1)
    per_class = {}
    for c, name in enumerate(names):
        mask = y == c
        n = int(mask.sum())
        per_class[name] = {
            "n": n,
            "coverage": float(covered[mask].mean()) if n else math.nan,
            "mean_size": float(sizes[mask].mean()) if n else math.nan,
        }
    return {
        "coverage": float(covered.mean()),
        "mean_size": float(sizes.mean()),
        "empty": int(np.sum(sizes == 0)),
        "per_class": per_class,
    }


def sets_path(submission: str | Path) -> Path:
    """Where the sets of a submission go: ``sub.csv`` -> ``sub.sets.csv`` (beside it)."""
    path = Path(submission)
    return path.with_name(f"{path.stem}.sets{path.suffix or '.csv'}")


def write_prediction_sets(path: str | Path, lesion_ids: Sequence[str], sets: Any, class_names: Sequence[str]) -> Path:
    """Write ``lesion_id,prediction_set`` (class names joined by ``|``, in class order; an empty
    set is an empty cell) atomically; returns the path."""
    names = list(check_class_names(class_names))
    s = np.asarray(sets, dtype=bool)
    if s.ndim != 2 or s.shape != (len(lesion_ids), len(names)):
        raise ValueError(f"sets must have shape ({len(lesion_ids)}, {len(names)}), got {s.shape}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["lesion_id", "prediction_set"])
    for lesion_id, row in zip(lesion_ids, s, strict=True):
        writer.writerow([lesion_id, "|".join(n for n, keep in zip(names, row, strict=True) if keep)])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def split_conformal_evaluation(
    probs: Any,
    y_true: Any,
    class_names: Sequence[str],
    *,
    alpha: float = 0.1,
    method: ConformalMethod = "lac",
    class_conditional: bool = False,
    n_splits: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out coverage of the conformal sets on one labelled set (the validation split).

    The lesions are split at random into two halves ``n_splits`` times; each time the sets are
    calibrated on one half and measured on the other (never on the lesions they were calibrated
    on). Returns :func:`set_coverage`'s fields averaged over the splits (per class: NaN-skipping
    means), plus ``"coverage_min"`` (the worst split), ``"alpha"``, ``"method"``,
    ``"class_conditional"``, ``"n_splits"``.
    """
    names = list(check_class_names(class_names))
    p = check_probs(probs, len(names))
    y = _labels(y_true, len(p), len(names))
    if len(p) < 4:
        raise ValueError(f"need at least 4 labelled lesions to split for calibration, got {len(p)}")
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(n_splits):
        order = rng.permutation(len(p))
        cal, test = order[: len(p) // 2], order[len(p) // 2 :]
        calibration = calibrate_conformal(
            p[cal], y[cal], names, alpha=alpha, method=method, class_conditional=class_conditional
        )
        runs.append(set_coverage(calibration.predict_sets(p[test]), y[test], names))
    per_class = {}
    for name in names:
        values = [r["per_class"][name] for r in runs]
        per_class[name] = {
            "n": float(np.mean([v["n"] for v in values])),
            "coverage": _nanmean([v["coverage"] for v in values]),
            "mean_size": _nanmean([v["mean_size"] for v in values]),
        }
    return {
        "alpha": alpha,
        "method": method,
        "class_conditional": class_conditional,
        "n_splits": n_splits,
        "coverage": float(np.mean([r["coverage"] for r in runs])),
        "coverage_min": float(np.min([r["coverage"] for r in runs])),
        "mean_size": float(np.mean([r["mean_size"] for r in runs])),
        "empty": float(np.mean([r["empty"] for r in runs])),
        "per_class": per_class,
    }


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan
