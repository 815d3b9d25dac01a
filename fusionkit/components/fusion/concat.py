"""Late concatenation: f_IM = [f_I || f_M], no parameters (the paper's "Late concat"/"JF-concat")."""

from __future__ import annotations

import torch
from torch import nn

# the spec lives in the catalog (no torch there) and is importable here too, next to its component
from fusionkit.components.catalog import ConcatFusionSpec  # noqa: F401 - spec re-exported


class ConcatFusion(nn.Module):
    """``f_IM = [f_I || f_M]`` (B, image_dim + meta_dim)."""

    def __init__(self, *, image_dim: int, meta_dim: int) -> None:
        super().__init__()
        self.out_dim = image_dim + meta_dim

    def forward(self, f_image: torch.Tensor, f_meta: torch.Tensor) -> torch.Tensor:
        """The concatenated features."""
        return torch.cat([f_image, f_meta], dim=-1)
