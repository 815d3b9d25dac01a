"""Outputs outside a run directory (issue 28 items 2 and 5): ``predict --out`` and ``export --out``
never leave a sidecar that describes other files, a second writer of the same output is refused in
one line, and a second ``fusionkit sweep`` on a folder is refused while the first runs.

A process is held at a point deterministically with the fault hook (``FUSIONKIT_FAULT_SIGNAL=STOP``
pauses it there; SIGCONT lets it go on)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusionkit.inference.outputs import sha256_of

pytestmark = [pytest.mark.slow, pytest.mark.trains]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train_helpers import tiny_run_config

    from fusionkit.runtime.config import RunConfig
    from fusionkit.train.trainer import train_run

    root = tmp_path_factory.mktemp("outputs")
    config = RunConfig.model_validate(tiny_run_config(root / "cache", epochs=1, n_lesions=40))
    train_run(config, run_dir=root / "run", synthetic=True, progress=False)
    return root / "run"


def _fail_fsync_of(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A full disk exactly when the temporary file of ``name`` is synced (its rename never happens)."""
    fsync = os.fsync

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)


def _pair_agrees(data: Path) -> bool:
    """No sidecar, or one whose recorded SHA-256 is the data file's."""
    sidecar = data.with_suffix(".json")
    return not sidecar.exists() or json.loads(sidecar.read_text())["sha256"][data.name] == sha256_of(data)


def test_a_predict_stopped_before_its_sidecar_never_leaves_the_old_sidecar(
    run: Path, tmp_path: Path, monkeypatch
) -> None:
    """Issue 28: the CSV was replaced, then the sidecar; a kill between the two left the new CSV
    described by the old sidecar (another decision rule). The old sidecar now goes first and the new
    one, holding the CSV's SHA-256, comes last."""
    from fusionkit.inference.ensemble import predict_split

    out = tmp_path / "sub.csv"
    predict_split([run], data_root=run / "synthetic", out=out, split="Training", decision="probs", progress=False)
    assert json.loads(out.with_suffix(".json").read_text())["decision"] == "probs" and _pair_agrees(out)
    before = out.read_text()
    _fail_fsync_of(monkeypatch, "sub.json")
    with pytest.raises(OSError, match="No space left"):
        predict_split([run], data_root=run / "synthetic", out=out, split="Training", decision="argmax", progress=False)
    assert out.read_text() != before  # the CSV was replaced ...
    assert not out.with_suffix(".json").exists()  # ... and no sidecar describes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]  # no temporary file, no lock left
    monkeypatch.undo()
    predict_split([run], data_root=run / "synthetic", out=out, split="Training", decision="argmax", progress=False)
    assert json.loads(out.with_suffix(".json").read_text())["decision"] == "argmax" and _pair_agrees(out)


def test_an_export_stopped_before_its_sidecar_never_leaves_the_old_sidecar(
    run: Path, tmp_path: Path, monkeypatch
) -> None:
    from fusionkit.inference.export import export_onnx

    out = tmp_path / "model.onnx"
    export_onnx(run, out=out, checkpoint="best")
    assert _pair_agrees(out)
    (tmp_path / ".model.onnx.x1y2z3.tmp").write_bytes(b"half")  # what a killed export left
    _fail_fsync_of(monkeypatch, "model.json")
    with pytest.raises(OSError, match="No space left"):
        export_onnx(run, out=out, checkpoint="last")
    assert not out.with_suffix(".json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    monkeypatch.undo()
    export_onnx(run, out=out, checkpoint="last")
    assert _pair_agrees(out)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSIONKIT_FAULT")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def _wait_stopped(proc: subprocess.Popen[str], timeout: float = 300) -> None:
    """Wait until ``proc`` pauses itself at its fault point (state T in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.05)
    raise AssertionError("the process never reached its fault point")


def _held_at(point: str, *args: str | Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusionkit.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(FUSIONKIT_FAULT=point, FUSIONKIT_FAULT_SIGNAL="STOP"),
    )
    _wait_stopped(proc)
    return proc


def _second(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )


@pytest.mark.subprocess
def test_a_second_predict_to_an_out_being_written_is_refused_in_one_line(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub.csv"
    args = ["predict", run, "--data", run / "synthetic", "--split", "Training", "--out", out, "--quiet"]
    first = _held_at("write.before-rename:sub.csv", *args)  # held with its CSV written, not yet renamed
    try:
        second = _second(*args, "--decision", "probs")
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines() == [
            f"fusionkit: error: {out}: another process (pid {first.pid}) is writing this file now; "
            "wait for it to finish or choose another --out"
        ]
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["decision"] == "thresholds" and _pair_agrees(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv", "sub.json"]


@pytest.mark.subprocess
def test_a_second_sweep_on_a_folder_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    """Issue 28 item 5: two sweeps on one folder. The choice: the second refuses in one line before
    it writes anything (sharing the work is left to one sweep with --devices)."""
    from train_helpers import tiny_run_config, write_config

    config = write_config(tmp_path / "config.yaml", tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=40))
    out = tmp_path / "sweep"
    args = ["sweep", config, "--presets", "ji-adf", "--seeds", "0", "--synthetic", "--out", out, "--bootstrap", "5"]
    first = _held_at("train.batch-done", *args)
    try:
        listing = sorted(p.relative_to(out) for p in out.rglob("*"))
        second = _second(*args, "--quiet")
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines() == [
            f"fusionkit: error: {out}: another sweep (pid {first.pid}) is running in this folder; "
            "wait for it to finish or stop it"
        ]
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == listing  # the second wrote nothing
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert (out / "summary.md").is_file() and not (out / "sweep.lock").exists()
