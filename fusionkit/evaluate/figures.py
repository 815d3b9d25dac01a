"""Report figures beyond the metric plots: Grad-CAM overlays and the training history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fusionkit.evaluate.plots import save_figure

_NAMES = {"derm": "dermoscopic", "clinical": "clinical"}
GRADCAM_DPI = 110
"""Resolution of the Grad-CAM grids (photo pairs read at a lower DPI than the charts)."""


def plot_gradcam_grid(
    images: dict[str, np.ndarray], maps: dict[str, np.ndarray], titles: Sequence[str], path: str | Path
) -> Path:
    """Side-by-side image / Grad-CAM overlay pairs, one row per lesion.

    ``images[m]`` is uint8 (n, 3, H, W); ``maps[m]`` is (n, H, W) in [0, 1].
    """
    modalities = list(images)
    n = len(titles)
    cols = 2 * len(modalities)
    fig = Figure(figsize=(2.4 * cols, 2.6 * n))
    for row in range(n):
        for j, m in enumerate(modalities):
            picture = np.transpose(images[m][row], (1, 2, 0))
            ax = fig.add_subplot(n, cols, row * cols + 2 * j + 1)
            ax.imshow(picture)
            ax.set_axis_off()
            label = _NAMES.get(m, m)
            ax.set_title(f"{titles[row]}\n{label}" if j == 0 else label, fontsize=8, loc="left" if j == 0 else "center")
            ax = fig.add_subplot(n, cols, row * cols + 2 * j + 2)
            ax.imshow(picture)
            ax.imshow(maps[m][row], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
            ax.set_axis_off()
            ax.set_title(f"{_NAMES.get(m, m)} Grad-CAM", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=GRADCAM_DPI)


def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Training and validation loss, and validation macro Dice / AUC, by epoch."""
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.4))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train loss (eq 7)")
    ax.plot(epochs, [r["val_loss"] for r in history], marker="o", label="val CE(P_final)")
    ax.set_xlabel("epoch")
    ax.set_title("loss")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    ax.plot(epochs, [r["val_dice"] for r in history], marker="o", label="val macro Dice")
    ax.plot(epochs, [r["val_auc"] for r in history], marker="o", label="val macro AUC")
    best = [r["epoch"] for r in history if r.get("best")]
    if best:
        ax.axvline(best[-1], color="grey", linestyle=":", label="best checkpoint")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.set_title("validation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=GRADCAM_DPI)
