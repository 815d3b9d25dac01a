"""Robustness, subgroups and referral wired to a trained run: the Python API, the report and the CLI.

One tiny derm-only run (``derm-only`` preset, the tiny config of ``train_helpers``) is trained once
for the module. Its metrics must be unchanged, to the last digit, when only the clinical photo or
the metadata is corrupted (the model never reads them) and must fall when its dermoscopic photo is
corrupted at severity 5; the command line is run through the real entry point in a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import tiny_run_config, write_config

from fusionkit import FusionPipeline
from fusionkit.data import CLASS_NAMES
from fusionkit.evaluate.report import evaluate_run
from fusionkit.evaluate.robustness import pipeline_robustness
from fusionkit.inference.pipeline import store_run_decision
from fusionkit.runtime.config import RunConfig
from fusionkit.train.trainer import train_run

#: Corruptions of each kind (photometric, artefact, geometric, metadata, whole modality).
SOME = ("gaussian_noise", "contrast", "colour_cast", "hair", "rotation_scale", "missing_age", "wrong_site", "absent")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("robustcli")
    config = RunConfig.model_validate(tiny_run_config(root / "cache", preset="derm-only", epochs=6, n_lesions=120))
    train_run(config, run_dir=root / "run", synthetic=True, progress=False, after_fit=store_run_decision)
    return root / "run"


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_derm_only_model_ignores_clinical_and_metadata_corruption(run_dir: Path) -> None:
    pipe = FusionPipeline.from_run(run_dir)
    table = pipeline_robustness(
        pipe, modalities=("derm", "clinical", "meta"), corruptions=SOME, severities=(1, 5), n_boot=10
    )
    assert table.baseline["dice"] > 0  # the model learned something the corruptions can take away
    untouched = [r for r in table.results if r["modality"] in ("clinical", "meta")]
    assert {r["modality"] for r in untouched} == {"clinical", "meta"}
    assert len(untouched) >= 10
    for row in untouched:
        assert row["metrics"] == table.baseline, (row["modality"], row["corruption"], row["severity"])
        assert row["relative_drop"] == 0.0
    derm5 = [r for r in table.results if r["modality"] == "derm" and r["severity"] == 5]
    assert derm5
    # the dermoscopic photo is what the model reads: its worst severity-5 corruption costs Dice and AUC
    assert min(r["metrics"]["dice"] for r in derm5) < table.baseline["dice"]
    assert min(r["metrics"]["auc"] for r in derm5) < table.baseline["auc"]
    assert max(r["relative_drop"] for r in derm5) > 0.0


def test_pipeline_robustness_is_deterministic_and_defaults_to_the_models_modalities(run_dir: Path) -> None:
    pipe = FusionPipeline.from_run(run_dir)
    first = pipeline_robustness(pipe, corruptions=("hair", "wrong_site"), severities=(3,), n_boot=10)
    second = pipeline_robustness(pipe, corruptions=("hair", "wrong_site"), severities=(3,), n_boot=10)
    assert first.to_dict() == second.to_dict()
    # derm-only: only the dermoscopic photo is corrupted by default (wrong_site applies to none of its inputs)
    assert {r["modality"] for r in first.results} == {"derm"}


def test_report_has_subgroup_and_referral_sections(run_dir: Path) -> None:
    text = evaluate_run(run_dir, gradcam_lesions=0).read_text()
    for heading in ("## Subgroups", "### Sex", "## Knowing when to refer", "### Selective prediction"):
        assert heading in text, heading
    for name in ("subgroups.json", "subgroups.png", "referral.json", "risk_coverage.png"):
        assert (run_dir / name).is_file(), name
        if name.endswith(".png"):
            assert f"]({name})" in text
    referral = json.loads((run_dir / "referral.json").read_text())
    assert {"conformal", "risk_coverage", "referral"} <= set(referral)
    assert [r["referred_fraction"] for r in referral["referral"]] == [0.0, 0.1, 0.2, 0.3]
    per_class = referral["conformal"][0]["per_class"]
    assert set(per_class) == set(CLASS_NAMES)
    subgroups = json.loads((run_dir / "subgroups.json").read_text())
    assert set(subgroups["attributes"]) == {"sex", "skin_tone", "age_band", "site"}


def test_validation_posteriors_are_stored_at_the_end_of_training(run_dir: Path) -> None:
    pipe = FusionPipeline.from_run(run_dir)
    stored, origin = pipe.validation_posteriors()
    assert "stored" in origin
    again = pipe.predict_dataset(pipe.validation_dataset())
    assert stored.lesion_ids == again.lesion_ids
    np.testing.assert_array_equal(stored.labels, again.labels)
    np.testing.assert_allclose(stored.probs, again.probs, rtol=0, atol=1e-6)


def test_evaluate_robustness_through_the_entry_point(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "robust"
    args = ["evaluate", run_dir, "--robustness", "--severities", "1,5", "--quiet", "--gradcam", "0"]
    done = _cli(*args, "--corruptions", "gaussian_blur,ink_marks,wrong_site,absent", "--out", out)
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "robustness.json").read_text())
    assert set(document["baseline"]) >= {"dice", "auc", "accuracy"}
    assert {(r["corruption"], r["severity"]) for r in document["results"]} == {
        ("gaussian_blur", 1),
        ("gaussian_blur", 5),
        ("ink_marks", 1),
        ("ink_marks", 5),
        ("absent", None),
    }
    for row in document["results"]:
        assert set(row) >= {"modality", "corruption", "severity", "metrics", "dice_ci95", "relative_drop"}
        assert set(row["metrics"]) >= {"dice", "auc", "accuracy"}
        assert len(row["dice_ci95"]) == 2
    assert (out / "robustness.md").is_file() and (out / "robustness.png").is_file()
    assert "mce" not in document

    # against a baseline run's table: the mCE
    again = _cli(*args, "--corruptions", "gaussian_blur,ink_marks", "--baseline-run", out, "--out", tmp_path / "b")
    assert again.returncode == 0, again.stderr
    mce = json.loads((tmp_path / "b" / "robustness.json").read_text())["mce"]
    assert set(mce["per_corruption"]) == {"derm/gaussian_blur", "derm/ink_marks"}
    assert "mce" in mce and "relative_mce" in mce


def test_evaluate_robustness_errors_are_one_line(run_dir: Path, tmp_path: Path) -> None:
    for bad in (["--severities", "0,6"], ["--corruptions", "smudge"]):
        done = _cli("evaluate", run_dir, "--robustness", *bad, "--out", tmp_path / "x", "--quiet")
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().startswith("fusionkit: error:"), done.stderr
    missing = _cli("evaluate", run_dir, "--robustness", "--baseline-run", tmp_path / "nowhere", "--quiet")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and "robustness.json" in missing.stderr


def test_predict_conformal_writes_sets_beside_the_submission(run_dir: Path, tmp_path: Path) -> None:
    pipe = FusionPipeline.from_run(run_dir)
    sub = tmp_path / "sub.csv"
    args = ["predict", run_dir, "--data", pipe.data_root, "--split", "Training", "--out", sub, "--quiet"]
    plain = _cli(*args, "--decision", "probs")
    assert plain.returncode == 0, plain.stderr
    submission_alone = sub.read_text()
    assert not (tmp_path / "sub.sets.csv").exists()
    done = _cli(*args, "--decision", "probs", "--conformal", "0.1", "--conformal-method", "aps")
    assert done.returncode == 0, done.stderr
    assert sub.read_text() == submission_alone  # the submission is what the scorer wants, unchanged
    with (tmp_path / "sub.sets.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["lesion_id", "prediction_set"]
    with sub.open(newline="") as handle:
        lesions = [r[0] for r in list(csv.reader(handle))[1:]]
    assert [r[0] for r in rows[1:]] == lesions
    # exactly the sets of the Python API, calibrated on the validation posteriors stored in the run
    calibration = pipe.conformal(alpha=0.1, method="aps")
    preds = pipe.predict_dataset(pipe.dataset())
    expected = calibration.predict_sets(preds.probs)
    assert preds.lesion_ids == lesions
    for row, members in zip(rows[1:], expected, strict=True):
        names = [n for n, keep in zip(CLASS_NAMES, members, strict=True) if keep]
        assert row[1] == "|".join(names)
    state = json.loads(sub.with_suffix(".json").read_text())
    assert state["conformal"]["method"] == "aps" and state["conformal"]["alpha"] == 0.1
    assert "stored" in state["conformal"]["calibrated_on"]

    bad = _cli(*args, "--conformal", "1.5")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "alpha" in bad.stderr


def test_sweep_robustness_adds_a_column_to_the_summary(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg.yaml", tiny_run_config(tmp_path / "cache", n_lesions=40, epochs=1))
    out = tmp_path / "sweep"
    done = _cli(
        "sweep",
        config,
        "--presets",
        "ji-adf,derm-only",
        "--seeds",
        "0",
        "--synthetic",
        "--out",
        out,
        "--bootstrap",
        20,
        "--quiet",
        "--robustness",
        "--severities",
        "5",
        "--corruptions",
        "gaussian_noise,wrong_site",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    ji, derm = summary["variants"]["ji-adf"]["robustness"], summary["variants"]["derm-only"]["robustness"]
    assert set(ji["mean_relative_drop"]) == {"derm", "clinical", "meta"}  # each corruption where it applies
    assert set(derm["mean_relative_drop"]) == {"derm"}  # a derm-only model has no metadata to corrupt
    assert ji["mce"] is None  # the reference is not compared with itself
    for run in summary["runs"]:
        assert (Path(run["run_dir"]) / "robustness.json").is_file()
    derm_run = next(r for r in summary["runs"] if r["preset"] == "derm-only")
    mce = json.loads((Path(derm_run["run_dir"]) / "robustness.json").read_text())["mce"]
    assert set(mce["per_corruption"]) == {"derm/gaussian_noise"}
    assert "## Robustness per modality" in (out / "summary.md").read_text()
    assert "## Robustness per modality" in (Path(derm_run["run_dir"]) / "report.md").read_text()
