"""What :meth:`Trainer.fit <fusionkit.train.trainer.Trainer.fit>` reports each epoch, and the hooks it calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fusionkit.train.trainer import Trainer


@dataclass
class EpochRecord:
    """One line of the training history."""

    epoch: int
    train_loss: float
    val_loss: float
    val_dice: float
    val_auc: float
    lr: float
    seconds: float
    samples_per_s: float
    best: bool


def selection_score(metrics: dict[str, Any], metric: str) -> float:
    """The validation score ``train.selection_metric`` names, from :meth:`Trainer.validate`'s metrics."""
    return float(metrics["macro_f1_argmax"] if metric == "f1" else metrics["macro"][metric])


class TrainerCallback:
    """Hooks into :meth:`Trainer.fit`, given as ``Trainer(callbacks=[...])``; override the ones you need.

    Each hook gets the trainer first and runs on every rank (test ``trainer.dist.is_main`` to act
    once). A hook may read the trainer's public state (``model``, ``optimizer``, ``ema``,
    ``history``, ``files``) and may call :meth:`Trainer.interrupt` to stop the run as Ctrl-C would.
    """

    def on_batch_end(self, trainer: Trainer, *, epoch: int, batch_index: int, loss: torch.Tensor) -> None:
        """After a training batch's optimizer step, schedule step and weight-average update.

        ``epoch`` and ``batch_index`` are 0-based (a resumed epoch goes on counting where it
        stopped); ``loss`` is the batch's mean loss as a device tensor (reading it waits for the GPU).
        """

    def on_epoch_end(self, trainer: Trainer, *, record: EpochRecord, metrics: dict[str, Any]) -> None:
        """After an epoch's validation, checkpoints and report (``history.json`` holds ``record``);
        ``metrics`` are :meth:`Trainer.validate`'s."""
