"""Optimizer parameter groups: the pretrained image backbones apart from everything else.

Fine-tuning practice gives the pretrained backbones a smaller learning rate than the freshly
initialised fusion, heads and gate, and often exempts normalisation weights and biases from weight
decay. With none of these options set there is one group holding every parameter in the model's
order, exactly what ``AdamW(model.parameters())`` builds (the paper's recipe).
"""

from __future__ import annotations

from typing import Any

from torch import nn

BACKBONE_PREFIX = "image_stream.encoders."
"""Parameter names under this prefix belong to the (pretrained, timm) image backbones."""


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    backbone_lr: float | None = None,
    backbone_weight_decay: float | None = None,
    no_decay_norm_bias: bool = False,
) -> list[dict[str, Any]]:
    """AdamW param groups; each carries ``name`` (``backbone``/``rest``, ``_no_decay`` suffixed).

    A parameter is a backbone one when its name starts with :data:`BACKBONE_PREFIX`; with
    ``no_decay_norm_bias`` every 1-d parameter (biases, norm scales and shifts) goes to a group
    with weight decay 0. Empty groups are left out.
    """
    split_backbone = backbone_lr is not None or backbone_weight_decay is not None
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        backbone = split_backbone and name.startswith(BACKBONE_PREFIX)
        key = "backbone" if backbone else "rest"
        group_lr = backbone_lr if backbone and backbone_lr is not None else lr
        decay = backbone_weight_decay if backbone and backbone_weight_decay is not None else weight_decay
        if no_decay_norm_bias and param.ndim <= 1:
            key, decay = f"{key}_no_decay", 0.0
        group = groups.setdefault(key, {"name": key, "params": [], "lr": group_lr, "weight_decay": decay})
        group["params"].append(param)
    return list(groups.values())
