"""``average``: the fixed mean of the branch posteriors (the paper's JI-MMFA decision).

P_final = (1/K) sum_k P_k over the K branches a sample has (all three when nothing is missing).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from fusionkit.components.base import DecisionSpec
from fusionkit.components.decisions._masking import masked_log_softmax
from fusionkit.registry import register


class AverageDecisionSpec(DecisionSpec):
    """Equal weights over every branch the model has, renormalised over those present."""

    kind: Literal["average"] = "average"
    min_branches: ClassVar[int] = 2
    requirement: ClassVar[str] = "averages branch posteriors"


@register("decision", AverageDecisionSpec)
class AverageDecision(nn.Module):
    """Log weights ``log(1 / K_present)`` on present branches, ``-inf`` on absent ones."""

    def __init__(self, *, num_classes: int, branches: tuple[str, ...]) -> None:
        super().__init__()
        self.branches = branches
        self.out_dim = len(branches)

    def forward(self, logits: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Log fusion weights (B, K)."""
        dtype = logits[self.branches[0]].dtype
        return masked_log_softmax(torch.zeros(present.shape, dtype=dtype, device=present.device), present)
