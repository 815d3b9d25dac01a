"""Small layers shared by the components."""

from __future__ import annotations

from torch import nn

from fusionkit.components.catalog import Activation

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def make_activation(name: Activation) -> nn.Module:
    """A fresh activation module from its name."""
    return _ACTIVATIONS[name]()
