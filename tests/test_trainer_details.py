"""The trainer's details, pinned one by one: setup flags, what one epoch sums and passes on, the
records, messages and checkpoint fields, signals, resume defaults. Each test builds a tiny trainer
(20 synthetic lesions, two training batches of 8) and mostly swaps the step for a constant one, so
the numbers are exact."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import tiny_run_config

import fusionkit.train.trainer as trainer_module
from fusionkit.errors import ConfigError, DataError, DivergenceError, RunInterrupted
from fusionkit.metrics import macro_f1_argmax
from fusionkit.runtime.checkpoint import read_checkpoint
from fusionkit.runtime.config import RunConfig
from fusionkit.train.step import EagerStep
from fusionkit.train.trainer import Trainer, selection_score, train_run


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def config_of(cache_dir: Path, *, epochs: int = 1, **train: Any) -> RunConfig:
    return RunConfig.model_validate(tiny_run_config(cache_dir, epochs=epochs, n_lesions=20, **train))


def build(tmp_path: Path, cache_dir: Path, *, epochs: int = 1, resume: bool = False, **train: Any) -> Trainer:
    return Trainer(
        config_of(cache_dir, epochs=epochs, **train),
        run_dir=tmp_path / "run",
        synthetic=True,
        progress=False,
        resume=resume,
    )


def with_train(trainer: Trainer, **fields: Any) -> None:
    """Change the trainer's resolved train settings in place (as a changed config on resume would)."""
    config = trainer.config
    trainer.config = config.model_copy(update={"train": config.train.model_copy(update=fields)})


class ConstStep:
    """A step that returns a fixed loss and fixed eq-7 terms, and records the keys it was given."""

    def __init__(self, value: float = 1.5) -> None:
        self.value = value
        self.keys: list[list[str]] = []
        self.terms = {"final": torch.tensor(0.5), "joint": torch.tensor(0.25)}

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        self.keys.append(sorted(batch))
        return torch.tensor(self.value)


class FakeTracker:
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


class FakeBar:
    """tqdm's interface as the trainer uses it, recording its arguments."""

    made: list[dict[str, Any]] = []

    def __init__(self, iterable: Any = None, **kwargs: Any) -> None:
        self.iterable, self.kwargs, self.n, self.postfix = iterable, kwargs, kwargs.get("initial", 0), []
        FakeBar.made.append(self.__dict__)

    def __iter__(self):
        return iter(self.iterable)

    def update(self, k: int) -> None:
        self.n += k

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix.append(kwargs)

    def close(self) -> None:
        pass

    write = staticmethod(trainer_module.tqdm.write)


# -- train_run and the setup steps ----------------------------------------------------------------
def test_train_run_passes_every_argument_and_closes_even_when_fit_fails(monkeypatch) -> None:
    calls: list[Any] = []

    class Spy:
        def __init__(self, config: Any, **kwargs: Any) -> None:
            calls.append(("init", config, kwargs))

        def fit(self) -> None:
            calls.append("fit")
            raise RuntimeError("boom")

        def close(self) -> None:
            calls.append("close")

    monkeypatch.setattr(trainer_module, "Trainer", Spy)
    with pytest.raises(RuntimeError, match="boom"):
        train_run("cfg", run_dir="r")
    defaults = {
        "run_dir": "r",
        "data_root": None,
        "synthetic": False,
        "resume": False,
        "overwrite": False,
        "progress": True,
        "after_fit": None,
    }
    assert calls == [("init", "cfg", defaults), "fit", "close"]
    calls.clear()
    given = {
        "run_dir": "r",
        "data_root": "d",
        "synthetic": True,
        "resume": True,
        "overwrite": True,
        "progress": False,
        "after_fit": print,
    }
    monkeypatch.setattr(Spy, "fit", lambda self: calls.append("fit"))
    assert isinstance(train_run("cfg", **given), Spy)
    assert calls == [("init", "cfg", given), "fit", "close"]


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
        assert trainer._extra_modules() == {} and trainer.eval_model is trainer.model
    finally:
        trainer.close()
    trainer = build(tmp_path / "b", cache_dir, precision="bf16", channels_last=True, ema_decay=0.9)
    try:
        assert trainer.bf16 and trainer.step.bf16 and trainer.channels_last
        conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert trainer.ema.decay == 0.9 and trainer._extra_modules() == {"ema": trainer.ema.module}
        assert trainer.eval_model is trainer.ema.module
    finally:
        trainer.close()


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


def test_setup_passes_the_train_settings_to_the_tracker_param_groups_and_schedule(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    seen: dict[str, Any] = {}
    real_groups, real_schedule = trainer_module.param_groups, trainer_module.LrSchedule

    def groups_spy(model, **kwargs):
        seen["groups"] = kwargs
        return real_groups(model, **kwargs)

    def schedule_spy(**kwargs):
        seen["schedule"] = kwargs
        return real_schedule(**kwargs)

    monkeypatch.setattr(trainer_module, "param_groups", groups_spy)
    monkeypatch.setattr(trainer_module, "LrSchedule", schedule_spy)
    trainer = build(
        tmp_path,
        cache_dir,
        epochs=3,
        weight_decay=0.02,
        backbone_lr=1e-4,
        backbone_weight_decay=0.5,
        no_decay_norm_bias=True,
        scheduler={"kind": "cosine"},
        max_batches_per_epoch=1,
    )
    try:
        assert seen["groups"] == {
            "lr": 3e-3,
            "weight_decay": 0.02,
            "backbone_lr": 1e-4,
            "backbone_weight_decay": 0.5,
            "no_decay_norm_bias": True,
        }
        assert seen["schedule"] == {
            "spec": trainer.config.train.scheduler,
            "optimizer": trainer.optimizer,
            "epochs": 3,
            "steps_per_epoch": 1,
        }  # min(2 batches, max_batches_per_epoch)
        assert trainer.optimizer.defaults["lr"] == 3e-3 and trainer.optimizer.defaults["weight_decay"] == 0.02
        assert trainer.optimizer.defaults["capturable"] is False
        # each group holds AdamW's own keys, its name and the cosine schedule's initial_lr, nothing
        # more (it is checkpointed as it is)
        adamw_keys = set(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).param_groups[0])
        for group in trainer.optimizer.param_groups:
            assert set(group) == adamw_keys | {"name", "initial_lr"}, sorted(set(group) ^ adamw_keys)
        tracker = trainer.tracker
        assert tracker.backends == () and not tracker.active
    finally:
        trainer.close()
    trainer = build(tmp_path / "b", cache_dir, scheduler={"kind": "cosine"})
    trainer.close()
    assert seen["schedule"]["steps_per_epoch"] == 2
    trainer = build(tmp_path / "c", cache_dir)
    trainer.close()
    assert seen["schedule"]["steps_per_epoch"] == 0  # the plateau schedule steps per epoch only


def test_tracker_gets_every_train_setting_as_a_parameter(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    made: list[dict[str, Any]] = []

    class TrackerSpy(FakeTracker):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__()
            made.append(kwargs)

    monkeypatch.setattr(trainer_module, "Tracker", TrackerSpy)
    trainer = build(tmp_path, cache_dir)
    trainer.close()
    train = trainer.config.train.model_dump(mode="json")
    assert made == [
        {"backends": (), "run_dir": tmp_path / "run", "params": {f"train.{k}": v for k, v in train.items()}}
    ]
    assert made[0]["params"]["train.lr"] == 3e-3


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
        assert trainer._log_handler is None and all(
            h.baseFilename != str(trainer.files.log) for h in root.handlers if isinstance(h, logging.FileHandler)
        )
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
def test_an_epoch_sums_the_loss_per_sample_and_passes_each_batch_on(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    trainer = build(tmp_path, cache_dir)
    trainer.step = step = ConstStep(1.5)
    moved, transformed, after_step, synced = [], [], [], []
    real_move, real_transform = trainer_module.move_batch, type(trainer.data).to_model_batch

    def move_spy(batch, device, **kwargs):
        moved.append((device, kwargs))
        return real_move(batch, device, **kwargs)

    def transform_spy(self, batch, **kwargs):
        transformed.append(kwargs)
        return real_transform(self, batch, **kwargs)

    monkeypatch.setattr(trainer_module, "move_batch", move_spy)
    monkeypatch.setattr(type(trainer.data), "to_model_batch", transform_spy)
    monkeypatch.setattr(trainer.scheduler, "after_step", lambda: after_step.append(1))
    monkeypatch.setattr(trainer_module, "sync_buffers", lambda dist, model: synced.append((dist, model)))
    monkeypatch.setattr(trainer_module, "tqdm", FakeBar)
    FakeBar.made.clear()
    try:
        trainer.tracker = FakeTracker()
        trainer.net.eval()
        assert trainer._train_epoch(0, 0) == (1.5, 16, 2)
        assert trainer.net.training
        assert moved == [(torch.device("cpu"), {"channels_last": False})] * 2
        assert transformed == [{"epoch": 0, "batch_index": 0}, {"epoch": 0, "batch_index": 1}]
        assert len(after_step) == 2 and synced == [(trainer.dist, trainer.model)]
        assert all("lesion_id" not in keys and "label" in keys for keys in step.keys)
        assert {k: v.item() for k, v in trainer._term_sums.items()} == {"final": 8.0, "joint": 4.0}
        bar = FakeBar.made[0]
        assert bar["kwargs"] == {"total": 2, "desc": "epoch 1/1", "unit": "batch", "disable": True, "leave": False}
        assert bar["n"] == 2 and bar["postfix"] == [{"loss": "1.5000"}] * 2
        # resumed after one batch: the finished batches' sum and count carry over, then reset
        trainer._partial = (10.0, 4)
        transformed.clear()
        assert trainer._train_epoch(1, 1) == (22.0 / 12, 12, 2)
        assert transformed == [{"epoch": 1, "batch_index": 1}] and trainer._partial == (0.0, 0)
        trainer._partial = (10.0, 4)  # a fresh epoch ignores it
        trainer.progress = True
        assert trainer._train_epoch(0, 0) == (1.5, 16, 2) and trainer._partial == (0.0, 0)
        assert FakeBar.made[-1]["kwargs"]["disable"] is False
    finally:
        trainer.close()


def test_max_batches_per_epoch_counts_from_the_epoch_start(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir, max_batches_per_epoch=1)
    trainer.step = step = ConstStep(2.0)
    try:
        assert trainer._train_epoch(0, 0) == (2.0, 8, 1)
        assert trainer._train_epoch(0, 1) == (0.0, 0, 1) and len(step.keys) == 1  # already done
    finally:
        trainer.close()


def test_mixup_mixes_each_batch_with_the_run_class_count(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    trainer = build(tmp_path, cache_dir, mixup={"mixup_alpha": 0.4})
    trainer.step = ConstStep()
    mixed: list[dict[str, Any]] = []
    real = trainer_module.mix_batch

    def mix_spy(batch, **kwargs):
        mixed.append(kwargs)
        return real(batch, **kwargs)

    monkeypatch.setattr(trainer_module, "mix_batch", mix_spy)
    try:
        trainer._train_epoch(0, 0)
    finally:
        trainer.close()
    assert mixed == [{"spec": trainer.config.train.mixup, "num_classes": 11}] * 2


def test_the_weight_average_is_updated_after_every_step(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    trainer = build(tmp_path, cache_dir, ema_decay=0.5)
    trainer.step = ConstStep()
    updates: list[Any] = []
    monkeypatch.setattr(trainer.ema, "update", updates.append)
    try:
        trainer._train_epoch(0, 0)
    finally:
        trainer.close()
    assert updates == [trainer.model, trainer.model]


def test_an_interrupt_mid_epoch_checks_saves_the_partial_sums_and_raises(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir)
    trainer.step = ConstStep(1.5)
    checked, saved = [], []
    trainer._check_finite = lambda epoch, loss: checked.append((epoch, loss))
    trainer._save_last = lambda epoch, **kwargs: saved.append((epoch, kwargs))
    trainer._interrupted = signal.SIGTERM
    try:
        with pytest.raises(RunInterrupted) as caught:
            trainer._train_epoch(0, 0)
    finally:
        trainer.close()
    assert checked == [(0, 12.0)] and saved == [(0, {"batch": 1, "partial": (12.0, 8)})]
    assert caught.value.signum == signal.SIGTERM and caught.value.run_dir == tmp_path / "run"


def test_divergence_messages_name_the_epoch_and_the_last_good_checkpoint(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir)
    try:
        first = trainer._divergence(0, "the loss")
        assert str(first) == (
            "training diverged in epoch 1: the loss became NaN or infinite "
            "(train.lr 0.003 may be too high); no checkpoint was saved"
        )
        assert first.epoch == 1
        later = trainer._divergence(2, "the weights")
        assert str(later) == (
            "training diverged in epoch 3: the weights became NaN or infinite (train.lr 0.003 may be too high); "
            f"the last good checkpoint is {tmp_path / 'run' / 'checkpoints' / 'last.safetensors'} (end of epoch 2)"
        )
        assert later.epoch == 3
        trainer._check_finite(0, 1.0)  # all finite: nothing raised
        with pytest.raises(DivergenceError, match=r"^training diverged in epoch 2: the loss or the weights became"):
            trainer._check_finite(1, math.inf)
        with torch.no_grad():
            next(trainer.model.parameters())[0].fill_(math.nan)
        with pytest.raises(DivergenceError, match="epoch 1: the loss or the weights"):
            trainer._check_finite(0, 1.0)
    finally:
        trainer.close()


# -- validation, the epoch record, the report -----------------------------------------------------
def test_validate_predicts_with_the_run_settings_and_adds_f1_and_the_nll(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    trainer = build(tmp_path, cache_dir)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    real = trainer_module.predict

    def predict_spy(*args, **kwargs):
        calls.append((args, kwargs))
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(trainer_module, "predict", predict_spy)
    trainer.bf16 = True  # what validate passes on is the trainer's own setting
    try:
        metrics, nll = trainer.validate()
    finally:
        trainer.close()
    (args, kwargs), preds = calls
    assert args[0] is trainer.eval_model and len(args) == 2
    assert kwargs == {
        "device": trainer.device,
        "bf16": True,
        "channels_last": False,
        "dist_info": trainer.dist,
        "batch_transform": trainer.data.to_model_batch,
    }
    assert metrics["macro_f1_argmax"] == macro_f1_argmax(preds.labels, preds.probs)
    assert nll == pytest.approx(-sum(preds.log_probs[i, y] for i, y in enumerate(preds.labels)) / len(preds))
    assert selection_score(metrics, "f1") == metrics["macro_f1_argmax"]


def test_the_epoch_record_the_best_checkpoint_the_report_and_the_trackers(
    tmp_path: Path, cache_dir: Path, monkeypatch, capsys
) -> None:
    trainer = build(tmp_path, cache_dir, epochs=2, selection_metric="auc")
    trainer.step = ConstStep(1.5)  # the weights never change: both epochs validate the same
    trainer.tracker = tracker = FakeTracker()
    clock = iter([10.0, 14.0, 20.0, 20.5])  # the second epoch under a second: no floor of 1 s
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: next(clock))
    scores: list[float] = []
    monkeypatch.setattr(trainer.scheduler, "after_epoch", scores.append)
    try:
        metrics, val_loss = trainer.validate()
        record, got, seen = trainer._train_and_check(0)
        trainer._report(record, got, seen)
        second, _, _ = trainer._train_and_check(1)
        trainer._report(second, got, seen)
    finally:
        trainer.close()
    auc, dice = metrics["macro"]["auc"], metrics["macro"]["dice"]
    assert got == metrics and seen == 16 and scores == [auc, auc]
    assert record.__dict__ == {
        "epoch": 1,
        "train_loss": 1.5,
        "val_loss": val_loss,
        "val_dice": dice,
        "val_auc": auc,
        "lr": 3e-3,
        "seconds": 4.0,
        "samples_per_s": 4.0,
        "best": True,
    }
    assert second.epoch == 2 and second.samples_per_s == 32.0 and not second.best  # equal is not better
    assert trainer.history == [record.__dict__, second.__dict__] and trainer.best_dice == auc
    tensors, meta = read_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors")
    assert json.dumps(meta["info"], sort_keys=True) == json.dumps(  # NaN != NaN: compare the JSON
        {"epoch": 1, "val_metrics": metrics, "val_loss": val_loss}, sort_keys=True
    )
    assert not any(k.startswith("rng.") for k in tensors)
    _, last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert last["info"]["epoch"] == 2 and last["info"]["batch"] == 0
    line = (
        f"epoch 1/2  train loss 1.5000  val loss {val_loss:.4f}  val dice {dice:.4f}  val auc {auc:.4f}  "
        f"lr 3.00e-03  4.0 samples/s  *best*"
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == line and out[1].endswith(" 32.0 samples/s")
    assert line in (tmp_path / "run" / "train.log").read_text()
    assert (tmp_path / "run" / "history.json").read_text() == json.dumps(trainer.history, indent=2)
    values, step = tracker.scalars[0]
    expected = {
        "train/loss": 1.5,
        "val/loss": val_loss,
        "train/loss_final": 0.5,
        "train/loss_joint": 0.25,
        "lr/rest": 3e-3,
        "train/samples_per_s": 4.0,
    }
    expected |= {f"val/{k}": v for k, v in metrics["macro"].items() if not math.isnan(v)}
    assert step == 1 and values == expected


def test_save_last_records_the_epoch_position_and_partial_sums(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir)
    trainer.best_dice, trainer.history = 0.25, [{"epoch": 1}]
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    try:
        trainer._save_last(2, batch=3, partial=(1.5, 7))
        assert read_checkpoint(last)[1]["info"] == {
            "epoch": 2,
            "batch": 3,
            "best_dice": 0.25,
            "history": [{"epoch": 1}],
            "epoch_loss_sum": 1.5,
            "epoch_seen": 7,
        }
        trainer._save_last(1)
        assert read_checkpoint(last)[1]["info"] == {
            "epoch": 1,
            "batch": 0,
            "best_dice": 0.25,
            "history": [{"epoch": 1}],
            "epoch_loss_sum": 0.0,
            "epoch_seen": 0,
        }
    finally:
        trainer.close()


# -- signals and resume ---------------------------------------------------------------------------
def test_signals_are_caught_during_fit_only_and_a_second_one_stops_at_once(
    tmp_path: Path, cache_dir: Path, capsys
) -> None:
    trainer = build(tmp_path, cache_dir)
    during: list[Any] = []

    class Signalling(ConstStep):
        def __call__(self, batch):
            during.append(signal.getsignal(signal.SIGINT))
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through the installed handler
            return super().__call__(batch)

    trainer.step = Signalling()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(RunInterrupted) as caught:
            trainer.fit()
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        assert during == [trainer._on_signal] and trainer._interrupted == signal.SIGTERM
        assert caught.value.exit_code == 143 and caught.value.run_dir == tmp_path / "run"
        assert capsys.readouterr().err == ("interrupt: finishing this batch and saving a resumable checkpoint ...\n")
        with pytest.raises(RunInterrupted) as second:
            trainer._on_signal(signal.SIGINT, None)
        assert second.value.signum == signal.SIGINT and second.value.run_dir == tmp_path / "run"
        trainer._interrupted = True  # set by hand (as the tests do): reported as SIGINT
        with pytest.raises(RunInterrupted) as third:
            trainer._raise_interrupted()
        assert third.value.signum == signal.SIGINT and third.value.run_dir == tmp_path / "run"
    finally:
        trainer.close()
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert meta["info"]["batch"] == 1 and meta["info"]["epoch_loss_sum"] == 12.0


def test_a_signal_during_validation_stops_after_the_epoch_is_saved(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    trainer = build(tmp_path, cache_dir, epochs=2)
    trainer.step = ConstStep()
    real = trainer.validate

    def validate_then_signal():
        trainer._interrupted = signal.SIGINT
        return real()

    trainer.validate = validate_then_signal
    monkeypatch.setattr(trainer_module, "tqdm", FakeBar)
    FakeBar.made.clear()
    try:
        with pytest.raises(RunInterrupted) as caught:
            trainer.fit()
    finally:
        trainer.close()
    assert caught.value.exit_code == 130 and len(trainer.history) == 1
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert meta["info"]["epoch"] == 1 and meta["info"]["batch"] == 0
    assert FakeBar.made[0]["kwargs"] == {"initial": 0, "total": 2, "desc": "training", "unit": "epoch", "disable": True}
    assert list(FakeBar.made[0]["iterable"]) == [0, 1]


def test_fit_hands_the_run_to_after_fit_and_its_figures_to_the_trackers(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir)
    trainer.step = ConstStep()
    trainer.tracker = tracker = FakeTracker()
    given: list[Path] = []

    def after_fit(run_dir: Path) -> None:
        given.append(run_dir)
        for name in ("b.png", "a.png", "c.txt"):
            (run_dir / name).write_text("x")

    trainer.after_fit = after_fit
    try:
        assert trainer.fit() is trainer.history and len(trainer.history) == 1
    finally:
        trainer.close()
    trainer.close()  # closing twice is safe (train_run closes what a failed fit left)
    run = tmp_path / "run"
    assert given == [run] and tracker.figures == [([run / "a.png", run / "b.png"], 1)]


def test_resume_restores_the_position_best_score_and_history(tmp_path: Path, cache_dir: Path, caplog) -> None:
    first = build(tmp_path, cache_dir)
    first.step = ConstStep()
    first.fit()
    first.close()
    with caplog.at_level(logging.INFO, logger="fusionkit.train"):
        trainer = build(tmp_path, cache_dir, epochs=2, resume=True)
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    try:
        assert (trainer.start_epoch, trainer.start_batch, trainer._partial) == (1, 0, (0.0, 0))
        assert trainer.best_dice == first.best_dice > -math.inf and trainer.history == first.history
        messages = [r.getMessage() for r in caplog.records]
        assert f"resumed from {last} at epoch 2 batch 0" in messages
        # the changed epochs are applied, logged and recorded; a resume from a checkpoint is no restart
        assert trainer.data.changes and [m for m in messages if m.startswith("resume: ")] == [
            f"resume: {change} (applied)" for change in trainer.data.changes
        ]
        record = json.loads((tmp_path / "run" / "resumes.json").read_text())[-1]
        assert record["restarted_from_beginning"] is False and record["changes"] == list(trainer.data.changes)
        # a graphed run reads each group's lr from a tensor: resuming makes one from a float lr
        with_train(trainer, step_mode="cuda_graph")
        trainer._resume()
        lrs = [g["lr"] for g in trainer.optimizer.param_groups]
        assert all(
            isinstance(lr, torch.Tensor) and lr.device == trainer.device and lr.item() == pytest.approx(3e-3)
            for lr in lrs
        )
        # a changed lr is set in place, into the tensor a graph would read
        with_train(trainer, lr=1e-3)
        trainer._reset_lr()
        assert [g["lr"] for g in trainer.optimizer.param_groups] == lrs
        assert all(lr.item() == pytest.approx(1e-3) for lr in lrs)
        # fit goes on from the resumed epoch
        with_train(trainer, step_mode="eager", lr=3e-3)
        trainer._reset_lr()
        trainer.step = ConstStep()
        assert [r["epoch"] for r in trainer.fit()] == [1, 2]
    finally:
        trainer.close()


def test_an_older_checkpoint_without_position_fields_resumes_at_its_epoch_start(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    first = build(tmp_path, cache_dir)
    first._save_last(1, batch=1, partial=(3.0, 8))
    first.close()
    real = trainer_module.load_checkpoint
    monkeypatch.setattr(trainer_module, "load_checkpoint", lambda *a, **k: {"epoch": real(*a, **k)["epoch"]})
    trainer = build(tmp_path, cache_dir, epochs=2, resume=True)
    trainer.close()
    assert (trainer.start_epoch, trainer.start_batch, trainer._partial) == (1, 0, (0.0, 0))
    assert trainer.best_dice == -math.inf and trainer.history == []


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


def test_tracked_loss_terms_are_means_over_the_samples_even_for_one_sample(tmp_path: Path, cache_dir: Path) -> None:
    trainer = build(tmp_path, cache_dir, batch_size=1, max_batches_per_epoch=1)
    trainer.step = ConstStep(1.5)
    trainer.tracker = tracker = FakeTracker()
    try:
        record, metrics, seen = trainer._train_and_check(0)
        trainer._report(record, metrics, seen)
    finally:
        trainer.close()
    values, _ = tracker.scalars[0]
    assert seen == 1 and record.train_loss == 1.5
    assert values["train/loss_final"] == 0.5 and values["train/loss_joint"] == 0.25


def test_the_progress_bar_shows_the_loss_every_twenty_batches_and_at_the_end(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    """Reading the loss waits for the GPU, so the bar shows it at batches 1, 21, 41, ... and the last."""
    shown: list[int] = []

    class CadenceBar(FakeBar):
        def set_postfix(self, **kwargs: Any) -> None:
            shown.append(self.n)

    config = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=1, n_lesions=40, batch_size=1))
    trainer = Trainer(config, run_dir=tmp_path / "run", synthetic=True, progress=False)
    trainer.step = ConstStep(1.5)
    trainer.tracker = FakeTracker()
    monkeypatch.setattr(trainer_module, "tqdm", CadenceBar)
    try:
        _, seen, batches = trainer._train_epoch(0, 0)
    finally:
        trainer.close()
    assert seen == batches > 21 and shown == [1, 21, batches]


def test_the_progress_request_and_after_fit_are_kept(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    """Bars are asked for by default (drawn only on a terminal: ``bars_enabled`` decides)."""
    asked: list[Any] = []
    monkeypatch.setattr(trainer_module, "bars_enabled", lambda requested: asked.append(requested) or "decided")
    after = lambda run_dir: None  # noqa: E731
    trainer = Trainer(config_of(cache_dir), run_dir=tmp_path / "run", synthetic=True, after_fit=after)
    trainer.close()
    assert asked == [True] and trainer.progress == "decided" and trainer.after_fit is after
    Trainer(config_of(cache_dir), run_dir=tmp_path / "other", synthetic=True, progress=False).close()
    assert asked == [True, False]


@pytest.mark.parametrize(("augment_on", "where"), [("device", "device"), ("cpu", "loader (cpu)")])
def test_the_log_says_where_augmentation_runs(tmp_path: Path, cache_dir: Path, augment_on: str, where: str) -> None:
    config = RunConfig.model_validate({**tiny_run_config(cache_dir, epochs=1, n_lesions=20)})
    config = config.model_copy(update={"data": config.data.model_copy(update={"augment_on": augment_on})})
    Trainer(config, run_dir=tmp_path / "run", synthetic=True, progress=False).close()
    line = f"training on cpu; augmentation on the {where} (data.augment_on: {augment_on})"
    assert line in (tmp_path / "run" / "train.log").read_text()
