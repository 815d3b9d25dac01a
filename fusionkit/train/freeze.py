"""The backbone freeze: train the fusion, heads and gate with the image backbones fixed, then
(``train.freeze_backbone_epochs``) unfreeze them, or keep them fixed throughout (``train.linear_probe``).

The frozen state is a function of the epoch number alone (:meth:`BackboneFreeze.frozen`), set at
the start of every epoch (:meth:`BackboneFreeze.apply`), so a run resumed in the middle of the
frozen phase continues exactly: nothing about the freeze is checkpointed.

A frozen backbone is a fixed function of its input:

- its parameters get ``requires_grad = False``: no gradient is computed for them, AdamW skips them
  (no update, no weight decay, no optimizer state until they unfreeze, when their moments start
  from zero as on a first step), and they stay bit-identical;
- its modules run in **eval mode**: BatchNorm layers normalise with their running statistics (the
  pretrained ones) and do not update them, and dropout and stochastic depth are off. This is the
  usual linear-probe convention (timm's ``freeze`` turns BatchNorm into ``FrozenBatchNorm2d`` for
  the same reason); the batch statistics of a few lesions would otherwise overwrite the pretrained
  ones while nothing else in the backbone can adapt to them. After unfreezing the backbone trains
  as usual (train mode, statistics updated).

Which parameters are backbone is the image encoders' contract
(:meth:`FusionModel.backbone_layers <fusionkit.model.FusionModel.backbone_layers>`); the modules
put in eval mode are those whose parameters are all backbone ones (for a timm encoder, the whole
encoder). The parameters stay in the optimizer throughout, so its groups and checkpoints keep one
layout.

Under ``torchrun`` a freeze that ends mid-run is refused: DistributedDataParallel registers the
parameters that need gradients when it wraps the model, so it could not sync the backbone once it
unfreezes. A linear probe (frozen before the wrap) is fine there.
"""

from __future__ import annotations

from torch import nn

from fusionkit.errors import ConfigError
from fusionkit.model import FusionModel
from fusionkit.runtime.config import TrainSpec
from fusionkit.train.param_groups import backbone_parameter_names


def _frozen_modules(model: FusionModel, names: set[str]) -> list[nn.Module]:
    """The largest submodules whose parameters (at least one) are all in ``names``."""
    found: list[nn.Module] = []
    inside: set[str] = set()
    for prefix, module in model.named_modules():
        if any(prefix.startswith(f"{p}.") for p in inside):
            continue
        params = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()]
        if params and all(p in names for p in params):
            found.append(module)
            inside.add(prefix)
    return found


class BackboneFreeze:
    """Freezes the model's image backbones for the epochs ``train`` says (none: a no-op).

    ``distributed`` says whether the model is wrapped in DistributedDataParallel (see the module
    docstring for why a mid-run unfreeze is refused there).
    """

    def __init__(self, *, train: TrainSpec, distributed: bool = False) -> None:
        self.linear_probe = train.linear_probe
        self.frozen_epochs = train.freeze_backbone_epochs
        if self.frozen_epochs and distributed:
            raise ConfigError(
                "train.freeze_backbone_epochs cannot unfreeze the backbones under torchrun (DistributedDataParallel "
                "fixes the trained parameters when it wraps the model); use train.linear_probe or one process"
            )

    @property
    def enabled(self) -> bool:
        """Whether any epoch is frozen."""
        return self.linear_probe or self.frozen_epochs > 0

    def frozen(self, epoch: int) -> bool:
        """Whether the backbones are frozen in ``epoch`` (0-based)."""
        return self.linear_probe or epoch < self.frozen_epochs

    def apply(self, model: FusionModel, epoch: int) -> None:
        """Set the backbones' state for ``epoch``: call after ``model.train()`` at the start of every
        epoch (and once before a DistributedDataParallel wrap). Does nothing when no epoch is frozen."""
        if not self.enabled:
            return
        frozen = self.frozen(epoch)
        names = backbone_parameter_names(model)
        for name, param in model.named_parameters():
            if name in names:
                param.requires_grad_(not frozen)
        if frozen:
            for module in _frozen_modules(model, names):
                module.eval()
