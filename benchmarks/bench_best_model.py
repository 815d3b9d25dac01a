"""What each "best model" option does on generated data: TTA, decision rule, seed ensemble, long-tail losses.

Trains JI-ADF runs on one generated MILK10k-layout set (fusionkit.data.synthetic, the real class
imbalance) and scores every option on a separate generated, labelled set the runs never saw, with
the official macro Dice (> 0.5) and macro AUC. Fitted thresholds come from each run's own
validation split. Rows other than the ensemble are one run (seed 0); the baseline's spread over
three seeds is given as the noise level.

    python benchmarks/bench_best_model.py --lesions 600 --heldout 400 --epochs 8

Writes benchmarks/results/best_model-<device>-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import torch

from fusionkit.data import CLASS_NAMES, make_synthetic_milk10k
from fusionkit.inference.decision import apply_decision
from fusionkit.inference.ensemble import ensemble_predict, fit_ensemble_thresholds, load_runs
from fusionkit.metrics import isic_metrics
from fusionkit.runtime.config import RunConfig
from fusionkit.train.trainer import train_run

RESULTS = Path(__file__).resolve().parent / "results"
LOSSES = {
    "plain CE (paper)": {},
    "focal, gamma 2": {"focal_gamma": 2.0},
    "label smoothing 0.1": {"label_smoothing": 0.1},
    "logit adjustment, tau 1": {"logit_adjustment": 1.0},
}


def _score(runs, heldout: Path, tta: str, decision: str) -> dict[str, float]:
    preds = ensemble_predict(runs, data_root=heldout, split="Training", tta=tta)
    thresholds = fit_ensemble_thresholds(runs, tta=tta) if decision == "thresholds" else None
    macro = isic_metrics(preds.labels, apply_decision(preds.probs, decision, thresholds=thresholds), CLASS_NAMES)[
        "macro"
    ]
    return {"dice": round(float(macro["dice"]), 4), "auc": round(float(macro["auc"]), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesions", type=int, default=600)
    parser.add_argument("--heldout", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--model", default="test_efficientnet")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    began = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_synthetic_milk10k(tmp / "heldout", n_lesions=args.heldout, photo_size=(96, 72), seed=1234)

        def train(name: str, seed: int, loss: dict) -> Path:
            config = RunConfig.model_validate(
                {
                    "model": {
                        "preset": "ji-adf",
                        "overrides": {
                            "image_size": args.size,
                            "image_encoder": {"model_name": args.model, "pretrained": False},
                            "loss": loss,
                        },
                    },
                    "train": {"epochs": args.epochs, "batch_size": 16, "lr": args.lr, "seed": seed},
                    "data": {
                        "synthetic": {"n_lesions": args.lesions, "photo_size": [96, 72], "seed": 0},
                        "cache_dir": str(tmp / "cache"),
                    },
                }
            )
            train_run(config, run_dir=tmp / name, synthetic=True, progress=False)
            return tmp / name

        base = [train(f"base{s}", s, {}) for s in range(3)]
        runs = {
            name: load_runs([base[0]] if not loss else [train(name.split(",")[0].replace(" ", "_"), 0, loss)])
            for name, loss in LOSSES.items()
        }
        seeds = [_score(load_runs([b]), tmp / "heldout", "none", "probs")["dice"] for b in base]
        for tta in ("none", "flips", "d4"):
            rows.append(
                {
                    "option": f"TTA {tta}",
                    "runs": 1,
                    "tta": tta,
                    "decision": "probs",
                    **_score(runs["plain CE (paper)"], tmp / "heldout", tta, "probs"),
                }
            )
        for decision in ("argmax", "thresholds"):
            rows.append(
                {
                    "option": f"decision {decision}",
                    "runs": 1,
                    "tta": "none",
                    "decision": decision,
                    **_score(runs["plain CE (paper)"], tmp / "heldout", "none", decision),
                }
            )
        ensemble = load_runs(base)
        for decision in ("probs", "argmax", "thresholds"):
            rows.append(
                {
                    "option": f"3-seed ensemble, {decision}",
                    "runs": 3,
                    "tta": "none",
                    "decision": decision,
                    **_score(ensemble, tmp / "heldout", "none", decision),
                }
            )
        for name in list(LOSSES)[1:]:
            for decision in ("probs", "argmax"):
                rows.append(
                    {
                        "option": f"{name}, {decision}",
                        "runs": 1,
                        "tta": "none",
                        "decision": decision,
                        **_score(runs[name], tmp / "heldout", "none", decision),
                    }
                )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    date = dt.date.today().isoformat()
    meta = {
        "date": date,
        "device": device,
        "torch": torch.__version__,
        **vars(args),
        "baseline_seed_dice": seeds,
        "seconds": round(time.perf_counter() - began, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"best_model-{device}-{date}"
    (RESULTS / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Getting the most out of a model, on synthetic MILK10k ({device}, {date})",
        "",
        f"JI-ADF, backbone `{args.model}` at {args.size}px, {args.lesions} generated lesions (80/20 split), "
        f"{args.epochs} epochs, AdamW lr {args.lr}; scored on {args.heldout} other generated lesions. "
        f"Baseline (plain CE, no TTA, probs) macro Dice over seeds 0, 1, 2: "
        f"{', '.join(f'{d:.3f}' for d in seeds)}.",
        "",
        "| option | runs | TTA | decision | macro Dice | macro AUC |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    lines += [
        f"| {r['option']} | {r['runs']} | {r['tta']} | {r['decision']} | {r['dice']:.3f} | {r['auc']:.3f} |"
        for r in rows
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
