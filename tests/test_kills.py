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

# not `trains`: every case compares a killed-and-resumed run with the reference run made in the same
# environment (byte equality), never with a number written here, so rerunning the whole file under
# ATEN_CPU_CAPABILITY=default (.ci/run's second step) would cost ~10 minutes and test no CPU dependence
pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

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
    make_synthetic_milk10k(base / "data", n_lesions=40, photo_size=(40, 30), seed=3)
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


# -- fusionkit sweep -----------------------------------------------------------------------------------
SWEEP_POINTS: list[tuple[str, int]] = [
    ("train.batch-done", 2),  # inside the first run, mid-epoch
    ("report.figures", 1),  # inside the first run's report
    ("sweep.run-done", 1),  # between the two runs
]
"""(fault point, which time) for ``fusionkit sweep`` over two runs: 3 points."""

RUN_RECORD_FIELDS = ("status", "best_epoch", "metrics", "decision", "reported_split", "val_labels", "config")


def _sweep_args(world: dict[str, Path], out: Path) -> list[str | Path]:
    return [
        *("sweep", world["config"], "--presets", "ji-adf", "--seeds", "0,1", "--data", world["data"]),
        *("--out", out, "--bootstrap", "5", "--quiet"),
    ]


def sweep_outcome(out: Path) -> dict[str, object]:
    """Every run's outcome and record, and the summary's rows (without wall-clock fields)."""
    runs = sorted(p.parent for p in out.glob("runs/*/*/sweep_run.json"))
    records = {str(r.relative_to(out)): json.loads((r / "sweep_run.json").read_text()) for r in runs}
    summary = json.loads((out / "summary.json").read_text())
    return {
        "runs": {str(r.relative_to(out)): run_outcome(r) for r in runs},
        "records": {k: {f: v.get(f) for f in RUN_RECORD_FIELDS} for k, v in records.items()},
        "summary_runs": sorted(
            (r["preset"], r["seed"], r["status"], json.dumps(r.get("metrics"))) for r in summary["runs"]
        ),
    }


@pytest.fixture(scope="module")
def reference_sweep(world: dict[str, Path]) -> Path:
    out = world["base"] / "reference-sweep"
    proc = _cli(*_sweep_args(world, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize(("point", "at"), SWEEP_POINTS, ids=[p for p, _ in SWEEP_POINTS])
def test_sweep_killed_inside_and_between_runs_is_finished_by_the_same_command(
    world: dict[str, Path], reference_sweep: Path, point: str, at: int, sig: str
) -> None:
    out = world["base"] / f"sweep-{point}-{sig}"
    killed = _cli(*_sweep_args(world, out), fault=(point, at, sig))
    _killed(killed, sig)
    if sig == "TERM":  # a sweep has no --resume: the line says to run the same command again
        line = next(line for line in killed.stderr.splitlines() if line.startswith("fusionkit:"))
        assert "run the same command again" in line and "--resume" not in line, line
    check_files(out)
    again = _cli(*_sweep_args(world, out))  # what the docs say: the same command
    assert again.returncode == 0, again.stderr[-3000:]
    check_files(out, world["cache"], temporaries=False)
    assert sweep_outcome(out) == sweep_outcome(reference_sweep)


# -- predict, evaluate, export ---------------------------------------------------------------------------
OUTPUT_POINTS: list[tuple[str, str]] = [
    ("predict", "write.before-rename:sub.csv"),  # the CSV written, not renamed
    ("predict", "write.before-rename:sub.json"),  # the CSV renamed, its sidecar not yet
    ("evaluate", "report.figures"),  # metrics written, figures and report.md not yet
    ("export", "write.before-rename:model.onnx"),
    ("export", "write.before-rename:model.json"),
]
"""(command, fault point) of the commands that write outside training: 5 points."""


def _output_args(command: str, world: dict[str, Path], folder: Path) -> list[str | Path]:
    run = world["reference"]
    if command == "predict":
        return ["predict", run, "--data", world["data"], "--split", "Training", "--out", folder / "sub.csv", "--quiet"]
    if command == "export":
        return ["export", run, "--out", folder / "model.onnx"]
    return ["evaluate", folder / "run", "--quiet"]


def _output_files(command: str, folder: Path) -> dict[str, bytes]:
    """The command's final files, the ones that must equal an uninterrupted command's byte for byte."""
    if command == "evaluate":
        assert (folder / "run" / "report.md").is_file()
        return {n: (folder / "run" / n).read_bytes() for n in ("metrics.json", "predictions.csv", "calibration.json")}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".csv", ".json")}


def _pair_agrees(folder: Path) -> None:
    """A sidecar present describes exactly the files beside it (their SHA-256)."""
    from fusionkit.inference.outputs import sha256_of

    for sidecar in folder.glob("*.json"):
        for name, digest in json.loads(sidecar.read_text())["sha256"].items():
            assert sha256_of(folder / name) == digest, f"{sidecar} does not describe {name}"


def _prepare_output_folder(command: str, world: dict[str, Path], folder: Path) -> None:
    import shutil

    folder.mkdir(parents=True)
    if command == "evaluate":  # evaluate writes into the run: a copy of the reference run
        shutil.copytree(world["reference"], folder / "run")


@pytest.fixture(scope="module")
def reference_outputs(world: dict[str, Path]) -> dict[str, dict[str, bytes]]:
    outputs = {}
    for command in dict.fromkeys(c for c, _ in OUTPUT_POINTS):
        folder = world["base"] / f"reference-{command}"
        _prepare_output_folder(command, world, folder)
        proc = _cli(*_output_args(command, world, folder))
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[command] = _output_files(command, folder)
    return outputs


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize(("command", "point"), OUTPUT_POINTS, ids=[f"{c}-{p}" for c, p in OUTPUT_POINTS])
def test_predict_evaluate_export_killed_leave_no_half_output_and_a_rerun_equals(
    world: dict[str, Path], reference_outputs: dict[str, dict[str, bytes]], command: str, point: str, sig: str
) -> None:
    folder = world["base"] / f"{command}-{point.replace(':', '-')}-{sig}"
    _prepare_output_folder(command, world, folder)
    if command != "evaluate":  # an earlier output to be replaced: the kill must not leave a mixed pair
        again = _cli(*_output_args(command, world, folder))
        assert again.returncode == 0, again.stderr[-3000:]
    args = _output_args(command, world, folder)
    _killed(_cli(*args, fault=(point, 1, sig)), sig)
    check_files(folder)
    if command != "evaluate":
        _pair_agrees(folder)
    again = _cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    check_files(folder, temporaries=False)
    assert not list(folder.glob(".*.lock"))
    assert _output_files(command, folder) == reference_outputs[command]
