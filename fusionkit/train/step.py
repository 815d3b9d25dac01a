"""One optimisation step (forward, eq-7 loss, backward, AdamW), eager or captured in a CUDA graph.

At the paper's batch size 16 an eager step is launch-bound on a modern GPU: the CPU cannot issue
the thousands of small kernels of two EfficientNetV2 backbones as fast as the GPU runs them.
:class:`CudaGraphStep` captures forward, backward and the optimizer step once, on static input
buffers, and replays the graph for every batch of the same size; batches of another size (the
last, short batch of an epoch) run eagerly. The step never synchronises with the host: the loss
stays on the device until the caller reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from fusionkit.losses import JointIndividualLoss
from fusionkit.runtime.device import autocast_context


class EagerStep:
    """A plain training step; returns the detached total loss (a device tensor, no host sync)."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        loss_fn: JointIndividualLoss,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        bf16: bool,
        grad_clip: float | None = None,
        clip_parameters: Callable[[], Any] | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.device = device
        self.bf16 = bf16
        self.grad_clip = grad_clip
        self.clip_parameters = clip_parameters or model.parameters
        self.terms: dict[str, torch.Tensor] = {}
        """The last step's eq-7 terms (``final``, ``joint``, ``image``, ``meta``), detached."""

    def _forward_backward(self, batch: dict[str, Any], *, cache: bool = True) -> torch.Tensor:
        context: AbstractContextManager[Any]
        if self.bf16:
            context = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=cache)
        else:
            context = autocast_context(self.device, False)
        with context:
            out = self.model(batch)
        breakdown = self.loss_fn(out, batch["label"])
        # the eq-7 terms of this step, detached (a graphed step's static outputs: read before the next)
        self.terms = {"final": breakdown.final.detach(), **{k: v.detach() for k, v in breakdown.terms.items()}}
        loss = breakdown.total
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.clip_parameters(), self.grad_clip)
        return loss.detach()

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        """Train on one (device, normalised) batch; returns its loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_backward(batch)
        self.optimizer.step()
        return loss


def _clone_static(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone_static(v) for k, v in value.items()}
    return value


def _copy_into(static: Any, value: Any) -> None:
    if isinstance(static, torch.Tensor):
        static.copy_(value, non_blocking=True)
    elif isinstance(static, dict):
        for key, item in static.items():
            _copy_into(item, value[key])


class CudaGraphStep(EagerStep):
    """The whole step captured once in a CUDA graph and replayed per batch.

    Needs an optimizer built with ``capturable=True`` (AdamW with a tensor learning rate, so
    ReduceLROnPlateau's changes reach the graph). The capture follows PyTorch's whole-network
    recipe: three warm-up steps on a side stream, then capture. The warm-up steps' effect on the
    weights and on the optimizer state is undone, so the first real batch trains a fresh model.
    """

    warmup_steps = 3

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.device.type != "cuda":
            raise ValueError("CudaGraphStep needs a CUDA device")
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: dict[str, Any] | None = None
        self.static_loss: torch.Tensor | None = None
        self.batch_size: int | None = None

    def _capture(self, batch: dict[str, Any]) -> None:
        self.static_batch = _clone_static(batch)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        saved = [p.detach().clone() for p in params]
        buffers = [b.detach().clone() for b in self.model.buffers()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.optimizer.zero_grad(set_to_none=True)
                self._forward_backward(self.static_batch, cache=False)
                self.optimizer.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self._forward_backward(self.static_batch, cache=False)
            self.optimizer.step()
        self.static_terms = self.terms
        # undo the warm-up: weights, buffers and the optimizer state back to where they were
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
            for b, s in zip(self.model.buffers(), buffers, strict=True):
                b.copy_(s)
            for state in self.optimizer.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
        self.batch_size = batch["label"].shape[0]

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        """Replay the graph on this batch (or run eagerly for an odd-sized batch)."""
        size = batch["label"].shape[0]
        if self.graph is None:
            self._capture(batch)
        if size != self.batch_size:
            return super().__call__(batch)
        assert self.graph is not None and self.static_batch is not None and self.static_loss is not None  # captured
        _copy_into(self.static_batch, batch)
        self.graph.replay()
        self.terms = self.static_terms
        return self.static_loss.clone()
