"""End-to-end training on a generated set: loss falls, best checkpoint reloads, resume is exact,
gloo DDP agrees across ranks, Ctrl-C leaves a resumable checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_run_config, write_config

from fusionkit.data import CLASS_NAMES
from fusionkit.inference.pipeline import load_run
from fusionkit.metrics import isic_metrics
from fusionkit.runtime.checkpoint import model_state, read_checkpoint
from fusionkit.runtime.config import RunConfig
from fusionkit.train.trainer import Trainer, train_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Trainer:
    """One 3-epoch run shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("run") / "jiadf"
    config = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=3))
    return train_run(config, run_dir=run, synthetic=True, progress=False)


@pytest.mark.trains
def test_training_lowers_the_loss(trained: Trainer) -> None:
    losses = [r["train_loss"] for r in trained.history]
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    assert all(np.isfinite(losses))


@pytest.mark.trains
def test_run_directory_holds_resolved_config_encoder_and_checkpoints(trained: Trainer) -> None:
    run = trained.run_dir
    for name in ("config.yaml", "metadata_encoder.json", "split.json", "history.json", "train.log"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.safetensors").is_file()
    assert (run / "checkpoints" / "best.safetensors").is_file()
    saved = RunConfig.model_validate(__import__("yaml").safe_load((run / "config.yaml").read_text()))
    # the metadata width comes from the fitted encoder, never from the spec
    assert "in_dim" not in saved.model.to_dict()["metadata_encoder"]
    assert trained.model.metadata_width == trained.data.encoder.metadata_width
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    tensors, meta = read_checkpoint(run / "checkpoints" / "last.safetensors")
    assert any(k.startswith("optim.") for k in tensors) and "rng.torch" in tensors
    assert meta["info"]["epoch"] == 3 and "scheduler" in meta


@pytest.mark.trains
def test_best_checkpoint_reproduces_its_validation_metrics(trained: Trainer) -> None:
    run = load_run(trained.run_dir, device="cpu")
    preds = run.predict_dataset(run.validation_dataset())
    metrics = isic_metrics(preds.labels, preds.probs, CLASS_NAMES)
    stored = run.checkpoint_info["val_metrics"]
    for key, value in stored["macro"].items():
        assert metrics["macro"][key] == pytest.approx(value, abs=1e-6), key
    best = max(r["val_dice"] for r in trained.history)
    assert stored["macro"]["dice"] == pytest.approx(best)


@pytest.mark.trains
def test_resume_equals_uninterrupted(tmp_path: Path, cache_dir: Path) -> None:
    full = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=2, n_lesions=40))
    half = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=1, n_lesions=40))
    a = train_run(full, run_dir=tmp_path / "a", synthetic=True, progress=False)
    train_run(half, run_dir=tmp_path / "b", synthetic=True, progress=False)
    b = train_run(full, run_dir=tmp_path / "b", synthetic=True, resume=True, progress=False)
    sa, sb = model_state(a.model), model_state(b.model)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


@pytest.mark.trains
def test_interrupt_saves_a_resumable_checkpoint(tmp_path: Path, cache_dir: Path) -> None:
    config = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=1, n_lesions=40))
    trainer = Trainer(config, run_dir=tmp_path / "run", synthetic=True, progress=False)
    trainer.interrupt()  # as if Ctrl-C arrived during the first batch
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    trainer.close()
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert meta["info"]["epoch"] == 0 and meta["info"]["batch"] == 1
    resumed = train_run(config, run_dir=tmp_path / "run", synthetic=True, resume=True, progress=False)
    assert len(resumed.history) == 1


def _launch(config: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """Two gloo ranks of tests/ddp_worker.py under torchrun."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    return subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            "--standalone",  # a free port of its own: two suites on one machine do not collide
            str(REPO / "tests" / "ddp_worker.py"),
            str(config),
            str(run_dir),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,  # ranks that disagree wait forever
    )


def _torchrun(config: Path, run_dir: Path, *args: str) -> dict[int, dict[str, torch.Tensor]]:
    """Two ranks train; returns each rank's final weights."""
    result = _launch(config, run_dir, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return {r: load_file(str(run_dir / f"rank{r}.safetensors")) for r in (0, 1)}


def _assert_ranks_agree_with_the_checkpoint(weights: dict[int, dict[str, torch.Tensor]], run_dir: Path) -> None:
    r0, r1 = weights[0], weights[1]
    assert r0.keys() == r1.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    # rank 0 wrote the checkpoint, and it holds the very weights both ranks ended with
    last = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    for key in r0:
        assert torch.equal(last[f"model.{key}"], r0[key]), key
    # every rank validates on the whole split (each predicts its shard, the results are gathered)
    scores = [
        json.dumps([[r["val_loss"], r["val_dice"], r["val_auc"]] for r in json.loads(path.read_text())])
        for path in (run_dir / "rank0.history.json", run_dir / "rank1.history.json")
    ]
    assert scores[0] == scores[1]


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_gloo_ddp_two_processes_agree_and_resume_together(tmp_path: Path, cache_dir: Path) -> None:
    config = RunConfig.model_validate(
        tiny_run_config(cache_dir, epochs=1, n_lesions=40, max_batches_per_epoch=1, tracking=["tensorboard"])
    )
    run_dir = tmp_path / "ddp"
    first = _torchrun(write_config(tmp_path / "ddp.yaml", config.model_dump(mode="json")), run_dir)
    _assert_ranks_agree_with_the_checkpoint(first, run_dir)
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 tracks, alone
    assert len(json.loads((run_dir / "history.json").read_text())) == 1
    # starting over a finished run without --resume: rank 0 refuses, and rank 1 is told, not left waiting
    refused = _launch(tmp_path / "ddp.yaml", run_dir)
    assert refused.returncode != 0
    assert f"ConfigError: {run_dir} already holds a run; pass --resume" in refused.stderr
    assert f"ConfigError: rank 0 refused the run: {run_dir} already holds a run" in refused.stderr
    # both ranks resume from rank 0's checkpoint (rank 1 reads the saved config) and train epoch 2
    longer = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2})})
    second = _torchrun(write_config(tmp_path / "ddp2.yaml", longer.model_dump(mode="json")), run_dir, "--resume")
    _assert_ranks_agree_with_the_checkpoint(second, run_dir)
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    for record in history:  # the throughput counts both ranks' samples: one batch of 8 each
        assert record["samples_per_s"] * record["seconds"] == pytest.approx(16)
    assert not all(torch.equal(first[0][k], second[0][k]) for k in first[0])


@pytest.mark.trains
@pytest.mark.slow
def test_compiled_step_trains_without_recompiling(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    """step_mode=compile: one compilation serves every batch (nothing in the batch is guarded on)."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    # a cache of its own: inductor's shared cache (/tmp/torchinductor_$USER) does not key its kernels on
    # ATEN_CPU_CAPABILITY, so after a run under another capability it hands back vectorised C++ that
    # no longer compiles (torch 2.14: "'at::vec' has not been declared" under =default)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    config = RunConfig.model_validate(
        tiny_run_config(
            cache_dir, epochs=1, n_lesions=40, step_mode="compile", compile_mode="default", max_batches_per_epoch=3
        )
    )
    trainer = train_run(config, run_dir=tmp_path / "run", synthetic=True, progress=False)
    assert np.isfinite(trainer.history[0]["train_loss"])
    torch._dynamo.reset()
