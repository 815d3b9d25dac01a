"""Experiment tracking through TensorBoard (``torch.utils.tensorboard``) and, optionally, MLflow.

One :class:`Tracker` fans each call out to the backends the run config names
(``train.tracking``); with none named it does nothing. TensorBoard event files go to
``<run>/tensorboard``; MLflow logs to its own tracking URI (``MLFLOW_TRACKING_URI``, default
``./mlruns``), one MLflow run per fusionkit run, named after the run directory.
:class:`LossTerms` and :func:`epoch_scalars` are what the trainer sends them each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fusionkit.errors import require_extra


class Tracker:
    """Logs scalars per epoch and figures at the end; ``close()`` flushes every backend."""

    def __init__(
        self, *, backends: Iterable[str], run_dir: str | Path, params: Mapping[str, Any] | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.backends = tuple(backends)
        self._tb = None
        self._mlflow = None
        if "tensorboard" in self.backends:
            tensorboard = require_extra(
                "tensorboard", what="train.tracking: tensorboard", module="torch.utils.tensorboard"
            )
            self._tb = tensorboard.SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if "mlflow" in self.backends:
            mlflow = require_extra("mlflow", what="train.tracking: mlflow")
            self._mlflow = mlflow
            mlflow.start_run(run_name=self.run_dir.name)
            if params:
                mlflow.log_params(dict(params))

    @property
    def active(self) -> bool:
        """Whether any backend is on."""
        return bool(self.backends)

    def log_scalars(self, values: Mapping[str, float], *, step: int) -> None:
        """``{"train/loss": ..., "val/dice": ..., "lr/rest": ...}`` at ``step`` (the epoch)."""
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, float(value), step)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics({k.replace("/", "."): float(v) for k, v in values.items()}, step=step)

    def log_figures(self, paths: Iterable[str | Path], *, step: int = 0) -> None:
        """The report's figure files (PNG) as images / artifacts."""
        files = [Path(p) for p in paths]
        if self._tb is not None:
            import numpy as np
            from PIL import Image

            for path in files:
                with Image.open(path) as image:
                    array = np.asarray(image.convert("RGB"))
                self._tb.add_image(f"report/{path.stem}", array, step, dataformats="HWC")
            self._tb.flush()
        if self._mlflow is not None:
            for path in files:
                self._mlflow.log_artifact(str(path), artifact_path="figures")

    def close(self) -> None:
        """Flush and close every backend."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None


class LossTerms:
    """Each eq-7 term's sample-weighted sum over an epoch's batches, kept on the device (no host sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, terms: Mapping[str, torch.Tensor], size: int) -> None:
        """Add one batch's mean terms, weighted by its ``size``."""
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * size

    def means(self, seen: int) -> dict[str, float]:
        """``train/loss_<term>``: each term's mean over the ``seen`` samples."""
        return {f"train/loss_{k}": float(v) / max(seen, 1) for k, v in self.sums.items()}


def epoch_scalars(
    *,
    train_loss: float,
    val_loss: float,
    samples_per_s: float,
    terms: LossTerms,
    seen: int,
    metrics: Mapping[str, Any],
    param_groups: Sequence[Mapping[str, Any]],
) -> dict[str, float]:
    """What the trackers get for one epoch: the losses, each eq-7 term, the validation metrics
    (those that are not NaN), each param group's lr and the throughput."""
    values = {"train/loss": train_loss, "val/loss": val_loss}
    values |= terms.means(seen)
    values |= {f"val/{k}": v for k, v in metrics["macro"].items() if not math.isnan(v)}
    values |= {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(param_groups)}
    values["train/samples_per_s"] = samples_per_s
    return values
