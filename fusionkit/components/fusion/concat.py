"""Late concatenation: f_IM = [f_I || f_M], no parameters (the paper's "Late concat"/"JF-concat")."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from fusionkit.components.base import FusionSpec
from fusionkit.registry import register


class ConcatFusionSpec(FusionSpec):
    """Concatenate the image and metadata features; the joint width is D_I + D_M."""

    kind: Literal["concat"] = "concat"


@register("fusion", ConcatFusionSpec)
class ConcatFusion(nn.Module):
    """``f_IM = [f_I || f_M]`` (B, image_dim + meta_dim)."""

    def __init__(self, *, image_dim: int, meta_dim: int) -> None:
        super().__init__()
        self.out_dim = image_dim + meta_dim

    def forward(self, f_image: torch.Tensor, f_meta: torch.Tensor) -> torch.Tensor:
        """The concatenated features."""
        return torch.cat([f_image, f_meta], dim=-1)
