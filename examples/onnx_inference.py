"""Predict MILK10k lesions with an exported model, without fusionkit: numpy, Pillow and onnxruntime.

    fusionkit export runs/quickstart --out model.onnx      # writes model.onnx and model.json
    python examples/onnx_inference.py model.onnx MILK10k_Test_Metadata.csv MILK10k_Test_Input/ IL_0000652

Reads the raw metadata CSV rows of each lesion, encodes them exactly as the sidecar's fitted metadata
encoder says (fusionkit.data.MetadataEncoder, with the feature groups it encodes), resizes and
normalises both images, runs the graph and prints one JSON object per lesion: its class
posteriors, the top class and the classes the stored decision rule predicts (a class whose
probability passes its threshold, fitted at the end of training).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def encode_metadata(rows: list[dict[str, str]], sidecar: dict) -> np.ndarray:
    """The encoded metadata vector of one lesion (its clinical and dermoscopic CSV rows)."""
    enc, voc = sidecar["metadata_encoder"], sidecar["vocabularies"]
    names = ["age", "age_missing", *(f"sex={s}" for s in [*voc["sex"], "unknown"])]
    names += [f"site={s}" for s in [*voc["site"], "unknown"]] + [f"skin_tone={t}" for t in voc["skin_tone"]]
    names += [f"{m}.{c}" for m in ("derm", "clinical") for c in voc["monet"]] + ["derm.altered", "clinical.altered"]
    by_type = {row["image_type"]: row for row in rows}
    first = rows[0]
    v = [0.0] * len(names)  # every feature group; the encoder's own ones are picked at the end
    if first["age_approx"] == "":
        v[1] = 1.0
    else:
        v[0] = (float(first["age_approx"]) - enc["age"]["mean"]) / enc["age"]["std"]
    offset = 2
    sexes = voc["sex"]
    v[offset + (sexes.index(first["sex"]) if first["sex"] else len(sexes))] = 1.0
    offset += len(sexes) + 1
    sites = voc["site"]
    v[offset + (sites.index(first["site"]) if first["site"] else len(sites))] = 1.0
    offset += len(sites) + 1
    if first["skin_tone_class"] != "":
        v[offset + voc["skin_tone"].index(int(float(first["skin_tone_class"])))] = 1.0
    offset += len(voc["skin_tone"])
    n = len(voc["monet"])
    for j, kind in enumerate(("dermoscopic", "clinical: close-up")):
        row = by_type.get(kind)
        if row is not None:
            for c, column in enumerate(voc["monet"]):
                i = j * n + c
                v[offset + i] = (float(row[column]) - enc["monet"]["mean"][i]) / enc["monet"]["std"][i]
    offset += 2 * n
    for j, kind in enumerate(("dermoscopic", "clinical: close-up")):
        row = by_type.get(kind)
        v[offset + j] = float(row is not None and row["image_manipulation"] == "altered")
    return np.asarray([v[names.index(name)] for name in enc["feature_names"]], dtype=np.float32)


def load_image(path: Path | None, image: dict) -> np.ndarray:
    """A (3, S, S) normalised float32 image (zeros when the image is absent)."""
    size = image["input_size"]
    if path is None:
        return np.zeros((3, size, size), dtype=np.float32)
    with Image.open(path) as im:
        pixels = np.asarray(
            im.convert("RGB").resize((size, size), INTERPOLATION[image["interpolation"]]), dtype=np.float32
        )
    mean, std = np.asarray(image["mean"], dtype=np.float32), np.asarray(image["std"], dtype=np.float32)
    return ((pixels / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model.onnx written by 'fusionkit export' (model.json beside it)")
    parser.add_argument("metadata_csv", type=Path, help="the split's metadata CSV")
    parser.add_argument("image_dir", type=Path, help="the split's image folder (searched recursively)")
    parser.add_argument("lesion_ids", nargs="+", help="lesions to predict")
    args = parser.parse_args()

    sidecar = json.loads(args.model.with_suffix(".json").read_text())
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    with args.metadata_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["lesion_id"] in set(args.lesion_ids)]
    images = {p.stem: p for p in args.image_dir.rglob("*.jpg")}
    feeds: dict[str, list[np.ndarray]] = {name: [] for name in sidecar["inputs"]}
    for lesion in args.lesion_ids:
        mine = [r for r in rows if r["lesion_id"] == lesion]
        if not mine:
            raise SystemExit(f"{args.metadata_csv}: no rows for lesion {lesion}")
        by_type = {r["image_type"]: r for r in mine}
        sources = {"derm": by_type.get("dermoscopic"), "clinical": by_type.get("clinical: close-up")}
        for m in ("derm", "clinical"):
            if m in feeds:
                row = sources[m]
                feeds[m].append(load_image(images.get(row["isic_id"]) if row else None, sidecar["image"]))
                feeds[f"present_{m}"].append(np.asarray(row is not None))
        if "meta" in feeds:
            feeds["meta"].append(encode_metadata(mine, sidecar))
            feeds["present_meta"].append(np.asarray(True))
    outputs = session.run(["probs"], {k: np.stack(v) for k, v in feeds.items()})
    classes = sidecar["class_names"]
    decision = sidecar.get("decision") or {}
    thresholds = decision.get("thresholds") if decision.get("rule") == "thresholds" else None
    for lesion, probs in zip(args.lesion_ids, outputs[0], strict=True):
        if thresholds is not None:
            chosen = [c for c, p in zip(classes, probs, strict=True) if p > thresholds[c]]
        elif decision.get("rule") == "argmax":
            chosen = [classes[int(np.argmax(probs))]]
        else:
            chosen = [c for c, p in zip(classes, probs, strict=True) if p > 0.5]
        print(
            json.dumps(
                {
                    "lesion_id": lesion,
                    "probs": dict(zip(classes, map(float, probs), strict=True)),
                    "top": classes[int(np.argmax(probs))],
                    "classes": chosen,
                }
            )
        )


if __name__ == "__main__":
    main()
