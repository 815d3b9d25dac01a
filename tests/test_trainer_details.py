"""The trainer's details, pinned through what a run leaves and shows: the run directory's files
(``history.json``, ``train.log``, ``resumes.json``, the checkpoints), stdout, the progress bars on a
terminal, the logs, the trackers, the public attributes, and :class:`TrainerCallback` hooks. No test
reaches into a private attribute or patches a fusionkit module global, so a refactor that keeps
the behaviour keeps them passing.

Each test builds a tiny trainer (20 synthetic lesions, two training batches of 8) and mostly gives
it a constant step (``trainer.step``), so the numbers are exact; the tests that train for real
compare two computations made in the same process, never a float fixed in the source.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import signal
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from train_helpers import tiny_run_config

from fusionkit.errors import ConfigError, DataError, DivergenceError, RunInterrupted
from fusionkit.metrics import isic_metrics, macro_f1_argmax
from fusionkit.runtime.checkpoint import META_KEY, model_state, read_checkpoint
from fusionkit.runtime.config import RunConfig
from fusionkit.runtime.device import move_batch
from fusionkit.runtime.lock import LOCK_NAME
from fusionkit.runtime.predict import predict
from fusionkit.train.schedules import WarmupCosine
from fusionkit.train.step import EagerStep
from fusionkit.train.trainer import Trainer, TrainerCallback, selection_score, train_run

# the constant steps never step the optimizer, and torch warns when the cosine schedule then steps
pytestmark = [pytest.mark.trains, pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler:UserWarning")]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def config_of(cache_dir: Path, *, epochs: int = 1, n_lesions: int = 20, **train: Any) -> RunConfig:
    return RunConfig.model_validate(tiny_run_config(cache_dir, epochs=epochs, n_lesions=n_lesions, **train))


def build(tmp_path: Path, cache_dir: Path, *, epochs: int = 1, resume: bool = False, **train: Any) -> Trainer:
    return Trainer(
        config_of(cache_dir, epochs=epochs, **train),
        run_dir=tmp_path / "run",
        synthetic=True,
        progress=False,
        resume=resume,
    )


def last_info(run: Path) -> dict[str, Any]:
    return read_checkpoint(run / "checkpoints" / "last.safetensors")[1]["info"]


class ConstStep:
    """A step that returns a fixed loss (or, given ``values``, one per call) and fixed eq-7 terms,
    and records what it was given."""

    def __init__(self, value: float = 1.5, *, values: list[float] | None = None) -> None:
        self.value, self.values = value, values
        self.batches: list[dict[str, Any]] = []
        self.terms = {"final": torch.tensor(0.5), "joint": torch.tensor(0.25)}

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        self.batches.append(batch)
        value = self.values[len(self.batches) - 1] if self.values is not None else self.value
        return torch.tensor(value)

    @property
    def keys(self) -> list[list[str]]:
        return [sorted(b) for b in self.batches]


class Recorder(TrainerCallback):
    """Records every hook call; ``then`` runs after each batch's record."""

    def __init__(self, then: Any = None) -> None:
        self.batches: list[tuple[int, int, float]] = []
        self.epochs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.lrs: list[dict[str, float]] = []  # each param group's lr after each epoch
        self.then = then

    def on_batch_end(self, trainer: Trainer, *, epoch: int, batch_index: int, loss: torch.Tensor) -> None:
        self.batches.append((epoch, batch_index, float(loss)))
        if self.then is not None:
            self.then(trainer)

    def on_epoch_end(self, trainer: Trainer, *, record: Any, metrics: dict[str, Any]) -> None:
        self.epochs.append((dict(record.__dict__), metrics))
        self.lrs.append({g["name"]: float(g["lr"]) for g in trainer.optimizer.param_groups})


class FakeTracker:
    """The tracker interface, recording (set as the public ``trainer.tracker``)."""

    active = True

    def __init__(self) -> None:
        self.scalars: list[tuple[dict[str, float], int]] = []
        self.figures: list[tuple[list[Path], int]] = []

    def log_scalars(self, values: dict[str, float], *, step: int) -> None:
        self.scalars.append((values, step))

    def log_figures(self, paths: list[Path], *, step: int = 0) -> None:
        self.figures.append((list(paths), step))

    def close(self) -> None:
        pass


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so progress bars are drawn into it."""

    def isatty(self) -> bool:
        return True


def file_handlers_of(path: Path) -> list[logging.Handler]:
    return [
        h
        for h in logging.getLogger("fusionkit").handlers
        if isinstance(h, logging.FileHandler) and h.baseFilename == str(path)
    ]


# -- train_run and the setup steps ----------------------------------------------------------------
def test_train_run_passes_every_argument_and_closes_even_when_fit_fails(tmp_path: Path, cache_dir: Path) -> None:
    config = config_of(cache_dir, max_batches_per_epoch=1)
    run = tmp_path / "run"
    # data_root reaches the data (and synthetic is off by default): the missing folder is named
    with pytest.raises(DataError, match="missing: not a folder"):
        train_run(config, run_dir=run, data_root=tmp_path / "missing", progress=False)
    assert not run.exists()
    given: list[Path] = []
    recorder = Recorder()

    def after_fit(run_dir: Path) -> None:
        given.append(run_dir)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train_run(config, run_dir=run, synthetic=True, progress=False, after_fit=after_fit, callbacks=[recorder])
    assert given == [run] and [b[:2] for b in recorder.batches] == [(0, 0)]
    # closed although fit failed: the lock is released and train.log let go
    assert not (run / LOCK_NAME).exists() and file_handlers_of(run / "train.log") == []
    # resume and overwrite reach the run directory claim (refused when neither is given)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_run(config, run_dir=run, synthetic=True, progress=False)
    longer = config_of(cache_dir, epochs=2, max_batches_per_epoch=1)
    resumed = train_run(longer, run_dir=run, synthetic=True, progress=False, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    again = train_run(config, run_dir=run, synthetic=True, progress=False, overwrite=True)
    assert [r["epoch"] for r in again.history] == [1]
    assert isinstance(again, Trainer) and again.run_dir == run


def test_precision_channels_last_and_the_step_follow_the_train_settings(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path / "a", cache_dir, grad_clip=0.5)
    try:
        assert trainer.device == torch.device("cpu") and not trainer.bf16 and not trainer.channels_last
        assert trainer.model.validate_presence is False  # masks are checked on the CPU per batch
        step = trainer.step
        assert type(step) is EagerStep and step.model is trainer.step_net is trainer.model
        assert step.loss_fn is trainer.loss_fn and step.optimizer is trainer.optimizer
        assert step.device == trainer.device and step.bf16 is False and step.grad_clip == 0.5
        assert step.clip_parameters == trainer.model.parameters
        assert trainer.ema is None and trainer.eval_model is trainer.model
        trainer.step = ConstStep()
        trainer.fit()
    finally:
        trainer.close()
    tensors, _ = read_checkpoint(tmp_path / "a" / "run" / "checkpoints" / "last.safetensors")
    assert not any(k.startswith("ema.") for k in tensors)  # no weight average, none saved
    trainer = build(tmp_path / "b", cache_dir, precision="bf16", channels_last=True, ema_decay=0.9)
    try:
        assert trainer.bf16 and trainer.step.bf16 and trainer.channels_last
        conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert trainer.ema.decay == 0.9 and trainer.eval_model is trainer.ema.module
        trainer.step = step = ConstStep()
        trainer.fit()
    finally:
        trainer.close()
    # the batches reach the step in channels_last, and the weight average is saved in last as ema.*
    assert all(b["derm"].is_contiguous(memory_format=torch.channels_last) for b in step.batches)
    tensors, _ = read_checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.safetensors")
    assert {k for k in tensors if k.startswith("ema.")} == {f"ema.{k}" for k in model_state(trainer.ema.module)}


def test_a_graphed_step_on_the_cpu_is_refused_before_the_run_directory_is_touched(
    tmp_path: Path, cache_dir: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, cache_dir, step_mode="cuda_graph")
    assert str(caught.value) == (
        "train.step_mode 'cuda_graph' needs one CUDA GPU (no CPU, no torchrun); use 'eager' or 'compile'"
    )
    assert not (tmp_path / "run").exists()


def test_compile_wraps_the_network_with_the_configured_mode(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    compiled: list[tuple[Any, dict[str, Any]]] = []
    sentinel = torch.nn.Identity()
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compiled.append((net, kw)) or sentinel)
    trainer = build(tmp_path, cache_dir, step_mode="compile", compile_mode="default")
    trainer.close()
    assert compiled == [(trainer.net, {"mode": "default"})]
    assert trainer.step_net is sentinel and trainer.step.model is sentinel


def test_the_train_settings_shape_the_param_groups_and_the_schedule(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(
        tmp_path / "a",
        cache_dir,
        epochs=3,
        weight_decay=0.02,
        backbone_lr=1e-4,
        backbone_weight_decay=0.5,
        no_decay_norm_bias=True,
        scheduler={"kind": "cosine", "min_lr": 3e-4},
        max_batches_per_epoch=1,
    )
    try:
        groups = {g["name"]: (g["initial_lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups}
        assert groups == {
            "backbone": (1e-4, 0.5),
            "backbone_no_decay": (1e-4, 0.0),
            "rest": (3e-3, 0.02),
            "rest_no_decay": (3e-3, 0.0),
        }
        assert trainer.optimizer.defaults["lr"] == 3e-3 and trainer.optimizer.defaults["weight_decay"] == 0.02
        assert trainer.optimizer.defaults["capturable"] is False
        assert trainer.optimizer.defaults["fused"] is None  # the fused kernels are asked for on a GPU only
        # each group holds AdamW's own keys, its name and the cosine schedule's initial_lr, nothing
        # more (it is checkpointed as it is)
        adamw_keys = set(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).param_groups[0])
        for group in trainer.optimizer.param_groups:
            assert set(group) == adamw_keys | {"name", "initial_lr"}, sorted(set(group) ^ adamw_keys)
        assert trainer.tracker.backends == () and not trainer.tracker.active
        trainer.step = ConstStep()
        recorder = Recorder()
        trainer.callbacks = (recorder,)
        trainer.fit()
    finally:
        trainer.close()
    # one optimizer step per epoch (max_batches_per_epoch) over 3 epochs: the cosine spans 3 steps
    cosine = WarmupCosine(warmup_steps=0, total_steps=3, floor=0.1)
    assert [lrs["rest"] for lrs in recorder.lrs] == pytest.approx([3e-3 * cosine(s) for s in (1, 2, 3)])
    assert [lrs["backbone"] for lrs in recorder.lrs] == pytest.approx([1e-4] * 3)  # min_lr above its lr
    # uncapped, an epoch is 2 steps: one epoch runs the whole cosine down to min_lr
    trainer = build(tmp_path / "b", cache_dir, scheduler={"kind": "cosine", "min_lr": 3e-4})
    trainer.step = ConstStep()
    try:
        trainer.fit()
    finally:
        trainer.close()
    assert [r["lr"] for r in trainer.history] == pytest.approx([3e-4])


def test_the_tracker_gets_every_train_setting_as_a_parameter(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    calls: list[tuple[str, tuple, dict]] = []
    mlflow = types.ModuleType("mlflow")  # a recording stand-in: mlflow is an optional extra
    for name in ("start_run", "log_params", "log_metrics", "log_artifact", "end_run"):
        setattr(mlflow, name, lambda *a, _name=name, **k: calls.append((_name, a, k)))
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    trainer = build(tmp_path, cache_dir, tracking=["mlflow"])
    trainer.close()
    train = trainer.config.train.model_dump(mode="json")
    assert calls[:2] == [
        ("start_run", (), {"run_name": "run"}),
        ("log_params", ({f"train.{k}": v for k, v in train.items()},), {}),
    ]
    assert calls[1][1][0]["train.lr"] == 3e-3 and calls[1][1][0]["train.tracking"] == ["mlflow"]


def test_determinism_is_switched_on_for_the_run_and_restored_at_close(tmp_path: Path, cache_dir: Path) -> None:
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        trainer = build(tmp_path / "a", cache_dir)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        trainer.close()
        assert not torch.are_deterministic_algorithms_enabled()
        trainer = build(tmp_path / "b", cache_dir, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
        trainer.close()
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def test_train_log_lines_are_formatted_written_once_and_released(tmp_path: Path, cache_dir: Path) -> None:
    root = logging.getLogger("fusionkit")
    level = root.level
    other = logging.FileHandler(tmp_path / "other.log")  # a file handler of another file does not count
    same = logging.FileHandler(tmp_path / "b" / "run" / "train.log", delay=True)
    root.addHandler(other)
    root.setLevel(logging.WARNING)
    try:
        trainer = build(tmp_path / "a", cache_dir)
        assert root.level == logging.INFO
        trainer.close()
        trainer.close()  # closing twice is safe (train_run closes what a failed fit left)
        assert file_handlers_of(trainer.files.log) == []
        line = (tmp_path / "a" / "run" / "train.log").read_text().splitlines()[0]
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO fusionkit\.train: training on cpu; "
            r"augmentation on the loader \(cpu\) \(data\.augment_on: auto\)",
            line,
        ), line
        root.addHandler(same)  # already logging to this run's file: not added twice
        (tmp_path / "b" / "run").mkdir(parents=True)
        trainer = build(tmp_path / "b", cache_dir, epochs=1)
        trainer.close()
        lines = (tmp_path / "b" / "run" / "train.log").read_text().splitlines()
        assert sum("training on cpu" in x for x in lines) == 1
    finally:
        for handler in (other, same):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def test_a_failed_start_removes_a_directory_it_created_and_keeps_one_it_found(tmp_path: Path, cache_dir: Path) -> None:
    config = config_of(cache_dir)
    with pytest.raises(DataError, match="missing: not a folder"):
        Trainer(config, run_dir=tmp_path / "new", data_root=tmp_path / "missing", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "found").mkdir()
    with pytest.raises(DataError, match="missing: not a folder"):
        Trainer(config, run_dir=tmp_path / "found", data_root=tmp_path / "missing", progress=False)
    assert (tmp_path / "found").is_dir() and list((tmp_path / "found").iterdir()) == []


def test_a_resume_without_a_checkpoint_warns_that_it_starts_over(tmp_path: Path, cache_dir: Path, caplog) -> None:
    build(tmp_path, cache_dir).close()
    with caplog.at_level(logging.WARNING, logger="fusionkit.train"):
        trainer = build(tmp_path, cache_dir, resume=True)
    trainer.close()
    assert f"{tmp_path / 'run'}: no checkpoint yet; starting the run from the beginning" in [
        r.getMessage() for r in caplog.records
    ]
    assert trainer.start_epoch == 0 and trainer.history == []


# -- one epoch ------------------------------------------------------------------------------------
def test_an_epoch_averages_the_loss_per_sample_and_hands_each_batch_to_the_step(
    tmp_path: Path, cache_dir: Path
) -> None:
    trainer = build(tmp_path, cache_dir, epochs=2)
    recorder = Recorder()
    trainer.callbacks = (recorder,)
    modes: list[bool] = []

    class Watching(ConstStep):
        def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
            modes.append(trainer.model.training)
            return super().__call__(batch)

    trainer.step = step = Watching(values=[1.0, 2.0, 3.0, 4.0])
    trainer.model.eval()
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    # two batches of 8 per epoch; each step runs in training mode, also after a validation
    assert [r["train_loss"] for r in history] == [1.5, 3.5] and modes == [True] * 4
    assert recorder.batches == [(0, 0, 1.0), (0, 1, 2.0), (1, 0, 3.0), (1, 1, 4.0)]
    assert all("lesion_id" not in keys and "label" in keys for keys in step.keys)
    assert [len(b["label"]) for b in step.batches] == [8] * 4
    assert [(r["epoch"], m) for r, m in recorder.epochs] == [(1, recorder.epochs[0][1]), (2, recorder.epochs[1][1])]
    assert [r for r, _ in recorder.epochs] == history


def test_each_batch_is_augmented_on_the_device_for_its_epoch_and_index(tmp_path: Path, cache_dir: Path) -> None:
    raw = tiny_run_config(cache_dir, epochs=2, n_lesions=20)
    raw["data"]["augment_on"] = "device"
    trainer = Trainer(RunConfig.model_validate(raw), run_dir=tmp_path / "run", synthetic=True, progress=False)
    trainer.step = step = ConstStep()
    try:
        trainer.fit()
        data = trainer.data
        for n, (epoch, index) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            batch = next(iter(data.train_loader(epoch=epoch, start_batch=index)))
            expected = data.to_model_batch(move_batch(batch, trainer.device), epoch=epoch, batch_index=index)
            assert torch.equal(step.batches[n]["derm"], expected["derm"]), (epoch, index)
        other = data.to_model_batch(move_batch(batch, trainer.device), epoch=0, batch_index=1)
        assert not torch.equal(step.batches[3]["derm"], other["derm"])  # the index matters
    finally:
        trainer.close()


def test_a_resumed_epoch_adds_the_finished_batches_and_a_fresh_epoch_starts_from_zero(
    tmp_path: Path, cache_dir: Path
) -> None:
    first = build(tmp_path, cache_dir)
    first.step = ConstStep(1.5)
    first.interrupt()  # stops after the first batch
    with pytest.raises(RunInterrupted):
        first.fit()
    first.close()
    trainer = build(tmp_path, cache_dir, epochs=2, resume=True)
    trainer.step = step = ConstStep(3.0)
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    assert (trainer.start_epoch, trainer.start_batch) == (0, 1) and len(step.batches) == 3
    assert [r["train_loss"] for r in history] == [(1.5 * 8 + 3.0 * 8) / 16, 3.0]


def test_max_batches_per_epoch_counts_from_the_epoch_start(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir, max_batches_per_epoch=1)
    trainer.step = step = ConstStep(2.0)
    try:
        trainer.interrupt()
        with pytest.raises(RunInterrupted):
            trainer.fit()
    finally:
        trainer.close()
    assert len(step.batches) == 1 and last_info(tmp_path / "run")["batch"] == 1
    trainer = build(tmp_path, cache_dir, max_batches_per_epoch=1, resume=True)
    trainer.step = step = ConstStep(5.0)
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    assert step.batches == [] and [r["train_loss"] for r in history] == [2.0]  # the epoch was already done


def test_mixup_mixes_each_batch_with_the_run_class_count(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir, mixup={"mixup_alpha": 0.4})
    trainer.step = step = ConstStep()
    try:
        trainer.fit()
    finally:
        trainer.close()
    labels = [b["label"] for b in step.batches]
    assert [tuple(y.shape) for y in labels] == [(8, 11)] * 2 and all(y.dtype == torch.float32 for y in labels)
    assert all(torch.allclose(y.sum(dim=1), torch.ones(8)) for y in labels)
    assert any(bool((y.max(dim=1).values < 1).any()) for y in labels)  # soft targets: mixed


def test_the_weight_average_is_updated_after_every_step(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir, ema_decay=0.5)
    seen: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    def snapshot(t: Trainer) -> None:
        seen.append(
            ([p.detach().clone() for p in t.model.parameters()], [p.clone() for p in t.ema.module.parameters()])
        )

    start = [p.clone() for p in trainer.ema.module.parameters()]
    trainer.callbacks = (Recorder(then=snapshot),)
    try:
        trainer.fit()
    finally:
        trainer.close()
    assert len(seen) == 2
    previous = start
    for model, ema in seen:
        for p, w, e in zip(previous, model, ema, strict=True):
            assert torch.allclose(e, torch.lerp(p, w, 0.5), rtol=1e-5, atol=1e-7)
        previous = ema
    assert any(not torch.equal(a, b) for a, b in zip(start, seen[-1][1], strict=True))


def test_an_interrupt_mid_epoch_checks_saves_the_partial_sums_and_raises(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path / "a", cache_dir)
    trainer.step = ConstStep(1.5)
    trainer.interrupt(signal.SIGTERM)
    try:
        with pytest.raises(RunInterrupted) as caught:
            trainer.fit()
    finally:
        trainer.close()
    assert caught.value.signum == signal.SIGTERM and caught.value.run_dir == tmp_path / "a" / "run"
    assert trainer.history == [] and not (tmp_path / "a" / "run" / "history.json").exists()
    assert last_info(tmp_path / "a" / "run") == {
        "epoch": 0,
        "batch": 1,
        "best_score": -math.inf,
        "history": [],
        "epoch_loss_sum": 12.0,
        "epoch_seen": 8,
    }
    # the interrupted batch's loss is checked first: a NaN is a divergence, and nothing is saved
    trainer = build(tmp_path / "b", cache_dir)
    trainer.step = ConstStep(math.nan)
    trainer.interrupt()
    try:
        with pytest.raises(BaseException) as diverged:  # RunInterrupted is a KeyboardInterrupt
            trainer.fit()
    finally:
        trainer.close()
    assert diverged.type is DivergenceError
    assert str(diverged.value).startswith("training diverged in epoch 1: the loss or the weights")
    assert not (tmp_path / "b" / "run" / "checkpoints" / "last.safetensors").exists()


def test_divergence_messages_name_the_epoch_and_the_last_good_checkpoint(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path / "a", cache_dir)
    trainer.step = ConstStep(math.inf)
    try:
        with pytest.raises(DivergenceError) as first:
            trainer.fit()
    finally:
        trainer.close()
    assert str(first.value) == (
        "training diverged in epoch 1: the loss or the weights became NaN or infinite "
        "(train.lr 0.003 may be too high); no checkpoint was saved"
    )
    assert first.value.epoch == 1 and not (tmp_path / "a" / "run" / "checkpoints" / "last.safetensors").exists()
    trainer = build(tmp_path / "b", cache_dir, epochs=3)
    trainer.step = ConstStep(values=[1.5, 1.5, math.inf, 1.5])
    try:
        with pytest.raises(DivergenceError) as later:
            trainer.fit()
    finally:
        trainer.close()
    last = tmp_path / "b" / "run" / "checkpoints" / "last.safetensors"
    assert str(later.value) == (
        "training diverged in epoch 2: the loss or the weights became NaN or infinite (train.lr 0.003 may be too "
        f"high); the last good checkpoint is {last} (end of epoch 1)"
    )
    assert later.value.epoch == 2 and last_info(tmp_path / "b" / "run")["epoch"] == 1

    # a finite loss that left a NaN weight behind
    trainer = build(tmp_path / "c", cache_dir)

    class Poisoning(ConstStep):
        def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
            with torch.no_grad():
                next(trainer.model.parameters())[0].fill_(math.nan)
            return super().__call__(batch)

    trainer.step = Poisoning(1.0)
    try:
        with pytest.raises(DivergenceError, match="^training diverged in epoch 1: the loss or the weights became"):
            trainer.fit()
    finally:
        trainer.close()


# -- validation, the epoch record, the report -----------------------------------------------------
def test_validate_predicts_with_the_run_settings_and_adds_f1_and_the_nll(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir, precision="bf16", ema_decay=0.5, max_batches_per_epoch=1)
    try:
        trainer.fit()  # one real step: the weight average now differs from the model
        metrics, nll = trainer.validate()
        data = trainer.data
        settings = {"device": trainer.device, "channels_last": False, "batch_transform": data.to_model_batch}
        preds = predict(trainer.ema.module, data.val_loader(), bf16=True, **settings)
        others = [
            predict(trainer.model, data.val_loader(), bf16=True, **settings),  # not the weight average
            predict(trainer.ema.module, data.val_loader(), bf16=False, **settings),  # not in bf16
        ]
    finally:
        trainer.close()
    expected = float(-preds.log_probs[range(len(preds)), preds.labels].mean())
    assert nll == pytest.approx(expected, rel=1e-6, abs=0)
    for other in others:
        assert float(-other.log_probs[range(len(other)), other.labels].mean()) != pytest.approx(expected, rel=1e-6)
    assert metrics["macro_f1_argmax"] == macro_f1_argmax(preds.labels, preds.probs)
    assert selection_score(metrics, "f1") == metrics["macro_f1_argmax"]
    reference = isic_metrics(preds.labels, preds.probs, data.class_names)
    assert json.dumps(metrics["macro"], sort_keys=True) == json.dumps(reference["macro"], sort_keys=True)
    # what was validated is what best keeps; last also holds the average beside the model
    best, _ = read_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors")
    last, _ = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    for key, value in model_state(trainer.ema.module).items():
        assert torch.equal(best[f"model.{key}"], value) and torch.equal(last[f"ema.{key}"], value), key
    for key, value in model_state(trainer.model).items():
        assert torch.equal(last[f"model.{key}"], value), key


def test_the_epoch_record_the_best_checkpoint_the_report_and_the_trackers(
    tmp_path: Path, cache_dir: Path, capsys
) -> None:
    trainer = build(tmp_path, cache_dir, epochs=2, selection_metric="auc", scheduler={"patience": 0})
    trainer.tracker = tracker = FakeTracker()
    recorder = Recorder()
    trainer.callbacks = (recorder,)
    # scripted scores: dice improves, the selected auc does not (equal is not better)
    scores = iter([(0.25, 0.5), (0.75, 0.5)])
    validated: list[tuple[dict[str, Any], float, float]] = []
    real = trainer.validate

    def scripted() -> tuple[dict[str, Any], float]:
        began = time.perf_counter()
        metrics, val_loss = real()
        metrics["macro"]["dice"], metrics["macro"]["auc"] = next(scores)
        time.sleep(0.2)  # a slow validation, not counted in the epoch's seconds
        validated.append((metrics, val_loss, began))
        return metrics, val_loss

    class Timed(ConstStep):
        def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
            self.times.append(time.perf_counter())
            return super().__call__(batch)

    trainer.step = step = Timed(1.5)
    step.times = []
    trainer.validate = scripted
    started = time.perf_counter()
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    first, second = history
    (metrics, val_loss, began), (metrics_2, _, began_2) = validated
    assert first["seconds"] > step.times[1] - step.times[0] and first["seconds"] < began - started
    assert second["seconds"] < began_2 - validated[0][2] - 0.2
    assert first["samples_per_s"] == pytest.approx(16 / first["seconds"]) and first["seconds"] < 1
    assert first == {
        "epoch": 1,
        "train_loss": 1.5,
        "val_loss": val_loss,
        "val_dice": 0.25,
        "val_auc": 0.5,
        "lr": 3e-3,
        "seconds": first["seconds"],
        "samples_per_s": first["samples_per_s"],
        "best": True,
    }
    # the schedule steps on the selected score: auc stalled, so the lr halves (patience 0)
    assert second["epoch"] == 2 and second["lr"] == pytest.approx(1.5e-3) and not second["best"]
    assert trainer.best_score == 0.5 and [m for _, m in recorder.epochs] == [metrics, metrics_2]
    tensors, meta = read_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors")
    assert json.dumps(meta["info"], sort_keys=True) == json.dumps(  # NaN != NaN: compare the JSON
        {"epoch": 1, "val_metrics": metrics, "val_loss": val_loss}, sort_keys=True
    )
    assert not any(k.startswith("rng.") for k in tensors)
    assert last_info(tmp_path / "run") == {
        "epoch": 2,
        "batch": 0,
        "best_score": 0.5,
        "history": history,
        "epoch_loss_sum": 0.0,
        "epoch_seen": 0,
    }
    line = (
        f"epoch 1/2  train loss 1.5000  val loss {val_loss:.4f}  val dice 0.2500  val auc 0.5000  "
        f"lr 3.00e-03  {first['samples_per_s']:.1f} samples/s  *best*"
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == line and out[1].endswith(f" {second['samples_per_s']:.1f} samples/s")
    assert line in (tmp_path / "run" / "train.log").read_text()
    assert (tmp_path / "run" / "history.json").read_text() == json.dumps(history, indent=2)
    values, at = tracker.scalars[0]
    expected = {
        "train/loss": 1.5,
        "val/loss": val_loss,
        "train/loss_final": 0.5,
        "train/loss_joint": 0.25,
        "lr/rest": 3e-3,
        "train/samples_per_s": first["samples_per_s"],
    }
    expected |= {f"val/{k}": v for k, v in metrics["macro"].items() if not math.isnan(v)}
    assert at == 1 and values == expected and tracker.scalars[1][1] == 2


def test_tracked_loss_terms_are_means_over_the_samples_even_for_one_sample(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir, batch_size=1, max_batches_per_epoch=1)
    trainer.step = ConstStep(1.5)
    trainer.tracker = tracker = FakeTracker()
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    values, _ = tracker.scalars[0]
    assert history[0]["train_loss"] == 1.5
    assert values["train/loss_final"] == 0.5 and values["train/loss_joint"] == 0.25


# -- signals and resume ---------------------------------------------------------------------------
def test_signals_are_caught_during_fit_only_and_a_second_one_stops_at_once(
    tmp_path: Path, cache_dir: Path, capsys
) -> None:
    during: list[Any] = []

    class Signalling(ConstStep):
        def __init__(self, *signals: int) -> None:
            super().__init__(1.5)
            self.signals = signals

        def __call__(self, batch):
            during.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
            for signum in self.signals:
                os.kill(os.getpid(), signum)  # the real signal, through the installed handler
            return super().__call__(batch)

    outside: list[int] = []  # the handlers around fit: a signal that reaches them was not caught by fit
    previous = [signal.signal(s, lambda signum, frame: outside.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)]
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        trainer = build(tmp_path / "a", cache_dir)
        trainer.step = Signalling(signal.SIGTERM)
        try:
            with pytest.raises(RunInterrupted) as caught:
                trainer.fit()
        finally:
            trainer.close()
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        # a second signal stops at once, in the batch: nothing is saved
        trainer = build(tmp_path / "b", cache_dir)
        trainer.step = Signalling(signal.SIGTERM, signal.SIGINT)
        try:
            with pytest.raises(RunInterrupted) as second:
                trainer.fit()
        finally:
            trainer.close()
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        for signum, handler in zip((signal.SIGINT, signal.SIGTERM), previous, strict=True):
            signal.signal(signum, handler)
    assert outside == []
    assert len(during) == 2 and during[0][0] not in before and during[0][1] not in before
    assert caught.value.exit_code == 143 and caught.value.run_dir == tmp_path / "a" / "run"
    message = "interrupt: finishing this batch and saving a resumable checkpoint ...\n"
    assert capsys.readouterr().err == message * 2
    info = last_info(tmp_path / "a" / "run")
    assert info["batch"] == 1 and info["epoch_loss_sum"] == 12.0
    assert second.value.signum == signal.SIGINT and second.value.run_dir == tmp_path / "b" / "run"
    assert not (tmp_path / "b" / "run" / "checkpoints" / "last.safetensors").exists()


def test_a_signal_during_validation_stops_after_the_epoch_is_saved(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir, epochs=2)
    trainer.step = ConstStep()
    real = trainer.validate

    def validate_then_interrupt():
        trainer.interrupt()  # SIGINT by default
        return real()

    trainer.validate = validate_then_interrupt
    try:
        with pytest.raises(RunInterrupted) as caught:
            trainer.fit()
    finally:
        trainer.close()
    assert caught.value.exit_code == 130 and len(trainer.history) == 1
    info = last_info(tmp_path / "run")
    assert info["epoch"] == 1 and info["batch"] == 0
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1


def test_fit_hands_the_run_to_after_fit_and_its_figures_to_the_trackers(tmp_path: Path, cache_dir: Path) -> None:
    given: list[Path] = []

    def after_fit(run_dir: Path) -> None:
        given.append(run_dir)
        for name in ("a.png", "b.png", "c.png", "d.png", "e.png", "f.png", "g.png", "h.txt"):
            (run_dir / name).write_text("x")  # created in order: a folder lists them otherwise

    trainer = Trainer(
        config_of(cache_dir), run_dir=tmp_path / "run", synthetic=True, progress=False, after_fit=after_fit
    )
    trainer.step = ConstStep()
    trainer.tracker = tracker = FakeTracker()
    try:
        assert trainer.fit() is trainer.history and len(trainer.history) == 1
    finally:
        trainer.close()
    run = tmp_path / "run"
    assert given == [run] and tracker.figures == [([run / f"{c}.png" for c in "abcdefg"], 1)]


def test_resume_restores_the_position_best_score_and_history(tmp_path: Path, cache_dir: Path, caplog) -> None:
    first = build(tmp_path, cache_dir)
    first.step = ConstStep()
    first.fit()
    first.close()
    with caplog.at_level(logging.INFO, logger="fusionkit.train"):
        trainer = build(tmp_path, cache_dir, epochs=2, resume=True, lr=1e-3)
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    trainer.step = step = ConstStep()
    try:
        assert (trainer.start_epoch, trainer.start_batch) == (1, 0)
        assert trainer.best_score == first.best_score > -math.inf and trainer.history == first.history
        messages = [r.getMessage() for r in caplog.records]
        assert f"resumed from {last} at epoch 2 batch 0" in messages
        # the changes are applied, logged and recorded; a resume from a checkpoint is no restart
        changes = ["train.epochs: 1 -> 2", "train.lr: 0.003 -> 0.001"]
        assert list(trainer.data.changes) == changes
        assert [m for m in messages if m.startswith("resume: ")] == [f"resume: {c} (applied)" for c in changes]
        record = json.loads((tmp_path / "run" / "resumes.json").read_text())[-1]
        assert record["restarted_from_beginning"] is False and record["changes"] == changes
        # the changed lr is set on every group (the restored optimizer state held the old one)
        assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([1e-3])
        # fit goes on from the resumed epoch
        assert [r["epoch"] for r in trainer.fit()] == [1, 2] and len(step.batches) == 2
    finally:
        trainer.close()


def rewrite_info(path: Path, **info: Any) -> None:
    """Give a checkpoint the ``info`` an older fusionkit wrote (fewer fields)."""
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()[META_KEY])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    meta["info"] = info
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta)})


def test_an_older_checkpoint_without_position_fields_resumes_at_its_epoch_start(
    tmp_path: Path, cache_dir: Path
) -> None:
    first = build(tmp_path / "a", cache_dir)
    first.step = ConstStep()
    first.fit()
    first.close()
    rewrite_info(tmp_path / "a" / "run" / "checkpoints" / "last.safetensors", epoch=1)
    trainer = build(tmp_path / "a", cache_dir, epochs=2, resume=True)
    trainer.step = ConstStep()
    try:
        assert (trainer.start_epoch, trainer.start_batch) == (1, 0)
        assert trainer.best_score == -math.inf and trainer.history == []
        history = trainer.fit()
    finally:
        trainer.close()
    assert [(r["epoch"], r["best"]) for r in history] == [(2, True)]
    # stopped mid-epoch, without the finished batches' sums: the epoch's loss is the rest's
    first = build(tmp_path / "b", cache_dir)
    first.step = ConstStep(1.5)
    first.interrupt()
    with pytest.raises(RunInterrupted):
        first.fit()
    first.close()
    rewrite_info(tmp_path / "b" / "run" / "checkpoints" / "last.safetensors", epoch=0, batch=1)
    trainer = build(tmp_path / "b", cache_dir, resume=True)
    trainer.step = ConstStep(3.0)
    try:
        assert (trainer.start_epoch, trainer.start_batch) == (0, 1)
        history = trainer.fit()
    finally:
        trainer.close()
    assert [r["train_loss"] for r in history] == [3.0]


def test_overwrite_reaches_the_run_directory_claim(tmp_path: Path, cache_dir: Path) -> None:
    """A run folder that holds a run is refused, unless ``overwrite`` starts it over."""
    build(tmp_path, cache_dir).close()  # writes config.yaml: the folder now holds a run
    with pytest.raises(ConfigError, match="already holds a run"):
        build(tmp_path, cache_dir)
    trainer = Trainer(config_of(cache_dir), run_dir=tmp_path / "run", synthetic=True, progress=False, overwrite=True)
    trainer.close()
    assert trainer.start_epoch == 0 and trainer.history == []


def test_a_warm_start_loads_the_source_run_into_the_model_and_logs_its_summary(tmp_path: Path, cache_dir: Path) -> None:
    train_run(
        config_of(cache_dir, max_batches_per_epoch=1), run_dir=tmp_path / "source", synthetic=True, progress=False
    )
    trainer = Trainer(
        config_of(cache_dir, init_from=str(tmp_path / "source")),
        run_dir=tmp_path / "run",
        synthetic=True,
        progress=False,
    )
    trainer.close()
    best, _ = read_checkpoint(tmp_path / "source" / "checkpoints" / "best.safetensors")
    weights = trainer.model.state_dict()
    assert {k for k in best if k.startswith("model.")} == {f"model.{k}" for k in weights}
    for key, value in weights.items():
        assert torch.equal(value, best[f"model.{key}"]), key
    n = len(weights)
    line = f"warm start from {tmp_path / 'source' / 'checkpoints' / 'best.safetensors'}: loaded {n} tensors"
    assert line in (tmp_path / "run" / "train.log").read_text()


# -- progress bars ----------------------------------------------------------------------------------
def test_the_progress_bar_shows_the_loss_every_twenty_batches_and_at_the_end(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    """Reading the loss waits for the GPU, so the bar shows it at batches 1, 21, 41, ... and the last."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    config = config_of(cache_dir, n_lesions=40, batch_size=1)
    trainer = Trainer(config, run_dir=tmp_path / "run", synthetic=True)
    trainer.step = step = ConstStep(values=[float(n) for n in range(1, 100)])
    try:
        trainer.fit()
    finally:
        trainer.close()
    batches = len(step.batches)
    shown = {float(v) for v in re.findall(r"loss=(\d+\.\d{4})", terminal.getvalue())}
    assert batches > 21 and shown == {1.0, 21.0, float(batches)}


def test_bars_are_drawn_on_a_terminal_by_default_and_not_when_turned_off(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    """Bars are asked for by default and drawn only on a terminal: per epoch (its batches, capped by
    ``max_batches_per_epoch``) and over the run's epochs."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    config = config_of(cache_dir, epochs=2)
    train_run(config, run_dir=tmp_path / "a", synthetic=True)
    drawn = terminal.getvalue()
    for text in ("epoch 1/2", "epoch 2/2", "2/2 [", "batch/s", "training", "epoch/s"):
        assert text in drawn, text
    # an epoch's bar is cleared when the epoch ends (never left on its line); the run's bar stays
    assert not re.search(r"\repoch [^\r\x1b]*\n", drawn) and len(re.findall(r"\r +\x1b\[A", drawn)) == 2
    assert re.search(r"\rtraining: 100%[^\r\x1b]*\n$", drawn), drawn[-200:]
    terminal.seek(0)
    terminal.truncate()
    trainer = Trainer(config_of(cache_dir, max_batches_per_epoch=1), run_dir=tmp_path / "b", synthetic=True)
    trainer.step = ConstStep()
    trainer.fit()
    trainer.close()
    assert "epoch 1/1" in terminal.getvalue() and "1/1 [" in terminal.getvalue()
    assert "2/2 [" not in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    train_run(config, run_dir=tmp_path / "c", synthetic=True, progress=False)
    trainer = Trainer(config, run_dir=tmp_path / "d", synthetic=True, progress=False)
    trainer.step = ConstStep()
    trainer.fit()
    trainer.close()
    assert terminal.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bars although asked for
    trainer = Trainer(config, run_dir=tmp_path / "e", synthetic=True)
    trainer.close()
    assert trainer.progress is False


@pytest.mark.parametrize(("augment_on", "where"), [("device", "device"), ("cpu", "loader (cpu)")])
def test_the_log_says_where_augmentation_runs(tmp_path: Path, cache_dir: Path, augment_on: str, where: str) -> None:
    config = RunConfig.model_validate({**tiny_run_config(cache_dir, epochs=1, n_lesions=20)})
    config = config.model_copy(update={"data": config.data.model_copy(update={"augment_on": augment_on})})
    Trainer(config, run_dir=tmp_path / "run", synthetic=True, progress=False).close()
    line = f"training on cpu; augmentation on the {where} (data.augment_on: {augment_on})"
    assert line in (tmp_path / "run" / "train.log").read_text()
