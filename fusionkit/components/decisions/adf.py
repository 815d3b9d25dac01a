"""``adf``: adaptive decision fusion, eqs 5-6.

The gate reads the concatenated branch logits ``s = [z_I || z_IM || z_M]`` (3N) and gives
per-sample simplex weights ``alpha = softmax(W_2 sigma(W_1 s + b_1) + b_2)`` (eq 5); the final
posterior is ``alpha_I P_I + alpha_IM P_IM + alpha_M P_M`` (eq 6).

Missing modalities (beyond the paper): an absent branch's logits are zeroed in ``s`` and its weight
is masked out of the softmax, which renormalises alpha over the branches present.
"""

from __future__ import annotations

import torch
from torch import nn

# the spec lives in the catalog (no torch there) and is importable here too, next to its component
from fusionkit.components.catalog import Activation, ADFDecisionSpec  # noqa: F401 - spec re-exported
from fusionkit.components.decisions._masking import masked_log_softmax
from fusionkit.components.layers import make_activation


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
