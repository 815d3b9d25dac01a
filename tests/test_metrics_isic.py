"""fusionkit.metrics.isic against the official scorer, isic-challenge-scoring 5.6.0."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fusionkit.metrics import METRIC_KEYS, isic_metrics

pytest.importorskip("isic_challenge_scoring")
from isic_challenge_scoring import ClassificationMetric, ClassificationScore  # noqa: E402
from isic_challenge_scoring import metrics as scorer_metrics  # noqa: E402

TOL = 1e-9
HALF_BELOW = float(np.nextafter(0.5, 0.0))
HALF_ABOVE = float(np.nextafter(0.5, 1.0))
GRID = [0.0, 1.0, 0.5, HALF_BELOW, HALF_ABOVE, 0.25, 0.75, 0.1, 0.9]


@contextmanager
def _scorer_crashes_as_nan():
    """Patch the scorer so that a metric it cannot compute (it raises ValueError) reads NaN.

    This is exactly fusionkit's documented contract: the scorer's number where it has one, NaN
    where it crashes. Everything else (binarisation, confusion metrics, macro mean) is the
    scorer's own unpatched code.
    """

    def nan_on_error(fn, fallback):
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ValueError:
                return fallback()

        return wrapped

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("auc", "auc_above_sensitivity", "average_precision", "balanced_multiclass_accuracy"):
            mp.setattr(scorer_metrics, name, nan_on_error(getattr(scorer_metrics, name), lambda: math.nan))
        mp.setattr(scorer_metrics, "roc", nan_on_error(scorer_metrics.roc, pd.DataFrame))
        yield


def official_score(truth: np.ndarray, probs: np.ndarray, names: list[str]) -> ClassificationScore:
    """Score with the official ClassificationScore on DataFrames indexed by ``image``."""
    index = pd.Index([f"IL_{i:07d}" for i in range(len(probs))], name="image")
    truth_df = pd.DataFrame(truth.astype(np.float64), columns=names, index=index)
    pred_df = pd.DataFrame(probs.astype(np.float64), columns=names, index=index)
    weights = pd.DataFrame({"score_weight": 1.0, "validation_weight": 1.0}, index=index)
    with _scorer_crashes_as_nan():
        return ClassificationScore(truth_df, pred_df, weights, ClassificationMetric.AUC)


def assert_same(ours: float, theirs: float, what: str) -> None:
    assert isinstance(ours, float), f"{what}: {type(ours)} is not a Python float"
    if math.isnan(theirs):
        assert math.isnan(ours), f"{what}: scorer NaN, fusionkit {ours}"
    else:
        assert abs(ours - theirs) <= TOL, f"{what}: scorer {theirs}, fusionkit {ours}"


def assert_matches_scorer(y_true, probs: np.ndarray, names: list[str]) -> dict:
    ours = isic_metrics(y_true, probs, names)
    truth = np.eye(len(names))[y_true] if np.asarray(y_true).ndim == 1 else np.asarray(y_true)
    score = official_score(truth, probs, names)
    for metric in METRIC_KEYS:
        for name in names:
            assert_same(
                ours["per_class"][metric][name], float(score.per_category.loc[name, metric]), f"{metric}/{name}"
            )
        assert_same(ours["macro"][metric], float(score.macro_average[metric]), f"macro {metric}")
    assert_same(ours["macro"]["balanced_accuracy"], float(score.aggregate["balanced_accuracy"]), "balanced_accuracy")
    return ours


@st.composite
def prediction_sets(draw):
    """Random and adversarial (ties, exact 0.5, empty classes, soft truths, tiny sets) inputs."""
    k = draw(st.integers(2, 5))
    n = draw(st.integers(1, 24))
    names = [f"C{j}" for j in range(k)]
    value = st.one_of(st.sampled_from(GRID), st.floats(0.0, 1.0, allow_nan=False))
    probs = np.array(draw(st.lists(st.lists(value, min_size=k, max_size=k), min_size=n, max_size=n)), dtype=np.float64)
    if draw(st.booleans()):
        sums = probs.sum(axis=1, keepdims=True)
        probs = np.divide(probs, sums, out=np.full_like(probs, 1.0 / k), where=sums > 0)
    present = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
    labels = np.array(draw(st.lists(st.sampled_from(present), min_size=n, max_size=n)), dtype=np.int64)
    kind = draw(st.sampled_from(["indices", "onehot", "smoothed", "soft"]))
    if kind == "indices":
        return labels, probs, names
    truth = np.eye(k)[labels]
    if kind == "smoothed":
        eps = draw(st.sampled_from([0.1, 0.3, 0.5]))
        truth = truth * (1 - eps) + eps / k
    elif kind == "soft":
        truth = np.array(
            draw(
                st.lists(
                    st.lists(st.sampled_from([0.0, 1.0, 0.3, 0.5, 0.7]), min_size=k, max_size=k), min_size=n, max_size=n
                )
            ),
            dtype=np.float64,
        )
    return truth, probs, names


@settings(max_examples=60, deadline=None, derandomize=True)
@given(prediction_sets())
def test_matches_official_scorer(case):
    y_true, probs, names = case
    out = assert_matches_scorer(y_true, probs, names)
    event(f"truth {'indices' if np.ndim(y_true) == 1 else 'matrix'}")
    event(f"empty classes: {bool(out['empty_classes'])}")
    soft = np.ndim(y_true) == 2 and bool(np.any((y_true != 0) & (y_true != 1)))
    event(f"soft truth values: {soft}")
    event(f"a probability of exactly 0.5: {bool(np.any(probs == 0.5))}")
    tied = bool(np.any((probs == probs.max(axis=1, keepdims=True)).sum(axis=1) > 1))
    event(f"tied top probability: {tied}")


def test_realistic_set_matches_scorer():
    rng = np.random.default_rng(0)
    names = ["AKIEC", "BCC", "BEN_OTH", "BKL", "DF", "INF", "MAL_OTH", "MEL", "NV", "SCCKA", "VASC"]
    labels = rng.integers(0, len(names), size=300)
    logits = rng.normal(size=(300, len(names))) + 2.5 * np.eye(len(names))[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ours = assert_matches_scorer(labels, probs, names)
    assert ours["empty_classes"] == [] and ours["undefined"] == {}
    assert all(0.5 < ours["per_class"]["auc"][n] <= 1.0 for n in names)


def test_empty_class_is_nan_listed_and_left_out_of_the_macro():
    names = ["A", "B", "C"]
    y = np.array([0, 1, 0, 1, 0])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.4, 0.3, 0.3], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    # The scorer itself crashes on a class without positives (partial AUC of an empty ROC curve).
    index = pd.Index(list("abcde"))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="sample points is empty"):
        warnings.simplefilter("ignore")
        ClassificationScore(
            pd.DataFrame(np.eye(3)[y], columns=names, index=index),
            pd.DataFrame(probs, columns=names, index=index),
            pd.DataFrame({"score_weight": 1.0, "validation_weight": 1.0}, index=index),
            ClassificationMetric.AUC,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fusionkit handles the case without sklearn warnings
        out = assert_matches_scorer(y, probs, names)
    assert out["empty_classes"] == ["C"]
    assert out["undefined"] == {"auc": ["C"], "auc_sens_80": ["C"]}
    assert math.isnan(out["per_class"]["auc"]["C"])
    assert out["per_class"]["ap"]["C"] == 0.0  # scikit-learn's value for no positives
    assert out["per_class"]["sensitivity"]["C"] == 1.0  # zero denominator scores 1.0
    assert out["per_class"]["specificity"]["C"] == pytest.approx(4 / 5)
    expected_auc = (out["per_class"]["auc"]["A"] + out["per_class"]["auc"]["B"]) / 2
    assert out["macro"]["auc"] == pytest.approx(expected_auc, abs=1e-12)
    assert out["macro"]["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_partial_auc_with_a_flat_run_at_exactly_80_percent_sensitivity():
    # Four of five positives rank first, then two negatives: the ROC curve stays at TPR 0.8 from
    # FPR 0 to 1, and that whole flat run belongs to the partial area (0.8).
    truth = np.array([1, 1, 1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    probs = np.stack([scores, 1 - scores], axis=1)
    out = assert_matches_scorer(1 - truth, probs, ["A", "B"])
    assert out["per_class"]["auc_sens_80"]["A"] == pytest.approx(0.8, abs=1e-12)


def test_top_probability_of_exactly_half_predicts_nothing():
    names = ["A", "B"]
    out = isic_metrics(np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]), names)
    assert out["per_class"]["sensitivity"] == {"A": 0.0, "B": 0.0}
    assert out["per_class"]["ppv"] == {"A": 1.0, "B": 1.0}  # no positive predictions
    assert out["per_class"]["dice"] == {"A": 0.0, "B": 0.0}
    assert out["macro"]["balanced_accuracy"] == 0.0  # tied argmax counts as wrong


def test_perfect_prediction_scores_one_everywhere():
    names = ["A", "B", "C"]
    y = np.array([0, 1, 2, 2, 1, 0])
    out = isic_metrics(y, np.eye(3)[y], names)
    for metric in METRIC_KEYS:
        assert out["macro"][metric] == 1.0, metric


def test_partial_auc_of_an_uninformative_score_is_the_area_right_of_fpr_08():
    # Constant scores give the diagonal ROC; the raw area under it for FPR in [0.8, 1] is 0.18.
    out = isic_metrics(np.array([0, 1, 0, 1]), np.full((4, 2), 0.5), ["A", "B"])
    assert out["per_class"]["auc_sens_80"]["A"] == pytest.approx(0.18, abs=1e-12)
    assert out["per_class"]["auc"]["A"] == 0.5


@pytest.mark.parametrize(
    ("y_true", "probs", "names", "match"),
    [
        (np.array([0, 1]), np.ones((3, 2)) / 2, ["A", "B"], "2 samples but probs has 3"),
        (np.array([0, 1]), np.ones((2, 3)) / 3, ["A", "B"], "3 columns but 2 class names"),
        (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), ["A", "B"], "NaN"),
        (np.array([0, 1]), np.array([[1.5, -0.5], [0.5, 0.5]]), ["A", "B"], r"outside \[0, 1\]"),
        (np.array([0, 2]), np.ones((2, 2)) / 2, ["A", "B"], "out of range"),
        (np.array([0.0, 1.0]), np.ones((2, 2)) / 2, ["A", "B"], "integer class indices"),
        (np.eye(2)[[0, 1, 1]], np.ones((2, 2)) / 2, ["A", "B"], "shape"),
        (np.array([[0.0, 2.0], [1.0, 0.0]]), np.ones((2, 2)) / 2, ["A", "B"], r"\[0, 1\]"),
        (np.array([0, 1]), np.ones((2, 2)) / 2, ["A", "A"], "duplicates"),
        (np.zeros(0, dtype=int), np.zeros((0, 2)), ["A", "B"], "empty"),
        (np.array([0, 1]), np.ones(2) / 2, ["A", "B"], "2-D"),
    ],
)
def test_rejects_bad_inputs(y_true, probs, names, match):
    with pytest.raises(ValueError, match=match):
        isic_metrics(y_true, probs, names)


def _probs_with_bad_rows(bad: list[int], value: float, n: int = 14) -> np.ndarray:
    """Valid (n, 2) probabilities, exactly 0 and 1 in the good rows, ``value`` in the ``bad`` rows."""
    probs = np.tile([0.0, 1.0], (n, 1))
    probs[bad, 0] = value
    return probs


@pytest.mark.parametrize(
    ("y_true", "probs", "names", "message"),
    [
        ([0, 1], np.ones((2, 2)) / 2, "AB", "class_names must be a sequence of names, not a single string"),
        ([0, 1], np.ones((2, 2)) / 2, [], "class_names is empty"),
        ([0, 1], np.ones((2, 2)) / 2, ["", "B"], "class_names must be non-empty strings, got ['', 'B']"),
        ([0, 1], np.ones((2, 2)) / 2, [5, "B"], "class_names must be non-empty strings, got [5, 'B']"),
        ([0, 1], np.array([["a", "b"], ["c", "d"]]), ["A", "B"], "probs must be numeric, got dtype <U1"),
        ([], np.zeros((0, 2)), ["A", "B"], "probs has no rows: cannot score an empty set"),
        (
            np.zeros(14, int),
            _probs_with_bad_rows([3], np.nan),
            ["A", "B"],
            "probs holds NaN or infinite values (rows [3])",
        ),
        (
            np.zeros(14, int),
            _probs_with_bad_rows(list(range(1, 14)), np.inf),
            ["A", "B"],
            "probs holds NaN or infinite values (rows [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])",
        ),
        (
            np.zeros(14, int),
            _probs_with_bad_rows([2], 1.5),
            ["A", "B"],
            "probs outside [0, 1] (rows [2]); pass probabilities, not logits",
        ),
        (
            np.zeros(14, int),
            _probs_with_bad_rows(list(range(1, 14)), -0.5),
            ["A", "B"],
            "probs outside [0, 1] (rows [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]); pass probabilities, not logits",
        ),
        (
            np.array([0.0, 1.0]),
            np.ones((2, 2)) / 2,
            ["A", "B"],
            "1-D y_true must hold integer class indices, got dtype float64; "
            "pass a 2-D one-hot or soft matrix for probabilities",
        ),
        (np.array([0, 2, -1, 1]), np.ones((4, 2)) / 2, ["A", "B"], "class index out of range [0, 2): [2, -1]"),
        (
            np.array([0] + [2] * 12),
            np.ones((13, 2)) / 2,
            ["A", "B"],
            "class index out of range [0, 2): [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]",
        ),
        (
            np.zeros((2, 2, 1)),
            np.ones((2, 2)) / 2,
            ["A", "B"],
            "y_true must be 1-D indices or 2-D (n, k), got shape (2, 2, 1)",
        ),
        (np.array([["a", "b"], ["c", "d"]]), np.ones((2, 2)) / 2, ["A", "B"], "y_true must be numeric, got dtype <U1"),
        (np.array([[0.0, np.nan], [1.0, 0.0]]), np.ones((2, 2)) / 2, ["A", "B"], "y_true holds NaN or infinite values"),
        (
            np.array([[0.0, 2.0], [1.0, 0.0]]),
            np.ones((2, 2)) / 2,
            ["A", "B"],
            "y_true (2-D) must hold values in [0, 1]",
        ),
    ],
)
def test_bad_input_message_is_exact(y_true, probs, names, message):
    """The whole message, rows listed (at most 10): a caller shows it as the one error line."""
    with pytest.raises(ValueError) as info:
        isic_metrics(np.asarray(y_true), probs, names)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "truth",
    [
        np.eye(3, dtype=np.int64)[[0, 1, 2, 0]],
        np.eye(3, dtype=bool)[[0, 1, 2, 0]],
        np.eye(3, dtype=np.float32)[[0, 1, 2, 0]],
    ],
    ids=["int", "bool", "float32"],
)
def test_truth_matrices_and_probabilities_of_any_numeric_dtype_score_alike(truth):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.1, 0.3], [0.2, 0.5, 0.3]])
    reference = isic_metrics(np.array([0, 1, 2, 0]), probs, ["A", "B", "C"])
    assert isic_metrics(truth, probs, ["A", "B", "C"]) == reference
    assert isic_metrics(truth, probs.astype(np.float32), ["A", "B", "C"]) == isic_metrics(
        truth, probs.astype(np.float32).astype(np.float64), ["A", "B", "C"]
    )
    hard = isic_metrics(truth, (probs > 0.5).astype(np.int64), ["A", "B", "C"])  # 0/1 integers
    assert hard["per_class"]["sensitivity"] == {"A": 0.5, "B": 1.0, "C": 0.0}


def test_multiclass_accuracy_is_the_share_of_rows_whose_argmax_is_the_truths():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.1, 0.3], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])
    out = isic_metrics(np.array([0, 1, 2, 0, 0]), probs, ["A", "B", "C"])
    assert out["macro"]["multiclass_accuracy"] == 2 / 5  # rows 0 and 1; the tie in row 4 is wrong
    # A tied truth row is left out; a set of only tied truth rows has no accuracy.
    truth = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    assert isic_metrics(truth, probs[:3], ["A", "B", "C"])["macro"]["multiclass_accuracy"] == 1.0
    tied = isic_metrics(np.full((2, 3), 0.5), probs[:2], ["A", "B", "C"])
    assert math.isnan(tied["macro"]["multiclass_accuracy"])


def test_a_class_whose_truth_never_exceeds_half_is_empty():
    truth = np.array([[1.0, 0.5], [1.0, 0.0]])  # class B reaches 0.5, never more
    out = isic_metrics(truth, np.array([[0.9, 0.1], [0.8, 0.2]]), ["A", "B"])
    assert out["empty_classes"] == ["B"]
