"""The eager training step (autocast, eq-7 terms, clipping, zeroing) and the plain helpers of the
CUDA-graph step, on the CPU. ``CudaGraphStep`` itself needs a CUDA device and is not run here."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fusionkit.losses import LossBreakdown
from fusionkit.train.step import CudaGraphStep, EagerStep, _clone_static, _copy_into


class Recorder(torch.nn.Module):
    """A linear model that records the autocast state each forward ran under."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 2)
        self.unused = torch.nn.Parameter(torch.ones(2))
        self.seen: list[tuple[bool, torch.dtype, bool]] = []

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        self.seen.append(
            (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_autocast_cache_enabled())
        )
        return self.linear(batch["x"])


def toy_loss(out: torch.Tensor, label: torch.Tensor) -> LossBreakdown:
    """A stand-in for eq 7: total = 2 * final + joint, where final = CE and joint = mean square."""
    final = torch.nn.functional.cross_entropy(out.float(), label)
    joint = out.float().pow(2).mean()
    return LossBreakdown(total=2 * final + joint, final=final, terms={"joint": joint, "image": final * 0})


def batch() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    return {"x": torch.randn(4, 3, generator=gen) * 5, "label": torch.tensor([0, 1, 1, 0])}


def make_step(model: Recorder, **kwargs: Any) -> EagerStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    return EagerStep(model=model, loss_fn=toy_loss, optimizer=optimizer, device=torch.device("cpu"), **kwargs)


@pytest.mark.trains
def test_eager_step_returns_the_detached_total_and_records_each_term() -> None:
    model = Recorder()
    expected = toy_loss(model.linear(batch()["x"]), batch()["label"])
    step = make_step(model, bf16=False)
    assert step.terms == {} and step.grad_clip is None
    loss = step(batch())
    assert not loss.requires_grad and loss.item() == pytest.approx(expected.total.item(), abs=1e-6)
    assert list(step.terms) == ["final", "joint", "image"]
    assert step.terms["final"].item() == pytest.approx(expected.final.item(), abs=1e-6)
    assert step.terms["joint"].item() == pytest.approx(expected.terms["joint"].item(), abs=1e-6)
    assert not any(t.requires_grad for t in step.terms.values())
    assert model.seen == [(False, torch.bfloat16, True)]  # fp32: no autocast


@pytest.mark.trains
def test_bf16_runs_the_forward_under_bfloat16_autocast_with_the_cache_as_asked() -> None:
    model = Recorder()
    step = make_step(model, bf16=True)
    default = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)  # as on CUDA, where autocast's default is float16
    try:
        step(batch())
        step._forward_backward(batch(), cache=False)  # the graph capture's warm-up and capture
    finally:
        torch.set_autocast_dtype("cpu", default)
    assert model.seen == [(True, torch.bfloat16, True), (True, torch.bfloat16, False)]


@pytest.mark.trains
def test_the_step_zeroes_gradients_to_none_and_applies_the_optimizer() -> None:
    model = Recorder()
    model.unused.grad = torch.ones(2)  # a stale gradient of a parameter the forward does not use
    before = model.linear.weight.detach().clone()
    step = make_step(model, bf16=False)
    step(batch())
    assert model.unused.grad is None  # set to None, not zeros (AdamW would still decay it)
    assert torch.equal(model.unused.detach(), torch.ones(2))
    # SGD with lr 1: the weights moved by exactly their gradient
    assert torch.allclose(model.linear.weight.detach(), before - model.linear.weight.grad, atol=1e-6)


@pytest.mark.trains
def test_gradients_are_clipped_to_the_norm_over_the_clip_parameters() -> None:
    model = Recorder()
    step = make_step(model, bf16=False, grad_clip=0.25)
    step._forward_backward(batch())
    grads = [p.grad for p in model.linear.parameters()]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() == pytest.approx(0.25, rel=1e-5)
    # only the parameters clip_parameters names are clipped
    model = Recorder()
    step = make_step(model, bf16=False, grad_clip=0.25, clip_parameters=lambda: [model.linear.bias])
    step._forward_backward(batch())
    assert model.linear.bias.grad.norm().item() == pytest.approx(0.25, rel=1e-5)
    assert model.linear.weight.grad.norm().item() > 1.0
    unclipped = Recorder()
    make_step(unclipped, bf16=False)._forward_backward(batch())
    assert torch.equal(unclipped.linear.weight.grad, model.linear.weight.grad)


def test_clone_static_copies_tensors_in_nested_dicts_and_keeps_other_values() -> None:
    source = {"a": torch.tensor([1.0, 2.0]), "present": {"clinical": torch.tensor([True, False])}, "n": 3}
    clone = _clone_static(source)
    assert clone["n"] == 3 and list(clone) == ["a", "present", "n"]
    assert torch.equal(clone["a"], source["a"]) and clone["a"].data_ptr() != source["a"].data_ptr()
    inner = clone["present"]["clinical"]
    assert torch.equal(inner, source["present"]["clinical"])
    assert inner.data_ptr() != source["present"]["clinical"].data_ptr()


def test_copy_into_fills_the_static_buffers_in_place_including_nested_dicts() -> None:
    static = {"a": torch.zeros(2), "present": {"clinical": torch.zeros(2, dtype=torch.bool)}, "n": 3}
    buffers = (static["a"], static["present"]["clinical"])
    _copy_into(static, {"a": torch.tensor([4.0, 5.0]), "present": {"clinical": torch.tensor([True, False])}, "n": 9})
    assert static["a"] is buffers[0] and static["present"]["clinical"] is buffers[1]
    assert static["a"].tolist() == [4.0, 5.0] and buffers[1].tolist() == [True, False]
    assert static["n"] == 3  # not a buffer: the graph never reads it


def test_the_graphed_step_refuses_a_cpu_device() -> None:
    model = Recorder()
    with pytest.raises(ValueError, match="^CudaGraphStep needs a CUDA device$"):
        CudaGraphStep(
            model=model,
            loss_fn=toy_loss,
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            device=torch.device("cpu"),
            bf16=False,
        )
