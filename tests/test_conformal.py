"""Knowing when to refer (issue 24): split-conformal prediction sets and selective prediction.

Posteriors are drawn from a Dirichlet and each label from its own posterior, so the model is
calibrated and the lesions exchangeable, as the conformal guarantee assumes. Coverage on held-out
lesions must then be at least ``1 - alpha`` less a stated tolerance over many random splits.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionkit.metrics import isic_metrics
from fusionkit.metrics.conformal import (
    ConformalCalibration,
    calibrate_conformal,
    conformal_scores,
    set_coverage,
    sets_path,
    split_conformal_evaluation,
    write_prediction_sets,
)
from fusionkit.metrics.selective import referral_metrics, risk_coverage

NAMES = ("AKIEC", "BCC", "MEL", "NV", "VASC")
#: Allowed shortfall of the mean held-out coverage over the splits (finite-sample noise of a
#: 400-lesion test half over 30 splits is about 0.003; the guarantee itself is exact in expectation).
TOLERANCE = 0.02


def _posteriors(n: int, seed: int, concentration: float = 0.6, k: int = len(NAMES)):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, concentration), size=n)
    labels = np.array([rng.choice(k, p=row) for row in probs])
    return probs, labels


def _held_out_coverage(probs, labels, *, alpha, method, class_conditional, splits, seed):
    rng = np.random.default_rng(seed)
    coverages, per_class = [], []
    for _ in range(splits):
        order = rng.permutation(len(probs))
        cal, test = order[: len(order) // 2], order[len(order) // 2 :]
        calibration = calibrate_conformal(
            probs[cal], labels[cal], NAMES, alpha=alpha, method=method, class_conditional=class_conditional
        )
        result = set_coverage(calibration.predict_sets(probs[test]), labels[test], NAMES)
        coverages.append(result["coverage"])
        per_class.append([result["per_class"][c]["coverage"] for c in NAMES])
    return float(np.mean(coverages)), np.nanmean(np.array(per_class), axis=0)


@settings(max_examples=12)
@given(
    seed=st.integers(0, 2**31),
    alpha=st.sampled_from([0.05, 0.1, 0.2]),
    method=st.sampled_from(["lac", "aps"]),
    class_conditional=st.booleans(),
)
def test_held_out_coverage_is_at_least_one_minus_alpha(seed, alpha, method, class_conditional):
    probs, labels = _posteriors(800, seed)
    mean, per_class = _held_out_coverage(
        probs, labels, alpha=alpha, method=method, class_conditional=class_conditional, splits=30, seed=seed + 1
    )
    assert mean >= 1 - alpha - TOLERANCE
    if class_conditional:  # the Mondrian guarantee holds for each class (about 160 lesions each here)
        assert np.all(per_class >= 1 - alpha - 3 * TOLERANCE), per_class


def test_lac_is_not_needlessly_conservative():
    probs, labels = _posteriors(2000, 3)
    mean, _ = _held_out_coverage(probs, labels, alpha=0.1, method="lac", class_conditional=False, splits=30, seed=0)
    assert 0.9 - TOLERANCE <= mean <= 0.9 + 0.03


def test_class_conditional_sets_cover_a_rare_class_that_marginal_sets_miss():
    rng = np.random.default_rng(0)
    n = 3000
    labels = rng.choice(len(NAMES), size=n, p=[0.05, 0.35, 0.2, 0.35, 0.05])
    # a good model on the common classes that takes the rare class 0 for class 1
    predicted = np.where(labels == 0, 1, labels)
    probs = 0.3 * rng.dirichlet(np.full(len(NAMES), 0.6), size=n) + 0.7 * np.eye(len(NAMES))[predicted]
    split = n // 2
    marginal = calibrate_conformal(probs[:split], labels[:split], NAMES, alpha=0.1)
    mondrian = calibrate_conformal(probs[:split], labels[:split], NAMES, alpha=0.1, class_conditional=True)
    m = set_coverage(marginal.predict_sets(probs[split:]), labels[split:], NAMES)["per_class"]["AKIEC"]
    c = set_coverage(mondrian.predict_sets(probs[split:]), labels[split:], NAMES)["per_class"]["AKIEC"]
    assert c["coverage"] >= 0.9 - 3 * TOLERANCE
    assert m["coverage"] < 0.5


def test_split_conformal_evaluation_reports_held_out_coverage_per_class():
    probs, labels = _posteriors(600, 5)
    result = split_conformal_evaluation(probs, labels, NAMES, alpha=0.1, method="aps", n_splits=10)
    assert result["coverage"] >= 0.9 - TOLERANCE
    assert result["coverage_min"] <= result["coverage"]
    assert set(result["per_class"]) == set(NAMES)
    assert 1.0 <= result["mean_size"] <= len(NAMES)


def test_scores_by_hand():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    assert np.allclose(conformal_scores(p, "lac"), 1 - p)
    assert np.allclose(conformal_scores(p, "aps"), [[0.5, 0.8, 1.0], [0.9, 1.0, 0.8]])  # tie: lower index ranks first
    with pytest.raises(ValueError, match="method"):
        conformal_scores(p, "raps")


def test_quantile_is_the_finite_sample_one():
    # 9 calibration lesions, alpha 0.1: rank ceil(10 * 0.9) = 9 -> the largest score
    probs = np.array([[1 - s, s] for s in np.linspace(0.1, 0.9, 9)])
    calibration = calibrate_conformal(probs, np.zeros(9, dtype=int), ["a", "b"], alpha=0.1)
    assert calibration.thresholds[0] == pytest.approx(0.9)
    # 8 lesions: rank 9 > 8 -> every class in every set
    tiny = calibrate_conformal(probs[:8], np.zeros(8, dtype=int), ["a", "b"], alpha=0.1)
    assert math.isinf(tiny.thresholds[0]) and tiny.predict_sets(probs).all()
    assert tiny.always_included == ["a", "b"]


def test_calibration_round_trips_through_a_dict():
    probs, labels = _posteriors(200, 1)
    calibration = calibrate_conformal(probs, labels, NAMES, alpha=0.2, method="aps", class_conditional=True)
    again = ConformalCalibration.from_dict(calibration.to_dict())
    assert again == calibration
    assert (again.predict_sets(probs) == calibration.predict_sets(probs)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"alpha": 0.0}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"method": "x"}, "method")],
)
def test_bad_calibration_requests_are_refused(kwargs, match):
    probs, labels = _posteriors(20, 0)
    with pytest.raises(ValueError, match=match):
        calibrate_conformal(probs, labels, NAMES, **kwargs)


def test_sets_csv_is_written_beside_the_submission(tmp_path):
    assert sets_path(tmp_path / "sub.csv") == tmp_path / "sub.sets.csv"
    sets = np.array([[True, False, True, False, False], [False] * 5, [False, False, False, True, False]])
    path = write_prediction_sets(sets_path(tmp_path / "sub.csv"), ["IL_1", "IL_2", "IL_3"], sets, NAMES)
    rows = list(csv.reader(path.open()))
    assert rows == [["lesion_id", "prediction_set"], ["IL_1", "AKIEC|MEL"], ["IL_2", ""], ["IL_3", "NV"]]
    with pytest.raises(ValueError, match="shape"):
        write_prediction_sets(tmp_path / "x.csv", ["IL_1"], sets, NAMES)


# ------------------------------------------------------------------ selective prediction


def test_risk_coverage_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])  # confidence order 0, 1, 2, 3: right, wrong, right, wrong
    curve = risk_coverage(probs, labels)
    assert curve.coverage == (0.25, 0.5, 0.75, 1.0)
    assert curve.risk == pytest.approx((0.0, 0.5, 1 / 3, 0.5))
    assert curve.aurc == pytest.approx(np.mean([0.0, 0.5, 1 / 3, 0.5]))
    assert curve.e_aurc == pytest.approx(curve.aurc - np.mean([0.0, 0.0, 1 / 3, 0.5]))


def test_a_perfect_confidence_ranking_has_zero_excess_aurc():
    probs, labels = _posteriors(300, 2)
    wrong = probs.argmax(1) != labels
    probs = probs.copy()
    probs[wrong] = 0.6 * probs[wrong] + 0.4 / len(NAMES)  # flatten the wrong ones below every right one
    probs[~wrong] = 0.4 * probs[~wrong] + 0.6 * np.eye(len(NAMES))[probs[~wrong].argmax(1)]
    assert risk_coverage(probs, labels).e_aurc == pytest.approx(0.0, abs=1e-12)


def test_referral_metrics_are_isic_metrics_of_the_kept_lesions():
    probs, labels = _posteriors(100, 4)
    rows = referral_metrics(probs, labels, NAMES, fractions=(0.0, 0.1, 0.2, 0.3))
    assert [r["referred"] for r in rows] == [0, 10, 20, 30]
    kept = np.argsort(-probs.max(1), kind="stable")[:70]
    assert rows[3]["metrics"]["dice"] == isic_metrics(labels[kept], probs[kept], NAMES)["macro"]["dice"]
    assert rows[0]["metrics"]["dice"] == isic_metrics(labels, probs, NAMES)["macro"]["dice"]
    # referring the least confident lesions of a calibrated model raises its accuracy
    assert rows[3]["metrics"]["multiclass_accuracy"] > rows[0]["metrics"]["multiclass_accuracy"]


def test_referral_report_files(tmp_path):
    from fusionkit.evaluate.referral import referral_report, write_referral

    probs, labels = _posteriors(200, 8)
    report = referral_report(probs, labels, NAMES, alpha=0.1, n_splits=5)
    assert [(c["method"], c["class_conditional"]) for c in report["conformal"]] == [
        ("lac", False),
        ("lac", True),
        ("aps", False),
        ("aps", True),
    ]
    assert report["risk_coverage"]["aurc"] == risk_coverage(probs, labels).aurc
    paths = write_referral(report, tmp_path)
    assert json.loads(paths["json"].read_text())["referral"][1]["referred"] == 20
    text = paths["markdown"].read_text()
    assert "LAC, class-conditional" in text and "AURC" in text and "| 30% |" in text
    assert paths["figure"].read_bytes()[:4] == b"\x89PNG"
