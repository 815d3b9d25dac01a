"""fusionkit.metrics.write_submission, read back through the official scorer's own CSV path."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from fusionkit.inference.submission import write_submission
from fusionkit.metrics import METRIC_KEYS, isic_metrics

pytest.importorskip("isic_challenge_scoring")
from isic_challenge_scoring import (  # noqa: E402
    ClassificationMetric,
    ClassificationScore,
    ScoreError,
)
from isic_challenge_scoring.load_csv import parse_csv  # noqa: E402

NAMES = ["AKIEC", "BCC", "BEN_OTH", "BKL", "DF", "INF", "MAL_OTH", "MEL", "NV", "SCCKA", "VASC"]


def _case(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(NAMES)  # every class present, so the scorer does not crash
    logits = rng.normal(size=(n, len(NAMES))) + 2.0 * np.eye(len(NAMES))[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[0] = 0.0  # values written as 0.0 must still parse as floats
    probs[1, :2] = [0.5, 1e-05]
    ids = [f"IL_{i:07d}" for i in rng.permutation(n)]  # deliberately unsorted
    return ids, labels, probs


def test_scorer_reads_submission_and_agrees_with_isic_metrics(tmp_path):
    ids, labels, probs = _case()
    truth_path = write_submission(tmp_path / "truth.csv", ids, np.eye(len(NAMES))[labels], NAMES, id_column="image")
    pred_path = write_submission(tmp_path / "pred.csv", ids, probs, NAMES, id_column="image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the scorer's DataFrame.applymap
        score = ClassificationScore.from_file(truth_path, pred_path, ClassificationMetric.AUC)
    ours = isic_metrics(labels, probs, NAMES)
    for metric in METRIC_KEYS:
        for name in NAMES:
            theirs = float(score.per_category.loc[name, metric])
            assert math.isclose(ours["per_class"][metric][name], theirs, rel_tol=0, abs_tol=1e-9)
        assert math.isclose(ours["macro"][metric], float(score.macro_average[metric]), rel_tol=0, abs_tol=1e-9)


def test_milk10k_layout_sorted_floats(tmp_path):
    ids, _, probs = _case(n=12)
    path = write_submission(tmp_path / "sub" / "submission.csv", ids, probs, NAMES)
    lines = path.read_text().splitlines()
    assert lines[0] == "lesion_id," + ",".join(NAMES)
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == sorted(ids)
    assert rows[[r[0] for r in rows].index(ids[0])][1:] == ["0.0"] * len(NAMES)
    assert all(("." in v or "e" in v) for r in rows for v in r[1:])
    # Values round-trip exactly.
    by_id = {r[0]: [float(v) for v in r[1:]] for r in rows}
    assert all(by_id[i] == probs[k].tolist() for k, i in enumerate(ids))
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]  # no temp file left


def test_scorer_5_6_needs_the_image_id_column(tmp_path):
    ids, _, probs = _case(n=12)
    path = write_submission(tmp_path / "s.csv", ids, probs, NAMES)
    with path.open() as stream, pytest.raises(ScoreError, match="'image'"):
        parse_csv(stream, pd.Index(NAMES))


def test_overwrite_is_atomic_replacement(tmp_path):
    ids, _, probs = _case(n=12)
    path = tmp_path / "s.csv"
    path.write_text("old")
    write_submission(path, ids, probs, NAMES)
    assert path.read_text().startswith("lesion_id,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]


@pytest.mark.parametrize(
    ("ids", "probs", "match"),
    [
        (["a", "a"], np.full((2, 2), 0.5), "duplicate"),
        (["a"], np.full((2, 2), 0.5), "shape"),
        (["a", "b"], np.array([[0.5, np.nan], [0.5, 0.5]]), "finite"),
        (["a", "b"], np.array([[1.5, 0.5], [0.5, 0.5]]), r"\[0, 1\]"),
        (["a", ""], np.full((2, 2), 0.5), "empty"),
    ],
)
def test_rejects_bad_rows(tmp_path, ids, probs, match):
    with pytest.raises(ValueError, match=match):
        write_submission(tmp_path / "s.csv", ids, probs, ["A", "B"])
    assert not any(tmp_path.iterdir())


def test_file_content_is_exact(tmp_path):
    path = write_submission(tmp_path / "s.csv", ["b", "a"], [[0.25, 0.75], [1, 0]], ["A", "B"])
    assert path.read_bytes() == b"lesion_id,A,B\na,1.0,0.0\nb,0.25,0.75\n"  # "\n", not "\r\n"


@pytest.mark.parametrize(
    ("ids", "probs", "names", "message"),
    [
        (
            ["a"],
            np.full((2, 2), 0.5),
            ["A", "B"],
            "probs has shape (2, 2), expected (1, 2) (one row per id, one column per class)",
        ),
        ([], np.zeros((0, 2)), ["A", "B"], "no rows to write"),
        (["a", ""], np.full((2, 2), 0.5), ["A", "B"], "empty lesion id"),
        (["b", "a", "b", "c", "a", "a"], np.full((6, 2), 0.5), ["A", "B"], "duplicate lesion ids: ['a', 'b']"),
        (
            [f"x{i:02d}" for i in range(12)] * 2,
            np.full((24, 2), 0.5),
            ["A", "B"],
            f"duplicate lesion ids: {[f'x{i:02d}' for i in range(10)]}",
        ),
        (
            ["a", "b"],
            np.full((2, 2), 0.5),
            ["A", "A"],
            "column names must be unique and differ from 'lesion_id': ['A', 'A']",
        ),
        (
            ["a", "b"],
            np.full((2, 2), 0.5),
            ["lesion_id", "B"],
            "column names must be unique and differ from 'lesion_id': ['lesion_id', 'B']",
        ),
        (["a", "b"], [[0.5, None], [0.5, 0.5]], ["A", "B"], "probs must be finite and in [0, 1]"),
        (["a", "b"], [[0.5, -0.1], [0.5, 0.5]], ["A", "B"], "probs must be finite and in [0, 1]"),
    ],
)
def test_bad_input_messages_are_exact(tmp_path, ids, probs, names, message):
    with pytest.raises(ValueError) as info:
        write_submission(tmp_path / "s.csv", ids, probs, names)
    assert str(info.value) == message
    assert not any(tmp_path.iterdir())
