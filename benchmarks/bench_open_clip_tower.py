"""Throughput of an open_clip vision tower as fusionkit's image encoder (issue 26): images/s.

Builds :class:`fusionkit.components.open_clip_encoder.OpenClipImageEncoder` (random weights, no
download) and times, on random images at the tower's input size, (a) inference: the forward pass in
eval mode under ``torch.inference_mode``, and (b) fine-tuning: forward and backward in train mode
(the gradient of the summed features). Each is one untimed warm-up batch, then ``--batches``
timed batches; images/s = batch size x batches / wall time. The record names the device (the CPU
model from /proc/cpuinfo, or the GPU), the torch version, the thread count and the 1-minute load
average before and after, since on a shared machine the figure depends on what else runs.

Run: ``python benchmarks/bench_open_clip_tower.py`` (ViT-B-16 at 224, batch 8, 3 batches; writes
benchmarks/results/open_clip_tower-<device>-<model>-<size>px-<date>.{json,md}).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from bench_cli_startup import cpu_model  # noqa: E402 - the benchmarks' one CPU-model reader

from fusionkit.components.open_clip_encoder import OpenClipImageEncoder  # noqa: E402
from fusionkit.utils.io import atomic_write_text  # noqa: E402


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(encoder: OpenClipImageEncoder, images: torch.Tensor, *, batches: int, train: bool) -> float:
    """Images/s over ``batches`` timed batches after one warm-up (forward, or forward + backward)."""
    encoder.train(train)

    def step() -> None:
        if train:
            encoder.zero_grad(set_to_none=True)
            encoder(images).sum().backward()
        else:
            with torch.inference_mode():
                encoder(images)

    step()
    sync(images.device)
    started = time.perf_counter()
    for _ in range(batches):
        step()
    sync(images.device)
    return images.shape[0] * batches / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16", help="An open_clip architecture (random weights).")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3, help="Timed batches (after one warm-up).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    encoder = OpenClipImageEncoder(model_name=args.model, pretrained=False).to(device)
    size = encoder.preprocessing.input_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    load_before = os.getloadavg()
    inference = images_per_s(encoder, images, batches=args.batches, train=False)
    finetune = images_per_s(encoder, images, batches=args.batches, train=True)
    load_after = os.getloadavg()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    now = dt.datetime.now(dt.UTC)
    record = {
        "benchmark": "open_clip_tower",
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "device": gpu or cpu_model(),
        "device_type": device.type,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_1min_before": round(load_before[0], 2),
        "load_average_1min_after": round(load_after[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "model": args.model,
        "weights": "random (pretrained: false)",
        "features": encoder.features,
        "out_dim": encoder.out_dim,
        "image_size": size,
        "batch_size": args.batch,
        "timed_batches": args.batches,
        "inference_images_per_s": inference,
        "finetune_images_per_s": finetune,
    }
    print(
        f"{args.model} at {size} px, batch {args.batch}, {record['device']} ({record['threads']} threads): "
        f"inference {inference:.2f} images/s, fine-tuning (forward + backward) {finetune:.2f} images/s; "
        f"1-min load average {record['load_average_1min_before']} -> {record['load_average_1min_after']}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"open_clip_tower-{device.type}-{args.model}-{size}px-{now:%Y-%m-%d}"
    lines = [
        f"# open_clip {args.model} tower throughput ({device.type})",
        "",
        f"- date: {record['date']}",
        f"- device: {record['device']}, {record['cores']} cores, torch threads: {record['threads']}",
        f"- 1-minute load average: {record['load_average_1min_before']} before, "
        f"{record['load_average_1min_after']} after",
        f"- torch {record['torch']}, Python {record['python']}",
        f"- `OpenClipImageEncoder(model_name={args.model!r}, pretrained=False)`: random weights, "
        f"features `{encoder.features}` ({encoder.out_dim} wide), {size}x{size} random images, batch {args.batch}, "
        f"one warm-up batch then {args.batches} timed batches",
        "",
        "| pass | images/s |",
        "| --- | ---: |",
        f"| inference (eval, `torch.inference_mode`) | {inference:.2f} |",
        f"| fine-tuning (train mode, forward + backward) | {finetune:.2f} |",
        "",
    ]
    busy = max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1)
    if busy:
        lines += [
            f"Taken under load: other jobs shared the {record['cores']} cores (the load averages above), so these "
            "figures are a lower bound for this machine, not its capacity; compare only with runs under like load.",
            "",
        ]
    record["under_load"] = busy
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines))


if __name__ == "__main__":
    main()
