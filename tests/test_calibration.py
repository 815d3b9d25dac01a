"""fusionkit.metrics.calibration: ECE, reliability curves, temperature scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusionkit.metrics import (
    apply_temperature,
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
        (lambda: expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 1]), n_bins=0),
         "n_bins"),
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
