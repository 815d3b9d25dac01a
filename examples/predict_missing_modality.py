"""Predict with a trained run while one input is missing, and see how the ADF gate reacts.

    python examples/train_python.py --out runs/python-api          # or any run directory
    python examples/predict_missing_modality.py runs/python-api

A missing input is marked absent in the presence masks (fusionkit's extension, not in the paper):
its tensor is zeroed, every branch that needs it is dropped, and the remaining ADF weights are
renormalised. The same trained weights serve every case, with no retraining.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fusionkit.data import CLASS_NAMES
from fusionkit.inference.pipeline import load_run
from fusionkit.metrics import isic_metrics

CASES: dict[str, tuple[str, ...]] = {
    "all inputs": (),
    "no clinical image": ("clinical",),
    "no metadata": ("meta",),
    "dermoscopy only": ("clinical", "meta"),
}


def main(argv: list[str] | None = None) -> None:
    """Predict the run's validation split under each case; print macro Dice and mean gate weights."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory written by fusionkit train")
    args = parser.parse_args(argv)

    run = load_run(args.run_dir)
    val = run.validation_dataset()
    print(f"{'case':<20} {'macro Dice':>10} {'alpha_I':>8} {'alpha_IM':>8} {'alpha_M':>8}")
    for name, absent in CASES.items():
        preds = run.predict_dataset(val, absent=absent)
        dice = isic_metrics(preds.labels, preds.probs, CLASS_NAMES)["macro"]["dice"]
        alpha = np.asarray(preds.weights).mean(axis=0)  # columns (alpha_I, alpha_IM, alpha_M), eq 5
        print(f"{name:<20} {dice:>10.3f} {alpha[0]:>8.3f} {alpha[1]:>8.3f} {alpha[2]:>8.3f}")


if __name__ == "__main__":
    main()
