"""Optimizer parameter groups: the pretrained image backbones apart from everything else, optionally
with layer-wise learning-rate decay.

Fine-tuning practice gives the pretrained backbones a smaller learning rate than the freshly
initialised fusion, heads and gate, often decays it further layer by layer towards the input
(BEiT's layer-wise decay, timm's ``param_groups_layer_decay``), and often exempts normalisation
weights and biases from weight decay. With none of these options set there is one group holding
every parameter in the model's order, exactly what ``AdamW(model.parameters())`` builds (the
paper's recipe).

Which parameters are backbone, and their layers, is the image encoders' contract
(:meth:`FusionModel.backbone_layers <fusionkit.model.FusionModel.backbone_layers>`; for a timm
backbone, timm's ``group_matcher`` groups as ``timm.models.group_parameters`` resolves them, which
is what ``param_groups_layer_decay`` does too). fusionkit builds the groups itself rather than
calling ``param_groups_layer_decay`` because they combine with ``backbone_lr`` and the ``rest``
group, and carry a plain ``lr`` (timm's carry an ``lr_scale`` that only timm's schedulers read).
"""

from __future__ import annotations

from typing import Any

from fusionkit.model import FusionModel


def backbone_parameter_names(model: FusionModel) -> set[str]:
    """The names of the model's image-backbone parameters (its encoders' contract)."""
    return {name for layers in model.backbone_layers().values() for group in layers for name in group}


def _backbone_groups(model: FusionModel, layer_decay: float | None) -> dict[str, tuple[str, float]]:
    """Each backbone parameter's name -> (its group's name, its lr scale)."""
    per_encoder = model.backbone_layers()
    depths = {len(layers) for layers in per_encoder.values()}
    found: dict[str, tuple[str, float]] = {}
    for key, layers in per_encoder.items():
        depth = len(layers)
        for k, names in enumerate(layers):
            if layer_decay is None:
                entry = ("backbone", 1.0)
            else:  # encoders of different depths (composed modules) name their groups apart
                prefix = "" if len(depths) == 1 else f"{key}_"
                entry = (f"backbone_{prefix}layer{k}", layer_decay ** (depth - k))
            found.update(dict.fromkeys(names, entry))
    return found


def param_groups(
    model: FusionModel,
    *,
    lr: float,
    weight_decay: float,
    backbone_lr: float | None = None,
    backbone_weight_decay: float | None = None,
    no_decay_norm_bias: bool = False,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """AdamW param groups, each carrying a ``name``.

    - No option: one group ``rest`` with every parameter, ``lr`` and ``weight_decay``.
    - ``backbone_lr`` or ``backbone_weight_decay``: the backbone parameters (as the image encoders
      declare them) in a group ``backbone`` with these (each defaulting to ``lr``/``weight_decay``),
      the rest in ``rest``.
    - ``layer_decay`` (0 < d <= 1): the backbone split by layer instead. An encoder with L layers
      (0 = the input end) puts layer k in group ``backbone_layer<k>`` with lr
      ``(backbone_lr or lr) * d ** (L - k)``: the top layer gets one factor d, the stem d ** L, and
      the fusion and heads (``rest``, depth L) ``lr``. Encoders of different depths name their
      groups ``backbone_<key>_layer<k>``.
    - ``no_decay_norm_bias``: every 1-d parameter (biases, norm scales and shifts) goes to its
      group's ``<name>_no_decay`` twin, with weight decay 0.

    Groups appear in the order of their first parameter in the model; empty groups are left out.
    """
    split = backbone_lr is not None or backbone_weight_decay is not None or layer_decay is not None
    backbone = _backbone_groups(model, layer_decay) if split else {}
    base_lr = lr if backbone_lr is None else backbone_lr
    base_decay = weight_decay if backbone_weight_decay is None else backbone_weight_decay
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if name in backbone:
            key, scale = backbone[name]
            group_lr, decay = base_lr * scale, base_decay
        else:
            key, group_lr, decay = "rest", lr, weight_decay
        if no_decay_norm_bias and param.ndim <= 1:
            key, decay = f"{key}_no_decay", 0.0
        group = groups.setdefault(key, {"name": key, "params": [], "lr": group_lr, "weight_decay": decay})
        group["params"].append(param)
    return list(groups.values())
