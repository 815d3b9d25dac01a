"""Figure 3's question under corruption: is adaptive decision fusion more robust than fixed averaging
or a single joint head when one modality is degraded? (issue 24)

Runs ONE ``fusionkit sweep --robustness`` of ``ji-adf`` (adaptive decision fusion, the reference),
``ji-mmfa`` (the same three heads, posteriors averaged with fixed weights) and ``jf-mmfa`` (the
joint head alone) over several seeds on one generated MILK10k-layout set, whose classes are each
visible through exactly one modality (``fusionkit.data.synthetic``: the modalities are
complementary, so a degraded modality takes its classes away unless the model leans on it less).
Every run's validation split is scored under the same seeded corruptions of one modality at a time
(``robustness.json`` in each run); this script reads them back and reports, per variant and per
corrupted modality:

* the mean relative macro-Dice drop over the graded corruptions and severities, and the relative
  drop with the whole modality absent, each as the mean over seeds with a 95 % t-interval over
  seeds (the training noise; every run's value already averages its lesions);
* the paired difference from ``ji-adf`` (same seed, hence the same split, initialisation order and
  corrupted inputs), with a 95 % t-interval over seeds: negative means ``ji-adf`` drops less;
* the mean mCE against ``ji-adf`` (ImageNet-C; below 1: more robust than ``ji-adf``).

    nice -n 10 python benchmarks/bench_robustness.py --lesions 400 --epochs 8 --seeds 0,1,2,3,4

Writes ``benchmarks/results/robustness-<device>-<date>.{json,md}``; ``--keep DIR`` keeps the sweep
(its runs' ``report.md``, ``robustness.png``, ``subgroups.png``, ``risk_coverage.png``) for the docs.
No timing is reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from bench_loading import cpu_model  # the sibling script (benchmarks/ is this script's sys.path[0])
from scipy import stats

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("ji-adf", "ji-mmfa", "jf-mmfa")
REFERENCE = "ji-adf"
MODALITIES = ("derm", "clinical", "meta")


def t_interval(values: list[float]) -> dict[str, Any]:
    """Mean and 95 % Student-t interval of ``values`` (NaN interval for fewer than 2)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return {"mean": math.nan, "ci95": [math.nan, math.nan], "n": 0, "values": list(values)}
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci95": [math.nan, math.nan], "n": 1, "values": list(values)}
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(x), "values": list(values)}


def run_config(args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """The sweep's base config: tiny timm backbone, small images, the generated set."""
    return {
        "model": {
            "preset": REFERENCE,
            "overrides": {
                "image_size": args.size,
                "image_encoder": {"model_name": args.model, "pretrained": False},
            },
        },
        "train": {"epochs": args.epochs, "batch_size": 16, "lr": args.lr, "device": "cpu", "deterministic": True},
        "data": {
            "synthetic": {"n_lesions": args.lesions, "photo_size": [args.image_width, args.image_height], "seed": 0},
            "cache_dir": str(cache),
        },
    }


def run_sweep(args: argparse.Namespace, out: Path) -> None:
    """One ``fusionkit sweep --robustness`` over the three variants and the seeds."""
    config = out.parent / f"{out.name}-config.yaml"
    config.write_text(yaml.safe_dump(run_config(args, out.parent / f"{out.name}-cache"), sort_keys=False))
    command = [sys.executable, "-m", "fusionkit.cli", "sweep", str(config)]
    command += ["--presets", ",".join(VARIANTS), "--reference", REFERENCE, "--seeds", args.seeds]
    command += ["--synthetic", "--out", str(out), "--bootstrap", str(args.bootstrap), "--quiet"]
    command += ["--robustness", "--severities", args.severities]
    if args.corruptions:
        command += ["--corruptions", args.corruptions]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def per_run(document: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per modality of one ``robustness.json``: the mean relative drop over graded corruptions and
    severities, the same at severity 5 only, and the relative drop with the modality absent."""
    out: dict[str, dict[str, float]] = {}
    for modality in MODALITIES:
        rows = [r for r in document["results"] if r["modality"] == modality]
        if not rows:
            continue
        graded = [r["relative_drop"] for r in rows if r["corruption"] != "absent" and r["relative_drop"] is not None]
        worst = [r["relative_drop"] for r in rows if r["severity"] == 5 and r["relative_drop"] is not None]
        absent = [r["relative_drop"] for r in rows if r["corruption"] == "absent"]
        out[modality] = {
            "graded": float(np.mean(graded)) if graded else math.nan,
            "severity5": float(np.mean(worst)) if worst else math.nan,
            "absent": float(absent[0]) if absent and absent[0] is not None else math.nan,
        }
    return out


def analyse(out: Path) -> dict[str, Any]:
    """Read the sweep's runs back: per variant and modality the intervals over seeds, and the paired
    differences from the reference."""
    summary = json.loads((out / "summary.json").read_text())
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for record in summary["runs"]:
        path = Path(record["run_dir"]) / "robustness.json"
        if record.get("status") != "ok" or not path.is_file():
            print(f"left out (not finished or not scored): {record['preset']} seed {record['seed']}")
            continue
        document = json.loads(path.read_text())
        runs.setdefault(record["preset"], {})[int(record["seed"])] = {
            "clean_dice": document["baseline"]["dice"],
            "drops": per_run(document),
            "mce": (document.get("mce") or {}).get("mce"),
            "relative_mce": (document.get("mce") or {}).get("relative_mce"),
            "n_lesions": document["n_lesions"],
        }
    variants: dict[str, Any] = {}
    for preset in VARIANTS:
        seeds = runs.get(preset, {})
        entry: dict[str, Any] = {
            "n_runs": len(seeds),
            "clean_dice": t_interval([seeds[s]["clean_dice"] for s in sorted(seeds)]),
            "mce": t_interval([seeds[s]["mce"] for s in sorted(seeds) if seeds[s]["mce"] is not None]),
            "relative_mce": t_interval(
                [seeds[s]["relative_mce"] for s in sorted(seeds) if seeds[s]["relative_mce"] is not None]
            ),
            "modalities": {},
        }
        for modality in MODALITIES:
            cell: dict[str, Any] = {}
            for measure in ("graded", "severity5", "absent"):
                cell[measure] = t_interval([seeds[s]["drops"][modality][measure] for s in sorted(seeds)])
                if preset != REFERENCE:
                    ref = runs.get(REFERENCE, {})
                    shared = sorted(set(seeds) & set(ref))
                    cell[f"{measure}_minus_{REFERENCE}"] = t_interval(
                        [ref[s]["drops"][modality][measure] - seeds[s]["drops"][modality][measure] for s in shared]
                    )
            entry["modalities"][modality] = cell
        variants[preset] = entry
    n_lesions = sorted({r["n_lesions"] for seeds in runs.values() for r in seeds.values()})
    return {"variants": variants, "val_lesions": n_lesions}


def verdict(variants: dict[str, Any]) -> list[str]:
    """One line per (other variant, modality): whether the paired interval excludes 0."""
    lines = []
    for preset in VARIANTS[1:]:
        for modality in MODALITIES:
            for measure, what in (("graded", "graded corruptions"), ("absent", "modality absent")):
                d = variants[preset]["modalities"][modality][f"{measure}_minus_{REFERENCE}"]
                lo, hi = d["ci95"]
                if math.isnan(lo):
                    word = "too few seeds for an interval"
                elif hi < 0:
                    word = f"`{REFERENCE}` drops less (interval below 0)"
                elif lo > 0:
                    word = f"`{REFERENCE}` drops more (interval above 0)"
                else:
                    word = "inconclusive (interval holds 0)"
                lines.append(f"- {modality}, {what}, vs `{preset}`: {word}")
    return lines


def fmt(cell: dict[str, Any]) -> str:
    """``mean [lo, hi]`` with 3 decimals."""
    lo, hi = cell["ci95"]
    if math.isnan(cell["mean"]):
        return "n/a"
    if math.isnan(lo):
        return f"{cell['mean']:.3f}"
    return f"{cell['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown(meta: dict[str, Any], result: dict[str, Any]) -> str:
    """The results file."""
    v = result["variants"]
    lines = [
        f"# Robustness of JI-ADF vs JI-MMFA vs JF-MMFA on generated complementary data ({meta['date']})",
        "",
        f"Device: {meta['cpu']} (CPU, torch {meta['torch']}, {meta['threads']} thread(s)); no GPU. "
        f"One `fusionkit sweep --robustness` of {', '.join(f'`{p}`' for p in VARIANTS)}, seeds {meta['seeds']}; "
        f"{meta['lesions']} generated lesions (`data.synthetic`, seed 0, {meta['image_width']}x{meta['image_height']} "
        f"px JPEGs), the sweep's 80/20 split per seed ({', '.join(map(str, result['val_lesions']))} validation "
        f"lesions), backbone `{meta['model']}` (random init) at {meta['size']} px, {meta['epochs']} epochs, "
        f"AdamW lr {meta['lr']}, batch 16. Corruptions: {meta['corruptions'] or 'all of CORRUPTIONS'} at severities "
        f"{meta['severities']}, corruption seed 0, one modality at a time."
        + (f" {meta['note']}" if meta.get("note") else ""),
        "",
        "Relative drop = (clean macro Dice - corrupted macro Dice) / clean macro Dice of the same run. "
        "Cells: mean over seeds [95 % t-interval over seeds]. *graded*: mean over every graded corruption "
        "and severity of the modality; *sev. 5*: severity 5 only; *absent*: the whole modality masked out.",
        "",
        "## Clean macro Dice and mCE",
        "",
        "mCE: ImageNet-C's mean corruption error against the `ji-adf` run of the same seed, error = 1 - macro "
        "Dice summed over severities (below 1: more robust than `ji-adf`); the relative mCE subtracts each "
        "run's clean error first, so it compares the degradation only.",
        "",
        "| variant | clean macro Dice | mCE vs `ji-adf` | relative mCE vs `ji-adf` |",
        "| --- | ---: | ---: | ---: |",
    ]
    for p in VARIANTS:
        mce = fmt(v[p]["mce"]) if v[p]["mce"]["n"] else "(reference)"
        rel = fmt(v[p]["relative_mce"]) if v[p]["relative_mce"]["n"] else "(reference)"
        lines.append(f"| `{p}` | {fmt(v[p]['clean_dice'])} | {mce} | {rel} |")
    lines += [
        "",
        "## Relative macro-Dice drop per corrupted modality (lower is more robust)",
        "",
        "| variant | modality | graded | sev. 5 | absent |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for p in VARIANTS:
        for m in MODALITIES:
            c = v[p]["modalities"][m]
            lines.append(f"| `{p}` | {m} | {fmt(c['graded'])} | {fmt(c['severity5'])} | {fmt(c['absent'])} |")
    lines += [
        "",
        f"## Paired difference: drop of `{REFERENCE}` minus drop of the other variant (same seed)",
        "",
        f"Negative: `{REFERENCE}` loses less of its Dice than the other variant under the same corruption.",
        "",
        "| other variant | modality | graded | sev. 5 | absent |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for p in VARIANTS[1:]:
        for m in MODALITIES:
            c = v[p]["modalities"][m]
            cells = [fmt(c[f"{k}_minus_{REFERENCE}"]) for k in ("graded", "severity5", "absent")]
            lines.append(f"| `{p}` | {m} | " + " | ".join(cells) + " |")
    lines += ["", "## Per paired interval", "", *verdict(v), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesions", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="model input size (px)")
    parser.add_argument("--image-width", type=int, default=48, help="generated JPEG width (px)")
    parser.add_argument("--image-height", type=int, default=36, help="generated JPEG height (px)")
    parser.add_argument("--model", default="test_efficientnet")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--severities", default="1,3,5")
    parser.add_argument("--corruptions", default="", help="comma-separated names (default: all)")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--keep", type=Path, default=None, help="keep the sweep in this folder")
    parser.add_argument("--reuse", action="store_true", help="read an existing --keep sweep; train nothing")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--note", default="", help="a sentence for the results file (e.g. how the sweep was run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = (args.keep or Path(tmp) / "sweep").resolve()
        if not args.reuse:
            out.parent.mkdir(parents=True, exist_ok=True)
            run_sweep(args, out)
        result = analyse(out)
    date = dt.date.today().isoformat()
    meta = {
        "date": date,
        "device": "cpu",
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"robustness-cpu-{date}" + (f"-{args.tag}" if args.tag else "")
    document = {**meta, **result, "verdict": verdict(result["variants"])}
    (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(meta, result))
    print(markdown(meta, result))
    print(f"wrote {RESULTS / stem}.md")


if __name__ == "__main__":
    main()
