"""Regenerate the figures of the "Is the model robust and fair?" how-to.

    python docs/scripts/make_robustness_figures.py
    python docs/scripts/make_robustness_figures.py --run RUN   # also the figures of a scored run

Writes ``docs/assets/robustness/corruptions.png``: one dermoscopic image of a generated MILK10k
split (``make_synthetic_milk10k``), decoded and resized as a model sees it, then every image
corruption of ``fusionkit.evaluate.robustness.CORRUPTIONS`` at severities 1, 3 and 5, exactly as
``robustness_table`` applies them (``Perturbation.image`` with seed 0).

With ``--run RUN`` (a run whose report was written after ``fusionkit evaluate RUN --robustness``),
it also copies the run's ``robustness.png``, ``subgroups.png`` and ``risk_coverage.png`` to
``docs/assets/robustness/run-*.png``. The how-to's run is the ``ji-adf`` seed-0 run of
``benchmarks/bench_robustness.py --keep DIR`` (``DIR/runs/ji-adf/seed0``).
"""

from __future__ import annotations

import argparse
import shutil
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
#: A scored run's figure -> its name under docs/assets/robustness/.
RUN_FIGURES = {
    "robustness.png": "run-robustness.png",
    "subgroups.png": "run-subgroups.png",
    "risk_coverage.png": "run-risk-coverage.png",
}


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


def copy_run_figures(run_dir: Path, out_dir: Path = OUT.parent) -> list[Path]:
    """Copy the three figures of a scored run into ``out_dir`` (:data:`RUN_FIGURES`); one line
    naming the file when one is missing."""
    missing = [name for name in RUN_FIGURES if not (run_dir / name).is_file()]
    if missing:
        raise SystemExit(f"{run_dir}: no {', '.join(missing)}; run `fusionkit evaluate {run_dir} --robustness` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(run_dir / name, out_dir / target)) for name, target in RUN_FIGURES.items()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a scored run whose figures to copy")
    args = parser.parse_args()
    print(draw_gallery())
    if args.run is not None:
        print(*copy_run_figures(args.run), sep="\n")
