"""``fusionkit sweep``: a small real sweep through the entry point, resume, failures, statistics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(scope="module")
def swept(config: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """Four presets x two seeds; jf-concat is set up to fail at run time (a CUDA graph on the CPU)."""
    out = config.parent / "out"
    result = sweep_cli(
        config,
        "--presets",
        PRESETS,
        "--seeds",
        "0,1",
        "--synthetic",
        "--out",
        out,
        "--bootstrap",
        200,
        "--set",
        "jf-concat:train.step_mode=cuda_graph",
    )
    return out, result


def test_sweep_summary_equals_run_metrics_and_records_failure(swept) -> None:
    out, result = swept
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


def test_rerun_skips_finished_runs_and_report_only_rebuilds(swept, config) -> None:
    out, _ = swept
    before = (out / "runs" / "ji-adf" / "seed0" / "report.md").stat().st_mtime_ns
    again = sweep_cli(
        config,
        "--presets",
        PRESETS,
        "--seeds",
        "0,1",
        "--synthetic",
        "--out",
        out,
        "--bootstrap",
        200,
        "--set",
        "jf-concat:train.step_mode=cuda_graph",
    )
    assert again.returncode == 1
    assert "6 of 8 runs already finished" in again.stderr
    assert "start ji-adf seed" not in again.stderr and "start jf-concat seed 0" in again.stderr
    assert (out / "runs" / "ji-adf" / "seed0" / "report.md").stat().st_mtime_ns == before
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").unlink()
    rebuilt = sweep_cli("--report-only", out, "--bootstrap", 200)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads((out / "summary.json").read_text()) == summary


def test_interrupted_sweep_resumes(config) -> None:
    out = config.parent / "interrupted"
    args = [
        sys.executable,
        "-m",
        "fusionkit.cli",
        "sweep",
        config,
        "--presets",
        "meta-only",
        "--seeds",
        "0",
        "--synthetic",
        "--out",
        out,
        "--set",
        "train.epochs=4",
    ]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in proc.stdout:
        if line.startswith("epoch 1/4"):
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    run = out / "runs" / "meta-only" / "seed0"
    assert json.loads((run / "sweep_run.json").read_text())["status"] == "interrupted"
    assert (run / "checkpoints" / "last.safetensors").is_file() and not (run / "report.md").exists()
    result = sweep_cli(
        config, "--presets", "meta-only", "--seeds", "0", "--synthetic", "--out", out, "--set", "train.epochs=4"
    )
    assert result.returncode == 0, result.stderr
    assert "resumed from" in (run / "train.log").read_text()
    assert len(json.loads((run / "history.json").read_text())) == 4


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


def test_device_queue_runs_subprocesses(config) -> None:
    out = config.parent / "devices"
    result = sweep_cli(
        config, "--presets", "meta-only", "--seeds", "0", "--synthetic", "--out", out, "--devices", "cpu"
    )
    assert result.returncode == 0, result.stderr
    assert (out / "logs" / "meta-only-seed0.log").is_file()  # ran in a worker process
    record = json.loads((out / "runs" / "meta-only" / "seed0" / "sweep_run.json").read_text())
    assert record["status"] == "ok" and record["device"] == "cpu"
