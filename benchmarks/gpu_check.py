"""CUDA proven in one call: fast-path correctness, step throughput, end to end, inference, NCCL.

One command for a lent GPU (issue 15); under 8 minutes on one H100 including model builds::

    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py            # add --compile for torch.compile (~3 min)
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --cpu-smoke --out /tmp/x   # what the test suite runs

Every section runs in its own child process with its own timeout, so a crash, a CUDA error that
poisons the context, or a hang loses only that section; the parent keeps a total time budget
(``--budget-s``), prints one progress line per step and rewrites
``gpu-check-<device>-<date>.{json,md}`` after every section (and the children write their rows as
they go). Sections:

* ``correctness``: the ``ji-adf`` preset (two ``tf_efficientnetv2_s`` at 384, random init, dropout
  off so the paths are comparable), one seed, the same batches through eager fp32, eager bf16 +
  channels_last and ``CudaGraphStep``: graphed losses equal eager bf16's step by step within a
  bf16 tolerance, every path's loss falls, a short last batch runs eagerly after the graph, and a
  learning-rate change made by ``ReduceLROnPlateau`` takes effect inside the graph (halving the
  lr halves the update; lr 0 leaves the weights bit-identical).
* ``throughput``: batch 16 and 64: samples/s, step time and peak memory for eager fp32, bf16 +
  channels_last eager, the graphed step, ``compile`` (with ``--compile``) and the backbone-only
  ceiling (the same two timm backbones and one linear head on the same images); and the time
  :class:`~fusionkit.data.DeviceAugment` takes per batch on the device.
* ``end_to_end``: ``fusionkit train`` (the real CLI) on a generated set of 600 lesions at 384,
  2 epochs, graphed step, cache on, device-side augmentation, ``--workers`` DataLoader workers:
  epoch-2 samples/s including data loading, against the step-only rate.
* ``inference``: ``predict`` samples/s at batch 64 on the trained run.
* ``nccl``: a ``torchrun`` run (1 process, 2 on a 2-GPU machine) that initialises NCCL, trains 3
  DDP steps of the model and checks that the ranks' weights agree (gloo on the CPU).

Targets (a GPU run): batch-16 graphed >= 2.5x eager fp32; batch-64 best path >= 0.9x the ceiling;
end to end >= 0.9x step-only. ``--cpu-smoke`` runs the same code (tiny backbone, 64 px, few steps);
what needs CUDA (the graph) is skipped with the reason recorded, and the targets are reported but
marked as not applying.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
STARTED = time.perf_counter()
TARGETS = {
    "graph_b16_vs_fp32_b16": 2.5,
    "best_b64_vs_ceiling_b64": 0.9,
    "end_to_end_vs_step_only": 0.9,
}
NO_CUDA = "no CUDA device: CudaGraphStep needs a GPU"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one check runs (the full GPU run or the CPU smoke run)."""

    smoke: bool
    model: str
    size: int
    batches: tuple[int, ...]
    correctness_batch: int
    correctness_steps: int
    distinct_batches: int
    lr: float
    warmup: int
    steps: int
    e2e_lesions: int
    e2e_epochs: int
    e2e_batch: int
    workers: int
    predict_batch: int
    compile: bool
    in_process: bool = False
    metadata_width: int = 35

    @classmethod
    def make(cls, *, smoke: bool, compile: bool, workers: int | None, in_process: bool = False) -> Settings:
        """The GPU settings of issue 15, or the tiny CPU smoke settings."""
        if smoke:
            return cls(
                smoke=True,
                model="test_efficientnet",
                size=64,
                batches=(4, 8),
                correctness_batch=4,
                correctness_steps=6,
                distinct_batches=2,
                lr=1e-3,
                warmup=1,
                steps=2,
                e2e_lesions=24,
                e2e_epochs=2,
                e2e_batch=4,
                workers=0 if workers is None else workers,
                predict_batch=8,
                compile=compile,
                in_process=in_process,
            )
        return cls(
            smoke=False,
            model="tf_efficientnetv2_s",
            size=384,
            batches=(16, 64),
            correctness_batch=16,
            correctness_steps=30,
            distinct_batches=5,
            lr=3e-4,
            warmup=5,
            steps=15,
            e2e_lesions=600,
            e2e_epochs=2,
            e2e_batch=16,
            workers=min(4, os.cpu_count() or 1) if workers is None else workers,
            predict_batch=64,
            compile=compile,
            in_process=in_process,
        )


def log(message: str) -> None:
    """One progress line (elapsed seconds since the parent or child started)."""
    print(f"[gpu_check {time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (fusionkit.utils.io)."""
    from fusionkit.utils.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


# -- shared pieces ------------------------------------------------------------------------------
def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _spec(s: Settings):
    import fusionkit as fk

    return fk.load_preset(
        "ji-adf", {"image_size": s.size, "image_encoder": {"model_name": s.model, "pretrained": False}}
    )


def _no_dropout(model) -> None:
    """Dropout off everywhere (nn.Dropout and timm's ``drop_rate``), so eager and graphed steps compare."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "drop_rate", None), float):
            module.drop_rate = 0.0


def _batches(s: Settings, count: int, batch: int, device, channels_last: bool, seed: int = 0):
    """``count`` random normalised batches (labels depend on nothing: the loss falls by memorising)."""
    from bench_train_step import make_batch

    return [make_batch(batch, s.size, s.metadata_width, device, channels_last, seed=seed + i) for i in range(count)]


def _make_step(model, device, *, bf16: bool, graphed: bool, lr: float):
    import torch

    from fusionkit.losses import JointIndividualLoss
    from fusionkit.train.step import CudaGraphStep, EagerStep

    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        # a tensor lr where the graph needs one (and on the CPU, for the lr check); a float as the trainer uses
        model.parameters(),
        lr=torch.tensor(lr, device=device) if graphed or not cuda else lr,
        weight_decay=1e-5,
        fused=cuda or None,
        foreach=False if not cuda else None,
        capturable=graphed,
    )
    step_cls = CudaGraphStep if graphed else EagerStep
    return step_cls(
        model=model, loss_fn=JointIndividualLoss().to(device), optimizer=optimizer, device=device, bf16=bf16
    )


def _build(s: Settings, device, *, channels_last: bool):
    import torch

    import fusionkit as fk

    torch.manual_seed(0)
    model = fk.build_model(_spec(s), metadata_width=s.metadata_width)
    _no_dropout(model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.validate_presence = False
    return model.train()


# -- sections (each runs in a child process) ------------------------------------------------------
def section_correctness(s: Settings, out: dict[str, Any], save) -> None:
    """Eager fp32, eager bf16 + channels_last and the graphed step on the same batches."""

    device = _device()
    cuda = device.type == "cuda"
    paths = {"fp32": (False, False, False), "bf16_cl": (True, True, False)}
    if cuda:
        paths["graph"] = (True, True, True)
    else:
        out["skipped"] = {"graph": NO_CUDA}
    n, b = s.correctness_steps, s.correctness_batch
    losses: dict[str, list[float]] = {}
    steps: dict[str, Any] = {}
    for name, (bf16, cl, graphed) in paths.items():
        log(f"correctness: {name}, {n} steps at batch {b}")
        model = _build(s, device, channels_last=cl)
        step = _make_step(model, device, bf16=bf16, graphed=graphed, lr=s.lr)
        data = _batches(s, s.distinct_batches, b, device, cl)
        tail = _batches(s, 1, b - 3, device, cl, seed=100)[0]
        values = [step(data[i % len(data)]) for i in range(n)]
        graph_before = getattr(step, "graph", None)
        values.append(step(tail))  # short last batch: eager after the graph
        values.append(step(data[0]))  # and the graph replays again after it
        losses[name] = [float(v) for v in values]
        if graphed:
            out["graph_unchanged_by_short_batch"] = step.graph is graph_before and step.batch_size == b
        steps[name] = step
        out["losses"] = losses
        save()
        del model
    ref = losses["bf16_cl"]
    fall = {name: _mean(v[n - 5 : n]) < _mean(v[:5]) for name, v in losses.items()}
    out["loss_falls"] = fall
    first = abs(losses["fp32"][0] - ref[0]) / max(abs(losses["fp32"][0]), 1e-6)
    out["bf16_vs_fp32_first_step_rel_diff"] = first
    checks = {"all_paths_fall": all(fall.values()), "bf16_first_step_within_5pct_of_fp32": first <= 0.05}
    if "graph" in losses:
        diffs = [abs(g - e) for g, e in zip(losses["graph"], ref, strict=True)]
        tol = [0.05 + 0.05 * abs(e) for e in ref]
        out["graph_vs_bf16_max_abs_diff"] = max(diffs)
        out["graph_vs_bf16_tolerance"] = "|graph - eager bf16| <= 0.05 + 0.05 |eager bf16| at every step"
        checks["graph_equals_bf16_within_tolerance"] = all(d <= t for d, t in zip(diffs, tol, strict=True))
        checks["short_batch_then_replay"] = bool(out["graph_unchanged_by_short_batch"]) and all(
            math.isfinite(x) for x in losses["graph"][-2:]
        )
    lr_step = steps["graph"] if "graph" in steps else steps["bf16_cl"]
    out["lr_change"] = _lr_change(lr_step, _batches(s, 1, b, device, True)[0])
    checks["lr_change_reaches_the_step"] = out["lr_change"]["ok"]
    out["checks"] = checks
    out["ok"] = all(checks.values())


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _lr_change(step, batch) -> dict[str, Any]:
    """ReduceLROnPlateau halves the lr tensor in place: the step's update halves; lr 0 freezes the weights."""
    import torch

    optimizer = step.optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    lr = optimizer.param_groups[0]["lr"]
    pointer = lr.data_ptr()

    def update() -> float:
        before = [p.detach().clone() for p in params]
        step(batch)
        return float(torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(params, before, strict=True))))

    update()  # settle Adam's moments on this batch
    first = update()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=0)
    scheduler.step(1.0)
    scheduler.step(0.5)  # worse: the lr halves
    halved = float(optimizer.param_groups[0]["lr"])
    second = update()
    optimizer.param_groups[0]["lr"].fill_(0.0)
    before = [p.detach().clone() for p in params]
    step(batch)
    frozen = all(torch.equal(p.detach(), q) for p, q in zip(params, before, strict=True))
    ratio = second / first if first > 0 else float("nan")
    same_tensor = optimizer.param_groups[0]["lr"].data_ptr() == pointer
    return {
        "update_norm_before": first,
        "update_norm_after_halving": second,
        "ratio": ratio,
        "lr_after_scheduler": halved,
        "lr_tensor_kept": same_tensor,
        "lr_zero_freezes_weights": frozen,
        "ok": bool(0.35 <= ratio <= 0.65 and same_tensor and frozen),
    }


def section_throughput(s: Settings, out: dict[str, Any], save, deadline: float) -> None:
    """Samples/s, step time and peak memory per mode and batch size, and the backbone-only ceiling."""
    import torch
    from bench_train_step import BackboneOnly, measure

    import fusionkit as fk

    device = _device()
    cuda = device.type == "cuda"
    modes = ["fp32", "bf16_cl"] + (["graph"] if cuda else []) + (["compile"] if s.compile else [])
    out["skipped"] = {} if cuda else {"graph": NO_CUDA}
    rows = out.setdefault("rows", [])
    spec = _spec(s)
    plan = [(b, m, "JI-ADF") for b in s.batches for m in modes]
    plan += [(b, "graph" if cuda else "bf16_cl", "backbone only") for b in s.batches]
    for batch, mode, what in plan:
        if time.time() > deadline:
            out["skipped"][f"{what} {mode} b{batch}"] = "time budget"
            continue
        log(f"throughput: {what} {mode} batch {batch}")
        torch.manual_seed(0)
        model = fk.build_model(spec, metadata_width=s.metadata_width) if what == "JI-ADF" else BackboneOnly(s.model)
        if mode == "compile":
            model.validate_presence = False
            from fusionkit.runtime.config import TrainSpec

            model = torch.compile(model, mode=TrainSpec().compile_mode)  # what step_mode: compile does
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        bf16 = mode != "fp32"
        try:
            rate, peak = measure(
                model,
                device=device,
                batch=batch,
                size=s.size,
                bf16=bf16,
                channels_last=bf16 and (cuda or mode == "bf16_cl"),
                graphed=mode == "graph",
                steps=s.steps,
                warmup=s.warmup,
                meta_dim=s.metadata_width,
            )
            rows.append(
                {
                    "model": what,
                    "mode": mode,
                    "batch": batch,
                    "samples_per_s": rate,
                    "step_ms": 1000 * batch / rate,
                    "peak_gib": peak,
                }
            )
        except Exception as err:  # one configuration failing (e.g. out of memory) keeps the others
            rows.append({"model": what, "mode": mode, "batch": batch, "error": _one_line(err)})
        log(f"throughput: {rows[-1]}")
        save()
        del model
    out["device_augment"] = _augment_cost(s, device)
    out["ok"] = all("error" not in r for r in rows)


def _augment_cost(s: Settings, device) -> list[dict[str, Any]]:
    """Milliseconds of :class:`~fusionkit.data.DeviceAugment` (default config) per batch of both images."""
    import torch

    from fusionkit.data import AugmentConfig, DeviceAugment, batch_generator

    augment = DeviceAugment(config=AugmentConfig())
    rows = []
    for batch in s.batches:
        images = torch.randint(0, 256, (batch, 3, s.size, s.size), dtype=torch.uint8, device=device)
        times = []
        for index in range(s.warmup + s.steps):
            generator = batch_generator(seed=0, epoch=0, batch_index=index)
            began = time.perf_counter()
            for _ in range(2):  # derm and clinical
                augment(images, generator=generator)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        median = sorted(times[s.warmup :])[len(times[s.warmup :]) // 2]
        rows.append({"batch": batch, "ms_per_batch": 1000 * median, "samples_per_s": batch / median})
        log(f"throughput: device augmentation at batch {batch}: {1000 * median:.1f} ms")
    return rows


def section_end_to_end(s: Settings, out: dict[str, Any], save, work: Path, deadline: float) -> None:
    """``fusionkit train`` on a generated set: epoch samples/s with data loading."""
    import yaml

    device = _device()
    cuda = device.type == "cuda"
    run = work / "e2e-run"
    config = {
        "model": {
            "preset": "ji-adf",
            "overrides": {"image_size": s.size, "image_encoder": {"model_name": s.model, "pretrained": False}},
        },
        "train": {
            "epochs": s.e2e_epochs,
            "batch_size": s.e2e_batch,
            "eval_batch_size": s.predict_batch,
            "step_mode": "cuda_graph" if cuda else "eager",
            "device": device.type,
        },
        "data": {
            "synthetic": {"n_lesions": s.e2e_lesions, "photo_size": [128, 96], "seed": 0},
            "cache": True,
            "cache_dir": str(work / "cache"),
            "num_workers": s.workers,
            "augment_on": "device",
        },
    }
    if not cuda:
        out["skipped"] = {"cuda_graph": NO_CUDA + " (eager step instead)"}
    path = work / "e2e.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out["config"] = config
    arguments = ["train", str(path), "--synthetic", "--out", str(run), "--quiet"]
    log(f"end_to_end: fusionkit {' '.join(arguments)}")
    began = time.perf_counter()
    if s.in_process:  # the same typer app, without a process start
        from fusionkit.cli import app

        app(arguments, standalone_mode=False)
        returncode = 0
    else:
        command = [sys.executable, "-m", "fusionkit.cli", *arguments]
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(deadline - time.time(), 1))
        returncode = done.returncode
        out["traceback_in_stderr"] = "Traceback" in done.stderr
        if returncode:
            out["stderr_tail"] = done.stderr[-2000:]
    out["seconds"] = time.perf_counter() - began
    out["exit_status"] = returncode
    history_file = run / "history.json"
    if history_file.is_file():
        history = json.loads(history_file.read_text())
        out["epochs"] = [
            {k: r[k] for k in ("epoch", "seconds", "samples_per_s", "train_loss", "val_dice")} for r in history
        ]
        out["epoch_samples_per_s"] = history[-1]["samples_per_s"]
    out["run_dir"] = str(run)
    out["ok"] = returncode == 0 and "epoch_samples_per_s" in out
    save()


def section_inference(s: Settings, out: dict[str, Any], save, work: Path) -> None:
    """``predict`` samples/s at batch ``predict_batch`` over the end-to-end run's whole training split."""
    import torch

    from fusionkit.inference.pipeline import load_run

    run_dir = work / "e2e-run"
    if not (run_dir / "checkpoints" / "best.safetensors").is_file():
        raise RuntimeError(f"{run_dir}: no trained run (the end_to_end section did not finish)")
    loaded = load_run(run_dir)
    dataset = loaded.dataset()
    out["lesions"] = len(dataset)
    out["batch"] = loaded.config.train.eval_batch_size
    loaded.predict_dataset(dataset)  # warm-up (cuDNN autotuning, cache pages)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    preds = loaded.predict_dataset(dataset)
    seconds = time.perf_counter() - began
    out["samples_per_s"] = len(preds) / seconds
    out["ok"] = len(preds) == len(dataset) and bool(torch.isfinite(torch.as_tensor(preds.probs)).all())
    log(f"inference: {out['samples_per_s']:.1f} samples/s at batch {out['batch']}")
    save()


def section_nccl(s: Settings, out: dict[str, Any], save, work: Path, deadline: float) -> None:
    """torchrun with NCCL (gloo on the CPU): 3 DDP training steps; the ranks' weights must agree."""
    import torch

    gpus = torch.cuda.device_count()
    procs = 2 if gpus >= 2 else 1
    result = work / "ddp.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={procs}",
        str(Path(__file__).resolve()),
        "--ddp-worker",
        "--child-out",
        str(result),
        "--settings",
        json.dumps(dataclasses.asdict(s)),
    ]
    out["processes"] = procs
    if s.in_process:  # one rank in this process, with the variables torchrun would set
        log("nccl: one rank in this process (no torchrun)")
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            ddp_worker(s, result)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        returncode = 0
    else:
        log(f"nccl: torchrun with {procs} process(es)")
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(deadline - time.time(), 1))
        returncode = done.returncode
        if returncode:
            out["stderr_tail"] = done.stderr[-2000:]
    out["exit_status"] = returncode
    if result.is_file():
        out.update(json.loads(result.read_text()))
    out["ok"] = returncode == 0 and bool(out.get("ranks_agree"))
    save()


def ddp_worker(s: Settings, result: Path) -> None:
    """One torchrun process: init the process group, 3 DDP steps, compare weights across ranks."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cuda = torch.cuda.is_available()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        model = _build(s, device, channels_last=cuda)
        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        step = _make_step(net, device, bf16=cuda, graphed=False, lr=s.lr)
        data = _batches(s, 3, s.correctness_batch, device, cuda, seed=10 * rank)
        losses = [float(step(batch)) for batch in data]
        flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        spread = flat.clone()
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
        low = flat.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        gap = float((spread - low).abs().max())
        if rank == 0:
            write_json(
                result,
                {
                    "backend": dist.get_backend(),
                    "world_size": world,
                    "losses_rank0": losses,
                    "max_weight_gap_across_ranks": gap,
                    "ranks_agree": gap == 0.0,
                },
            )
    finally:
        dist.destroy_process_group()


# -- the parent ---------------------------------------------------------------------------------
SECTIONS = ("correctness", "throughput", "end_to_end", "inference", "nccl")
#: Expected seconds on one H100 (the smoke run takes a fraction); a section starts only with this much budget left.
ESTIMATES = {"correctness": 90, "throughput": 150, "end_to_end": 120, "inference": 20, "nccl": 40}


def run_child(name: str, s: Settings, work: Path, deadline: float) -> None:
    """Entry point of a section's child process: run it, writing its results as they come."""
    out: dict[str, Any] = {"status": "running"}
    path = work / f"{name}.json"

    def save() -> None:
        write_json(path, out)

    began = time.perf_counter()
    try:
        if name == "correctness":
            section_correctness(s, out, save)
        elif name == "throughput":
            section_throughput(s, out, save, deadline)
        elif name == "end_to_end":
            section_end_to_end(s, out, save, work, deadline)
        elif name == "inference":
            section_inference(s, out, save, work)
        else:
            section_nccl(s, out, save, work, deadline)
        out["status"] = "ok" if out.get("ok") else "failed"
    except Exception as err:
        out["status"] = "failed"
        out["error"] = _one_line(err)
        out["traceback"] = traceback.format_exc()[-3000:]
        log(f"{name}: FAILED: {out['error']}")
    out["section_seconds"] = time.perf_counter() - began
    save()


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def environment() -> dict[str, Any]:
    """Device name, versions and machine facts."""
    import timm
    import torch

    cuda = torch.cuda.is_available()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), platform.processor()
    )
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"{cpu} (CPU)",
        "gpus": torch.cuda.device_count(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def ratios(sections: dict[str, Any], s: Settings, cuda: bool) -> dict[str, Any]:
    """The target ratios from whatever sections produced figures (None where a figure is missing)."""
    rows = [r for r in sections.get("throughput", {}).get("rows", []) if "samples_per_s" in r]

    def rate(what: str, mode: str | None, batch: int) -> float | None:
        found = [
            r["samples_per_s"] for r in rows if r["model"] == what and r["batch"] == batch and mode in (None, r["mode"])
        ]
        return max(found) if found else None

    fast = "graph" if cuda else "bf16_cl"
    small, large = s.batches[0], s.batches[-1]
    step_mode = "graph" if cuda else "fp32"  # what the end-to-end run uses
    values = {
        "graph_b16_vs_fp32_b16": _ratio(rate("JI-ADF", fast, small), rate("JI-ADF", "fp32", small)),
        "best_b64_vs_ceiling_b64": _ratio(rate("JI-ADF", None, large), rate("backbone only", None, large)),
        "end_to_end_vs_step_only": _ratio(
            sections.get("end_to_end", {}).get("epoch_samples_per_s"), rate("JI-ADF", step_mode, s.e2e_batch)
        ),
    }
    result = {}
    for name, value in values.items():
        result[name] = {
            "value": value,
            "target": TARGETS[name],
            "pass": None if value is None else value >= TARGETS[name],
            "applies": cuda and not s.smoke,
        }
    result["notes"] = {
        "graph_b16_vs_fp32_b16": f"JI-ADF {fast} / eager fp32 at batch {small}",
        "best_b64_vs_ceiling_b64": f"best JI-ADF mode / best backbone-only mode at batch {large}",
        "end_to_end_vs_step_only": f"fusionkit train epoch {s.e2e_epochs} samples/s / JI-ADF {step_mode} step at batch {s.e2e_batch}",
    }
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    env = report["environment"]
    lines = [
        f"# GPU check ({env['device']}, {env['date']})",
        "",
        f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, timm {env['timm']}, Python {env['python']}",
        f"- {env['cpu_count']} CPU cores ({env['cpu']}); {env['gpus']} GPU(s)",
        f"- backbone `{report['settings']['model']}` at {report['settings']['size']} px"
        + (" (CPU smoke run: targets do not apply)" if report["settings"]["smoke"] else ""),
        f"- total {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget",
        "",
        "| section | status | seconds | note |",
        "| --- | --- | ---: | --- |",
    ]
    for name in SECTIONS:
        sec = report["sections"].get(name, {"status": "not run"})
        note = (
            sec.get("error") or sec.get("reason") or "; ".join(f"{k}: {v}" for k, v in sec.get("skipped", {}).items())
        )
        seconds = sec.get("section_seconds")
        lines.append(f"| {name} | {sec['status']} | {'' if seconds is None else f'{seconds:.0f}'} | {note} |")
    checks = report["sections"].get("correctness", {}).get("checks")
    if checks:
        lines += ["", "Correctness checks: " + ", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in checks.items())]
    rows = report["sections"].get("throughput", {}).get("rows", [])
    if rows:
        lines += [
            "",
            "| model | mode | batch | samples/s | step ms | peak GiB |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | error: {r['error']} | | |")
            else:
                peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
                lines.append(
                    f"| {r['model']} | {r['mode']} | {r['batch']} | {r['samples_per_s']:.1f} | {r['step_ms']:.1f} | {peak} |"
                )
    for r in report["sections"].get("throughput", {}).get("device_augment", []):
        lines.append(
            f"\nDevice augmentation (flips, rot90, colour jitter; both images): {r['ms_per_batch']:.1f} ms "
            f"per batch of {r['batch']} ({r['samples_per_s']:.0f} samples/s)."
        )
    e2e, inf = report["sections"].get("end_to_end", {}), report["sections"].get("inference", {})
    if "epoch_samples_per_s" in e2e:
        lines += [
            "",
            f"End to end: {e2e['epoch_samples_per_s']:.1f} samples/s in the last epoch "
            f"(`fusionkit train`, {report['settings']['workers']} workers, device augmentation).",
        ]
    if "samples_per_s" in inf:
        lines += [f"Inference: {inf['samples_per_s']:.1f} samples/s at batch {inf['batch']}."]
    lines += ["", "| target | value | needed | result |", "| --- | ---: | ---: | --- |"]
    for name, r in report["ratios"].items():
        if name == "notes":
            continue
        value = "-" if r["value"] is None else f"{r['value']:.2f}x"
        verdict = "not measured" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")
        if not r["applies"]:
            verdict += " (does not apply here)"
        lines.append(f"| {report['ratios']['notes'][name]} | {value} | {r['target']}x | {verdict} |")
    return "\n".join(lines) + "\n"


def slug(text: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    """Run every section in its own child process and write the results files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny backbone, 64 px, few steps (what the tests run)")
    parser.add_argument("--compile", action="store_true", help="also measure step_mode compile (~3 minutes)")
    parser.add_argument("--budget-s", type=float, default=None, help="total time budget (default 450; smoke 240)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the end-to-end run")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ", ".join(SECTIONS)
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the results files go")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the sections in this process (no per-section isolation or timeout; for tests)",
    )
    parser.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.settings:
        raw = json.loads(args.settings)
        s = Settings(**{**raw, "batches": tuple(raw["batches"])})
    else:
        s = Settings.make(smoke=args.cpu_smoke, compile=args.compile, workers=args.workers, in_process=args.in_process)
    if args.ddp_worker:
        ddp_worker(s, args.child_out)
        return 0
    if args.child:
        run_child(args.child, s, args.child_out, args.deadline)
        return 0
    chosen = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; expected some of {', '.join(SECTIONS)}")
    budget = args.budget_s if args.budget_s is not None else (240.0 if s.smoke else 450.0)
    deadline = time.time() + budget
    env = environment()
    cuda = env["gpus"] > 0
    if not cuda and not s.smoke:
        log("no CUDA device here: running the CPU smoke settings would be the meaningful check (--cpu-smoke)")
    day = env["date"][:10]
    stem = f"gpu-check-{'cpu-smoke' if s.smoke else slug(env['device'])}-{day}"
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / f".{stem}-work"
    work.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "environment": env,
        "settings": dataclasses.asdict(s),
        "budget_s": budget,
        "sections": {},
        "ratios": {},
        "elapsed_s": 0.0,
    }

    def flush() -> None:
        report["elapsed_s"] = time.perf_counter() - STARTED
        report["ratios"] = ratios(report["sections"], s, cuda)
        write_json(args.out / f"{stem}.json", report)
        from fusionkit.utils.io import atomic_write_text

        atomic_write_text(args.out / f"{stem}.md", markdown(report))

    log(
        f"{env['device']}; torch {env['torch']}, CUDA {env['cuda']}; budget {budget:.0f} s; writing {args.out / stem}.json"
    )
    flush()
    scale = 0.25 if s.smoke else 1.0
    for name in SECTIONS:
        if name not in chosen:
            report["sections"][name] = {"status": "skipped", "reason": "not in --sections"}
            continue
        left = deadline - time.time()
        if left < ESTIMATES[name] * scale:
            report["sections"][name] = {"status": "skipped", "reason": f"time budget ({left:.0f} s left)"}
            log(f"{name}: skipped, {left:.0f} s left")
            flush()
            continue
        log(f"{name}: start ({left:.0f} s left)")
        path = work / f"{name}.json"
        path.unlink(missing_ok=True)
        if s.in_process:
            run_child(name, s, work, deadline - 5)
            report["sections"][name] = json.loads(path.read_text())
            log(f"{name}: {report['sections'][name]['status']}")
            flush()
            continue
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            name,
            "--child-out",
            str(work),
            "--settings",
            json.dumps(dataclasses.asdict(s)),
            "--deadline",
            str(deadline - 5),
        ]
        try:
            done = subprocess.run(command, timeout=left, check=False)
            status = None if done.returncode == 0 else f"child exited with status {done.returncode}"
        except subprocess.TimeoutExpired:
            status = f"timed out after {left:.0f} s (the time budget)"
        section = json.loads(path.read_text()) if path.is_file() else {}
        if status is not None:
            section.update(status="failed", error=section.get("error") or status)
        report["sections"][name] = section
        log(f"{name}: {section.get('status', 'failed')}")
        flush()
    flush()
    log(f"done: {args.out / stem}.md")
    print(markdown(report), flush=True)
    return 0 if all(sec.get("status") in ("ok", "skipped") for sec in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
