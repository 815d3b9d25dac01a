"""Learning-rate schedules: the paper's ReduceLROnPlateau, or linear warmup then cosine decay.

Both are ``torch.optim.lr_scheduler`` objects behind one small interface, so the trainer calls
:meth:`LrSchedule.after_step` after every optimizer step and :meth:`LrSchedule.after_epoch` with
the validation macro Dice after every epoch; each kind reacts to the one it is driven by.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from fusionkit.runtime.config import SchedulerSpec
from fusionkit.utils.tables import json_value


class WarmupCosine:
    """The lr factor at optimizer step ``s`` (0-based): linear warmup, then half a cosine.

    ``f(s) = (s + 1) / W`` for ``s < W``; after that ``f(s) = m + (1 - m) (1 + cos(pi p)) / 2``
    with ``p = (s - W) / (T - W)``, ``T`` the total number of steps and ``m = min_lr / lr`` (the
    floor, as a fraction of the group's own learning rate). A picklable object (not a lambda) so
    ``LambdaLR.state_dict`` records it.
    """

    def __init__(self, *, warmup_steps: int, total_steps: int, floor: float) -> None:
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), self.warmup_steps + 1)
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        """The factor multiplying the group's base learning rate at ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 1.0)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LrSchedule:
    """The schedule ``spec`` names, on ``optimizer`` (every param group keeps its own base lr).

    ``plateau`` is the paper's (Appendix A.2): halve the lr when the validation macro Dice stalls.
    ``cosine`` steps per optimizer step over ``epochs * steps_per_epoch`` steps.
    """

    def __init__(
        self, *, spec: SchedulerSpec, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
    ) -> None:
        self.kind = spec.kind
        if spec.kind == "plateau":
            self.scheduler: Any = ReduceLROnPlateau(
                optimizer, mode="max", factor=spec.factor, patience=spec.patience, min_lr=spec.min_lr
            )
        else:
            warmup = round(spec.warmup_epochs * steps_per_epoch)
            total = epochs * steps_per_epoch
            self.scheduler = LambdaLR(
                optimizer,
                [
                    WarmupCosine(
                        warmup_steps=warmup,
                        total_steps=total,
                        floor=min(spec.min_lr / float(group["lr"]), 1.0),
                    )
                    for group in optimizer.param_groups
                ],
            )
            # a graphed step's lr is a device tensor: float bases keep each step free of host syncs
            self.scheduler.base_lrs = [float(lr) for lr in self.scheduler.base_lrs]

    def after_step(self) -> None:
        """Called after every optimizer step (moves the cosine schedule)."""
        if self.kind == "cosine":
            self.scheduler.step()

    def after_epoch(self, score: float) -> None:
        """Called after every epoch with the validation ``score`` of ``train.selection_metric``
        (moves the plateau schedule; the cosine schedule ignores it)."""
        if self.kind == "plateau":
            self.scheduler.step(score)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state, JSON-safe (it goes into the checkpoint's metadata)."""
        return json_value(self.scheduler.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.scheduler.load_state_dict(state)
