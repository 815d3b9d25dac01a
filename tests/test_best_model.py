"""Competition-grade prediction end to end: a run trained with the long-tail options, TTA in the
report, ensembles, submissions under each decision rule, ONNX export and inference without fusionkit."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from train_helpers import TINY_IMAGE_ENCODER, tiny_run_config, train_carried_run

import fusionkit as fk
from fusionkit.data import CLASS_NAMES
from fusionkit.evaluate.ensemble_report import evaluate_ensemble
from fusionkit.evaluate.report import evaluate_run
from fusionkit.inference.ensemble import (
    ensemble_predict,
    fit_ensemble_thresholds,
    load_runs,
    predict_split,
)
from fusionkit.inference.export import ExportWrapper, example_inputs, export_onnx
from fusionkit.inference.pipeline import load_run
from fusionkit.metrics import isic_metrics
from fusionkit.runtime.checkpoint import save_checkpoint
from fusionkit.train.trainer import selection_score

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


_HARNESS = """
import contextlib, io, json, sys, traceback
from fusionkit.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    sys.argv = ["fusionkit", *args]
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code or 0
        except BaseException:
            traceback.print_exc()
            code = -1
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def fusionkit_cli(*commands: list) -> list[tuple[int, str]]:
    """(exit status, stderr) of each ``fusionkit ARGS`` through the real entry point, all in one
    subprocess (importing torch costs seconds on a loaded machine)."""
    args = json.dumps([[str(a) for a in c] for c in commands])
    proc = subprocess.run([sys.executable, "-c", _HARNESS, args], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [tuple(r) for r in json.loads(proc.stdout.splitlines()[-1])]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("best")
    config = tiny_run_config(root / "cache", epochs=2, n_lesions=40, selection_metric="auc")
    config["model"]["overrides"]["loss"] = {"focal_gamma": 1.0, "label_smoothing": 0.1, "logit_adjustment": 1.0}
    train_carried_run(config, root / "run")
    return root / "run"


@pytest.mark.trains
def test_long_tail_run_records_its_prior_and_selects_by_auc(run_dir: Path) -> None:
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    prior = saved["model"]["loss"]["class_prior"]
    assert (
        len(prior) == 11 and sum(prior) == pytest.approx(1.0, abs=1e-6) and saved["train"]["selection_metric"] == "auc"
    )
    history = json.loads((run_dir / "history.json").read_text())
    aucs = [h["val_auc"] for h in history]
    best_epoch = load_run(run_dir, device="cpu").checkpoint_info["epoch"]
    assert best_epoch == 1 + int(np.argmax(aucs))
    assert [h["best"] for h in history] == [True, aucs[1] > aucs[0]]


def test_selection_score_reads_the_named_metric() -> None:
    metrics = {"macro": {"dice": 0.1, "auc": 0.2}, "macro_f1_argmax": 0.3}
    assert [selection_score(metrics, m) for m in ("dice", "auc", "f1")] == [0.1, 0.2, 0.3]


@pytest.mark.trains
def test_report_shows_tta_and_each_decision_rule(run_dir: Path) -> None:
    text = evaluate_run(run_dir, gradcam_lesions=0, tta="flips").read_text()
    assert "## Test-time augmentation and decision rule" in text
    assert "The model carries the `thresholds` rule (`inference.json`), fitted at the end of training" in text
    rows = json.loads((run_dir / "decision.json").read_text())["rows"]
    assert [(r["tta"], r["decision"]) for r in rows] == [
        (t, d) for t in ("none", "flips") for d in ("probs", "argmax", "thresholds")
    ]
    for t in ("none", "flips"):
        by = {r["decision"]: r for r in rows if r["tta"] == t}
        assert by["thresholds"]["dice"] >= by["probs"]["dice"]  # fitted in-sample: never lower
        assert by["thresholds"]["auc"] == pytest.approx(by["probs"]["auc"])  # a monotone rescaling
        assert by["argmax"]["no_positive"] == 0.0
        assert f"| {t} | argmax |" in text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    flips_probs = next(r for r in rows if r["tta"] == "flips" and r["decision"] == "probs")
    assert metrics["metrics"]["macro"]["dice"] == pytest.approx(
        flips_probs["dice"]
    )  # the headline uses the TTA asked for


@pytest.mark.trains
def test_ensemble_of_identical_runs_equals_one_run(run_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(run_dir, tmp_path / "sweep" / "runs" / "fold0")
    shutil.copytree(run_dir, tmp_path / "sweep" / "runs" / "fold1")
    runs = load_runs([tmp_path / "sweep"], device="cpu")
    assert [r.run_dir.name for r in runs] == ["fold0", "fold1"]
    ids = runs[0].split["val"]
    one = ensemble_predict(runs[:1], lesion_ids=ids, tta="flips")
    both = ensemble_predict(runs, lesion_ids=ids, tta="flips")
    assert both.lesion_ids == one.lesion_ids and np.allclose(both.probs, one.probs, atol=1e-7)
    assert np.allclose(both.weights, one.weights, atol=1e-7)
    report = evaluate_ensemble([tmp_path / "sweep"], out=tmp_path / "ens")
    assert "fusionkit ensemble report (2 runs)" in report.read_text()
    ens = json.loads((tmp_path / "ens" / "metrics.json").read_text())["metrics"]["macro"]
    single = isic_metrics(one.labels, ensemble_predict(runs[:1], lesion_ids=ids).probs, CLASS_NAMES)["macro"]
    assert ens["dice"] == pytest.approx(single["dice"]) and ens["auc"] == pytest.approx(single["auc"])


def _preset_run(trained: Path, preset: str, dest: Path) -> Path:
    """A run directory holding a freshly initialised ``preset`` (the trained run's data files)."""
    dest.mkdir(parents=True)
    for name in ("metadata_encoder.json", "split.json"):
        shutil.copy(trained / name, dest / name)
    config = yaml.safe_load((trained / "config.yaml").read_text())
    width = fk.data.MetadataEncoder.load(trained / "metadata_encoder.json").metadata_width
    spec = fk.load_preset(preset, {"image_size": 32, "image_encoder": dict(TINY_IMAGE_ENCODER)})
    config["model"] = spec.to_dict()
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(1)
    save_checkpoint(
        dest / "checkpoints" / "best.safetensors",
        model=fk.build_model(config["model"], metadata_width=width),
        include_rng=False,
    )
    return dest


@pytest.mark.trains
@pytest.mark.parametrize("preset", ["ji-adf", "ji-mmfa", "jf-mmfa"])  # decisions adf, average, single
def test_onnx_export_matches_pytorch(run_dir: Path, tmp_path: Path, preset: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    source = run_dir if preset == "ji-adf" else _preset_run(run_dir, preset, tmp_path / preset)
    path = export_onnx(source, out=tmp_path / "model.onnx")
    model = load_run(source, device="cpu").model
    wrapper = ExportWrapper(model).eval()
    inputs = list(example_inputs(model, batch_size=3, seed=5))  # another batch size than the export's
    inputs[len(model.modalities) + 1] = torch.tensor([True, False, True])  # a lesion without its clinical image
    with torch.no_grad():
        expected = wrapper(*inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(wrapper.input_names, inputs, strict=True)})
    assert [o.name for o in session.get_outputs()] == wrapper.output_names
    assert ("weights" in wrapper.output_names) == (preset != "jf-mmfa")
    for name, a, b in zip(wrapper.output_names, got, expected, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4, err_msg=name)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["class_names"] == list(CLASS_NAMES) and sidecar["image"]["input_size"] == 32


@pytest.mark.trains
@pytest.mark.subprocess
def test_example_predicts_from_raw_csv_without_fusionkit(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path = export_onnx(run_dir, out=tmp_path / "model.onnx")
    data = run_dir / "synthetic"
    ids = load_run(run_dir, device="cpu").split["val"][:3]
    env = {**ENV, "PYTHONPATH": ""}  # the example must not need fusionkit
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "onnx_inference.py"),
            str(path),
            str(data / "MILK10k_Training_Metadata.csv"),
            str(data / "MILK10k_Training_Input"),
            *ids,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    run = load_run(run_dir, device="cpu")
    expected = run.predict_dataset(run.dataset(lesion_ids=ids))
    assert [g["lesion_id"] for g in got] == expected.lesion_ids
    probs = np.array([[g["probs"][c] for c in CLASS_NAMES] for g in got])
    assert [g["classes"] for g in got] == run.decision.predicted(probs)  # the stored rule travels in the sidecar
    np.testing.assert_allclose(probs, expected.probs, atol=2e-2)  # Pillow's resize, not torchvision's


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_cli_ensemble_tta_and_decision_and_bad_input(run_dir: Path, tmp_path: Path) -> None:
    out, data = tmp_path / "sub.csv", run_dir / "synthetic"
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("checkpoints"))
    other = tmp_path / "other"  # a run with another class list
    shutil.copytree(bare, other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["model"]["num_classes"] = 3
    config["model"]["loss"]["class_prior"] = None
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    save_checkpoint(
        other / "checkpoints" / "best.safetensors",
        include_rng=False,
        model=fk.build_model(config["model"], metadata_width=35),
    )
    bad = [
        (["predict", run_dir, "--data", data, "--tta", "d8"], "unknown test-time augmentation 'd8'"),
        (["predict", run_dir, "--data", data, "--decision", "vote"], "unknown decision rule 'vote'"),
        (["evaluate", run_dir, "--tta", "rot"], "unknown test-time augmentation 'rot'"),
        (["export", run_dir, "--format", "tflite"], "unknown export format 'tflite'"),
        (["export", bare], "no best checkpoint"),
        (["predict", run_dir, other, "--data", data], "an ensemble needs one class list"),
        (["evaluate", run_dir, run_dir], "pass --out DIR"),
    ]
    results = fusionkit_cli(
        [
            "predict",
            run_dir,
            run_dir,
            "--data",
            data,
            "--split",
            "Training",
            "--tta",
            "flips",
            "--decision",
            "argmax",
            "--out",
            out,
            "--quiet",
        ],
        ["predict", run_dir, "--data", data, "--split", "Training", "--out", tmp_path / "t.csv", "--quiet"],
        *[args for args, _ in bad],
    )
    assert results[0][0] == 0 and results[1][0] == 0, results[:2]
    with out.open() as f:
        rows = list(csv.DictReader(f))
    values = np.array([[float(r[c]) for c in CLASS_NAMES] for r in rows])
    assert len(rows) == 40 and np.array_equal(values.sum(1), np.ones(40)) and set(values.flatten()) == {0.0, 1.0}
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["tta"] == "flips" and record["decision"] == "argmax" and len(record["runs"]) == 2
    record = json.loads((tmp_path / "t.json").read_text())
    assert record["decision"] == "thresholds" and len(record["thresholds"]) == 11  # the default rule
    for (code, err), (args, message) in zip(results[2:], bad, strict=True):
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.trains
def test_refit_thresholds_read_the_validation_lesions_from_data_when_the_training_folder_moved(
    run_dir: Path, tmp_path: Path
) -> None:
    moved = shutil.copytree(run_dir, tmp_path / "moved", ignore=shutil.ignore_patterns("synthetic"))
    split = json.loads((moved / "split.json").read_text())
    (moved / "split.json").write_text(json.dumps({**split, "root": str(tmp_path / "gone")}))
    predict_split(
        moved,
        data_root=run_dir / "synthetic",
        split="Training",
        out=tmp_path / "s.csv",
        progress=False,
        refit_thresholds=True,
    )
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["thresholds_from"] == "refit"
    assert tuple(record["thresholds"].values()) == pytest.approx(
        fit_ensemble_thresholds(load_runs([run_dir], device="cpu"))
    )
