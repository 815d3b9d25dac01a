"""ISIC-challenge classification metrics, numerically identical to the official scorer.

:func:`isic_metrics` reproduces the per-category and macro-averaged metrics of
``isic_challenge_scoring.ClassificationScore`` (version 5.6.0) on in-memory arrays, without
depending on that package at run time. These are the rows of Table 5 in the JI-ADF paper:

* truth and prediction are binarised per class with ``value > 0.5`` (strictly), so a lesion whose
  top probability is ``<= 0.5`` is predicted negative for every class;
* ``accuracy``, ``sensitivity``, ``specificity``, ``dice`` (2TP / (2TP + FP + FN)), ``ppv``, ``npv``
  come from that binary confusion matrix, and a zero denominator scores ``1.0``;
* ``auc`` is :func:`sklearn.metrics.roc_auc_score`, ``ap`` is
  :func:`sklearn.metrics.average_precision_score`, both on the raw truth and probabilities;
* ``auc_sens_80`` is the raw (not McClish-normalised) area under the ROC curve where the
  sensitivity is at least 0.8, with an interpolated point at exactly 0.8;
* each ``macro`` value is the mean over classes of the per-class values, skipping NaN
  (pandas' ``DataFrame.mean``, as the scorer does).

Undefined values
    For a class whose truth column has a single value (no positives, or no negatives) the ROC
    curve does not exist. The scorer then returns NaN for ``auc`` (the scikit-learn installed
    with it, 1.9, warns and returns NaN; older releases raise) and either NaN (no negatives) or an
    exception for ``auc_sens_80`` (``ValueError: array of sample points is empty`` when there are
    no positives, so the official scorer cannot score such a set at all). fusionkit
    returns NaN for both, never raises, and leaves the class out of those two macro means. ``ap``
    is whatever scikit-learn returns, as in the scorer (0.0 for no positives and 1.0 for no
    negatives with scikit-learn 1.9); the confusion-matrix metrics are always defined. Truth
    columns holding soft values other than 0 and 1 make scikit-learn (and so the scorer) reject
    the ranking metrics (``continuous format is not supported``): ``auc``, ``auc_sens_80`` and
    ``ap`` are NaN for such a class, while the thresholded metrics use the ``> 0.5``
    binarisation. The classes without any positive are listed under ``"empty_classes"`` and every
    NaN under ``"undefined"``.

``accuracy`` (the Table 5 "Accuracy" row) is the official per-class one-vs-rest accuracy, whose
macro mean is dominated by true negatives and reads far higher than the share of lesions
classified correctly; that share is ``multiclass_accuracy`` (``"macro"`` only, not a Table 5 row).
``balanced_accuracy`` (reported in ``"macro"`` only) is not a Table 5 row either: it is the scorer's
"aggregate" metric, the mean over classes present in the truth of the recall of the argmax
prediction. As in the scorer, a row whose maximum is tied between classes gets no label: a tied
prediction counts as wrong, a tied (soft) truth row is left out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import sklearn.metrics

__all__ = ["METRIC_KEYS", "isic_metrics"]

#: Per-class metric keys, in the order of the paper's Table 5.
METRIC_KEYS: tuple[str, ...] = (
    "auc",
    "auc_sens_80",
    "ap",
    "accuracy",
    "sensitivity",
    "specificity",
    "dice",
    "ppv",
    "npv",
)

POSITIVE_THRESHOLD = 0.5
"""The official binarisation: a class is positive (in the truth or the prediction) when its value is ``> 0.5``."""
_SENSITIVITY_FLOOR = 0.8
_NAN = float("nan")


def isic_metrics(y_true: Any, probs: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Compute the ISIC-challenge classification metrics of a prediction set.

    Args:
        y_true: class indices, shape ``(n,)`` and an integer dtype, or a one-hot / soft truth
            matrix of shape ``(n, k)`` with values in ``[0, 1]``.
        probs: predicted probabilities, shape ``(n, k)``, values in ``[0, 1]`` (rows need not
            sum to 1; the scorer does not require it either).
        class_names: the ``k`` class names, in column order.

    Returns:
        ``{"per_class": {metric: {class: value}}, "macro": {metric: value},
        "empty_classes": [class, ...], "undefined": {metric: [class, ...]}}``, with ``metric``
        one of :data:`METRIC_KEYS`; ``"macro"`` also holds ``"balanced_accuracy"`` and
        ``"multiclass_accuracy"`` (not official Table 5 rows). All values are Python floats; see the module docstring for when they are NaN.

    Raises:
        ValueError: on a shape mismatch, a NaN or infinite value, a probability or truth outside
            ``[0, 1]``, a class index out of range, an empty set, or bad class names.
    """
    names = check_class_names(class_names)
    p = check_probs(probs, len(names))
    t = truth_matrix(y_true, p.shape)

    per_class: dict[str, dict[str, float]] = {key: {} for key in METRIC_KEYS}
    for j, name in enumerate(names):
        values = _category_metrics(t[:, j], p[:, j])
        for key in METRIC_KEYS:
            per_class[key][name] = values[key]

    macro = {key: _nanmean(per_class[key].values()) for key in METRIC_KEYS}
    macro["balanced_accuracy"] = _balanced_multiclass_accuracy(t, p)
    macro["multiclass_accuracy"] = _multiclass_accuracy(t, p)
    undefined = {key: [name for name in names if math.isnan(per_class[key][name])] for key in METRIC_KEYS}
    return {
        "per_class": per_class,
        "macro": macro,
        "empty_classes": [name for j, name in enumerate(names) if not np.any(t[:, j] > POSITIVE_THRESHOLD)],
        "undefined": {key: classes for key, classes in undefined.items() if classes},
    }


def _category_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """All per-class metrics of one class column (the scorer's ``_category_score``)."""
    t_bin = truth > POSITIVE_THRESHOLD
    p_bin = pred > POSITIVE_THRESHOLD
    tp = float(np.sum(t_bin & p_bin))
    tn = float(np.sum(~t_bin & ~p_bin))
    fp = float(np.sum(~t_bin & p_bin))
    fn = float(np.sum(t_bin & ~p_bin))
    out = {
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }
    out.update(_ranking_metrics(truth, pred))
    return out


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or the scorer's "freebie" 1.0 when the denominator is 0."""
    return 1.0 if denominator == 0 else numerator / denominator


def _ranking_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """AUC, partial AUC above 80 % sensitivity and average precision of one class column."""
    if not np.all((truth == 0.0) | (truth == 1.0)):
        # scikit-learn: "continuous format is not supported" -> the scorer raises.
        return {"auc": _NAN, "auc_sens_80": _NAN, "ap": _NAN}
    weights = np.ones_like(truth)
    ap = _average_precision(truth, pred, weights)
    if np.all(truth == truth[0]):
        # Only one class in the truth: no ROC curve (the scorer returns NaN or raises).
        return {"auc": _NAN, "auc_sens_80": _NAN, "ap": ap}
    auc = float(sklearn.metrics.roc_auc_score(truth, pred, sample_weight=weights))
    return {"auc": auc, "auc_sens_80": _auc_above_sensitivity(truth, pred), "ap": ap}


def _average_precision(truth: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> float:
    """scikit-learn's average precision, as the scorer calls it (NaN where it would raise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ap = sklearn.metrics.average_precision_score(truth, pred, sample_weight=weights)
            return float(ap)
        except ValueError:
            return _NAN


def _auc_above_sensitivity(truth: np.ndarray, pred: np.ndarray) -> float:
    """Raw partial ROC area where sensitivity >= 0.8 (the scorer's ``auc_above_sensitivity``)."""
    fp_rates, tp_rates, _ = sklearn.metrics.roc_curve(truth, pred, drop_intermediate=False)
    index = int(tp_rates.searchsorted(_SENSITIVITY_FLOOR, side="left"))
    fp_rate_at_floor = np.interp(_SENSITIVITY_FLOOR, tp_rates[index - 1 : index + 1], fp_rates[index - 1 : index + 1])
    tp_segment = np.insert(tp_rates[index:], 0, _SENSITIVITY_FLOOR)
    fp_segment = np.insert(fp_rates[index:], 0, fp_rate_at_floor)
    return float(sklearn.metrics.auc(fp_segment, tp_segment))


def argmax_labels(matrix: np.ndarray) -> np.ndarray:
    """Row-wise argmax, with -1 ("undecided") where the maximum is tied."""
    is_max = matrix == matrix.max(axis=1, keepdims=True)
    labels = matrix.argmax(axis=1)
    labels[is_max.sum(axis=1) > 1] = -1
    return labels


def _balanced_multiclass_accuracy(truth: np.ndarray, probs: np.ndarray) -> float:
    """Mean per-class recall of the argmax prediction over classes present in the truth."""
    truth_labels = argmax_labels(truth)
    pred_labels = argmax_labels(probs)
    recalls = []
    for j in range(truth.shape[1]):
        support = int(np.sum(truth_labels == j))
        if support:
            recalls.append(float(np.sum((truth_labels == j) & (pred_labels == j))) / support)
    return _nanmean(recalls)


def _multiclass_accuracy(truth: np.ndarray, probs: np.ndarray) -> float:
    """Share of rows whose argmax prediction is the truth's (tied truth rows left out, tied
    predictions wrong, as in :func:`_balanced_multiclass_accuracy`)."""
    truth_labels = argmax_labels(truth)
    kept = truth_labels >= 0
    if not kept.any():
        return _NAN
    return float(np.mean(argmax_labels(probs)[kept] == truth_labels[kept]))


def _nanmean(values: Any) -> float:
    """Mean of the non-NaN values (NaN if there are none), like ``pandas.Series.mean``."""
    kept = [float(v) for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else _NAN


def check_class_names(class_names: Sequence[str]) -> list[str]:
    """``class_names`` as a list of unique non-empty strings, or ValueError."""
    if isinstance(class_names, str):
        raise ValueError("class_names must be a sequence of names, not a single string")
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty")
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class_names must be non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names!r}")
    return names


def check_probs(probs: Any, n_classes: int | None = None) -> np.ndarray:
    """``probs`` as a float64 ``(n, k)`` array of finite probabilities, or ValueError."""
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (n_samples, n_classes), got shape {p.shape}")
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"probs must be numeric, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if p.shape[0] == 0:
        raise ValueError("probs has no rows: cannot score an empty set")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(f"probs has {p.shape[1]} columns but {n_classes} class names were given")
    if not np.all(np.isfinite(p)):
        rows = np.flatnonzero(~np.all(np.isfinite(p), axis=1))
        raise ValueError(f"probs holds NaN or infinite values (rows {rows[:10].tolist()})")
    if np.any((p < 0.0) | (p > 1.0)):
        rows = np.flatnonzero(np.any((p < 0.0) | (p > 1.0), axis=1))
        raise ValueError(f"probs outside [0, 1] (rows {rows[:10].tolist()}); pass probabilities, not logits")
    return p


def truth_matrix(y_true: Any, shape: tuple[int, int]) -> np.ndarray:
    """The truth as a float ``(n, k)`` matrix (one-hot for class indices)."""
    n, k = shape
    t = np.asarray(y_true)
    if t.ndim == 1:
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(
                f"1-D y_true must hold integer class indices, got dtype {t.dtype}; "
                "pass a 2-D one-hot or soft matrix for probabilities"
            )
        if t.shape[0] != n:
            raise ValueError(f"y_true has {t.shape[0]} samples but probs has {n}")
        if np.any((t < 0) | (t >= k)):
            bad = t[(t < 0) | (t >= k)]
            raise ValueError(f"class index out of range [0, {k}): {bad[:10].tolist()}")
        out = np.zeros((n, k), dtype=np.float64)
        out[np.arange(n), t] = 1.0
        return out
    if t.ndim != 2:
        raise ValueError(f"y_true must be 1-D indices or 2-D (n, k), got shape {t.shape}")
    if t.shape != (n, k):
        raise ValueError(f"y_true has shape {t.shape} but probs has shape {(n, k)}")
    if not (np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer) or t.dtype == np.bool_):
        raise ValueError(f"y_true must be numeric, got dtype {t.dtype}")
    t = t.astype(np.float64)
    if not np.all(np.isfinite(t)):
        raise ValueError("y_true holds NaN or infinite values")
    if np.any((t < 0.0) | (t > 1.0)):
        raise ValueError("y_true (2-D) must hold values in [0, 1]")
    return t


def macro_f1_argmax(labels: Any, probs: Any) -> float:
    """Macro F1 of the argmax prediction (sklearn ``f1_score(average="macro")`` over the classes present)."""
    from sklearn.metrics import f1_score

    p = np.asarray(probs)
    y = np.asarray(labels, dtype=np.int64)
    classes = np.arange(p.shape[1])
    return float(f1_score(y, p.argmax(axis=1), labels=classes[np.isin(classes, y)], average="macro", zero_division=0))
