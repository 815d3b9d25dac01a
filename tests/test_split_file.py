"""A split the user supplies (``data.split_file`` / ``--split-file``): the reader's checks, and a run
trained from one uses exactly its lesions (through the entry point)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from train_helpers import tiny_run_config, write_config

from fusionkit.data import Split, lesion_labels, make_synthetic_milk10k, read_split_file
from fusionkit.errors import DataError

IDS = [f"IL_{i:07d}" for i in range(12)]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
}


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "split.json"
    path.write_text(json.dumps(content))
    return path


def test_two_part_file_keeps_its_lesions_and_order(tmp_path: Path) -> None:
    path = write(tmp_path, {"root": "/elsewhere", "train": IDS[5:1:-1], "val": [IDS[9], IDS[0]]})
    assert read_split_file(path, IDS, folds=None) == Split(train=tuple(IDS[5:1:-1]), val=(IDS[9], IDS[0]))


@given(st.integers(2, 6), st.data())
def test_fold_files_pick_the_fold(k: int, data: st.DataObject) -> None:
    import tempfile

    fold = data.draw(st.integers(0, k - 1))
    parts = [IDS[i::k] for i in range(k)]
    with tempfile.TemporaryDirectory() as tmp:
        as_lists = write(Path(tmp), {"folds": parts})
        split = read_split_file(as_lists, IDS, folds=k, fold=fold)
        assert split.val == tuple(parts[fold])
        assert sorted(split.train) == sorted(x for i, p in enumerate(parts) if i != fold for x in p)
        explicit = [
            {"train": list(read_split_file(as_lists, IDS, folds=k, fold=j).train), "val": p}
            for j, p in enumerate(parts)
        ]
        assert read_split_file(write(Path(tmp), {"folds": explicit}), IDS, folds=k, fold=fold) == split


@pytest.mark.parametrize(
    ("content", "folds", "message"),
    [
        ({"train": IDS[:3], "val": ["IL_9999999"]}, None, 'lesion IL_9999999: listed in "val" but not in the data'),
        ({"train": IDS[:3], "val": IDS[2:4]}, None, f'lesion {IDS[2]}: is in both "train" and "val"'),
        ({"train": IDS[:3] + IDS[:1], "val": IDS[4:5]}, None, f'lesion {IDS[0]}: occurs twice in "train"'),
        ({"train": IDS[:3], "val": []}, None, '"val" lists no lesions'),
        ({"train": IDS[:3], "val": [1, 2]}, None, '"val" must be a list of lesion ids'),
        ({"train": IDS[:3]}, None, 'expected {"train": [ids], "val": [ids]} or {"folds": [...]}'),
        ({"train": IDS[:3], "val": IDS[4:5]}, 5, "the run asks for 5 folds but the file has one train/val split"),
        ({"folds": [IDS[:6], IDS[6:]]}, None, "the file has 2 folds but the run asks for none (set data.folds"),
        ({"folds": [IDS[:6], IDS[6:]]}, 3, "the file has 2 folds but the run asks for 3 folds"),
        ({"folds": [IDS[:6], IDS[5:]]}, 2, f'lesion {IDS[5]}: is in both "fold 0 train" and "fold 0 val"'),
    ],
)
def test_bad_split_files_say_one_line_naming_file_and_lesion(tmp_path, content, folds, message) -> None:
    path = write(tmp_path, content)
    with pytest.raises(DataError) as err:
        read_split_file(path, IDS, folds=folds)
    assert str(err.value).startswith(f"{path}") and message in str(err.value) and "\n" not in str(err.value)


def test_unreadable_split_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not JSON \(line 1"):
        read_split_file(tmp_path / "bad.json", IDS, folds=None)
    with pytest.raises(DataError, match="cannot read the split file"):
        read_split_file(tmp_path / "missing.json", IDS, folds=None)


def fusionkit(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        check=False,
    )


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_trained_from_a_split_file_uses_exactly_its_lesions(tmp_path: Path) -> None:
    files = make_synthetic_milk10k(tmp_path / "data", n_lesions=40, photo_size=(40, 30), seed=3)
    ids, labels = lesion_labels(files)
    chosen = {"train": sorted(ids)[10:34], "val": sorted(ids)[:10]}  # 6 lesions left out
    split_file = write(tmp_path, chosen)
    config = write_config(tmp_path / "cfg.yaml", tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=40))
    run = tmp_path / "run"
    result = fusionkit(
        "train", config, "--data", tmp_path / "data", "--split-file", split_file, "--out", run, "--quiet"
    )
    assert result.returncode == 0, result.stderr
    stored = json.loads((run / "split.json").read_text())
    assert (stored["train"], stored["val"]) == (chosen["train"], chosen["val"])
    with open(run / "predictions.csv", newline="") as handle:
        assert [row[0] for row in list(csv.reader(handle))[1:]] == chosen["val"]
    # a run's split.json is itself a split file
    assert read_split_file(run / "split.json", ids, folds=None) == Split(
        train=tuple(chosen["train"]), val=tuple(chosen["val"])
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_split_file_errors_at_the_command_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg.yaml", tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=40))
    missing = fusionkit("sweep", config, "--presets", "meta-only", "--synthetic", "--split-file", tmp_path / "x.json")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"--split-file {tmp_path / 'x.json'}: no such file" in missing.stderr
    bad = write(tmp_path, {"train": ["IL_9999999"], "val": ["IL_8888888"]})
    result = fusionkit("train", config, "--synthetic", "--split-file", bad, "--out", tmp_path / "run", "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith('lesion IL_9999999: listed in "train" but not in the data\'s Training split')
    )


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.subprocess
def test_folds_from_a_split_file_through_train_folds(tmp_path: Path) -> None:
    """``train --folds 2 --split-file`` (the sweep's machinery): each fold validates on the file's fold."""
    files = make_synthetic_milk10k(tmp_path / "data", n_lesions=30, photo_size=(40, 30), seed=3)
    ids = sorted(lesion_labels(files)[0])
    folds = [ids[:14], ids[14:28]]  # two lesions in neither fold
    split_file = write(tmp_path, {"folds": folds})
    config = write_config(tmp_path / "cfg.yaml", tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=30))
    out = tmp_path / "cv"
    result = fusionkit(
        "train", config, "--data", tmp_path / "data", "--folds", 2, "--split-file", split_file, "--out", out, "--quiet"
    )
    assert result.returncode == 0, result.stderr
    for j, val in enumerate(folds):
        stored = json.loads(next(out.glob(f"runs/*/seed*/fold{j}/split.json")).read_text())
        assert (stored["val"], stored["train"]) == (val, folds[1 - j])
