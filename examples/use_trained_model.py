"""Use a trained model from Python: save it as a folder, load it back, predict one lesion from its photos.

    python examples/train_python.py --out runs/python-api          # or any run directory
    python examples/use_trained_model.py runs/python-api --out models/python-api

The run becomes a FusionPipeline (model, metadata encoder, image preprocessing, decision rule with
the thresholds stored at the end of training), is saved as a folder (config.json, model.safetensors,
metadata_encoder.json, preprocessing.json, README.md: what push_to_hub uploads) and loaded back from
it. One lesion of the run's data is then predicted from its two JPEG files and its metadata CSV rows
(as csv.DictReader yields them), and again without the clinical photo: a missing modality.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fusionkit import FusionPipeline


def lesion_inputs(data: Path, index: int = 0) -> tuple[str, list[dict[str, str]], dict[str, Path]]:
    """One lesion of a MILK10k Training folder: its id, its metadata rows and its two photos."""
    with (data / "MILK10k_Training_Metadata.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    lesion = sorted({r["lesion_id"] for r in rows})[index]
    mine = [r for r in rows if r["lesion_id"] == lesion]
    photos = {r["image_type"]: next((data / "MILK10k_Training_Input").rglob(f"{r['isic_id']}.jpg")) for r in mine}
    return lesion, mine, {"derm": photos["dermoscopic"], "clinical": photos["clinical: close-up"]}


def main(argv: list[str] | None = None) -> None:
    """Save the run's pipeline, load it back, predict one lesion with and without its clinical photo."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory written by fusionkit train")
    parser.add_argument("--out", type=Path, default=Path("models/example"), help="folder to save the pipeline in")
    args = parser.parse_args(argv)

    FusionPipeline.from_run(args.run_dir).save(args.out)
    pipe = FusionPipeline.from_pretrained(args.out)  # JSON + safetensors only: nothing is executed
    print(pipe)

    data = Path(json.loads((args.run_dir / "split.json").read_text())["root"])  # the folder the run trained on
    lesion, rows, photos = lesion_inputs(data)
    result = pipe.predict(derm=photos["derm"], clinical=photos["clinical"], metadata=rows)
    top = result.top
    print(f"{lesion}: top class {top} (p = {result.probs[top]:.3f}); decision {result.decision}: {result.classes}")
    print("fusion weights (eq 5):", {k: round(v, 3) for k, v in (result.weights or {}).items()})
    without = pipe.predict(derm=photos["derm"], metadata=rows)
    print(f"without the clinical photo: missing {without.missing}, top class {without.top}")
    print("fusion weights (eq 5):", {k: round(v, 3) for k, v in (without.weights or {}).items()})


if __name__ == "__main__":
    main()
