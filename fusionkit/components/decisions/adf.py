"""``adf``: adaptive decision fusion, eqs 5-6.

The gate reads the concatenated branch logits ``s = [z_I || z_IM || z_M]`` (3N) and gives
per-sample simplex weights ``alpha = softmax(W_2 sigma(W_1 s + b_1) + b_2)`` (eq 5); the final
posterior is ``alpha_I P_I + alpha_IM P_IM + alpha_M P_M`` (eq 6).

Missing modalities (beyond the paper): an absent branch's logits are zeroed in ``s`` and its weight
is masked out of the softmax, which renormalises alpha over the branches present.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import PositiveInt
from torch import nn

from fusionkit.components.base import DecisionSpec
from fusionkit.components.decisions._masking import masked_log_softmax
from fusionkit.components.layers import Activation, make_activation
from fusionkit.registry import register


class ADFDecisionSpec(DecisionSpec):
    """The eq 5 gate: ``hidden_dim`` (width of W_1), ``activation`` (sigma), ``detach_logits``.

    The paper calls the gate "lightweight" without a width; fusionkit uses 64 and ReLU.
    ``detach_logits`` stops the gate's gradient into the branch heads (the paper does not: False).
    """

    kind: Literal["adf"] = "adf"
    required_branches: ClassVar[tuple[str, ...]] = ("image", "joint", "meta")
    requirement: ClassVar[str] = "(eq 5) weighs the image, joint and metadata branches"
    hidden_dim: PositiveInt = 64
    """Width of the gate's hidden layer (W_1 in eq 5)."""
    activation: Activation = "relu"
    """sigma of eq 5."""
    detach_logits: bool = False
    """Stop the gate's gradient into the branch heads (the paper does not)."""


@register("decision", ADFDecisionSpec)
class ADFDecision(nn.Module):
    """The gating network of eq 5, returning ``log alpha`` (B, 3) in the order (I, IM, M)."""

    def __init__(
        self,
        *,
        num_classes: int,
        branches: tuple[str, ...],
        hidden_dim: int = 64,
        activation: Activation = "relu",
        detach_logits: bool = False,
    ) -> None:
        super().__init__()
        self.branches = branches
        self.detach_logits = detach_logits
        self.gate = nn.Sequential(
            nn.Linear(len(branches) * num_classes, hidden_dim),  # W_1, b_1
            make_activation(activation),  # sigma
            nn.Linear(hidden_dim, len(branches)),  # W_2, b_2
        )
        self.out_dim = len(branches)

    def forward(self, logits: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Log fusion weights ``log alpha`` (B, 3), renormalised over present branches."""
        parts = [logits[name].masked_fill(~present[:, i : i + 1], 0.0) for i, name in enumerate(self.branches)]
        s = torch.cat(parts, dim=-1)
        if self.detach_logits:
            s = s.detach()
        return masked_log_softmax(self.gate(s), present)
