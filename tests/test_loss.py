"""JointIndividualLoss (eq 7): the plain formula where it is finite, and finite where it is not."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import build_tiny, make_batch, presence_masks, tiny_spec
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fusionkit as fk
from fusionkit.specs import BRANCHES


class FixedHead(nn.Module):
    """A branch head whose logits the test sets (a parameter, so the loss's gradient reaches it)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(logits.clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.value + 0.0 * features[:, :1]


def _controlled_model(spec: fk.ModelSpec, logits: dict[str, torch.Tensor]) -> fk.FusionModel:
    model = build_tiny(spec).eval()
    for branch, z in logits.items():
        model.heads[branch] = FixedHead(z)
    return model


def _alpha64(model: fk.FusionModel, logits: dict[str, torch.Tensor], out: fk.FusionOutput) -> torch.Tensor:
    """The fusion weights in float64: eq 5 for adf, 1/K for average (over the present branches).

    Recomputed rather than read from ``out.weights``: a float32 weight can be subnormal (alpha ~ 1e-43
    when the gate reads logits of 1e3), too coarse to check a loss against.
    """
    branches = model.spec.decision_branches
    mask = torch.stack([out.present[b] for b in branches], dim=1)
    if model.spec.decision.kind == "average":
        return mask.double() / mask.sum(1, keepdim=True)
    gate = copy.deepcopy(model.decision.gate).double()
    s = torch.cat([logits[b] * mask[:, i : i + 1] for i, b in enumerate(branches)], dim=1)
    with torch.no_grad():
        return gate(s).masked_fill(~mask, float("-inf")).softmax(-1)


def _plain_loss(out: fk.FusionOutput, target: torch.Tensor, spec: fk.ModelSpec, model: fk.FusionModel) -> float:
    """Eq 7 written plainly, in float64: -log(sum_k alpha_k softmax(z_k)[y]) + sum lambda_k CE_k."""
    weights = spec.loss.class_weights
    weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    rows = torch.arange(len(target))

    def mean(values: torch.Tensor, mask: torch.Tensor) -> float:
        w = torch.ones(len(target), dtype=torch.float64) if weights is None else weights[target]
        w = w * mask
        return float((w * values).sum() / w.sum()) if mask.any() else 0.0

    branches = spec.decision_branches
    logits = {b: z.detach().double() for b, z in out.logits.items()}
    posteriors = {b: z.softmax(-1) for b, z in logits.items()}
    if out.weights is None:
        mix = posteriors[branches[0]][rows, target]
    else:
        alpha = _alpha64(model, logits, out)
        mix = sum(alpha[:, i] * posteriors[b][rows, target] for i, b in enumerate(branches))
    everyone = torch.ones(len(target), dtype=torch.bool)
    total = mean(-torch.log(mix), everyone)
    for branch, lam in (
        ("joint", spec.loss.lambda_joint),
        ("image", spec.loss.lambda_image),
        ("meta", spec.loss.lambda_meta),
    ):
        if lam > 0:
            ce = -torch.log(posteriors[branch][rows, target])
            total += lam * mean(ce, out.present[branch])
    return total


@st.composite
def loss_cases(draw):
    batch = draw(st.integers(1, 4))
    classes = draw(st.integers(2, 5))
    scale = draw(st.sampled_from([1.0, 10.0, 100.0, 1e3, 1e4]))
    logit = st.floats(-scale, scale, allow_nan=False, width=32)
    logits = {
        b: torch.tensor(
            draw(st.lists(st.lists(logit, min_size=classes, max_size=classes), min_size=batch, max_size=batch))
        )
        for b in BRANCHES
    }
    return {
        "batch": batch,
        "classes": classes,
        "logits": logits,
        "target": torch.tensor(draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch))),
        "present": draw(presence_masks(("derm", "clinical", "meta"), batch)),
        "decision": draw(st.sampled_from(["adf", "average"])),
        "lambdas": draw(st.sampled_from([(0.5, 0.25, 0.25), (0.0, 0.0, 0.0), (1.0, 0.0, 2.0)])),
        "class_weights": draw(st.none() | st.lists(st.floats(0.1, 5.0), min_size=classes, max_size=classes)),
    }


@settings(max_examples=40)
@given(case=loss_cases())
def test_loss_is_finite_and_equals_the_plain_formula(case):
    joint, image, meta = case["lambdas"]
    spec = tiny_spec(
        num_classes=case["classes"],
        decision={"kind": case["decision"]},
        loss={
            "lambda_joint": joint,
            "lambda_image": image,
            "lambda_meta": meta,
            "class_weights": case["class_weights"],
        },
    )
    model = _controlled_model(spec, case["logits"])
    out = model(make_batch(spec, case["batch"], present=case["present"]))
    for b in BRANCHES:
        assert torch.equal(out.logits[b], case["logits"][b])
    loss = fk.JointIndividualLoss.from_spec(spec.loss)(out, case["target"])
    assert torch.isfinite(loss.total) and torch.isfinite(loss.final)
    assert set(loss.terms) == {b for b, lam in zip(("joint", "image", "meta"), case["lambdas"], strict=True) if lam > 0}

    loss.total.backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name
    for b in BRANCHES:
        assert model.heads[b].value.grad is not None

    plain = _plain_loss(out, case["target"], spec, model)
    if math.isfinite(plain):
        assert loss.total.item() == pytest.approx(plain, rel=1e-5, abs=1e-3)


def test_confidently_wrong_branches_give_a_finite_large_loss():
    """Every branch puts all its mass on the wrong class: the plain float formula is inf, eq 7 is not."""
    spec = tiny_spec(num_classes=2, decision={"kind": "adf"})
    z = torch.tensor([[1e4, -1e4]])
    model = _controlled_model(spec, {b: z for b in BRANCHES})
    out = model(make_batch(spec, 1))
    target = torch.tensor([1])
    plain32 = -torch.log((out.weights[0] * torch.stack([z.softmax(-1)[0, 1]] * 3)).sum())
    assert torch.isinf(plain32)
    loss = fk.JointIndividualLoss.from_spec(spec.loss)(out, target)
    # log P_final[y] = logsumexp_k(log alpha_k - 2e4) = -2e4 exactly; each CE term is 2e4 too
    assert loss.final.item() == pytest.approx(2e4, rel=1e-6)
    assert loss.total.item() == pytest.approx(2e4 * (1 + 0.5 + 0.25 + 0.25), rel=1e-6)
    loss.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(model.heads["joint"].value.grad).all()


# -- the terms, on hand-built outputs ------------------------------------------------------------------
def _output(
    logits: dict[str, torch.Tensor], log_probs: torch.Tensor, present: dict[str, torch.Tensor] | None = None
) -> fk.FusionOutput:
    b = log_probs.shape[0]
    present = present or {k: torch.ones(b, dtype=torch.bool) for k in logits}
    return fk.FusionOutput(probs=log_probs.exp(), log_probs=log_probs, logits=logits, weights=None, present=present)


def test_terms_are_the_cross_entropies_of_eq_4():
    torch.manual_seed(0)
    logits = {b: torch.randn(6, 4) for b in BRANCHES}
    log_probs = torch.randn(6, 4).log_softmax(-1)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = fk.JointIndividualLoss(lambda_joint=0.5, lambda_image=0.25, lambda_meta=0.75)(
        _output(logits, log_probs), target
    )
    rows = torch.arange(6)
    ce = {b: -logits[b].log_softmax(-1)[rows, target].mean() for b in BRANCHES}
    final = -log_probs[rows, target].mean()
    torch.testing.assert_close(loss.final, final)
    for b in BRANCHES:
        torch.testing.assert_close(loss.terms[b], ce[b])
    torch.testing.assert_close(loss.total, final + 0.5 * ce["joint"] + 0.25 * ce["image"] + 0.75 * ce["meta"])


def test_zero_lambdas_leave_only_the_final_term():
    logits = {b: torch.randn(3, 2) for b in BRANCHES}
    log_probs = torch.randn(3, 2).log_softmax(-1)
    target = torch.tensor([1, 0, 1])
    loss = fk.JointIndividualLoss(lambda_joint=0, lambda_image=0, lambda_meta=0)(_output(logits, log_probs), target)
    assert loss.terms == {}
    assert torch.equal(loss.total, loss.final)


def test_auxiliary_terms_average_over_samples_that_have_the_branch():
    torch.manual_seed(1)
    logits = {b: torch.randn(4, 3) for b in BRANCHES}
    log_probs = torch.randn(4, 3).log_softmax(-1)
    target = torch.tensor([2, 0, 1, 1])
    present = {
        "image": torch.tensor([True, False, True, False]),
        "joint": torch.ones(4, dtype=torch.bool),
        "meta": torch.zeros(4, dtype=torch.bool),
    }
    loss = fk.JointIndividualLoss()(_output(logits, log_probs, present), target)
    ce_image = -logits["image"].log_softmax(-1)[[0, 2], target[[0, 2]]].mean()
    torch.testing.assert_close(loss.terms["image"], ce_image)
    assert float(loss.terms["meta"]) == 0.0  # no sample has metadata
    assert torch.isfinite(loss.total)


def test_class_weights_weight_every_term():
    torch.manual_seed(2)
    weights = torch.tensor([1.0, 3.0, 0.5])
    logits = {b: torch.randn(5, 3) for b in BRANCHES}
    log_probs = torch.randn(5, 3).log_softmax(-1)
    target = torch.tensor([0, 1, 1, 2, 0])
    loss = fk.JointIndividualLoss(class_weights=weights)(_output(logits, log_probs), target)
    w = weights[target]
    rows = torch.arange(5)
    torch.testing.assert_close(loss.final, (w * -log_probs[rows, target]).sum() / w.sum())
    for branch in BRANCHES:  # every auxiliary CE term of eq 7 is weighted too
        ce = (w * -logits[branch].log_softmax(-1)[rows, target]).sum() / w.sum()
        torch.testing.assert_close(loss.terms[branch], ce)


def test_from_spec_mirrors_the_loss_spec():
    spec = fk.specs.LossSpec(lambda_joint=0.1, lambda_image=0.0, lambda_meta=2.0, class_weights=(1, 2))
    loss = fk.JointIndividualLoss.from_spec(spec)
    assert loss.lambdas == {"joint": 0.1, "image": 0.0, "meta": 2.0}
    assert torch.equal(loss.class_weights, torch.tensor([1.0, 2.0]))
    paper = {"joint": 0.5, "image": 0.25, "meta": 0.25}  # the paper's weights (eq 7)
    assert fk.JointIndividualLoss.from_spec(fk.specs.LossSpec()).lambdas == paper
    assert fk.JointIndividualLoss().lambdas == paper
    # class weights are configuration (the spec), not state: checkpoints never carry them
    assert loss.state_dict() == {}


def test_single_decision_model_loss():
    spec = tiny_spec(decision={"kind": "single"}, loss={"lambda_joint": 0, "lambda_image": 0.5, "lambda_meta": 0})
    torch.manual_seed(0)
    logits = {"joint": torch.randn(3, 5), "image": torch.randn(3, 5)}
    model = _controlled_model(spec, logits)
    out = model(make_batch(spec, 3))
    target = torch.tensor([4, 0, 2])
    loss = fk.JointIndividualLoss.from_spec(spec.loss)(out, target)
    assert loss.total.item() == pytest.approx(_plain_loss(out, target, spec, model), rel=1e-5)
    assert set(loss.terms) == {"image"}
