"""Train JI-ADF through the Python API on a generated MILK10k-layout set, then write the report.

    python examples/train_python.py --out runs/python-api            # about 30 s on 2 CPU cores
    python examples/train_python.py --out /tmp/r --lesions 40 --epochs 1 --image-size 32   # smoke

The same run as ``fusionkit train examples/quickstart.yaml --synthetic``, written as code: the run
config is built from the preset and the spec classes instead of read from YAML.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusionkit.data.synthetic import make_synthetic_milk10k
from fusionkit.evaluate import evaluate_run
from fusionkit.inference.pipeline import store_run_decision
from fusionkit.runtime.config import DataSpec, RunConfig, TrainSpec
from fusionkit.train.trainer import train_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options: where to write, and how big the run is."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/python-api"), help="run directory (must not hold a run)")
    parser.add_argument("--lesions", type=int, default=400, help="lesions in the generated set")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs")
    parser.add_argument("--image-size", type=int, default=48, help="model input size (pixels)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Generate the data, train, evaluate the best checkpoint, print where the report is."""
    args = parse_args(argv)
    data_root = args.out.parent / f"{args.out.name}-data"
    # a MILK10k-layout folder: the same files the ISIC archive ships, with generated images
    make_synthetic_milk10k(data_root, n_lesions=args.lesions, photo_size=(96, 72), seed=0, overwrite=True)

    config = RunConfig.model_validate(
        {
            "model": {
                "preset": "ji-adf",
                "overrides": {
                    "image_size": args.image_size,
                    "image_encoder": {"model_name": "test_efficientnet", "pretrained": False},
                },
            },
            "train": TrainSpec(epochs=args.epochs, batch_size=16, lr=1e-3, device="cpu"),
            "data": DataSpec(num_workers=0),
        }
    )
    # fusionkit.evaluate.train_and_evaluate(...) does both steps in one call, as `fusionkit train` does;
    # after_fit stores the decision rule (inference.json) that FusionPipeline.from_run reads
    trainer = train_run(config, run_dir=args.out, data_root=data_root, progress=False, after_fit=store_run_decision)
    best = max(trainer.history, key=lambda r: r["val_dice"])
    print(f"best epoch {best['epoch']}: val macro Dice {best['val_dice']:.3f}, val macro AUC {best['val_auc']:.3f}")

    report = evaluate_run(args.out, gradcam_lesions=2)
    rows = {row["metric"]: row["values"] for row in json.loads((args.out / "metrics.json").read_text())["rows"]}
    print(f"report: {report} (macro Dice {rows['Dice Coefficient']['Mean']:.3f})")


if __name__ == "__main__":
    main()
