"""Training-step throughput of an assembled JI-ADF model versus the backbone-only ceiling.

Random data, the library's own training steps (fusionkit.train.step), samples/s as the median
over timed steps after warm-up (CUDA events on a GPU). Modes: fp32 eager; bf16 autocast +
channels_last eager; bf16 + channels_last with the whole step captured in a CUDA graph; and the
same for "backbone only" (two backbones, one linear head, plain CE): the ceiling the assembled
model should stay within a few percent of.

    python benchmarks/bench_train_step.py                       # GPU: the paper's setting
    python benchmarks/bench_train_step.py --model test_efficientnet --size 64 --batch 16   # CPU smoke

Writes benchmarks/results/train_step-<device>-<backbone>-<size>px-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import fusionkit as fk
from fusionkit.losses import JointIndividualLoss
from fusionkit.train.step import CudaGraphStep, EagerStep

RESULTS = Path(__file__).resolve().parent / "results"


class BackboneOnly(nn.Module):
    """Two backbones and a linear head over their concatenated features (the ceiling)."""

    def __init__(self, model_name: str, num_classes: int = 11) -> None:
        super().__init__()
        from fusionkit.components.image_encoders import TimmImageEncoder

        self.derm = TimmImageEncoder(model_name=model_name)
        self.clinical = TimmImageEncoder(model_name=model_name)
        self.head = nn.Linear(self.derm.out_dim * 2, num_classes)

    def forward(self, batch):
        logits = self.head(torch.cat([self.derm(batch["derm"]), self.clinical(batch["clinical"])], dim=1))
        log_probs = logits.float().log_softmax(dim=-1)
        return fk.FusionOutput(probs=log_probs.exp(), log_probs=log_probs, logits={}, weights=None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu} ({torch.get_num_threads()} threads)"


def make_batch(batch: int, size: int, meta_dim: int, device, channels_last: bool, seed: int = 0):
    """A random normalised batch (images, metadata, labels, all present) on ``device``."""
    g = torch.Generator().manual_seed(seed)
    images = {m: torch.randn(batch, 3, size, size, generator=g) for m in ("derm", "clinical")}
    out = {
        **images,
        "meta": torch.randn(batch, meta_dim, generator=g),
        "label": torch.randint(0, 11, (batch,), generator=g),
        "present": {m: torch.ones(batch, dtype=torch.bool) for m in ("derm", "clinical", "meta")},
    }
    moved = {}
    for k, v in out.items():
        if isinstance(v, dict):
            moved[k] = {kk: vv.to(device) for kk, vv in v.items()}
        else:
            v = v.to(device)
            if channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
            moved[k] = v
    return moved


def measure(model, *, device, batch, size, bf16, channels_last, graphed, steps, warmup, meta_dim):
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    if hasattr(model, "validate_presence"):
        model.validate_presence = False
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=torch.tensor(1e-4, device=device) if graphed else 1e-4,
        weight_decay=1e-5,
        fused=device.type == "cuda" or None,
        capturable=graphed,
    )
    step_cls = CudaGraphStep if graphed else EagerStep
    step = step_cls(model=model, loss_fn=JointIndividualLoss().to(device), optimizer=opt, device=device, bf16=bf16)
    data = make_batch(batch, size, meta_dim, device, channels_last)
    for _ in range(warmup):
        step(data)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(data)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            step(data)
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return batch / statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnetv2_s")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=None, help="fp32, bf16, graph")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    modes = args.modes or (["fp32", "bf16", "graph"] if device.type == "cuda" else ["fp32"])
    spec = fk.load_preset("ji-adf", {"image_encoder": {"model_name": args.model, "pretrained": False}})
    meta_dim = 35
    rows = []
    for batch in args.batch:
        for mode in modes:
            bf16 = mode in ("bf16", "graph")
            graphed = mode == "graph"
            cl = device.type == "cuda" and bf16
            for what in ("JI-ADF", "backbone only"):
                torch.manual_seed(0)
                model = fk.build_model(spec, metadata_width=meta_dim) if what == "JI-ADF" else BackboneOnly(args.model)
                rate, peak = measure(
                    model,
                    device=device,
                    batch=batch,
                    size=args.size,
                    bf16=bf16,
                    channels_last=cl,
                    graphed=graphed,
                    steps=args.steps,
                    warmup=args.warmup,
                    meta_dim=meta_dim,
                )
                rows.append(
                    {
                        "model": what,
                        "mode": mode,
                        "batch": batch,
                        "samples_per_s": round(rate, 1),
                        "peak_gib": None if peak is None else round(peak, 2),
                    }
                )
                print(
                    f"{what:14s} {mode:5s} batch {batch:4d}: {rate:8.1f} samples/s"
                    + (f"  peak {peak:.1f} GiB" if peak else ""),
                    flush=True,
                )
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    date = dt.date.today().isoformat()
    meta = {
        "device": device_name(device),
        "date": date,
        "torch": torch.__version__,
        "backbone": args.model,
        "image_size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"train_step-{device.type}-{args.model}-{args.size}px-{date}"
    (RESULTS / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Training-step throughput ({meta['device']}, {date}, torch {torch.__version__})",
        "",
        f"Backbone `{args.model}` at {args.size}x{args.size}, random data, median of {args.steps} steps after {args.warmup} warm-up steps.",
        "",
        "| model | mode | batch | samples/s | peak GiB |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['model']} | {r['mode']} | {r['batch']} | {r['samples_per_s']} | {r['peak_gib'] if r['peak_gib'] is not None else '-'} |"
        for r in rows
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / stem}.json and .md")


if __name__ == "__main__":
    main()
