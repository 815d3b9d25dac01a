"""The run lifecycle: lock, start/resume/overwrite, changed settings on resume, divergence,
interrupts, the last batch of one, and what a run directory records."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from train_helpers import tiny_run_config, write_config

from fusionkit.data import make_synthetic_milk10k
from fusionkit.errors import ConfigError, DivergenceError, RunInterrupted
from fusionkit.runtime.checkpoint import read_checkpoint
from fusionkit.runtime.config import RunConfig, load_run_config
from fusionkit.runtime.lock import LOCK_NAME
from fusionkit.train.resume import claim_run_dir, resume_changes
from fusionkit.train.sampler import EpochSampler
from fusionkit.train.trainer import Trainer, train_run


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- start, resume, overwrite ---------------------------------------------------------------------
def test_claim_run_dir_start_resume_overwrite(tmp_path: Path, cache_dir: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_config(run / "config.yaml", tiny_run_config(cache_dir))
    (run / "checkpoints" / "best.safetensors").write_bytes(b"x")  # killed between best and last
    (run / "train.log").write_text("epoch 1 ...\n")
    with pytest.raises(ConfigError, match="already holds a run.*--overwrite"):
        claim_run_dir(run, resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="either --resume .* or --overwrite"):
        claim_run_dir(run, resume=True, overwrite=True)
    start = claim_run_dir(run, resume=True, overwrite=False)  # no last checkpoint: from the start
    assert start.restarted and not start.from_checkpoint
    assert sorted(p.name for p in run.iterdir()) == ["train.log"]  # the log of the lost attempt stays
    write_config(run / "config.yaml", tiny_run_config(cache_dir))
    assert not claim_run_dir(run, resume=False, overwrite=True).from_checkpoint
    assert list(run.iterdir()) == []
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="no fusionkit run; --overwrite deletes only runs"):
        claim_run_dir(other, resume=False, overwrite=True)
    assert (other / "holiday.jpg").exists()


def test_resume_applies_some_changes_and_refuses_the_others_by_name(tmp_path: Path) -> None:
    base = RunConfig.model_validate(tiny_run_config(tmp_path))
    changed = lambda **train: RunConfig.model_validate(tiny_run_config(tmp_path, **train))  # noqa: E731
    assert resume_changes(base, changed(epochs=5, lr=0.01), run_dir=tmp_path, synthetic=True) == [
        "train.epochs: 2 -> 5",
        "train.lr: 0.003 -> 0.01",
    ]
    with pytest.raises(ConfigError, match=r"cannot change train.batch_size \(8 -> 4\)"):
        resume_changes(base, changed(batch_size=4), run_dir=tmp_path, synthetic=True)
    with pytest.raises(ConfigError, match="cannot change train.seed"):
        resume_changes(base, changed(seed=1, lr=0.01), run_dir=tmp_path, synthetic=True)
    other = RunConfig.model_validate(tiny_run_config(tmp_path, preset="late-concat"))
    with pytest.raises(ConfigError, match="different model spec"):
        resume_changes(base, other, run_dir=tmp_path, synthetic=True)


def test_non_finite_hyperparameters_are_refused_by_name(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path))
    for value in (".inf", "nan", "-.inf"):
        with pytest.raises(ValueError, match="train.lr"):
            load_run_config(path, [f"train.lr={value}"])
    with pytest.raises(ValueError, match="grad_clip"):
        load_run_config(path, ["train.grad_clip=.inf"])


# -- the last batch of one ------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 70),
    batch=st.integers(2, 9),
    world=st.integers(1, 3),
    mode=st.sampled_from(["shuffle", "balanced"]),
)
def test_the_training_sampler_never_yields_a_batch_of_one(n: int, batch: int, world: int, mode: str) -> None:
    labels = [i % 3 for i in range(n)]
    per_rank = -(-n // world)
    for rank in range(world):
        sampler = EpochSampler(labels, seed=1, mode=mode, rank=rank, world_size=world, batch_size=batch)
        order = list(sampler)
        assert len(order) == len(sampler)
        assert all(len(order[i : i + batch]) > 1 for i in range(0, len(order), batch))
        # at most the one sample that would have formed the batch of one sits out
        assert len(order) == per_rank - (per_rank % batch == 1)
        sampler.set_epoch(0, start=batch)  # resuming after one batch skips exactly that batch
        assert list(sampler) == order[batch:]


@pytest.mark.trains
# -- divergence and a last batch of one, end to end -----------------------------------------------
def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path: Path, cache_dir: Path) -> None:
    data = tmp_path / "milk"
    make_synthetic_milk10k(data, n_lesions=60, photo_size=(40, 30), seed=3)
    # 45 training lesions in batches of 4: the epoch would end in a batch of one (BatchNorm refuses it)
    config = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=3, batch_size=4))
    trainer = Trainer(config, run_dir=tmp_path / "run", data_root=data, progress=False)
    assert len(trainer.data.train_set) == 45
    step = trainer.step

    def nan_in_epoch_two(batch):
        loss = step(batch)
        return loss * math.nan if len(trainer.history) == 1 else loss

    trainer.step = nan_in_epoch_two
    with pytest.raises(DivergenceError, match="diverged in epoch 2.*end of epoch 1") as caught:
        trainer.fit()
    # finite weights can still overflow to NaN posteriors: the same error, not a ValueError
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.fill_(1e30)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    with pytest.raises(DivergenceError, match="in epoch 2: the validation probabilities became NaN"):
        trainer.validate()
    trainer.close()
    assert caught.value.epoch == 2 and caught.value.exit_code == 1
    tensors, meta = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert meta["info"]["epoch"] == 1 and meta["info"]["batch"] == 0
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1
    # what the run records: the folder it read, not the unused synthetic block
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["root"] == str(data.resolve()) and "synthetic" not in saved["data"]
    assert not (tmp_path / "run" / LOCK_NAME).exists()


@pytest.mark.trains
# -- SIGTERM mid-epoch, then a resume with changed settings ---------------------------------------
def test_interrupted_run_resumes_with_applied_changes_recorded(tmp_path: Path, cache_dir: Path) -> None:
    config = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=1, n_lesions=40))
    run = tmp_path / "run"
    trainer = Trainer(config, run_dir=run, synthetic=True, progress=False)
    trainer.interrupt(signal.SIGTERM)  # as if SIGTERM arrived during the first batch
    with pytest.raises(RunInterrupted) as caught:
        trainer.fit()
    trainer.close()
    assert caught.value.exit_code == 143 and not (run / LOCK_NAME).exists()
    _, meta = read_checkpoint(run / "checkpoints" / "last.safetensors")
    assert meta["info"]["batch"] == 1 and meta["info"]["epoch_seen"] == 8

    longer = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=2, n_lesions=40))
    resumed = train_run(longer, run_dir=run, synthetic=True, resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    # the resumed epoch's loss is the whole epoch's, as in an uninterrupted run
    whole = train_run(config, run_dir=tmp_path / "whole", synthetic=True, progress=False)
    assert resumed.history[0]["train_loss"] == whole.history[0]["train_loss"]

    # a finished run resumed with a new lr: set on the optimizer, logged, recorded, in config.yaml
    lower = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=2, n_lesions=40, lr=1e-3))
    again = train_run(lower, run_dir=run, synthetic=True, resume=True, progress=False)
    assert all(float(g["lr"]) == pytest.approx(1e-3) for g in again.optimizer.param_groups)
    records = json.loads((run / "resumes.json").read_text())
    assert [(r["from_epoch"], r["from_batch"]) for r in records] == [(1, 1), (3, 0)]
    assert [r["changes"] for r in records] == [["train.epochs: 1 -> 2"], ["train.lr: 0.003 -> 0.001"]]
    assert "resume: train.lr: 0.003 -> 0.001 (applied)" in (run / "train.log").read_text()
    saved = load_run_config(run / "config.yaml")
    assert saved.train.lr == 1e-3 and saved.train.epochs == 2  # config.yaml says what now runs


# -- smaller faults -------------------------------------------------------------------------------
def test_atomic_writes_respect_the_umask_keep_a_replaced_mode_and_refuse_a_directory(tmp_path: Path) -> None:
    from fusionkit.utils.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.txt", "a")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644
        (tmp_path / "new.txt").chmod(0o640)
        atomic_write_text(tmp_path / "new.txt", "b")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "c")
        assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    with pytest.raises(IsADirectoryError, match="is a directory; give a file name") as caught:
        atomic_write_text(tmp_path, "d")
    assert caught.value.filename == str(tmp_path)


def test_a_checkpoint_with_non_finite_weights_is_refused_at_load(tmp_path: Path) -> None:
    from fusionkit.runtime.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[0].bias[1] = math.inf
    path = save_checkpoint(tmp_path / "bad.safetensors", model=model)
    with pytest.raises(ConfigError, match=r"bad.safetensors: .*NaN or infinite weights \(model.0.bias\)"):
        load_checkpoint(path, model=torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_an_unreachable_hub_fails_at_once_with_one_clear_sentence(tmp_path: Path, monkeypatch) -> None:
    import timm

    from fusionkit.components.image_encoders import TimmImageEncoder
    from fusionkit.errors import PretrainedWeightsError

    def unreachable(address, timeout):
        assert timeout <= 5
        raise OSError("Network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("went on to download"))
    with pytest.raises(PretrainedWeightsError) as caught:
        TimmImageEncoder(model_name="test_efficientnet", pretrained=True)
    message = str(caught.value)
    assert "huggingface.co:443 cannot be reached (Network is unreachable)" in message
    assert ".." not in message and message.endswith("set pretrained: false or give weights_file")


def test_the_report_states_the_loss_as_trained() -> None:
    from fusionkit.evaluate.report import loss_text
    from fusionkit.specs.model import LossSpec

    assert loss_text(LossSpec()) == "CE(P_final) + 0.5 L_IM + 0.25 L_I + 0.25 L_M"
    none = LossSpec(lambda_joint=0.0, lambda_image=0.0, lambda_meta=0.0)
    assert loss_text(none) == "CE(P_final) only (no auxiliary branch losses)"
    assert loss_text(LossSpec(lambda_image=0.0, class_weights=(1.0,) * 11)) == (
        "CE(P_final) + 0.5 L_IM + 0.25 L_M (class-weighted)"
    )


def test_a_cosine_schedule_fixes_epochs_and_lr_on_resume(tmp_path: Path) -> None:
    cosine = {"scheduler": {"kind": "cosine"}}
    base = RunConfig.model_validate(tiny_run_config(tmp_path, **cosine))
    longer = RunConfig.model_validate(tiny_run_config(tmp_path, epochs=4, **cosine))
    with pytest.raises(ConfigError, match=r"cannot change train.epochs \(2 -> 4\)"):
        resume_changes(base, longer, run_dir=tmp_path, synthetic=True)
