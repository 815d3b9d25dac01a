"""An exponential moving average (EMA) of the model's weights, evaluated and saved in their place.

Own code rather than ``torch.optim.swa_utils.AveragedModel``: its update branches on a device
counter (a host sync every step on a GPU) and copies on the first call; here the average starts
from the initial weights and each update is one ``torch._foreach_lerp_`` over the floating-point
tensors, with no host sync. With ``train.step_mode: cuda_graph`` the update runs eagerly after
each graph replay (it reads the parameters the replay has just written), not inside the graph.
"""

from __future__ import annotations

import copy
from typing import Any, Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class ModelEma(nn.Module, Generic[M]):
    """``W_ema <- decay * W_ema + (1 - decay) * W`` after every optimizer step.

    Floating-point parameters and buffers (BatchNorm running statistics) are averaged; integer
    buffers (``num_batches_tracked``) are copied. ``module`` is a frozen copy of the model in eval
    mode holding the averaged weights; ``state_dict()`` is that copy's.
    """

    module: M
    """The frozen copy holding the averaged weights (the model's own class)."""

    def __init__(self, *, model: M, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1); got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def _pairs(
        self, model: nn.Module
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        ema = [*self.module.parameters(), *self.module.buffers()]
        live = [*model.parameters(), *model.buffers()]
        if len(ema) != len(live):
            raise ValueError("the EMA copy and the model have different tensors")
        floats = [(e, w) for e, w in zip(ema, live, strict=True) if e.is_floating_point()]
        others = [(e, w) for e, w in zip(ema, live, strict=True) if not e.is_floating_point()]
        return [e for e, _ in floats], [w.detach() for _, w in floats], others

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights (unwrapped, not DDP)."""
        ema, live, others = self._pairs(model)
        if ema:
            torch._foreach_lerp_(ema, live, 1.0 - self.decay)
        for e, w in others:
            e.copy_(w)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D401 - nn.Module protocol
        """The averaged model's forward."""
        return self.module(*args, **kwargs)
