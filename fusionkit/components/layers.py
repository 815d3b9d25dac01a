"""Small layers shared by the components."""

from __future__ import annotations

from timm.layers import get_act_layer
from torch import nn

from fusionkit.components.catalog import Activation


def make_activation(name: Activation) -> nn.Module:
    """A fresh activation module from its name (timm's ``get_act_layer``: ``nn.ReLU``, ``nn.SiLU``, ...)."""
    module: nn.Module = get_act_layer(name)()
    return module
