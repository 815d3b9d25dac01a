"""Metadata encoders: the M_M of eq 1, mapping the encoded metadata vector to f_M (D_M wide)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from fusionkit.components.base import MetadataEncoderSpec
from fusionkit.components.layers import Activation, make_activation
from fusionkit.registry import register


class MLPMetadataEncoderSpec(MetadataEncoderSpec):
    """An MLP ``in_dim -> hidden_dims... -> out_dim`` (the paper's D_M = 256).

    Each layer is Linear, optional LayerNorm, activation and dropout; the last layer ends with the
    activation too, so ``f_M`` is a feature vector like the pooled image features. The paper gives
    only D_M; the hidden widths, the norm and the dropout are fusionkit's choices.
    """

    kind: Literal["mlp"] = "mlp"
    hidden_dims: tuple[PositiveInt, ...] = (128,)
    """Widths of the hidden layers."""
    out_dim: PositiveInt = 256
    """D_M, the metadata feature width (256 in the paper)."""
    activation: Activation = "relu"
    """Nonlinearity after every layer."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout after every layer."""
    layer_norm: bool = True
    """LayerNorm after every Linear layer."""


@register("metadata_encoder", MLPMetadataEncoderSpec)
class MLPMetadataEncoder(nn.Module):
    """MLP from the encoded metadata vector (B, in_dim) to metadata features (B, out_dim)."""

    def __init__(
        self,
        *,
        in_dim: int,
        out_dim: int = 256,
        hidden_dims: tuple[int, ...] = (128,),
        activation: Activation = "relu",
        dropout: float = 0.1,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for next_width in (*hidden_dims, out_dim):
            layers.append(nn.Linear(width, next_width))
            if layer_norm:
                layers.append(nn.LayerNorm(next_width))
            layers.append(make_activation(activation))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = next_width
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, meta: torch.Tensor) -> torch.Tensor:
        """Metadata features (B, out_dim)."""
        return self.net(meta)
