"""An exponential moving average (EMA) of the model's weights, evaluated and saved in their place.

timm's ``ModelEmaV3``: the average starts from the initial weights and each update is one
``torch._foreach_lerp_`` over the floating-point tensors of the state dict (integer buffers are
copied), with no host sync. With ``train.step_mode: cuda_graph`` the update runs eagerly after each
graph replay (it reads the parameters the replay has just written), not inside the graph.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn

M = TypeVar("M", bound=nn.Module)


class ModelEma(ModelEmaV3, Generic[M]):
    """``W_ema <- decay * W_ema + (1 - decay) * W`` after every optimizer step (``update(model)``).

    Floating-point parameters and buffers (BatchNorm running statistics) are averaged; integer
    buffers (``num_batches_tracked``) are copied. ``module`` is a frozen copy of the model in eval
    mode holding the averaged weights; ``state_dict()`` is that copy's. A fixed ``decay`` (no
    warm-up), as ``train.ema_decay`` sets it.
    """

    module: M
    """The frozen copy holding the averaged weights (the model's own class)."""

    def __init__(self, *, model: M, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1); got {decay}")
        super().__init__(model, decay=decay)
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Move the average one step towards ``model``'s current weights (unwrapped, not DDP)."""
        if len(self.module.state_dict()) != len(model.state_dict()):  # timm's update pairs them by position
            raise ValueError("the EMA copy and the model have different tensors")
        super().update(model, step)
