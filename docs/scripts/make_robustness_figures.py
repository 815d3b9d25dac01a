"""Regenerate the corruption gallery of the "Is the model robust and fair?" how-to.

    python docs/scripts/make_robustness_figures.py

Writes ``docs/assets/robustness/corruptions.png``: one dermoscopic image of a generated MILK10k
split (``make_synthetic_milk10k``), decoded and resized as a model sees it, then every image
corruption of ``fusionkit.evaluate.robustness.CORRUPTIONS`` at severities 1, 3 and 5, exactly as
``robustness_table`` applies them (``Perturbation.image`` with seed 0).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fusionkit.data.images import ImageSource, load_image
from fusionkit.data.synthetic import make_synthetic_milk10k
from fusionkit.data.tables import read_milk10k
from fusionkit.evaluate.robustness import CORRUPTIONS, Perturbation

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "assets" / "robustness" / "corruptions.png"
SHOWN = (1, 3, 5)


def sample_image(size: int = 224) -> tuple[str, np.ndarray]:
    """``(lesion_id, uint8 (3, size, size))`` of the first dermoscopic image of a generated split."""
    with tempfile.TemporaryDirectory() as tmp:
        files = make_synthetic_milk10k(tmp, n_lesions=11, seed=3, photo_size=(600, 450))
        table = read_milk10k(files)
        lesion = next(x for x in table.lesions if x.derm is not None)
        source: ImageSource = table.image_sources[lesion.derm.isic_id]
        return lesion.lesion_id, load_image(source, size).numpy()


def draw_gallery(path: Path = OUT) -> Path:
    """Draw the gallery into ``path`` (PNG) and return it."""
    lesion_id, image = sample_image()
    names = [n for n, c in CORRUPTIONS.items() if c.kind == "image"]
    fig = Figure(figsize=(1.6 * (len(SHOWN) + 1), 1.65 * len(names)), dpi=64)
    axes = fig.subplots(len(names), len(SHOWN) + 1)
    for row, name in zip(axes, names, strict=True):
        pictures = [image] + [
            Perturbation(modality="derm", corruption=name, severity=s, seed=0).image("derm", image, lesion_id)
            for s in SHOWN
        ]
        for ax, picture, title in zip(row, pictures, ["clean", *[f"severity {s}" for s in SHOWN]], strict=True):
            ax.imshow(np.transpose(picture, (1, 2, 0)))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        row[0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.png")
    FigureCanvasAgg(fig).print_png(str(partial))
    partial.replace(path)
    return path


if __name__ == "__main__":
    print(draw_gallery())
