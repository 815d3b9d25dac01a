"""Plugins are first-class in the spec checks: a plugin decision head and a plugin fusion block,
registered after fusionkit is imported, pass (and fail) the same checks as the built-ins."""

from __future__ import annotations

from typing import ClassVar, Literal

import pydantic
import pytest
import torch
from conftest import build_tiny, make_batch, temporary_registrations, tiny_spec
from pydantic import PositiveInt
from torch import nn

import fusionkit as fk
from fusionkit.runtime.config import RunConfig


class JointMetaVoteSpec(fk.specs.DecisionSpec):
    """A plugin decision that averages the joint and metadata posteriors, and needs both."""

    kind: Literal["joint_meta_vote"] = "joint_meta_vote"
    required_branches: ClassVar[tuple[str, ...]] = ("joint", "meta")
    requirement: ClassVar[str] = "votes between the joint and metadata heads"

    def decision_branches(self, available: tuple[str, ...]) -> tuple[str, ...]:
        return ("joint", "meta")


class JointMetaVote(nn.Module):
    def __init__(self, *, num_classes: int, branches: tuple[str, ...]) -> None:
        super().__init__()
        self.branches = branches

    def forward(self, logits: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return torch.zeros(present.shape).masked_fill(~present, float("-inf")).log_softmax(dim=-1)


class ImageOnlyVoteSpec(fk.specs.DecisionSpec):
    """A plugin decision that trusts the image head alone (one branch)."""

    kind: Literal["image_only_vote"] = "image_only_vote"
    has_weights: ClassVar[bool] = False

    def decision_branches(self, available: tuple[str, ...]) -> tuple[str, ...]:
        return ("image",)


class ImageOnlyVote(nn.Module):
    def __init__(self, *, num_classes: int, branches: tuple[str, ...]) -> None:
        super().__init__()

    def forward(self, logits: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return torch.zeros(present.shape)


class ProductFusionSpec(fk.specs.FusionSpec):
    """A plugin fusion block: the elementwise product of two projections."""

    kind: Literal["product"] = "product"
    out_dim: PositiveInt = 6


class ProductFusion(nn.Module):
    def __init__(self, *, image_dim: int, meta_dim: int, out_dim: int) -> None:
        super().__init__()
        self.image, self.meta = nn.Linear(image_dim, out_dim), nn.Linear(meta_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, f_image: torch.Tensor, f_meta: torch.Tensor) -> torch.Tensor:
        return self.image(f_image) * self.meta(f_meta)


@pytest.fixture
def plugins(registrations):
    fk.register("decision", JointMetaVoteSpec, JointMetaVote)
    fk.register("decision", ImageOnlyVoteSpec, ImageOnlyVote)
    fk.register("fusion", ProductFusionSpec, ProductFusion)


def _reason(**fields) -> str:
    with pytest.raises(pydantic.ValidationError) as info:
        tiny_spec(**fields)
    assert len(info.value.errors()) == 1, str(info.value)
    return str(info.value)


def test_plugin_decision_and_fusion_build_and_decide_as_declared(plugins):
    spec = tiny_spec(fusion={"kind": "product", "out_dim": 6}, decision={"kind": "joint_meta_vote"})
    assert spec.decision_branches == ("joint", "meta")
    assert spec.head_branches == ("image", "joint", "meta")  # eq 7 still supervises the image head
    model = build_tiny(spec).eval()
    out = model(make_batch(spec, 3, seed=2))
    expected = 0.5 * (out.logits["joint"].softmax(-1) + out.logits["meta"].softmax(-1))
    torch.testing.assert_close(out.probs, expected)
    torch.testing.assert_close(out.weights, torch.tensor([[0.0, 0.5, 0.5]] * 3))
    # the spec (with plugin kinds) round-trips through YAML, and a run config registered-after takes it
    assert fk.ModelSpec.from_yaml(spec.to_yaml()) == spec
    assert RunConfig.model_validate({"model": spec.to_dict()}).model.decision == JointMetaVoteSpec()


def test_plugin_decision_requirements_are_checked_like_adf(plugins):
    text = _reason(fusion=None, decision={"kind": "joint_meta_vote"}, loss={"lambda_joint": 0})
    assert (
        "the 'joint_meta_vote' decision votes between the joint and metadata heads, so it needs "
        "'meta' and a fusion block; this model has only ['image', 'meta']"
    ) in text
    # the built-in adf states its needs the same way
    text = _reason(fusion=None, loss={"lambda_joint": 0})
    assert "the 'adf' decision (eq 5) weighs the image, joint and metadata branches, so it needs" in text


def test_one_branch_plugin_decision_without_fusion_is_refused_like_single(plugins):
    text = _reason(fusion=None, decision={"kind": "image_only_vote"}, loss={"lambda_joint": 0})
    assert "the 'image_only_vote' decision uses only ['image']: a single head cannot see both groups" in text
    # with images alone the same plugin is fine
    spec = tiny_spec(
        modalities=["derm"],
        fusion=None,
        decision={"kind": "image_only_vote"},
        loss={"lambda_joint": 0, "lambda_meta": 0},
    )
    assert spec.decision_branches == ("image",) and spec.head_branches == ("image",)


def test_plugin_fusion_is_checked_like_mmfa(plugins):
    text = _reason(modalities=["meta"], fusion={"kind": "product"}, decision={"kind": "single", "branch": "meta"})
    assert "fusion 'product' fuses image and metadata features, but the model only uses metadata" in text
    text = _reason(fusion={"kind": "product", "out_dim": 0})
    assert "fusion.product.out_dim" in text and "greater than 0" in text


def test_plugin_kinds_are_rejected_again_once_unregistered():
    with temporary_registrations():
        fk.register("fusion", ProductFusionSpec, ProductFusion)
        assert tiny_spec(fusion={"kind": "product"}).fusion == ProductFusionSpec()
    text = _reason(fusion={"kind": "product"})
    assert "'product'" in text and "'mmfa'" in text and "does not match any of the expected tags" in text


def test_min_branches_is_checked_for_every_decision(plugins):
    text = _reason(
        modalities=["clinical"], fusion=None, decision={"kind": "average"}, loss={"lambda_joint": 0, "lambda_meta": 0}
    )
    assert "the 'average' decision needs at least two branches; this model has ['image']" in text
