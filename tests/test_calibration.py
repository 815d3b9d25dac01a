"""fusionkit.metrics.calibration: ECE, reliability curves, temperature scaling."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
from scipy.optimize import OptimizeResult, minimize_scalar

from fusionkit.metrics import (
    apply_temperature,
    calibration,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_curve,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _synthetic(n: int, seed: int, k: int = 5):
    """Logits and labels drawn from softmax(logits): softmax(logits) is calibrated by design."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    probs = _softmax(logits)
    labels = (rng.random((n, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    return logits, np.minimum(labels, k - 1)


def test_calibrated_predictor_has_near_zero_ece():
    logits, labels = _synthetic(40_000, seed=0)
    assert expected_calibration_error(_softmax(logits), labels) < 0.02


def test_overconfident_predictor_has_large_ece():
    logits, labels = _synthetic(40_000, seed=1)
    assert expected_calibration_error(_softmax(4.0 * logits), labels) > 0.2


def test_ece_by_hand_right_closed_bins():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    y = np.array([0, 1, 1, 1])
    curve = reliability_curve(probs, y, n_bins=2)
    # 0.5 sits on the edge and goes to the lower (right-closed) bin; argmax of a tie is class 0.
    assert curve.count == (1, 3)
    assert curve.confidence == pytest.approx((0.5, (0.9 + 0.6 + 0.8) / 3))
    assert curve.accuracy == pytest.approx((0.0, 2 / 3))
    expected = 0.25 * 0.5 + 0.75 * abs(2 / 3 - 2.3 / 3)
    assert expected_calibration_error(probs, y, n_bins=2) == pytest.approx(expected)
    assert expected_calibration_error(probs, np.eye(2)[y], n_bins=2) == pytest.approx(expected)


def test_reliability_curve_shapes_and_empty_bins():
    probs = np.array([[0.95, 0.05], [0.97, 0.03]])
    curve = reliability_curve(probs, np.array([0, 1]), n_bins=10)
    assert len(curve.bin_edges) == 11 and len(curve.count) == 10
    assert curve.count[-1] == 2 and curve.n_samples == 2
    assert all(math.isnan(c) for c in curve.confidence[:-1])
    assert curve.accuracy[-1] == 0.5
    assert all(isinstance(v, float) for v in curve.confidence + curve.accuracy)


def test_temperature_scaling_fixes_an_overconfident_predictor():
    logits, labels = _synthetic(20_000, seed=2)
    sharp = 3.0 * logits
    val, test = slice(0, 10_000), slice(10_000, None)
    t = fit_temperature(sharp[val], labels[val])
    assert t == pytest.approx(3.0, rel=0.1)
    before_nll = negative_log_likelihood(sharp[test], labels[test])
    after_nll = negative_log_likelihood(sharp[test], labels[test], temperature=t)
    assert after_nll < before_nll - 0.1
    before_ece = expected_calibration_error(_softmax(sharp[test]), labels[test])
    after_ece = expected_calibration_error(apply_temperature(sharp[test], t), labels[test])
    assert after_ece < 0.03 < 0.15 < before_ece


def test_calibrated_predictor_keeps_temperature_near_one():
    logits, labels = _synthetic(20_000, seed=3)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(1.0, abs=0.06)
    assert fit_temperature(logits, labels) == t  # deterministic


def test_temperature_is_the_nll_minimiser():
    logits, labels = _synthetic(2_000, seed=4)
    t = fit_temperature(logits, labels)
    best = negative_log_likelihood(logits, labels, temperature=t)
    for factor in (0.9, 0.98, 1.02, 1.1):
        assert best <= negative_log_likelihood(logits, labels, temperature=t * factor)


def test_separable_logits_warn_at_the_bound():
    logits = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    with pytest.warns(RuntimeWarning, match="bound"):
        t = fit_temperature(logits, np.array([0, 1, 0]), bounds=(0.1, 10.0))
    assert t == pytest.approx(0.1)


def test_apply_temperature_and_nll_basics():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    probs = apply_temperature(logits, 1.0)
    np.testing.assert_allclose(probs, _softmax(logits))
    np.testing.assert_allclose(apply_temperature(logits, 2.0), _softmax(logits / 2))
    np.testing.assert_allclose(apply_temperature(logits * 1e4, 1.0).sum(axis=1), 1.0)
    expected = -(np.log(probs[0, 0]) + np.log(probs[1, 2])) / 2
    assert negative_log_likelihood(logits, np.array([0, 2])) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 1]), n_bins=0), "n_bins"),
        (lambda: expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 1, 1])), "shape"),
        (lambda: expected_calibration_error(np.full((2, 2), 2.0), np.array([0, 1])), r"\[0, 1\]"),
        (lambda: fit_temperature(np.array([[np.nan, 0.0]]), np.array([0])), "NaN"),
        (lambda: fit_temperature(np.zeros((2, 2)), np.array([0, 3])), "out of range"),
        (lambda: apply_temperature(np.zeros((2, 2)), 0.0), "positive"),
        (lambda: fit_temperature(np.zeros((2, 2)), np.array([0, 1]), bounds=(2.0, 1.0)), "bounds"),
    ],
)
def test_rejects_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _raises_exactly(call, message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_default_bins_are_fifteen():
    # 0.61 (right) and 0.66 (wrong) share the bin (0.6, 0.667] of 15 but not a bin of 16.
    probs = np.array([[0.61, 0.39], [0.34, 0.66]])
    y = np.array([0, 0])
    assert len(reliability_curve(probs, y).count) == 15
    assert expected_calibration_error(probs, y) == pytest.approx(abs(0.5 - 0.635))
    assert expected_calibration_error(probs, y, n_bins=16) == pytest.approx(0.5 * 0.39 + 0.5 * 0.66)


def test_one_bin_and_empty_top_bins_without_warnings():
    probs = np.array([[0.3, 0.25, 0.25, 0.2], [0.2, 0.4, 0.2, 0.2]])
    y = np.array([0, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 in the empty bins is silenced
        one = reliability_curve(probs, y, n_bins=1)
        four = reliability_curve(probs, y, n_bins=4)
    assert one.count == (2,) and one.accuracy == (0.5,)
    assert one.ece == pytest.approx(abs(0.5 - 0.35))
    assert four.count == (0, 2, 0, 0)  # the top bins are empty, and still there
    assert four.accuracy[1] == 0.5 and four.confidence[1] == pytest.approx(0.35)
    assert all(math.isnan(four.confidence[i]) and math.isnan(four.accuracy[i]) for i in (0, 2, 3))


@pytest.mark.parametrize("n_bins", [0, True, 2.0])
def test_n_bins_must_be_a_positive_int(n_bins):
    _raises_exactly(
        lambda: reliability_curve(np.full((2, 2), 0.5), np.array([0, 1]), n_bins=n_bins),
        f"n_bins must be a positive integer, got {n_bins!r}",
    )


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (np.zeros((2, 1)), "logits must have shape (n_samples >= 1, n_classes >= 2), got (2, 1)"),
        (np.zeros((0, 3)), "logits must have shape (n_samples >= 1, n_classes >= 2), got (0, 3)"),
        (np.zeros(3), "logits must have shape (n_samples >= 1, n_classes >= 2), got (3,)"),
        (np.zeros((2, 2), dtype=bool), "logits must be numeric, got dtype bool"),
        (np.array([[0.0, np.inf], [0.0, 0.0]]), "logits hold NaN or infinite values"),
    ],
)
def test_bad_logits_messages(logits, message):
    _raises_exactly(lambda: apply_temperature(logits, 1.0), message)


def test_integer_and_float32_logits_are_accepted_as_float64():
    logits = np.array([[2, 0, -1], [0, 3, 1]])
    expected = apply_temperature(logits.astype(np.float64), 2.0)
    for z in (logits, logits.astype(np.float32), logits.astype(np.int8)):
        assert np.array_equal(apply_temperature(z, 2.0), expected)
    assert negative_log_likelihood(logits, np.array([0, 2])) == negative_log_likelihood(
        logits.astype(np.float64), np.array([0, 2])
    )


@pytest.mark.parametrize(
    ("y_true", "message"),
    [
        (np.zeros((2, 3)), "y_true has shape (2, 3), expected (2, 2)"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "y_true holds NaN or infinite values"),
        (np.array([0, 1, 1]), "y_true has shape (3,), expected (2,) class indices or (2, 2)"),
        (np.array(1), "y_true has shape (), expected (2,) class indices or (2, 2)"),
        (np.array([0.0, 1.0]), "1-D y_true must hold integer class indices, got dtype float64"),
        (np.array([0, 2]), "class index out of range [0, 2): [2]"),
    ],
)
def test_bad_labels_messages(y_true, message):
    _raises_exactly(lambda: negative_log_likelihood(np.zeros((2, 2)), y_true), message)


def test_out_of_range_labels_list_the_first_ten_bad_ones():
    y = np.array([0, 1, 5, -1, 0, 2, *range(3, 13)])  # valid 0s and 1s around 14 bad indices
    _raises_exactly(
        lambda: negative_log_likelihood(np.zeros((len(y), 2)), y),
        "class index out of range [0, 2): [5, -1, 2, 3, 4, 5, 6, 7, 8, 9]",
    )


def test_one_hot_labels_are_the_row_argmax():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0], [1.0, 1.5, 0.0]])
    y = np.array([1, 2, 0])
    assert negative_log_likelihood(logits, np.eye(3)[y]) == negative_log_likelihood(logits, y)


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (1.0, 1.0), (1.0, math.inf)])
def test_bounds_must_be_ordered_positive_and_finite(bounds):
    _raises_exactly(
        lambda: fit_temperature(np.zeros((2, 2)), np.array([0, 1]), bounds=bounds),
        f"bounds must satisfy 0 < T_min < T_max < inf, got {bounds!r}",
    )


def test_fit_temperature_runs_a_bounded_search_over_log_t(monkeypatch):
    calls = []

    def spy(fun, **kwargs):
        calls.append(kwargs)
        return minimize_scalar(fun, **kwargs)

    monkeypatch.setattr(calibration, "minimize_scalar", spy)
    logits, labels = _synthetic(200, seed=5)
    fit_temperature(logits, labels, bounds=(0.5, 4.0), xatol=1e-3)
    assert calls == [{"bounds": (math.log(0.5), math.log(4.0)), "method": "bounded", "options": {"xatol": 1e-3}}]


def test_interior_optimum_does_not_warn():
    logits, labels = _synthetic(2_000, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_temperature(3.0 * logits, labels) == pytest.approx(3.0, rel=0.15)


def test_optimum_on_the_upper_bound_warns_with_the_bound():
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])  # always wrong: the NLL falls as T grows
    with pytest.warns(RuntimeWarning) as record:
        t = fit_temperature(logits, np.array([1, 0]), bounds=(0.1, 10.0))
    assert t == pytest.approx(10.0)
    assert [str(w.message) for w in record] == [
        "fitted temperature 10 lies on the search bound (0.1, 10.0); "
        "the validation logits may be degenerate (e.g. perfectly separated)"
    ]
    # stacklevel=2 names the caller; under mutmut (which sets MUTANT_UNDER_TEST) its trampoline's
    # frames sit in between, so there the warning names trampoline.py instead
    caller = os.path.join("mutmut", "mutation", "trampoline.py") if "MUTANT_UNDER_TEST" in os.environ else __file__
    assert record[0].filename.endswith(caller)


@pytest.mark.parametrize(("steps", "warns"), [(10.0, True), (10.5, False)])
def test_bound_warning_within_ten_tolerances(monkeypatch, steps, warns):
    xatol = 2.0**-16  # a power of two: steps * xatol and its distance from log(1) = 0 are exact
    monkeypatch.setattr(calibration, "minimize_scalar", lambda fun, **kwargs: OptimizeResult(x=steps * xatol))
    logits, labels = _synthetic(200, seed=7)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        t = fit_temperature(1.5 * logits, labels, bounds=(1.0, 20.0), xatol=xatol)
    assert t == math.exp(steps * xatol)  # the NLL still falls there, so it beats both bounds
    assert len(record) == int(warns)
