"""``fusionkit train CONFIG --folds K``: K fold runs through the sweep's machinery, then a fold ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from train_helpers import tiny_run_config, write_config

from fusionkit.cli import run_app
from fusionkit.data import CLASS_NAMES


@pytest.mark.trains
@pytest.mark.slow
def test_train_folds_trains_each_fold_and_predicts_with_the_ensemble(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "cv.yaml", tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=40))
    out = tmp_path / "cv"
    args = ["train", str(config), "--folds", "2", "--synthetic", "--out", str(out), "--quiet", "--set", "train.seed=5"]
    assert run_app(args) == 0, capsys.readouterr().err
    runs = [out / "runs" / "ji-adf" / "seed5" / f"fold{j}" for j in (0, 1)]
    vals = []
    for run in runs:
        assert (run / "report.md").is_file()
        saved = (run / "config.yaml").read_text()
        assert "folds: 2" in saved and "seed: 5" in saved
        vals.append(set(json.loads((run / "split.json").read_text())["val"]))
    assert vals[0] and vals[1] and not vals[0] & vals[1]  # the folds' validation sets are disjoint
    ids = {
        row.split(",")[0]
        for row in (out / "synthetic" / "MILK10k_Training_GroundTruth.csv").read_text().splitlines()[1:]
    }
    assert vals[0] | vals[1] == ids  # and together cover every lesion once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variants"]["ji-adf"]["n_runs"] == 2

    # running the command again trains nothing new
    capsys.readouterr()
    assert run_app(args) == 0
    assert "2 of 2 runs already finished" in capsys.readouterr().err

    # the fold folder is an ensemble for predict: the mean of the folds' posteriors
    sub = tmp_path / "sub.csv"
    assert (
        run_app(
            [
                "predict",
                str(out),
                "--data",
                str(out / "synthetic"),
                "--split",
                "Training",
                "--decision",
                "probs",
                "--out",
                str(sub),
                "--quiet",
            ]
        )
        == 0
    )
    single = []
    for j, run in enumerate(runs):
        path = tmp_path / f"fold{j}.csv"
        assert (
            run_app(
                [
                    "predict",
                    str(run),
                    "--data",
                    str(out / "synthetic"),
                    "--split",
                    "Training",
                    "--decision",
                    "probs",
                    "--out",
                    str(path),
                    "--quiet",
                ]
            )
            == 0
        )
        single.append(pd.read_csv(path).set_index("lesion_id")[list(CLASS_NAMES)])
    ensemble = pd.read_csv(sub).set_index("lesion_id")[list(CLASS_NAMES)]
    np.testing.assert_allclose(ensemble.to_numpy(), ((single[0] + single[1]) / 2).to_numpy(), atol=1e-6)


def test_train_folds_refuses_resume_and_bad_k(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "cv.yaml", tiny_run_config(tmp_path / "cache"))
    assert run_app(["train", str(config), "--folds", "2", "--resume", "--synthetic", "--out", str(tmp_path / "o")]) == 2
    assert "--folds runs resume by running the same command again" in capsys.readouterr().err
    assert run_app(["train", str(config), "--folds", "1", "--synthetic", "--out", str(tmp_path / "o")]) == 2
    assert "at least 2 folds" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
