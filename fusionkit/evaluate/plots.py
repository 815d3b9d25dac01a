"""Evaluation figures: confusion matrix, reliability diagram, ROC curves, ADF gate weights.

Every ``plot_*`` function draws one figure, writes it as a PNG atomically (temporary file +
rename; the folder is created if missing) and returns the path. Figures are built with
:class:`matplotlib.figure.Figure` on the Agg canvas directly, never through ``pyplot``: nothing
touches the process-wide backend or the pyplot figure registry, so there is nothing left open
and the functions are safe in headless jobs and threads.

Gate weights are the adaptive-decision-fusion weights ``(alpha_I, alpha_IM, alpha_M)`` of the
image, image+metadata and metadata branches, one row per sample.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fusionkit.metrics.calibration import reliability_curve
from fusionkit.metrics.isic import check_class_names, check_probs
from fusionkit.utils.io import atomic_write_bytes

__all__ = [
    "GATE_BRANCHES",
    "gate_weight_table",
    "plot_confusion_matrix",
    "plot_gate_weights",
    "plot_reliability_diagram",
    "plot_roc_curves",
]

#: Names of the three ADF weights, in column order of the ``weights`` arrays.
GATE_BRANCHES: tuple[str, str, str] = ("alpha_I", "alpha_IM", "alpha_M")
_BRANCH_LABELS = (r"$\alpha_I$ (image)", r"$\alpha_{IM}$ (image+meta)", r"$\alpha_M$ (metadata)")
_BRANCH_COLORS = ("#4C72B0", "#55A868", "#DD8452")
_DPI = 120


def plot_confusion_matrix(
    y_true: Any,
    y_pred: Any,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """Plot the confusion matrix (rows: true class, columns: predicted class) to a PNG.

    Args:
        y_true: true class indices ``(n,)`` (or a one-hot ``(n, k)`` matrix).
        y_pred: predicted class indices ``(n,)`` (or probabilities ``(n, k)``, argmax is used).
        class_names: the ``k`` class names.
        path: PNG destination.
        normalize: show each row as fractions of its true-class count (a class without samples
            shows a row of zeros); otherwise raw counts.
        title: figure title (default: "Confusion matrix", with "(row-normalised)" if normalised).
    """
    names = check_class_names(class_names)
    k = len(names)
    t = _indices(y_true, k, "y_true")
    p = _indices(y_pred, k, "y_pred")
    _same_length(t, p)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    support = counts.sum(axis=1)
    shown = counts.astype(np.float64)
    if normalize:
        shown = np.divide(shown, support[:, None], out=np.zeros_like(shown), where=support[:, None] > 0)

    size = max(5.0, 0.55 * k + 3.0)
    fig = Figure(figsize=(size + 1.0, size), dpi=_DPI)
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(1, shown.max()))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "count")
    threshold = (1.0 if normalize else max(1, shown.max())) / 2
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}" if normalize else str(counts[i, j])
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7 if k > 8 else 9,
                color="white" if shown[i, j] > threshold else "black",
            )
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), [f"{name} (n={n})" for name, n in zip(names, support, strict=True)])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    default = "Confusion matrix" + (" (row-normalised)" if normalize else "")
    ax.set_title(title or default)
    return save_figure(fig, path)


def plot_reliability_diagram(probs: Any, y_true: Any, path: str | os.PathLike[str], *, n_bins: int = 15) -> Path:
    """Plot the top-label reliability diagram (accuracy per confidence bin) to a PNG.

    The upper panel shows the per-bin accuracy as bars, the mean confidence of each bin as
    markers and the diagonal of perfect calibration; the lower panel shows how many samples fall
    in each bin. The ECE (see :func:`fusionkit.metrics.expected_calibration_error`) is in the title.
    """
    curve = reliability_curve(probs, y_true, n_bins=n_bins)
    edges = np.asarray(curve.bin_edges)
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    accuracy = np.nan_to_num(np.asarray(curve.accuracy), nan=0.0)
    confidence = np.asarray(curve.confidence)

    fig = Figure(figsize=(6.0, 6.5), dpi=_DPI)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centers, accuracy, width=width, edgecolor="black", color="#4C72B0", alpha=0.8, label="Accuracy")
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="Perfect calibration")
    top.plot(centers, confidence, "o", color="#C44E52", markersize=4, label="Mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy")
    top.set_title(f"Reliability diagram (ECE = {curve.ece:.3f}, {n_bins} bins, n = {curve.n_samples})")
    top.legend(loc="upper left")
    bottom.bar(centers, curve.count, width=width, edgecolor="black", color="gray")
    bottom.set_xlabel("Confidence (top-class probability)")
    bottom.set_ylabel("Samples")
    return save_figure(fig, path)


def plot_roc_curves(y_true: Any, probs: Any, class_names: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """Plot one-vs-rest ROC curves, one per class, with each AUC in the legend, to a PNG.

    A class without positives (or without negatives) has no ROC curve: it is skipped and named
    in a note under the axes.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    names = check_class_names(class_names)
    p = check_probs(probs, len(names))
    t = _indices(y_true, len(names), "y_true")
    _same_length(t, p)

    fig = Figure(figsize=(7.0, 6.5), dpi=_DPI)
    ax = fig.add_subplot()
    colors = class_colors(len(names))
    skipped = []
    for j, name in enumerate(names):
        positives = t == j
        if positives.all() or not positives.any():
            skipped.append(name)
            continue
        fpr, tpr, _ = roc_curve(positives, p[:, j])
        auc = roc_auc_score(positives, p[:, j])
        ax.plot(fpr, tpr, color=colors[j], linewidth=1.5, label=f"{name} (AUC = {auc:.3f}, n = {int(positives.sum())})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="Chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title("ROC curves (one vs rest)")
    ax.legend(loc="lower right", fontsize=8)
    if skipped:
        fig.text(
            0.01,
            0.01,
            "No ROC curve (class has no positives or no negatives): " + ", ".join(skipped),
            fontsize=8,
            color="#8C1C13",
        )
        fig.subplots_adjust(bottom=0.14)
    return save_figure(fig, path)


def gate_weight_table(weights: Any, y_true: Any, y_pred: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Summarise ADF gate weights per true class and for correct vs wrong predictions.

    Args:
        weights: ``(n, 3)`` weights ``(alpha_I, alpha_IM, alpha_M)`` per sample.
        y_true: true class indices ``(n,)`` (or one-hot ``(n, k)``).
        y_pred: predicted class indices ``(n,)`` (or probabilities ``(n, k)``).
        class_names: the ``k`` class names.

    Returns:
        ``{"branches": ["alpha_I", "alpha_IM", "alpha_M"],
        "per_class": {class: {"count": int, "alpha_I": mean, ...}},
        "correct": {...}, "wrong": {...}, "all": {...}}``; every group holds ``"count"`` and the
        mean of each weight as Python floats (NaN for a group without samples). Classes are
        grouped by their true label.
    """
    names = check_class_names(class_names)
    w = _check_weights(weights)
    t = _indices(y_true, len(names), "y_true")
    p = _indices(y_pred, len(names), "y_pred")
    _same_length(w, t, p)
    correct = t == p
    return {
        "branches": list(GATE_BRANCHES),
        "per_class": {name: _group_summary(w[t == j]) for j, name in enumerate(names)},
        "correct": _group_summary(w[correct]),
        "wrong": _group_summary(w[~correct]),
        "all": _group_summary(w),
    }


def plot_gate_weights(
    weights: Any,
    y_true: Any,
    y_pred: Any,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
) -> Path:
    """Plot how the ADF weights ``(alpha_I, alpha_IM, alpha_M)`` are distributed, to a PNG.

    Left panel: mean weight of each branch per true class, as stacked bars (their height is 1
    when the weights are a softmax); a class without samples is marked ``n=0``. Right panel: box
    plots of each branch's weight for correct and for wrong predictions.
    """
    names = check_class_names(class_names)
    table = gate_weight_table(weights, y_true, y_pred, names)
    w = _check_weights(weights)
    t = _indices(y_true, len(names), "y_true")
    correct = t == _indices(y_pred, len(names), "y_pred")

    fig = Figure(figsize=(max(11.0, 0.6 * len(names) + 7.0), 5.0), dpi=_DPI)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(len(names), 3), 3]})
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for b, branch in enumerate(GATE_BRANCHES):
        means = np.array([table["per_class"][n][branch] for n in names], dtype=np.float64)
        means = np.nan_to_num(means, nan=0.0)
        left.bar(
            x, means, bottom=bottom, color=_BRANCH_COLORS[b], label=_BRANCH_LABELS[b], edgecolor="white", linewidth=0.5
        )
        bottom += means
    counts = [table["per_class"][n]["count"] for n in names]
    left.set_xticks(
        x, [f"{n} (n={c})" for n, c in zip(names, counts, strict=True)], rotation=45, ha="right", fontsize=8
    )
    left.set_ylabel("Mean gate weight")
    left.set_ylim(0, max(1.0, float(bottom.max())) * 1.18)
    left.set_title("Mean ADF weights per true class")
    left.legend(loc="upper center", ncol=3, fontsize=8, frameon=False)

    data, positions, colors = [], [], []
    for g, (_group, mask) in enumerate((("correct", correct), ("wrong", ~correct))):
        for b in range(3):
            if mask.any():
                data.append(w[mask, b])
                positions.append(g * 4 + b)
                colors.append(_BRANCH_COLORS[b])
    if data:
        boxes = right.boxplot(data, positions=positions, widths=0.7, patch_artist=True, medianprops={"color": "black"})
        for patch, color in zip(boxes["boxes"], colors, strict=True):
            patch.set_facecolor(color)
            patch.set_alpha(0.8)
    right.set_xticks([1, 5], [f"correct\n(n={table['correct']['count']})", f"wrong\n(n={table['wrong']['count']})"])
    right.set_xlim(-1, 7)
    right.set_ylim(-0.02, 1.02 if w.max(initial=0.0) <= 1 else None)
    right.set_ylabel("Gate weight")
    right.set_title("ADF weights: correct vs wrong")
    fig.tight_layout()
    return save_figure(fig, path)


def _group_summary(rows: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"count": int(rows.shape[0])}
    for b, branch in enumerate(GATE_BRANCHES):
        out[branch] = float(rows[:, b].mean()) if rows.shape[0] else math.nan
    return out


def _check_weights(weights: Any) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != 3:
        raise ValueError(f"weights must have shape (n, 3) for {GATE_BRANCHES}, got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights hold NaN or infinite values")
    return w


def _indices(labels: Any, k: int, what: str) -> np.ndarray:
    """Class indices from ``(n,)`` integers or the argmax of an ``(n, k)`` matrix."""
    a = np.asarray(labels)
    if a.ndim == 2:
        if a.shape[1] != k:
            raise ValueError(f"{what} has {a.shape[1]} columns, expected {k}")
        return a.argmax(axis=1)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must be (n,) integer class indices or (n, {k}), got shape {a.shape} dtype {a.dtype}")
    if np.any((a < 0) | (a >= k)):
        raise ValueError(f"{what} has class indices outside [0, {k})")
    return a.astype(np.int64)


def _same_length(*arrays: np.ndarray) -> None:
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"inputs have different numbers of samples: {sorted(lengths)}")
    if 0 in lengths:
        raise ValueError("no samples to plot")


def class_colors(k: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if k > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(k)]


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = _DPI) -> Path:
    """Render ``fig`` to PNG bytes on the Agg canvas and write them atomically (every figure of
    fusionkit goes through here)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    fig.clear()
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
