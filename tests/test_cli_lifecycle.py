"""The command line's exits: usage errors, interrupts (SIGTERM through the real script), divergence.

Subprocess cases run the installed ``fusionkit`` script (or ``python -m fusionkit.cli``) with this
checkout on PYTHONPATH and assert the exit status and that stderr holds no traceback.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import tiny_run_config, write_config

import fusionkit.evaluate.pipeline as pipeline
from fusionkit.cli import run_app
from fusionkit.errors import DivergenceError, RunInterrupted

REPO = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("fusionkit") or str(Path(sys.executable).with_name("fusionkit"))


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _start(*args: str, script: bool = False, cwd: Path | None = None) -> subprocess.Popen:
    command = [SCRIPT] if script else [sys.executable, "-m", "fusionkit.cli"]
    return subprocess.Popen(
        [*command, *args],
        env=_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_usage_errors_through_the_real_entry_points(tmp_path: Path) -> None:
    assert Path(SCRIPT).is_file(), "the fusionkit console script is installed"
    bare = _start(script=True)
    typo = _start("train", "x.yaml", "--synthetic", "true")
    out, err = bare.communicate(timeout=120)
    assert bare.returncode == 0 and "Traceback" not in err
    assert out.startswith("Usage: fusionkit [OPTIONS] COMMAND") and "train" in out
    out, err = typo.communicate(timeout=120)
    assert typo.returncode == 2 and "Traceback" not in err
    assert "Got unexpected extra argument(s) (true)" in err and err.startswith("Usage: fusionkit train")


@pytest.mark.parametrize(
    "args, message",
    [
        (["trian"], "Error: No such command 'trian'. Did you mean 'train'?"),
        (["train"], "Missing argument 'CONFIG'"),
        (["train", "x.yaml", "--bogus"], "No such option: --bogus"),
        (["evaluate", "run", "--gradcam", "many"], "Invalid value for '--gradcam'"),
        (["predict", "run"], "Missing option '--data'"),
    ],
)
def test_usage_errors_exit_2_with_the_usage_line(capsys, args, message) -> None:
    assert run_app(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("Usage: fusionkit") and "Traceback" not in err


def test_help_shows_boolean_options_as_flags(capsys) -> None:
    assert run_app(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "<bool>" not in out
    for flag in ("--synthetic", "--resume", "--overwrite", "--quiet"):
        assert f"  {flag}  " in out, flag


@pytest.mark.parametrize(
    "error, code, line",
    [
        (
            RunInterrupted(signal.SIGINT, Path("runs/x")),
            130,
            "fusionkit: interrupt: stopped; a resumable checkpoint was saved in runs/x",
        ),
        (RunInterrupted(signal.SIGTERM, Path("runs/x")), 143, "fusionkit: SIGTERM: stopped;"),
        (KeyboardInterrupt(), 130, "fusionkit: interrupted"),
        (
            DivergenceError("training diverged in epoch 3: ...", epoch=3),
            1,
            "fusionkit: error: training diverged in epoch 3",
        ),
        (
            PermissionError(13, "Permission denied", "runs/x/config.yaml"),
            2,
            "fusionkit: error: runs/x/config.yaml: Permission denied",
        ),
        (
            OSError(28, "No space left on device", "runs/x/last.safetensors"),
            1,
            "fusionkit: error: runs/x/last.safetensors: No space",
        ),
    ],
)
def test_every_way_a_run_ends_has_its_exit_status(tmp_path, monkeypatch, capsys, error, code, line) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipeline, "train_and_evaluate", fail)
    assert run_app(["train", str(config), "--synthetic", "--out", str(tmp_path / "run")]) == code
    err = capsys.readouterr().err
    assert err.startswith(line) and len(err.strip().splitlines()) == 1


def test_non_finite_lr_is_a_one_line_error(tmp_path, capsys) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path))
    assert run_app(["train", str(config), "--synthetic", "--set", "train.lr=.inf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fusionkit: error: {config}: invalid RunConfig: train.lr: Input should be a finite number")


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "cache", epochs=200, n_lesions=40))
    run = tmp_path / "run"
    proc = _start("train", str(config), "--synthetic", "--out", str(run), script=True)
    last = run / "checkpoints" / "last.safetensors"
    deadline = time.monotonic() + 240
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert f"fusionkit: SIGTERM: stopped; a resumable checkpoint was saved in {run}" in err
    assert last.is_file() and not (run / "run.lock").exists()
    assert "\r" not in err and "it/s" not in err  # no progress bars when stderr is not a terminal
    assert "epoch 1/200  train loss" in out


def test_out_naming_a_directory_is_a_one_line_user_error(tmp_path, capsys) -> None:
    assert run_app(["schema", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"fusionkit: error: {tmp_path}: is a directory; give a file name\n"
