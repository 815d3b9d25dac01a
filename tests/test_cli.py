"""The command line: the main job end to end, predict's submission, and one-line user errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from train_helpers import tiny_run_config, write_config

from fusionkit.cli import main
from fusionkit.data import CLASS_NAMES, make_synthetic_milk10k
from fusionkit.runtime.config import load_run_config


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``fusionkit ARGS`` in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["fusionkit", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = write_config(root / "tiny.yaml", tiny_run_config(root / "cache", epochs=1, n_lesions=40))
    return root, config


@pytest.fixture(scope="module")
def trained_run(workspace):
    root, config = workspace
    mp = pytest.MonkeyPatch()
    run = root / "run"
    mp.setattr(sys, "argv", ["fusionkit", "train", str(config), "--synthetic", "--out", str(run), "--quiet"])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
    finally:
        mp.undo()
    return run


@pytest.mark.trains
def test_train_leaves_model_and_report(trained_run: Path) -> None:
    assert (trained_run / "checkpoints" / "best.safetensors").is_file()
    assert (trained_run / "report.md").is_file()
    assert (trained_run / "train.log").read_text().count("epoch 1/1") >= 1


@pytest.mark.trains
def test_predict_writes_a_submission_the_official_parser_accepts(trained_run, tmp_path, monkeypatch, capsys):
    from isic_challenge_scoring.load_csv import parse_csv

    data = tmp_path / "data"
    make_synthetic_milk10k(data, n_lesions=12, photo_size=(40, 30), seed=9, split="Test", with_ground_truth=False)
    out = tmp_path / "submission.csv"
    code, _, err = run_cli(
        monkeypatch, capsys, "predict", trained_run, "--data", data, "--out", out, "--decision", "probs"
    )
    assert code == 0, err
    text = out.read_text()
    header, *rows = text.splitlines()
    assert header == "lesion_id," + ",".join(CLASS_NAMES)
    ids = [r.split(",")[0] for r in rows]
    assert ids == sorted(ids) and len(ids) == 12
    assert all("." in v for r in rows for v in r.split(",")[1:])  # floats written as floats
    # isic-challenge-scoring 5.6.0 names the id column 'image' (5.8 accepts lesion_id)
    parsed = parse_csv(io.StringIO(text.replace("lesion_id", "image", 1)), pd.Index(CLASS_NAMES))
    assert list(parsed.columns) == list(CLASS_NAMES) and len(parsed) == 12
    assert parsed.sum(axis=1).round(5).eq(1.0).all()


def test_listing_commands(monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "presets")
    assert code == 0 and "ji-adf-noaux" in out and "late-concat" in out
    code, out, _ = run_cli(monkeypatch, capsys, "components", "fusion")
    assert code == 0 and "mmfa" in out and "skip_only" in out
    code, out, _ = run_cli(monkeypatch, capsys, "schema")
    assert code == 0 and "fusion" in json.loads(out)["properties"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "no/such/config.yaml", "--synthetic"], "no such file"),
        (["presets", "--show", "ji-adf-xyz"], "unknown preset"),
    ],
)
def test_user_errors_are_one_line(monkeypatch, capsys, args, message) -> None:
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.trains
def test_bad_run_inputs(workspace, trained_run, tmp_path, monkeypatch, capsys) -> None:
    root, config = workspace
    # a config naming an unknown preset
    bad = write_config(tmp_path / "bad.yaml", {"model": {"preset": "ji-adf-typo"}})
    code, _, err = run_cli(monkeypatch, capsys, "train", bad, "--synthetic", "--out", tmp_path / "r0")
    assert code == 2 and "unknown preset 'ji-adf-typo'" in err and "Traceback" not in err
    # a data folder not in the MILK10k layout
    (tmp_path / "notmilk").mkdir()
    code, _, err = run_cli(
        monkeypatch, capsys, "train", config, "--data", tmp_path / "notmilk", "--out", tmp_path / "r1"
    )
    assert code == 2 and "notmilk" in err and "Traceback" not in err
    assert not (tmp_path / "r1").exists()  # a run that fails its data checks leaves no directory
    # an output folder holding another run
    code, _, err = run_cli(monkeypatch, capsys, "train", config, "--synthetic", "--out", trained_run)
    assert code == 2 and "already holds a run" in err
    # --resume with a different model spec
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        config,
        "--synthetic",
        "--out",
        trained_run,
        "--resume",
        "--set",
        "model.fusion.attention_heads=2",
    )
    assert code == 2 and "different model spec" in err and "fusion.attention_heads" in err
    # --resume where there is no run
    code, _, err = run_cli(monkeypatch, capsys, "train", config, "--synthetic", "--out", tmp_path / "none", "--resume")
    assert code == 2 and "no run there" in err
    # an invalid spec value names the field
    code, _, err = run_cli(
        monkeypatch, capsys, "train", config, "--synthetic", "--out", tmp_path / "r2", "--set", "model.fusion.out_dim=0"
    )
    assert code == 2 and "fusion.mmfa.out_dim" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(workspace, tmp_path, monkeypatch, capsys) -> None:
    _, config = workspace
    code, _, err = run_cli(
        monkeypatch, capsys, "train", config, "--synthetic", "--out", tmp_path / "r", "--set", "train.device=cuda"
    )
    assert code == 2 and "no CUDA GPU" in err and "Traceback" not in err


def test_cuda_graph_needs_a_gpu(workspace, tmp_path, monkeypatch, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU message")
    _, config = workspace
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        config,
        "--synthetic",
        "--out",
        tmp_path / "r",
        "--set",
        "train.step_mode=cuda_graph",
        "--set",
        "train.device=cpu",
    )
    assert code == 2 and "cuda_graph" in err and "Traceback" not in err


@pytest.mark.trains
def test_predict_never_falls_back_to_the_training_split(trained_run, tmp_path, monkeypatch, capsys) -> None:
    data = tmp_path / "train_only"
    make_synthetic_milk10k(data, n_lesions=6, photo_size=(40, 30), seed=4)
    out = tmp_path / "submission.csv"
    code, _, err = run_cli(monkeypatch, capsys, "predict", trained_run, "--data", data, "--out", out)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--split auto predicts the Test split" in err and "pass --split Training" in err
    assert not out.exists()
    # --out naming a folder: one line, nothing written
    code, _, err = run_cli(
        monkeypatch, capsys, "predict", trained_run, "--data", data, "--split", "Training", "--out", tmp_path
    )
    assert code == 2 and err.strip() == f"fusionkit: error: {tmp_path} is a directory; give a file name"
    # the run records the folder it trained on
    saved = load_run_config(trained_run / "config.yaml")
    assert saved.data.root == (trained_run / "synthetic").resolve()
