"""A stand-in third-party plugin: importing it registers the ``plugin_mean`` fusion block.

tests/test_registry.py points a fake ``fusionkit.components`` entry point at this module.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

import fusionkit as fk


class PluginMeanSpec(fk.specs.FusionSpec):
    """Project both features to ``out_dim`` and average them."""

    kind: Literal["plugin_mean"] = "plugin_mean"
    out_dim: PositiveInt = 8


@fk.register("fusion", PluginMeanSpec)
class PluginMeanFusion(nn.Module):
    def __init__(self, *, image_dim: int, meta_dim: int, out_dim: int = 8) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, out_dim)
        self.meta = nn.Linear(meta_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, f_image: torch.Tensor, f_meta: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.image(f_image) + self.meta(f_meta))


def broken_register() -> None:
    """An entry point that names a callable which fails while registering."""
    raise RuntimeError("plugin_fixture.broken_register fails on purpose")
