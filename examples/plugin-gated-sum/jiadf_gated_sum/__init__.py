"""A gated-sum fusion block, registered as the fusion kind ``gated_sum``.

``f_IM = g * A f_I + (1 - g) * B f_M`` with ``g = sigmoid(W [f_I || f_M])``: a stand-in for the
paper's FM (eq 2), written the way a third-party plugin would write it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

import fusionkit as fk


class GatedSumSpec(fk.specs.FusionSpec):
    """Project both features to ``out_dim`` and mix them with a learned per-feature gate."""

    kind: Literal["gated_sum"] = "gated_sum"
    out_dim: PositiveInt = 256


@fk.register("fusion", GatedSumSpec)
class GatedSumFusion(nn.Module):
    """``f_IM = g * A f_I + (1 - g) * B f_M``, ``g = sigmoid(W [f_I || f_M])``."""

    def __init__(self, *, image_dim: int, meta_dim: int, out_dim: int = 256) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, out_dim)
        self.meta = nn.Linear(meta_dim, out_dim)
        self.gate = nn.Linear(image_dim + meta_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, f_image: torch.Tensor, f_meta: torch.Tensor) -> torch.Tensor:
        """Fuse ``f_I`` (B, image_dim) and ``f_M`` (B, meta_dim) into ``f_IM`` (B, out_dim)."""
        g = torch.sigmoid(self.gate(torch.cat([f_image, f_meta], dim=-1)))
        return g * self.image(f_image) + (1 - g) * self.meta(f_meta)
