"""``single``: one branch decides (the joint head by default), P_final = softmax(z_branch).

With the image and metadata heads kept for the auxiliary losses of eq 7 this is JF-concat; with no
auxiliary weights it is the paper's "Late concat" and "JF-MMFA".
"""

from __future__ import annotations

import torch
from torch import nn

# the spec lives in the catalog (no torch there) and is importable here too, next to its component
from fusionkit.components.catalog import SingleDecisionSpec  # noqa: F401 - spec re-exported


class SingleDecision(nn.Module):
    """Log weight 0 on the deciding branch: ``log P_final = log_softmax(z_branch)``."""

    def __init__(self, *, num_classes: int, branches: tuple[str, ...], branch: str = "joint") -> None:
        super().__init__()
        if branches != (branch,):
            raise ValueError(f"single decision on {branch!r} got branches {branches}")
        self.branches = branches
        self.out_dim = 1

    def forward(self, logits: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Log fusion weights (B, 1), all zero."""
        return torch.zeros_like(present, dtype=logits[self.branches[0]].dtype)
