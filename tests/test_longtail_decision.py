"""Long-tail loss options, decision rules and test-time augmentation, without training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny, make_batch, tiny_spec
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import fusionkit as fk
from fusionkit.data import CLASS_NAMES
from fusionkit.inference.decision import (
    _dice_by_threshold,
    apply_decision,
    fit_thresholds,
    one_hot_argmax,
    rescale,
)
from fusionkit.losses import cross_entropy
from fusionkit.metrics import isic_metrics, macro_f1_argmax
from fusionkit.runtime.predict import predict
from fusionkit.runtime.tta import tta_views, view_batch


def _case(seed: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(n, k, generator=g, dtype=torch.float64)).log_softmax(-1), torch.randint(
        0, k, (n,), generator=g
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), k=st.integers(2, 6), weighted=st.booleans())
def test_focal_gamma_zero_and_one_hot_targets_equal_weighted_ce(seed, n, k, weighted):
    log_probs, target = _case(seed, n, k)
    w = torch.rand(k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.1 if weighted else None
    expected = F.nll_loss(log_probs, target, weight=w)
    assert torch.allclose(cross_entropy(log_probs, target, class_weights=w, focal_gamma=0.0), expected)
    soft = F.one_hot(target, k).double()
    assert torch.allclose(cross_entropy(log_probs, soft, class_weights=w), expected)


def test_label_smoothing_logit_adjustment_and_focal_match_their_definitions():
    log_probs, target = _case(1, 7, 4)
    assert torch.allclose(
        cross_entropy(log_probs, target, label_smoothing=0.2), F.cross_entropy(log_probs, target, label_smoothing=0.2)
    )
    prior = torch.tensor([0.7, 0.2, 0.05, 0.05], dtype=torch.float64)
    assert torch.allclose(
        cross_entropy(log_probs, target, log_prior=prior.log(), logit_adjustment=1.5),
        F.cross_entropy(log_probs + 1.5 * prior.log(), target),
    )
    p = log_probs.exp()[torch.arange(7), target]
    focal = (-((1 - p) ** 2) * p.log()).mean()
    assert torch.allclose(cross_entropy(log_probs, target, focal_gamma=2.0), focal)
    # a mask drops samples; soft targets mix the per-class losses
    mask = torch.tensor([1, 0, 1, 0, 1, 0, 1], dtype=torch.bool)
    assert torch.allclose(cross_entropy(log_probs, target, mask=mask), F.nll_loss(log_probs[mask], target[mask]))
    soft = torch.full((7, 4), 0.25, dtype=torch.float64)
    assert torch.allclose(cross_entropy(log_probs, soft), -log_probs.mean(1).mean())


def test_loss_spec_options_reach_every_term():
    spec = tiny_spec(
        loss={"focal_gamma": 2.0, "label_smoothing": 0.1, "logit_adjustment": 1.0, "class_prior": [0.5, 0.3, 0.2]},
        num_classes=3,
    )
    model = build_tiny(spec).eval()
    batch = make_batch(spec, 5)
    label = torch.tensor([0, 2, 1, 1, 0])
    out = model(batch)
    loss = fk.JointIndividualLoss.from_spec(spec.loss)(out, label)
    log_prior = torch.tensor([0.5, 0.3, 0.2]).log()
    kw = dict(focal_gamma=2.0, label_smoothing=0.1, log_prior=log_prior, logit_adjustment=1.0)
    assert torch.allclose(loss.final, cross_entropy(out.log_probs, label, **kw))
    for branch, term in loss.terms.items():
        expected = cross_entropy(out.logits[branch].log_softmax(-1), label, mask=out.present[branch], **kw)
        assert torch.allclose(term, expected), branch
    with pytest.raises(fk.ConfigError, match="class_prior"):
        fk.JointIndividualLoss(logit_adjustment=1.0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 60), sharp=st.floats(0.3, 4.0))
def test_fitted_thresholds_never_lower_macro_dice_and_keep_auc(seed, n, sharp):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASS_NAMES), n)
    logits = sharp * rng.normal(size=(n, len(CLASS_NAMES)))
    logits[np.arange(n), labels] += rng.normal(1.0, 1.0, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    thresholds = fit_thresholds(labels, probs)
    plain = isic_metrics(labels, probs, CLASS_NAMES)["macro"]
    fitted = isic_metrics(labels, apply_decision(probs, "thresholds", thresholds=thresholds), CLASS_NAMES)["macro"]
    assert fitted["dice"] >= plain["dice"] - 1e-12
    assert fitted["auc"] == pytest.approx(plain["auc"], nan_ok=True)
    # the rescaling puts each threshold on the official 0.5
    r = rescale(probs, thresholds)
    assert np.array_equal(r > 0.5, probs > np.asarray(thresholds)[None, :]) and r.min() >= 0 and r.max() <= 1


def test_fit_thresholds_pins_a_known_case_and_argmax_is_one_hot():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.45, 0.55], [0.40, 0.60], [0.30, 0.70], [0.10, 0.90]])
    # class 0 needs a threshold below 0.4 to catch both positives; class 1 above 0.6
    t = fit_thresholds(labels, probs)
    assert t == pytest.approx((0.35, 0.65))
    assert np.array_equal(apply_decision(probs, "argmax"), np.array([[0, 1], [0, 1], [0, 1], [0, 1.0]]))
    assert macro_f1_argmax(labels, probs) == pytest.approx((0 + 2 / 3) / 2)
    assert fit_thresholds(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]])) == (0.5, 0.5)  # 0.5 kept on ties
    with pytest.raises(ValueError, match="unknown decision rule"):
        apply_decision(probs, "vote")


def test_tta_views_form_the_dihedral_group_and_move_both_images():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert len({tuple(view_batch({"derm": x}, v)["derm"].flatten().tolist()) for v in tta_views("d4")}) == 8
    assert tta_views("flips") == ("identity", "hflip", "vflip", "rot180")
    moved = view_batch({"derm": x, "clinical": x + 1, "meta": torch.ones(1, 2)}, "rot90")
    assert torch.equal(moved["clinical"], moved["derm"] + 1) and torch.equal(moved["meta"], torch.ones(1, 2))
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        tta_views("d8")


class _Symmetrised(torch.nn.Module):
    """A model made invariant to the dihedral group: it sees the mean image over the 8 views."""

    def __init__(self, model: fk.FusionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):
        sym = {m: torch.stack([view_batch(batch, v)[m] for v in tta_views("d4")]).mean(0) for m in ("derm", "clinical")}
        return self.model({**batch, **sym})


def test_tta_of_an_invariant_model_changes_nothing_and_averages_the_views():
    spec = tiny_spec()
    model = build_tiny(spec)
    batch = make_batch(spec, 4)
    batch["lesion_id"] = [f"IL_{i}" for i in range(4)]
    run = lambda m, tta: predict(m, [batch], device=torch.device("cpu"), tta=tta)  # noqa: E731
    invariant = _Symmetrised(model)
    for tta in ("flips", "d4"):
        assert np.allclose(run(invariant, tta).probs, run(invariant, "none").probs, atol=1e-6)
    # a plain model: TTA is the mean posterior over the views (and differs from no TTA)
    flips = run(model, "flips")
    manual = np.mean([run(_Viewed(model, v), "none").probs for v in tta_views("flips")], axis=0)
    assert np.allclose(flips.probs, manual, atol=1e-6)
    assert not np.allclose(flips.probs, run(model, "none").probs, atol=1e-4)
    assert np.allclose(np.exp(flips.log_probs), flips.probs, atol=1e-6)


class _Viewed(torch.nn.Module):
    def __init__(self, model: fk.FusionModel, view: str) -> None:
        super().__init__()
        self.model, self.view = model, view

    def forward(self, batch):
        return self.model(view_batch(batch, self.view))


def test_rescale_pins_both_pieces():
    r = rescale(np.array([[0.2, 0.9], [0.7, 0.3]]), [0.4, 0.6])
    # low piece 0.5 p / t; high piece 0.5 + 0.5 (p - t) / (1 - t)
    assert r == pytest.approx(np.array([[0.25, 0.875], [0.75, 0.25]]), rel=1e-12)


def test_rescale_and_one_hot_compute_in_float64_whatever_the_input_dtype():
    # a float32 threshold's 1 - t and a float32 subnormal's 0.5 p round differently in float32
    probs = np.array([[2.0**-149, 0.65]], dtype=np.float32)
    thresholds = np.array([0.5, 0.35], dtype=np.float32)
    r = rescale(probs, thresholds)
    assert r.dtype == np.float64
    assert np.array_equal(r, rescale(probs.astype(np.float64), thresholds.astype(np.float64).tolist()))
    assert r[0, 0] == 2.0**-149  # a threshold of 0.5 leaves the value unchanged
    votes = one_hot_argmax(np.array([[1, 3, 2], [4, 0, 4]]))
    assert votes.dtype == np.float64 and np.array_equal(votes, [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_macro_f1_argmax_averages_over_the_true_classes_only():
    # class 2 is predicted once but never true: it does not enter the mean
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]])
    assert macro_f1_argmax(np.array([0, 0, 1]), probs) == pytest.approx((2 / 3 + 1.0) / 2)


def test_rescale_clips_float_noise_outside_zero_one():
    r = rescale(np.array([[-1e-9, 1.0 + 1e-9]]), [0.3, 0.3])
    assert r.tolist() == [[0.0, 1.0]]


def test_dice_by_threshold_counts_scores_strictly_above():
    truth = np.array([True, False, True, False])
    scores = np.array([0.2, 0.5, 0.8, 0.5])
    # t = 0.5: {0.8} (0.5 itself is not above); 0.8: nothing; 0.1: all four; 0.2: {0.5, 0.5, 0.8}
    dice = _dice_by_threshold(truth, scores, np.array([0.5, 0.8, 0.1, 0.2]))
    assert dice == pytest.approx([2 / 3, 0.0, 4 / 6, 2 / 5], rel=1e-12)
    # no positive and nothing predicted: 2TP + FP + FN = 0 counts as a perfect 1.0
    none = _dice_by_threshold(np.array([False, False]), np.array([0.3, 0.6]), np.array([0.6, 0.4]))
    assert none.tolist() == [1.0, 0.0]


def test_fit_thresholds_candidates_and_ties():
    # class 1: 0.15 and 0.75 tie at Dice 2/3 (0.5 gives 1/2): the one nearest 0.5 wins
    s = np.array([0.8, 0.1, 0.7, 0.2, 0.5])
    assert fit_thresholds(np.array([1, 0, 0, 1, 0]), np.stack([1 - s, s], 1)) == pytest.approx((0.25, 0.75))
    # predicting every row (just below the lowest score) and none (the top score) are candidates
    t = fit_thresholds(np.array([0, 0]), np.array([[0.2, 0.6], [0.3, 0.7]]))
    assert t == pytest.approx((0.2 - 1e-6, 0.7), abs=1e-15)
    # but thresholds stay in [1e-6, 1 - 1e-6]: scores of exactly 0 and 1 cannot be split off
    assert fit_thresholds(np.array([0, 0]), np.array([[0.0, 1.0], [0.0, 1.0]])) == (0.5, 0.5)


def test_fit_thresholds_and_apply_decision_compute_in_float64():
    s = np.array([0.8, 0.1, 0.7, 0.2, 0.5, 0.3], dtype=np.float32)
    probs = np.stack([1 - s, s], 1)
    labels = np.array([1, 0, 0, 1, 0, 1])
    assert fit_thresholds(labels, probs) == fit_thresholds(labels, probs.astype(np.float64))
    for p in (probs, probs.astype(np.float64)):
        out = apply_decision(p, "probs")
        assert out.dtype == np.float64 and np.array_equal(out, probs.astype(np.float64))


def test_apply_decision_thresholds_rule_rescales_and_checks_its_thresholds():
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    out = apply_decision(probs, "thresholds", thresholds=[0.4, 0.6])
    assert np.array_equal(out, rescale(probs, [0.4, 0.6])) and not np.array_equal(out, probs)
    for bad in (None, [0.5], [0.5, 0.5, 0.5]):
        with pytest.raises(ValueError) as info:
            apply_decision(probs, "thresholds", thresholds=bad)
        assert str(info.value) == "the thresholds rule needs one threshold per class (2)"
    with pytest.raises(ValueError) as info:
        apply_decision(probs, "vote")
    assert str(info.value) == "unknown decision rule 'vote'; expected one of probs, argmax, thresholds"
