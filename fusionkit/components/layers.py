"""Small layers shared by the components."""

from __future__ import annotations

from typing import Literal

from torch import nn

Activation = Literal["relu", "gelu", "silu", "tanh"]
"""The pointwise nonlinearities a spec may name."""

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def make_activation(name: Activation) -> nn.Module:
    """A fresh activation module from its name."""
    return _ACTIVATIONS[name]()
