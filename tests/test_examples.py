"""Every script under examples/ runs, with tiny settings, and does what it says.

The scripts run as ``__main__`` in this process (``runpy``: the same code path as ``python
script.py``, without paying for a fresh torch import each). The plugin package is installed into
a temporary target with pip (no network, no build isolation) and found through its entry point by
a fresh interpreter, as an installed third-party plugin would be.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _env(tmp: Path, *extra_path: Path) -> dict[str, str]:
    """The environment a user would have: this checkout importable, offline, one thread."""
    path = os.pathsep.join(str(p) for p in (*extra_path, REPO))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "FUSIONKIT_CACHE": str(tmp / "cache"),
        "MPLBACKEND": "Agg",
    }


def run_ok(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run a command; assert it exits 0 without a traceback; return its stdout."""
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


def run_example(name: str, *args: str) -> str:
    """Run ``python examples/NAME ARGS`` in this process; return what it printed."""
    import contextlib
    import io

    argv, buffer = sys.argv, io.StringIO()
    sys.argv = [str(EXAMPLES / name), *args]
    try:
        with contextlib.redirect_stdout(buffer):
            runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = argv
    return buffer.getvalue()


def test_compose_model_prints_eq7_consistent_loss():
    out = run_example("compose_model.py")
    assert "rows sum to [1.0, 1.0, 1.0, 1.0]" in out
    assert "feature widths: {'image': 512, 'meta': 256, 'joint': 256}" in out
    total, final = map(float, re.search(r"total ([\d.]+), final CE ([\d.]+)", out).groups())
    terms = {k: float(v) for k, v in re.findall(r"'(\w+)': ([\d.]+)", out.split("auxiliary terms")[1])}
    # eq 7 with the example's weights: CE + 0.5 L_IM + 0.25 L_I + 0.25 L_M (printed to 4 places)
    assert total == pytest.approx(final + 0.5 * terms["joint"] + 0.25 * (terms["image"] + terms["meta"]), abs=1e-3)
    alpha = [float(x) for x in re.search(r"\(eq 5\): \[([^\]]+)\]", out).group(1).split(",")]
    assert len(alpha) == 3 and sum(alpha) == pytest.approx(1.0, abs=1e-3)
    assert "preset variant: ji-adf mmfa average" in out


@pytest.fixture(scope="module")
def python_api_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("example-train")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONKIT_CACHE", str(tmp / "cache"))
        out = run_example(
            "train_python.py", "--out", str(tmp / "run"), "--lesions", "40", "--epochs", "1", "--image-size", "32"
        )
    return tmp, out


@pytest.mark.trains
def test_train_python_trains_and_writes_the_report(python_api_run):
    tmp, out = python_api_run
    run = tmp / "run"
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1]
    assert f"val macro Dice {history[0]['val_dice']:.3f}" in out
    rows = {r["metric"]: r["values"] for r in json.loads((run / "metrics.json").read_text())["rows"]}
    assert f"macro Dice {rows['Dice Coefficient']['Mean']:.3f}" in out
    assert (run / "report.md").is_file() and (run / "checkpoints" / "best.safetensors").is_file()
    assert (tmp / "run-data" / "MILK10k_Training_GroundTruth.csv").is_file()


@pytest.mark.trains
def test_predict_missing_modality_drops_the_absent_branches(python_api_run, monkeypatch):
    tmp, _ = python_api_run
    monkeypatch.setenv("FUSIONKIT_CACHE", str(tmp / "cache"))
    out = run_example("predict_missing_modality.py", str(tmp / "run"))
    table = {}
    for line in out.splitlines()[1:]:
        name, values = line[:20].strip(), [float(v) for v in line[20:].split()]
        table[name] = values  # macro Dice, alpha_I, alpha_IM, alpha_M
    assert set(table) == {"all inputs", "no clinical image", "no metadata", "dermoscopy only"}
    for values in table.values():
        assert sum(values[1:]) == pytest.approx(1.0, abs=2e-3)
    assert table["all inputs"][3] > 0.0
    # without metadata the M branch and the joint branch's meta input are gone: alpha_M is 0
    assert table["no metadata"][3] == 0.0 and table["dermoscopy only"][3] == 0.0


@pytest.mark.slow
@pytest.mark.subprocess
def test_plugin_package_installs_and_registers_its_fusion_block(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "plugin-gated-sum", source)  # building writes into the source tree
    target = tmp_path / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code = (
        "import torch, fusionkit as fk\n"
        "print(*fk.list_components('fusion'))\n"
        "spec = fk.load_preset('ji-adf', {'image_encoder': {'model_name': 'test_efficientnet', 'pretrained': False},"
        " 'fusion': {'kind': 'gated_sum', 'out_dim': 24}, 'image_size': 32})\n"
        "m = fk.build_model(spec, metadata_width=35)\n"
        "out = m({'derm': torch.zeros(2, 3, 32, 32), 'clinical': torch.zeros(2, 3, 32, 32), 'meta': torch.zeros(2, 35)})\n"
        "print(type(m.fusion).__module__, m.feature_dims['joint'], tuple(out.features['joint'].shape))\n"
    )
    listing, built = run_ok([sys.executable, "-c", code], _env(tmp_path, target), tmp_path).splitlines()
    assert listing.split() == ["attention_only", "concat", "gated_sum", "mmfa", "skip_only"]
    assert built.split() == ["jiadf_gated_sum", "24", "(2,", "24)"]
    # the command line sees it too, through the installed console script (as the how-to shows)
    script = Path(sys.executable).with_name("fusionkit")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "fusionkit.cli"]
    cli = run_ok([*command, "components", "fusion"], _env(tmp_path, target), tmp_path)
    assert cli.strip() == "fusion: attention_only, concat, gated_sum, mmfa, skip_only"


def test_use_trained_model_saves_loads_and_predicts_one_lesion(python_api_run, monkeypatch):
    tmp, _ = python_api_run
    monkeypatch.setenv("FUSIONKIT_CACHE", str(tmp / "cache"))
    out = run_example("use_trained_model.py", str(tmp / "run"), "--out", str(tmp / "model"))
    assert sorted(p.name for p in (tmp / "model").iterdir()) == [
        "README.md",
        "config.json",
        "metadata_encoder.json",
        "model.safetensors",
        "preprocessing.json",
    ]
    lines = out.splitlines()
    assert lines[0].startswith("FusionPipeline(") and "decision 'thresholds'" in lines[0]
    assert re.match(r"IL_\d+: top class \w+ \(p = [\d.]+\); decision thresholds: \[", lines[1])
    weights = [float(v) for v in re.findall(r"': ([\d.]+)", lines[2])]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0, abs=2e-3)
    assert lines[3].startswith("without the clinical photo: missing ['clinical'], top class ")
