"""The held-out test part (``data.test_fraction``, a split file's ``"test"``): drawn disjoint and
stratified, never seen by selection, and what the run's report and the sweep report; and evaluation
of training lesions refused or labelled in-sample (issue 29 item 6, issue 28 item 6)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from train_helpers import tiny_run_config, write_config

from fusionkit.data import (
    Split,
    kfold_test_splits,
    read_split_file,
    train_val_split,
    train_val_test_split,
)
from fusionkit.errors import DataError
from fusionkit.evaluate.pipeline import train_and_evaluate
from fusionkit.runtime.config import RunConfig

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
}
TIMING_KEYS = {"seconds", "samples_per_s", "peak_gpu_mem_gib", "time"}


def fusionkit(*args: object) -> subprocess.CompletedProcess:
    """``fusionkit ARGS`` through the real entry point."""
    return subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        check=False,
    )


def _bounds(n: int, fraction: float) -> tuple[int, int]:
    """The per-class count a stratified part may hold: floor or ceil of ``n * fraction``, at least one
    and at most ``n - 1`` (none of a one-lesion class)."""
    if n < 2:
        return 0, 0
    x = n * fraction
    return min(max(math.floor(x), 1), n - 1), min(max(math.ceil(x), 1), n - 1)


labels_strategy = st.lists(st.sampled_from("ABCDE"), min_size=3, max_size=80)


# -- the split ------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(labels_strategy, st.floats(0.05, 0.5), st.floats(0.05, 0.4), st.integers(0, 50))
def test_three_parts_are_disjoint_cover_and_are_stratified(
    labels: list[str], val_fraction: float, test_fraction: float, seed: int
) -> None:
    ids = [f"IL_{i:07d}" for i in range(len(labels))]
    split = train_val_test_split(ids, labels, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    parts = (split.train, split.val, split.test)
    assert sum(map(len, parts)) == len(ids)
    assert set().union(*map(set, parts)) == set(ids)  # disjoint and covering
    for part in parts:  # input order kept
        assert list(part) == [x for x in ids if x in set(part)]
    label_of = dict(zip(ids, labels, strict=True))
    total = Counter(labels)
    in_test = Counter(label_of[x] for x in split.test)
    in_val = Counter(label_of[x] for x in split.val)
    inner = val_fraction / (1 - test_fraction)
    for label, n in total.items():
        low, high = _bounds(n, test_fraction)
        assert low <= in_test[label] <= high, (label, n, in_test[label])
        low, high = _bounds(n - in_test[label], inner)
        assert low <= in_val[label] <= high, (label, n, in_val[label])
    # the test part does not depend on the validation fraction, nor on the input order
    other = train_val_test_split(
        ids[::-1], labels[::-1], val_fraction=val_fraction / 2, test_fraction=test_fraction, seed=seed
    )
    assert set(other.test) == set(split.test)


@given(labels_strategy, st.integers(0, 20))
def test_no_test_fraction_is_todays_split(labels: list[str], seed: int) -> None:
    ids = [f"IL_{i:07d}" for i in range(len(labels))]
    split = train_val_test_split(ids, labels, val_fraction=0.25, test_fraction=0.0, seed=seed)
    assert split == train_val_split(ids, labels, val_fraction=0.25, seed=seed) and split.test == ()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("ABC"), min_size=12, max_size=60), st.integers(2, 4), st.integers(0, 20))
def test_folds_after_the_test_part_share_it_and_fold_the_rest(labels: list[str], k: int, seed: int) -> None:
    ids = [f"IL_{i:07d}" for i in range(len(labels))]
    folds = kfold_test_splits(ids, labels, k=k, test_fraction=0.2, seed=seed)
    test = set(folds[0].test)
    assert test and all(set(f.test) == test for f in folds)
    rest = set(ids) - test
    assert sorted(x for f in folds for x in f.val) == sorted(rest)  # each other lesion validated once
    for f in folds:
        assert set(f.train) | set(f.val) == rest and not set(f.train) & set(f.val)
    assert test == set(train_val_test_split(ids, labels, val_fraction=0.2, test_fraction=0.2, seed=seed).test)


def test_split_files_carry_a_test_part(tmp_path: Path) -> None:
    ids = [f"IL_{i:07d}" for i in range(12)]
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ids[:6], "val": ids[6:9], "test": ids[9:]}))
    assert read_split_file(path, ids, folds=None) == Split(
        train=tuple(ids[:6]), val=tuple(ids[6:9]), test=tuple(ids[9:])
    )
    path.write_text(json.dumps({"folds": [ids[:5], ids[5:10]], "test": ids[10:]}))
    fold = read_split_file(path, ids, folds=2, fold=1)
    assert (fold.val, fold.test) == (tuple(ids[5:10]), tuple(ids[10:]))
    path.write_text(json.dumps({"train": ids[:6], "val": ids[6:9], "test": ids[8:]}))
    with pytest.raises(DataError, match=f'lesion {ids[8]}: is in both "val" and "test"'):
        read_split_file(path, ids, folds=None)
    path.write_text(json.dumps({"folds": [ids[:5], ids[5:10]], "test": ids[9:]}))
    with pytest.raises(DataError, match=f'lesion {ids[9]}: is in both "fold 0 train" and "test"'):
        read_split_file(path, ids, folds=2, fold=0)


def test_config_refuses_fractions_that_leave_nothing_and_a_fraction_beside_a_file() -> None:
    with pytest.raises(ValidationError, match=r"val_fraction 0.6 \+ test_fraction 0.4 must be below 1"):
        RunConfig.model_validate({"model": {"preset": "ji-adf"}, "data": {"val_fraction": 0.6, "test_fraction": 0.4}})
    with pytest.raises(ValidationError, match="test_fraction is unused with split_file"):
        RunConfig.model_validate(
            {"model": {"preset": "ji-adf"}, "data": {"test_fraction": 0.1, "split_file": "split.json"}}
        )


# -- a run with a test part -------------------------------------------------------------------------
def _config(cache: Path, **data: object) -> RunConfig:
    raw = tiny_run_config(cache, epochs=3, n_lesions=48)
    raw["train"]["scheduler"] = {"patience": 0}  # the plateau acts on every epoch's validation score
    raw["data"].update(data)
    return RunConfig.model_validate(raw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``held``: a run with a test part; ``without``: the same run trained with its test lesions left
    out of the data (a split file of only its train and validation lesions)."""
    root = tmp_path_factory.mktemp("testsplit")
    held = root / "held"
    train_and_evaluate(
        _config(root / "cache", test_fraction=0.25), run_dir=held, synthetic=True, progress=False, gradcam_lesions=0
    )
    stored = json.loads((held / "split.json").read_text())
    split_file = root / "no_test.json"
    split_file.write_text(json.dumps({"train": stored["train"], "val": stored["val"]}))
    without = root / "without"
    train_and_evaluate(
        _config(root / "cache", split_file=str(split_file)),
        run_dir=without,
        data_root=held / "synthetic",
        progress=False,
        gradcam_lesions=0,
    )
    return {"held": held, "without": without}


def _history(run: Path) -> list[dict[str, object]]:
    return [
        {k: v for k, v in h.items() if k not in TIMING_KEYS} for h in json.loads((run / "history.json").read_text())
    ]


@pytest.mark.slow
def test_split_json_records_the_test_part(runs: dict[str, Path]) -> None:
    stored = json.loads((runs["held"] / "split.json").read_text())
    assert len(stored["test"]) == 12  # a quarter of 48
    parts = [set(stored[p]) for p in ("train", "val", "test")]
    assert sum(map(len, parts)) == 48 and len(set().union(*parts)) == 48
    # split.json is itself a split file, test part included
    ids = sorted(set().union(*parts))
    assert read_split_file(runs["held"] / "split.json", ids, folds=None).test == tuple(stored["test"])


@pytest.mark.slow
def test_no_selection_sees_the_test_part(runs: dict[str, Path]) -> None:
    """Checkpoint selection, the LR plateau and the thresholds equal those of the same run trained
    without its test lesions: they never saw them."""
    held, without = _history(runs["held"]), _history(runs["without"])
    assert [h["epoch"] for h in held if h.get("best")] == [h["epoch"] for h in without if h.get("best")]
    assert len(held) == len(without)
    for a, b in zip(held, without, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
            else:
                assert a[key] == b[key], key
    decisions = [json.loads((runs[r] / "inference.json").read_text())["decision"] for r in ("held", "without")]
    assert (
        decisions[0]["lesions"]
        == decisions[1]["lesions"]
        == len(json.loads((runs["held"] / "split.json").read_text())["val"])
    )
    assert decisions[0]["thresholds"] == pytest.approx(decisions[1]["thresholds"], rel=1e-6, abs=1e-9)


@pytest.mark.slow
def test_report_headline_is_on_the_test_part(runs: dict[str, Path]) -> None:
    held = runs["held"]
    stored = json.loads((held / "split.json").read_text())
    with open(held / "predictions.csv", newline="") as handle:
        assert [row[0] for row in list(csv.reader(handle))[1:]] == stored["test"]
    assert json.loads((held / "evaluated.json").read_text())["split"] == "test"
    headline = (held / "report.md").read_text().splitlines()[2]
    assert "held-out **test part** (12 lesions that no checkpoint selection" in headline
    # without a test part the report says it is on the selection split
    other = (runs["without"] / "report.md").read_text().splitlines()[2]
    assert "**validation split**" in other and "optimistic" in other and "data.test_fraction" in other
    assert json.loads((runs["without"] / "evaluated.json").read_text())["split"] == "validation"


@pytest.mark.slow
def test_evaluating_training_lesions_is_refused_or_labelled_in_sample(runs: dict[str, Path]) -> None:
    held = runs["held"]
    n_train = len(json.loads((held / "split.json").read_text())["train"])
    report = (held / "report.md").read_bytes()
    refused = fusionkit("evaluate", held, "--data", held / "synthetic", "--quiet")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert f"{n_train} of its 48 lesions" in lines[0] and str(held / "split.json") in lines[0]
    assert "--allow-training-lesions" in lines[0]

    allowed = fusionkit(
        "evaluate", held, "--data", held / "synthetic", "--allow-training-lesions", "--gradcam", 0, "--quiet"
    )
    assert allowed.returncode == 0, allowed.stderr
    in_sample = held / "in-sample"
    text = (in_sample / "report.md").read_text()
    assert text.startswith("# fusionkit report: ") and "in-sample (training lesions)" in text.splitlines()[0]
    assert f"48 lesions, {n_train} of them in the run's training split" in text
    assert json.loads((in_sample / "evaluated.json").read_text())["training_lesions"] == n_train
    assert (held / "report.md").read_bytes() == report  # the run's own report is untouched
    assert json.loads((held / "evaluated.json").read_text())["split"] == "test"

    elsewhere = fusionkit(
        "evaluate",
        held,
        "--data",
        held / "synthetic",
        "--allow-training-lesions",
        "--out",
        held,
        "--gradcam",
        0,
        "--quiet",
    )
    assert elsewhere.returncode == 2 and "never replaces the run's own report" in elsewhere.stderr
    assert (held / "report.md").read_bytes() == report


# -- the sweep ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_reports_the_test_part_and_folds_the_rest(tmp_path: Path) -> None:
    raw = tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=40)
    raw["data"]["test_fraction"] = 0.2
    config = write_config(tmp_path / "cfg.yaml", raw)
    out = tmp_path / "sweep"
    result = fusionkit(
        "sweep", config, "--presets", "meta-only", "--seeds", "0", "--folds", 2, "--synthetic", "--out", out
    )
    assert result.returncode == 0, result.stderr
    splits = [json.loads((out / f"runs/meta-only/seed0/fold{j}/split.json").read_text()) for j in (0, 1)]
    assert splits[0]["test"] == splits[1]["test"] and len(splits[0]["test"]) == 8
    test = set(splits[0]["test"])
    assert not test & set(splits[0]["val"] + splits[1]["val"] + splits[0]["train"] + splits[1]["train"])
    assert sorted(splits[0]["val"] + splits[1]["val"]) == sorted(set(splits[0]["train"]) | set(splits[0]["val"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reported_split"] == "test"
    for j in (0, 1):
        run = out / f"runs/meta-only/seed0/fold{j}"
        record = json.loads((run / "sweep_run.json").read_text())
        assert record["reported_split"] == "test" and sorted(record["test_labels"]) == sorted(test)
        macro = json.loads((run / "metrics.json").read_text())["metrics"]["macro"]
        assert record["metrics"]["dice"] == macro["dice"]
        with open(run / "predictions.csv", newline="") as handle:
            assert {row[0] for row in list(csv.reader(handle))[1:]} == test
    assert "**Reported on each run's held-out test part**" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_an_ensemble_reports_its_shared_test_part_and_refuses_training_lesions(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from fusionkit.errors import ConfigError
    from fusionkit.evaluate.ensemble_report import evaluate_ensemble

    held = runs["held"]
    text = evaluate_ensemble([held], out=tmp_path / "ens").read_text()
    assert "shared held-out **test part**" in text and "(12 lesions)" in text
    other = evaluate_ensemble([runs["without"]], out=tmp_path / "ens2").read_text()
    assert "shared **validation split**" in other and "optimistic" in other
    n_train = len(json.loads((held / "split.json").read_text())["train"])
    with pytest.raises(ConfigError, match=f"{n_train} of its 48 lesions .* are training lesions of the runs"):
        evaluate_ensemble([held], out=tmp_path / "ens3", data_root=held / "synthetic")
    assert not (tmp_path / "ens3").exists()
    labelled = evaluate_ensemble(
        [held], out=tmp_path / "ens4", data_root=held / "synthetic", allow_training_lesions=True
    ).read_text()
    assert labelled.splitlines()[0].endswith("in-sample (training lesions)")
