"""Kills at every step, survived (issue 28 item 2): each command is killed at each of its phases, by
SIGKILL and by SIGTERM, then what the docs say is done (``--resume`` where the run directory holds a
run, else the same command again), and the outcome is compared with an uninterrupted run.

The kills are deterministic: ``fusionkit.utils.faults.fault_point`` sends the process the signal
named by ``FUSIONKIT_FAULT_SIGNAL`` the ``FUSIONKIT_FAULT_AT``-th time it reaches the point named by
``FUSIONKIT_FAULT``. Every case ends with a run equal to the uninterrupted one (same history but
for wall-clock fields, byte-equal best checkpoint, same metrics and predictions: one thread and a
deterministic recipe make two runs on one machine bit-identical) or with a refusal in one line
saying what to do; and no file under a final name is ever truncated: every JSON parses, every
safetensors file loads, every cache array maps, and no temporary file is left once the command
has been run to its end.

One uninterrupted reference run is trained; every case but the image cache's reuses its cache.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors import safe_open

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.trains]

SIGNALS = ("KILL", "TERM")

TRAIN_POINTS: list[tuple[str, int]] = [
    ("cache.image-written", 5),  # the image cache half built (a fresh cache folder)
    ("train.run-files-written", 1),  # config.yaml, split.json and the metadata encoder written
    ("train.batch-done", 6),  # mid-epoch: the second of the two epochs' 4 batches
    ("write.before-rename:last.safetensors", 1),  # a checkpoint written, not yet renamed (epoch 1)
    ("write.before-rename:best.safetensors", 2),  # the best checkpoint of the final epoch
    ("train.epoch-checkpointed", 2),  # after the final checkpoint, before its history and log
    ("report.figures", 1),  # the final report: metrics written, figures not yet
]
"""(fault point, which time it is reached) for ``fusionkit train``: 7 points."""

TIMING_FIELDS = ("seconds", "samples_per_s")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSIONKIT_FAULT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    return env


def _cli(*args: str | Path, fault: tuple[str, int, str] | None = None) -> subprocess.CompletedProcess[str]:
    extra = {}
    if fault is not None:
        extra = {"FUSIONKIT_FAULT": fault[0], "FUSIONKIT_FAULT_AT": str(fault[1]), "FUSIONKIT_FAULT_SIGNAL": fault[2]}
    return subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(**extra),
        timeout=600,
    )


def _killed(proc: subprocess.CompletedProcess[str], sig: str) -> None:
    """The process died of SIGKILL, or stopped on SIGTERM with status 143 and one line saying what to do."""
    if sig == "KILL":
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
        return
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fusionkit:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "--resume" in lines[0] or "again" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def _is_temporary(path: Path) -> bool:
    return path.name.endswith(".tmp")


def check_files(*folders: Path, temporaries: bool = True) -> int:
    """Every file under a final name is whole: JSON parses, safetensors loads, .npy maps, CSV reads.
    ``temporaries=False``: no temporary file may be left either. Returns the number of files checked."""
    checked = 0
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if _is_temporary(path):
                assert temporaries, f"temporary file left: {path}"
                continue
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():  # noqa: SIM118 - safe_open has keys(), no iteration
                        handle.get_tensor(key)
            elif path.suffix == ".npy":
                np.load(path, mmap_mode="r").sum()
            elif path.suffix == ".csv":
                rows = list(csv.reader(path.read_text().splitlines()))
                assert rows and len({len(r) for r in rows}) == 1, f"ragged CSV {path}"
            elif path.suffix in (".yaml", ".yml"):
                yaml.safe_load(path.read_text())
            checked += 1
    return checked


def run_outcome(run: Path) -> dict[str, object]:
    """What must equal between a recovered and an uninterrupted run."""
    history = [
        {k: v for k, v in entry.items() if k not in TIMING_FIELDS}
        for entry in json.loads((run / "history.json").read_text())
    ]
    return {
        "history": history,
        "best": (run / "checkpoints" / "best.safetensors").read_bytes(),
        "metrics": json.loads((run / "metrics.json").read_text()),
        "predictions": (run / "predictions.csv").read_text(),
        "inference": json.loads((run / "inference.json").read_text()),
        "epochs_logged": sum("val dice" in line for line in (run / "train.log").read_text().splitlines()),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A MILK10k folder, a config, and the uninterrupted reference run (which builds the shared cache)."""
    from train_helpers import tiny_run_config, write_config

    from fusionkit.data.synthetic import make_synthetic_milk10k

    base = tmp_path_factory.mktemp("kills")
    make_synthetic_milk10k(base / "data", n_lesions=40, image_size=(40, 30), seed=3)
    raw = tiny_run_config(base / "cache", epochs=2, n_lesions=40)
    del raw["data"]["synthetic"]
    config = write_config(base / "config.yaml", raw)
    ref = base / "reference"
    proc = _cli("train", config, "--data", base / "data", "--out", ref, "--quiet")
    assert proc.returncode == 0, proc.stderr
    return {"base": base, "config": config, "data": base / "data", "cache": base / "cache", "reference": ref}


def _recover(args: list[str | Path], run: Path) -> subprocess.CompletedProcess[str]:
    """What the docs say after a kill: --resume where the folder holds a run, else the same command."""
    again = [*args, "--resume"] if (run / "config.yaml").is_file() else args
    return _cli(*again)


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize(("point", "at"), TRAIN_POINTS, ids=[p for p, _ in TRAIN_POINTS])
def test_train_killed_at_every_phase_recovers_to_the_uninterrupted_run(
    world: dict[str, Path], point: str, at: int, sig: str
) -> None:
    base = world["base"]
    case = base / f"train-{point.replace(':', '-')}-{sig}"
    run, cache = case / "run", world["cache"]
    args: list[str | Path] = ["train", world["config"], "--data", world["data"], "--out", run, "--quiet"]
    if point.startswith("cache."):
        cache = case / "cache"
        args += ["--set", f"data.cache_dir={cache}"]
    killed = _cli(*args, fault=(point, at, sig))
    _killed(killed, sig)
    check_files(*(f for f in (run, cache) if f.exists()))

    recovered = _recover(args, run)
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    check_files(run, cache, temporaries=False)
    assert run_outcome(run) == run_outcome(world["reference"])
