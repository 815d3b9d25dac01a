"""Metadata encoders: the M_M of eq 1, mapping the encoded metadata vector to f_M (D_M wide)."""

from __future__ import annotations

import torch
from torch import nn

# the spec lives in the catalog (no torch there) and is importable here too, next to its component
from fusionkit.components.catalog import Activation, MLPMetadataEncoderSpec  # noqa: F401 - spec re-exported
from fusionkit.components.layers import make_activation


class MLPMetadataEncoder(nn.Module):
    """MLP from the encoded metadata vector M (B, metadata_width) to metadata features f_M (B, out_dim).

    ``metadata_width`` is the width of M, the encoded metadata of eq 1 (the data's
    :attr:`fusionkit.data.MetadataEncoder.metadata_width`); ``out_dim`` is D_M.
    """

    def __init__(
        self,
        *,
        metadata_width: int,
        out_dim: int = 256,
        hidden_dims: tuple[int, ...] = (128,),
        activation: Activation = "relu",
        dropout: float = 0.1,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = metadata_width
        for next_width in (*hidden_dims, out_dim):
            layers.append(nn.Linear(width, next_width))
            if layer_norm:
                layers.append(nn.LayerNorm(next_width))
            layers.append(make_activation(activation))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = next_width
        self.net = nn.Sequential(*layers)
        self.metadata_width = metadata_width
        self.out_dim = out_dim

    def forward(self, meta: torch.Tensor) -> torch.Tensor:
        """Metadata features (B, out_dim)."""
        return self.net(meta)
