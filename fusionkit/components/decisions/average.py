"""``average``: the fixed mean of the branch posteriors (the paper's JI-MMFA decision).

P_final = (1/K) sum_k P_k over the K branches a sample has (all three when nothing is missing).
"""

from __future__ import annotations

import torch
from torch import nn

# the spec lives in the catalog (no torch there) and is importable here too, next to its component
from fusionkit.components.catalog import AverageDecisionSpec  # noqa: F401 - spec re-exported
from fusionkit.components.decisions._masking import masked_log_softmax


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
