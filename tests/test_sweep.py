"""``fusionkit sweep``: a small real sweep through the entry point, resume, failures, statistics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from train_helpers import tiny_run_config, write_config

from fusionkit.errors import ConfigError
from fusionkit.sweep import parse_seeds, plan_sweep, select_presets

PRESETS = "ji-adf,derm-only,meta-only,jf-concat"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
}


def sweep_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """``fusionkit sweep ARGS`` in a subprocess (the real entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", "sweep", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    return write_config(root / "cfg.yaml", tiny_run_config(root / "cache", n_lesions=100, epochs=3))


SWEEP = ("--presets", PRESETS, "--seeds", "0,1", "--synthetic", "--bootstrap", 200)
FAIL_JF_CONCAT = ("--set", "jf-concat:train.step_mode=cuda_graph")  # a CUDA graph on the CPU: fails at run time


def _status(out: Path) -> dict[tuple[str, int], str]:
    return {
        (p.parent.name, int(p.name[4:])): json.loads((p / "sweep_run.json").read_text())["status"]
        for p in sorted((out / "runs").glob("*/seed*"))
        if (p / "sweep_run.json").is_file()
    }


@pytest.fixture(scope="module")
def swept(config: Path) -> dict[str, Any]:
    """One sweep folder, four presets x two seeds, run as a user would: Ctrl-C in the first run,
    then the same command again (it resumes that run and runs the rest; jf-concat fails at run
    time). What the interrupted sweep left is kept for the tests before the second command runs."""
    out = config.parent / "out"
    args = [sys.executable, "-m", "fusionkit.cli", "sweep", config, *SWEEP, "--out", out, *FAIL_JF_CONCAT]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in proc.stdout:
        if line.startswith("epoch 1/3"):
            proc.send_signal(signal.SIGINT)
            break
    _, interrupted_err = proc.communicate(timeout=120)
    (first,) = (out / "runs").glob("*/seed*")  # the sweep stopped in its first run
    interrupted = {
        "returncode": proc.returncode,
        "stderr": interrupted_err,
        "run": first,
        "status": _status(out),
        "last": (first / "checkpoints" / "last.safetensors").is_file(),
        "report": (first / "report.md").exists(),
    }
    result = sweep_cli(config, *SWEEP, "--out", out, *FAIL_JF_CONCAT)
    return {"out": out, "result": result, "interrupted": interrupted}


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_interrupted_sweep_stops_resumably_and_resumes(swept) -> None:
    cut = swept["interrupted"]
    assert cut["returncode"] == 130 and "Traceback" not in cut["stderr"]
    assert cut["run"] == swept["out"] / "runs" / "ji-adf" / "seed0"  # the plan's first run
    assert cut["status"] == {("ji-adf", 0): "interrupted"}
    assert cut["last"] and not cut["report"]
    # the second command resumed it from its checkpoint and finished all three epochs
    assert "resumed from" in (cut["run"] / "train.log").read_text()
    assert len(json.loads((cut["run"] / "history.json").read_text())) == 3
    assert _status(swept["out"])[("ji-adf", 0)] == "ok"


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_sweep_summary_equals_run_metrics_and_records_failure(swept) -> None:
    out, result = swept["out"], swept["result"]
    assert result.returncode == 1, result.stderr  # a run failed
    assert "Traceback" not in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == "ji-adf"
    assert set(summary["variants"]) == {"ji-adf", "derm-only", "meta-only"}
    failed = [r for r in summary["runs"] if r["status"] != "ok"]
    assert [(r["preset"], r["seed"]) for r in failed] == [("jf-concat", 0), ("jf-concat", 1)]
    assert all("cuda_graph" in r["reason"] for r in failed)
    assert "`jf-concat` seed 1: failed" in (out / "summary.md").read_text()
    for preset, entry in summary["variants"].items():
        dice = []
        for seed in (0, 1):
            run = out / "runs" / preset / f"seed{seed}"
            macro = json.loads((run / "metrics.json").read_text())["metrics"]["macro"]
            dice.append(macro["dice"])
            run_record = next(r for r in summary["runs"] if r["preset"] == preset and r["seed"] == seed)
            assert run_record["metrics"]["auc"] == macro["auc"]
            assert run_record["metrics"]["ppv"] == macro["ppv"]
            stored = json.loads((run / "inference.json").read_text())["decision"]
            assert json.loads((run / "sweep_run.json").read_text())["decision"]["thresholds"] == stored["thresholds"]
        assert entry["n_runs"] == 2
        assert entry["metrics"]["dice"]["mean"] == pytest.approx(np.mean(dice), abs=1e-12)
        assert entry["metrics"]["dice"]["std"] == pytest.approx(np.std(dice, ddof=1), abs=1e-12)
    # paired: every variant of a seed saw the same split
    splits = {
        p: json.loads((out / "runs" / p / "seed1" / "split.json").read_text())["val"] for p in summary["variants"]
    }
    assert len({tuple(v) for v in splits.values()}) == 1
    # the trimodal model beats each unimodal one on the generated set
    dice = {p: v["metrics"]["dice"]["mean"] for p, v in summary["variants"].items()}
    assert dice["ji-adf"] > dice["derm-only"] and dice["ji-adf"] > dice["meta-only"]
    assert summary["variants"]["derm-only"]["vs_reference"]["dice_diff"] == pytest.approx(
        dice["derm-only"] - dice["ji-adf"]
    )
    assert (out / "figure3.png").stat().st_size > 1000
    assert "start meta-only seed 1" in result.stderr and "ETA" in result.stderr


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_rerun_skips_finished_runs_through_the_device_queue_and_report_only_rebuilds(swept, config) -> None:
    """The same command once more, on one worker process per device (``--devices cpu``): the
    finished runs are skipped, the unfinished ones (jf-concat's failures, and meta-only seed 1,
    whose folder is removed here) run in worker processes; ``--report-only`` rebuilds the summary."""
    out = swept["out"]
    before = (out / "runs" / "ji-adf" / "seed0" / "report.md").stat().st_mtime_ns
    shutil.rmtree(out / "runs" / "meta-only" / "seed1")
    again = sweep_cli(config, *SWEEP, "--out", out, *FAIL_JF_CONCAT, "--devices", "cpu")
    assert again.returncode == 1
    assert "5 of 8 runs already finished" in again.stderr
    assert "start ji-adf seed" not in again.stderr and "start jf-concat seed 0" in again.stderr
    assert "start meta-only seed 1" in again.stderr and "start meta-only seed 0" not in again.stderr
    assert (out / "runs" / "ji-adf" / "seed0" / "report.md").stat().st_mtime_ns == before
    # each rerun ran in a worker process, which wrote its log and its record (the queue removes the old one)
    for job in ("meta-only-seed1", "jf-concat-seed0", "jf-concat-seed1"):
        assert (out / "logs" / f"{job}.log").is_file(), job
    record = json.loads((out / "runs" / "meta-only" / "seed1" / "sweep_run.json").read_text())
    assert record["status"] == "ok" and record["device"] == "cpu"
    assert (out / "runs" / "meta-only" / "seed1" / "report.md").is_file()
    failed = json.loads((out / "runs" / "jf-concat" / "seed0" / "sweep_run.json").read_text())
    assert failed["status"] == "failed" and "cuda_graph" in failed["reason"]
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").unlink()
    rebuilt = sweep_cli("--report-only", out, "--bootstrap", 200)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_submitit_local_executor(config) -> None:
    pytest.importorskip("submitit")
    out = config.parent / "submitit"
    result = sweep_cli(
        config,
        "--presets",
        "meta-only",
        "--seeds",
        "0",
        "--synthetic",
        "--out",
        out,
        "--launcher",
        "submitit",
        "--cluster",
        "local",
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "runs" / "meta-only" / "seed0" / "sweep_run.json").read_text())
    assert record["status"] == "ok" and record["device"] == "cpu"
    assert list((out / "submitit").glob("*_result.pkl"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--presets", "ji-adf,nope"], "unknown preset 'nope'"),
        (["--group", "table9"], "unknown group 'table9'"),
        (["--seeds", "0,x"], "--seeds '0,x'"),
        (["--folds", "1"], "--folds 1"),
        (["--presets", "ji-adf", "--reference", "skip-only"], "--reference 'skip-only'"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_any_run(config, tmp_path, monkeypatch, capsys, args, message) -> None:
    from fusionkit.cli import main

    monkeypatch.setattr(
        sys, "argv", ["fusionkit", "sweep", str(config), *args, "--synthetic", "--out", str(tmp_path / "o")]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing generated, nothing run


@pytest.mark.slow
@pytest.mark.subprocess
def test_data_folder_not_in_layout_through_the_entry_point(config, tmp_path) -> None:
    result = sweep_cli(config, "--data", tmp_path, "--out", tmp_path / "o")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "runs").exists()


def test_plan_pairs_variants_and_folds(config, tmp_path) -> None:
    jobs = plan_sweep(config, presets=("ji-adf", "derm-only"), seeds=(3,), folds=2, out=tmp_path, data_root=tmp_path)
    assert [(j.preset, j.fold) for j in jobs] == [("ji-adf", 0), ("derm-only", 0), ("ji-adf", 1), ("derm-only", 1)]
    assert {(j.config["train"]["seed"], j.config["data"]["split_seed"], j.config["data"]["folds"]) for j in jobs} == {
        (3, 3, 2)
    }
    assert jobs[3].run_dir == str(tmp_path / "runs" / "derm-only" / "seed3" / "fold1")
    assert select_presets(group="table3", presets=None) == ("skip-only", "attention-only", "ji-adf")
    assert len(select_presets(group=None, presets=None)) == 14
    assert parse_seeds(" 0, 1,2") == (0, 1, 2)
    with pytest.raises(ConfigError):
        plan_sweep(config, presets=("ji-adf",), seeds=(0,), folds=1, out=tmp_path, data_root=tmp_path)
