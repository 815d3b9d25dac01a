"""benchmarks/gpu_check.py stays runnable: its CPU smoke mode, its failure isolation, its ratios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ("correctness", "throughput", "end_to_end", "inference", "nccl")


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "FUSIONKIT_CACHE": str(tmp_path / "cache"),
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _report(tmp_path: Path) -> dict:
    (path,) = tmp_path.glob("gpu-check-cpu-smoke-*.json")
    assert path.with_suffix(".md").is_file()
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    done = _run("--in-process", tmp_path=out)
    return done, _report(out), out


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_cpu_smoke_runs_every_section(smoke):
    done, report, _ = smoke
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    for name in SECTIONS:
        assert report["sections"][name]["status"] == "ok", (name, report["sections"][name])
    assert report["environment"]["gpus"] == 0 and report["settings"]["smoke"]


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_cpu_smoke_records_why_the_graph_is_skipped(smoke):
    _, report, out = smoke
    correctness = report["sections"]["correctness"]
    assert correctness["skipped"] == {"graph": "no CUDA device: CudaGraphStep needs a GPU"}
    assert set(correctness["losses"]) == {"fp32", "bf16_cl"}
    assert all(correctness["checks"].values()) and correctness["loss_falls"] == {"fp32": True, "bf16_cl": True}
    lr = correctness["lr_change"]
    assert 0.35 <= lr["ratio"] <= 0.65 and lr["lr_zero_freezes_weights"] and lr["lr_tensor_kept"]
    assert "graph" in report["sections"]["throughput"]["skipped"]
    md = (out / Path(next(out.glob("gpu-check-*.md"))).name).read_text()
    assert "CudaGraphStep needs a GPU" in md and "does not apply here" in md


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_cpu_smoke_figures_and_ratios(smoke):
    _, report, _ = smoke
    rows = report["sections"]["throughput"]["rows"]
    assert {(r["model"], r["mode"], r["batch"]) for r in rows} == {
        ("JI-ADF", "fp32", 4),
        ("JI-ADF", "bf16_cl", 4),
        ("JI-ADF", "fp32", 8),
        ("JI-ADF", "bf16_cl", 8),
        ("backbone only", "bf16_cl", 4),
        ("backbone only", "bf16_cl", 8),
    }
    assert all(
        r["samples_per_s"] > 0 and r["step_ms"] == pytest.approx(1000 * r["batch"] / r["samples_per_s"]) for r in rows
    )
    assert [r["batch"] for r in report["sections"]["throughput"]["device_augment"]] == [4, 8]
    e2e = report["sections"]["end_to_end"]
    assert [r["epoch"] for r in e2e["epochs"]] == [1, 2] and e2e["config"]["data"]["augment_on"] == "device"
    assert report["sections"]["inference"]["lesions"] == 24
    assert report["sections"]["nccl"]["backend"] == "gloo" and report["sections"]["nccl"]["ranks_agree"]
    for name in ("graph_b16_vs_fp32_b16", "best_b64_vs_ceiling_b64", "end_to_end_vs_step_only"):
        assert report["ratios"][name]["value"] > 0 and report["ratios"][name]["applies"] is False


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_failing_section_is_recorded_and_the_run_goes_on(tmp_path):
    # inference alone has no trained run to load: its child fails, the parent records it and exits 1
    done = _run("--sections", "inference", "--budget-s", "300", tmp_path=tmp_path)
    report = _report(tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    inference = report["sections"]["inference"]
    assert inference["status"] == "failed" and "no trained run" in inference["error"]
    assert "Traceback" in inference["traceback"]
    for name in ("correctness", "nccl"):  # before and after the failed one: the loop went on
        assert report["sections"][name] == {"status": "skipped", "reason": "not in --sections"}


def test_ratios_divide_the_right_figures():
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    s = gpu_check.Settings.make(smoke=False, compile=False, workers=0)
    rows = [
        {"model": "JI-ADF", "mode": "fp32", "batch": 16, "samples_per_s": 100.0},
        {"model": "JI-ADF", "mode": "graph", "batch": 16, "samples_per_s": 300.0},
        {"model": "JI-ADF", "mode": "bf16_cl", "batch": 64, "samples_per_s": 400.0},
        {"model": "JI-ADF", "mode": "graph", "batch": 64, "samples_per_s": 450.0},
        {"model": "backbone only", "mode": "graph", "batch": 64, "samples_per_s": 500.0},
        {"model": "backbone only", "mode": "graph", "batch": 16, "error": "OutOfMemoryError"},
    ]
    sections = {"throughput": {"rows": rows}, "end_to_end": {"epoch_samples_per_s": 240.0}}
    r = gpu_check.ratios(sections, s, cuda=True)
    assert r["graph_b16_vs_fp32_b16"]["value"] == pytest.approx(3.0) and r["graph_b16_vs_fp32_b16"]["pass"]
    assert r["best_b64_vs_ceiling_b64"]["value"] == pytest.approx(0.9) and r["best_b64_vs_ceiling_b64"]["pass"]
    assert r["end_to_end_vs_step_only"]["value"] == pytest.approx(0.8) and r["end_to_end_vs_step_only"]["pass"] is False
    assert all(r[k]["applies"] for k in gpu_check.TARGETS)
    empty = gpu_check.ratios({}, s, cuda=True)
    assert empty["end_to_end_vs_step_only"] == {"value": None, "target": 0.9, "pass": None, "applies": True}
