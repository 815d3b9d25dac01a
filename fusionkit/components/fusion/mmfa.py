"""Multimodal fusion attention (MMFA, Section 2.2, eqs 8-11) and its two ablations (Table 3).

Per head h, the image and metadata features each give one query, key and value token (eq 8)::

    Q_h = [W_h^{Q,I} f_I ; W_h^{Q,M} f_M]   (2 x d_h), likewise K_h and V_h
    U_h = softmax(Q_h K_h^T / sqrt(d_h)) V_h                       (eq 9, a 2x2 attention)
    o   = W^O Concat(vec(U_1), ..., vec(U_H))                      (eq 10, vec stacks row-wise)
    f_IM = W_skip [f_I || f_M] + g(o),   g = activation(Linear(.))  (eq 11)

The per-head matrices are stored stacked: ``W_h^{Q,I}`` is rows ``h*d_h:(h+1)*d_h`` of
``query_image.weight`` (likewise ``key_*``, ``value_*``); ``W^O`` is ``out_proj.weight``, ``W_skip``
is ``skip.weight``, ``g`` is ``transform`` (Linear with bias, then the activation). The equations
have no biases on Q/K/V, W^O and W_skip, so neither do these layers.

``attention_only`` keeps ``g(o)`` alone and ``skip_only`` keeps ``W_skip [f_I || f_M]`` alone.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

# the spec lives in the catalog (no torch there) and is importable here too, next to its component
from fusionkit.components.catalog import Activation, AttentionOnlySpec, MMFASpec, SkipOnlySpec  # noqa: F401 - spec re-exported
from fusionkit.components.layers import make_activation


class TwoTokenAttention(nn.Module):
    """Eqs 8-10: per-modality Q/K/V projections, H heads of 2x2 attention, and W^O."""

    def __init__(self, *, image_dim: int, meta_dim: int, attention_heads: int, head_dim: int, out_dim: int) -> None:
        super().__init__()
        inner = attention_heads * head_dim
        self.attention_heads = attention_heads
        self.head_dim = head_dim
        self.query_image = nn.Linear(image_dim, inner, bias=False)
        self.query_meta = nn.Linear(meta_dim, inner, bias=False)
        self.key_image = nn.Linear(image_dim, inner, bias=False)
        self.key_meta = nn.Linear(meta_dim, inner, bias=False)
        self.value_image = nn.Linear(image_dim, inner, bias=False)
        self.value_meta = nn.Linear(meta_dim, inner, bias=False)
        self.out_proj = nn.Linear(2 * inner, out_dim, bias=False)
        self.out_dim = out_dim

    def _tokens(self, image_part: torch.Tensor, meta_part: torch.Tensor) -> torch.Tensor:
        # (B, H*d) x 2 -> (B, H, 2, d): token 0 is the image, token 1 the metadata
        tokens = torch.stack([image_part, meta_part], dim=1)
        return rearrange(tokens, "b t (h d) -> b h t d", h=self.attention_heads)

    def forward(self, f_image: torch.Tensor, f_meta: torch.Tensor) -> torch.Tensor:
        """``o`` of eq 10, (B, out_dim)."""
        q = self._tokens(self.query_image(f_image), self.query_meta(f_meta))
        k = self._tokens(self.key_image(f_image), self.key_meta(f_meta))
        v = self._tokens(self.value_image(f_image), self.value_meta(f_meta))
        scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(self.head_dim)
        u = torch.einsum("bhts,bhsd->bhtd", scores.softmax(dim=-1), v)
        return self.out_proj(rearrange(u, "b h t d -> b (h t d)"))


class MMFAFusion(nn.Module):
    """``f_IM = W_skip [f_I || f_M] + g(o)`` (eq 11), with either term switchable for Table 3."""

    def __init__(
        self,
        *,
        image_dim: int,
        meta_dim: int,
        attention_heads: int = 8,
        head_dim: int = 64,
        out_dim: int = 512,
        activation: Activation = "gelu",
        use_attention: bool = True,
        use_skip: bool = True,
    ) -> None:
        super().__init__()
        if not (use_attention or use_skip):
            raise ValueError("MMFA needs the attention path, the skip path, or both")
        self.attention = (
            TwoTokenAttention(
                image_dim=image_dim,
                meta_dim=meta_dim,
                attention_heads=attention_heads,
                head_dim=head_dim,
                out_dim=out_dim,
            )
            if use_attention
            else None
        )
        self.transform = (
            nn.Sequential(nn.Linear(out_dim, out_dim), make_activation(activation)) if use_attention else None
        )
        self.skip = nn.Linear(image_dim + meta_dim, out_dim, bias=False) if use_skip else None
        self.out_dim = out_dim

    def forward(self, f_image: torch.Tensor, f_meta: torch.Tensor) -> torch.Tensor:
        """The joint representation f_IM (B, out_dim)."""
        out: torch.Tensor | None = None
        if self.skip is not None:
            out = self.skip(torch.cat([f_image, f_meta], dim=-1))
        if self.attention is not None and self.transform is not None:
            attended = self.transform(self.attention(f_image, f_meta))
            out = attended if out is None else out + attended
        assert out is not None  # the constructor requires the skip path, the attention path or both
        return out


class AttentionOnlyFusion(MMFAFusion):
    """``f_IM = g(o)``: MMFA without its residual path."""

    def __init__(
        self,
        *,
        image_dim: int,
        meta_dim: int,
        attention_heads: int = 8,
        head_dim: int = 64,
        out_dim: int = 512,
        activation: Activation = "gelu",
    ) -> None:
        super().__init__(
            image_dim=image_dim,
            meta_dim=meta_dim,
            attention_heads=attention_heads,
            head_dim=head_dim,
            out_dim=out_dim,
            activation=activation,
            use_skip=False,
        )


class SkipOnlyFusion(MMFAFusion):
    """``f_IM = W_skip [f_I || f_M]``: MMFA's residual path alone (an affine map, no bias)."""

    def __init__(self, *, image_dim: int, meta_dim: int, out_dim: int = 512) -> None:
        super().__init__(image_dim=image_dim, meta_dim=meta_dim, out_dim=out_dim, use_attention=False)
