"""A stand-in third-party plugin: importing it registers the ``plugin_mean`` fusion block, the
``plugin_conv`` image encoder (with its own declared preprocessing) and ``plugin_undeclared`` (an
image encoder that forgets to declare one).

tests/test_registry.py and tests/test_plugin_preprocessing.py point a fake ``fusionkit.components``
entry point at this module.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

import fusionkit as fk
from fusionkit.data import ImagePreprocessing


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


PLUGIN_PREPROCESSING = ImagePreprocessing(
    input_size=64, mean=(0.25, 0.5, 0.75), std=(0.125, 0.25, 0.5), interpolation="bilinear"
)
"""What ``plugin_conv`` declares: a normalisation no timm model uses, so where it shows up it came from here."""


class PluginConvSpec(fk.specs.ImageEncoderSpec):
    """A small conv net (not a timm model), pooled to ``out_dim`` features."""

    kind: Literal["plugin_conv"] = "plugin_conv"
    out_dim: PositiveInt = 8


@fk.register("image_encoder", PluginConvSpec)
class PluginConvEncoder(nn.Module):
    def __init__(self, *, out_dim: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_dim, 3, stride=2)
        self.out_dim = out_dim

    @property
    def preprocessing(self) -> ImagePreprocessing:
        return PLUGIN_PREPROCESSING

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(images)).mean(dim=(2, 3))


class PluginUndeclaredSpec(fk.specs.ImageEncoderSpec):
    """An image encoder that does not declare its preprocessing."""

    kind: Literal["plugin_undeclared"] = "plugin_undeclared"


@fk.register("image_encoder", PluginUndeclaredSpec)
class PluginUndeclaredEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out_dim = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def broken_register() -> None:
    """An entry point that names a callable which fails while registering."""
    raise RuntimeError("plugin_fixture.broken_register fails on purpose")
