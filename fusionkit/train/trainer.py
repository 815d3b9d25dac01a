"""The trainer: any ModelSpec, the paper's recipe (Appendix A.2), on CPU, one GPU, or many.

What the run directory holds is listed in :mod:`fusionkit.runtime.rundir`.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from fusionkit.errors import ConfigError
from fusionkit.losses import JointIndividualLoss
from fusionkit.metrics import isic_metrics
from fusionkit.model import FusionModel
from fusionkit.runtime.checkpoint import load_checkpoint, save_checkpoint
from fusionkit.runtime.device import move_batch, resolve_device, seed_everything
from fusionkit.runtime.distributed import DistInfo, barrier, init_distributed, shutdown, sync_buffers
from fusionkit.runtime.predict import predict
from fusionkit.runtime.rundir import RunFiles
from fusionkit.train.config import RunConfig
from fusionkit.train.data_setup import RunData, prepare_data
from fusionkit.train.ema import ModelEma
from fusionkit.train.mixup import mix_batch
from fusionkit.train.param_groups import param_groups
from fusionkit.train.schedules import LrSchedule
from fusionkit.train.step import CudaGraphStep, EagerStep
from fusionkit.train.tracking import Tracker
from fusionkit.train.warm_start import warm_start
from fusionkit.utils.io import atomic_write_text

logger = logging.getLogger("fusionkit.train")


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


class Trainer:
    """Trains one run; see the module docstring for what the run directory holds.

    ``fit()`` returns the history and then calls ``after_fit(run_dir)`` when one was given. Ctrl-C (SIGINT) finishes the current batch, writes a resumable
    ``last`` checkpoint that records how far the epoch got, and re-raises ``KeyboardInterrupt``.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        run_dir: str | Path,
        data_root: str | Path | None = None,
        synthetic: bool = False,
        resume: bool = False,
        progress: bool = True,
        after_fit: Callable[[Path], object] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.files = RunFiles(self.run_dir)
        self.progress = progress
        self.after_fit = after_fit
        train = config.train
        device = resolve_device(train.device)
        self.dist: DistInfo = init_distributed(device)
        self.device = self.dist.device
        self.bf16 = train.precision == "bf16" or (train.precision == "auto" and self.device.type == "cuda")
        self.channels_last = (
            self.device.type == "cuda" if train.channels_last == "auto" else bool(train.channels_last)
        )
        graphed = train.step_mode == "cuda_graph"
        if graphed and (self.device.type != "cuda" or self.dist.distributed):
            raise ConfigError(
                "train.step_mode 'cuda_graph' needs one CUDA GPU (no CPU, no torchrun); "
                "use 'eager' or 'compile'"
            )
        seed_everything(train.seed + self.dist.rank)
        try:
            self.data: RunData = prepare_data(
                config, run_dir=self.run_dir, data_root=data_root, synthetic=synthetic,
                resume=resume, dist_info=self.dist,
            )
        except BaseException:
            shutdown(self.dist)
            raise
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.config = self.data.config  # resolved: metadata width filled in
        self._setup_logging()
        spec = self.config.model
        self.model = FusionModel(spec, metadata_width=self.data.encoder.width).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        try:  # options of issue 13 (docs/how-to/training-options.md)
            if train.init_from is not None and not resume:
                logger.info(warm_start(self.model, train.init_from).summary())
            self.tracker = Tracker(
                backends=train.tracking if self.dist.is_main else (), run_dir=self.run_dir,
                params={f"train.{k}": v for k, v in train.model_dump(mode="json").items()},
            )
        except BaseException:
            self.close()
            raise
        self.ema = None if train.ema_decay is None else ModelEma(model=self.model, decay=train.ema_decay)
        self.loss_fn = JointIndividualLoss.from_spec(spec.loss).to(self.device)
        fused = self.device.type == "cuda"
        groups = param_groups(
            self.model, lr=train.lr, weight_decay=train.weight_decay, backbone_lr=train.backbone_lr,
            backbone_weight_decay=train.backbone_weight_decay, no_decay_norm_bias=train.no_decay_norm_bias,
        )
        for group in groups:  # a graphed step reads the lr from a tensor
            group["lr"] = torch.tensor(group["lr"], device=self.device) if graphed else group["lr"]
        self.optimizer = torch.optim.AdamW(
            groups, lr=train.lr, weight_decay=train.weight_decay, fused=fused or None, capturable=graphed,
        )
        steps = 0
        if train.scheduler.kind == "cosine":
            steps = len(self.data.train_loader(epoch=0))
            steps = min(steps, train.max_batches_per_epoch or steps)
        self.scheduler = LrSchedule(
            spec=train.scheduler, optimizer=self.optimizer, epochs=train.epochs, steps_per_epoch=steps
        )
        self.net: torch.nn.Module = self.model
        if self.dist.distributed:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step_net = self.net
        if train.step_mode == "compile":
            self.step_net = torch.compile(self.net, mode=train.compile_mode)
        # masks are checked on the CPU (check_presence) so device steps never wait on the host
        self.model.validate_presence = False
        step_cls = CudaGraphStep if graphed else EagerStep
        self.step = step_cls(
            model=self.step_net, loss_fn=self.loss_fn, optimizer=self.optimizer, device=self.device,
            bf16=self.bf16, grad_clip=train.grad_clip, clip_parameters=self.model.parameters,
        )
        self.start_epoch, self.start_batch = 0, 0
        self.best_dice = -math.inf
        self.history: list[dict[str, Any]] = []
        if resume:
            try:
                self._resume()
            except BaseException:
                self.close()
                raise
        self._interrupted = False

    # -- setup -----------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        """Where checkpoints go."""
        return self.files.checkpoints

    def _setup_logging(self) -> None:
        if not self.dist.is_main:
            return
        handler = logging.FileHandler(self.files.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("fusionkit")
        root.setLevel(logging.INFO)
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == handler.baseFilename for h in root.handlers):
            root.addHandler(handler)
        self._log_handler = handler

    def _resume(self) -> None:
        last = self.ckpt_dir / "last.safetensors"
        if not last.is_file():
            raise ConfigError(f"{self.run_dir}: --resume but no checkpoint at {last}")
        info = load_checkpoint(
            last, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            restore_rng=True, modules=self._extra_modules(),
        )
        self.start_epoch = int(info["epoch"])
        self.start_batch = int(info.get("batch", 0))
        self.best_dice = float(info.get("best_dice", -math.inf))
        self.history = list(info.get("history", []))
        for group in self.optimizer.param_groups:  # a graphed step reads the lr from a tensor
            if self.config.train.step_mode == "cuda_graph" and not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
        logger.info("resumed from %s at epoch %d batch %d", last, self.start_epoch + 1, self.start_batch)

    def _extra_modules(self) -> dict[str, torch.nn.Module]:
        """Models saved beside the trained one in ``last`` (the weight average)."""
        return {} if self.ema is None else {"ema": self.ema.module}

    @property
    def eval_model(self) -> FusionModel:
        """What is validated and kept as ``best``: the weight average when ``train.ema_decay`` is set."""
        return self.model if self.ema is None else self.ema.module

    # -- one epoch ---------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, start_batch: int) -> tuple[float, int, int]:
        train = self.config.train
        loader = self.data.train_loader(epoch=epoch, start_batch=start_batch)
        total = len(loader)
        if train.max_batches_per_epoch is not None:
            total = min(total, max(train.max_batches_per_epoch - start_batch, 0))
        self.net.train()
        self._term_sums: dict[str, torch.Tensor] = {}
        losses = torch.zeros((), device=self.device)
        seen, batch_index = 0, start_batch
        bar = tqdm(
            total=total, desc=f"epoch {epoch + 1}/{train.epochs}", unit="batch",
            disable=not (self.progress and self.dist.is_main), leave=False,
        )
        for step, batch in enumerate(loader):
            if step >= total:
                break
            self.model.check_presence(batch)
            size = len(batch["lesion_id"])
            batch = self.data.to_model_batch(
                move_batch(batch, self.device, channels_last=self.channels_last), epoch=epoch, batch_index=batch_index
            )
            # tensors only: strings (lesion ids) would make torch.compile guard on their values
            if train.mixup.enabled:
                batch, _ = mix_batch(batch, spec=train.mixup, num_classes=len(self.data.class_names))
            loss = self.step({k: v for k, v in batch.items() if k != "lesion_id"})
            self.scheduler.after_step()
            if self.ema is not None:
                self.ema.update(self.model)
            if self.tracker.active:
                for key, value in self.step.terms.items():
                    self._term_sums[key] = self._term_sums.get(key, 0.0) + value * size
            losses += loss * size
            seen += size
            batch_index += 1
            bar.update(1)
            if bar.n % 20 == 1 or bar.n == total:  # reading the loss waits for the GPU: not every step
                bar.set_postfix(loss=f"{float(loss):.4f}")
            if self._interrupted:
                bar.close()
                self._save_last(epoch, batch=batch_index)
                raise KeyboardInterrupt
        bar.close()
        sync_buffers(self.dist, self.model)
        return float(losses) / max(seen, 1), seen, batch_index

    def validate(self) -> tuple[dict[str, Any], float]:
        """Macro metrics and the eq-7 loss (of P_final) on the validation split."""
        preds = predict(
            self.eval_model, self.data.val_loader(), device=self.device, bf16=self.bf16,
            channels_last=self.channels_last, dist_info=self.dist,
            batch_transform=self.data.to_model_batch,
        )
        metrics = isic_metrics(preds.labels, preds.probs, self.data.class_names)
        nll = float(-preds.log_probs[np.arange(len(preds)), preds.labels].mean())
        return metrics, nll

    # -- checkpoints -------------------------------------------------------------------------------
    def _save_last(self, epoch: int, *, batch: int = 0) -> None:
        barrier(self.dist)
        if self.dist.is_main:
            save_checkpoint(
                self.ckpt_dir / "last.safetensors", model=self.model, optimizer=self.optimizer,
                scheduler=self.scheduler, modules=self._extra_modules(),
                info={"epoch": epoch, "batch": batch, "best_dice": self.best_dice, "history": self.history},
            )
        barrier(self.dist)

    def _on_sigint(self, signum, frame) -> None:  # noqa: ARG002
        if self._interrupted:  # second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self._interrupted = True
        if self.dist.is_main:
            tqdm.write("interrupt: finishing this batch and saving a resumable checkpoint ...")

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Train from the start (or where ``resume`` left off) to ``train.epochs``."""
        train = self.config.train
        previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            previous = None
        try:
            epochs = tqdm(
                range(self.start_epoch, train.epochs), initial=self.start_epoch, total=train.epochs,
                desc="training", unit="epoch", disable=not (self.progress and self.dist.is_main),
            )
            for epoch in epochs:
                start_batch = self.start_batch if epoch == self.start_epoch else 0
                began = time.perf_counter()
                train_loss, seen, _ = self._train_epoch(epoch, start_batch)
                seconds = time.perf_counter() - began
                metrics, val_loss = self.validate()
                dice = float(metrics["macro"]["dice"])
                self.scheduler.after_epoch(dice)
                is_best = dice > self.best_dice
                record = EpochRecord(
                    epoch=epoch + 1, train_loss=train_loss, val_loss=val_loss, val_dice=dice,
                    val_auc=float(metrics["macro"]["auc"]), lr=float(self.optimizer.param_groups[0]["lr"]),
                    seconds=seconds, samples_per_s=seen * self.dist.world_size / max(seconds, 1e-9),
                    best=is_best,
                )
                self.history.append(record.__dict__)
                if is_best:
                    self.best_dice = dice
                    if self.dist.is_main:
                        save_checkpoint(
                            self.ckpt_dir / "best.safetensors", model=self.eval_model, include_rng=False,
                            info={"epoch": epoch + 1, "val_metrics": metrics, "val_loss": val_loss},
                        )
                self._save_last(epoch + 1)
                if self.dist.is_main:
                    line = (
                        f"epoch {epoch + 1}/{train.epochs}  train loss {train_loss:.4f}  "
                        f"val loss {val_loss:.4f}  val dice {dice:.4f}  val auc {record.val_auc:.4f}  "
                        f"lr {record.lr:.2e}  {record.samples_per_s:.1f} samples/s"
                        + ("  *best*" if is_best else "")
                    )
                    tqdm.write(line)
                    logger.info(line)
                    atomic_write_text(self.files.history, json.dumps(self.history, indent=2))
                    self._track_epoch(record, metrics, seen)
            epochs.close()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self.after_fit is not None and self.dist.is_main:
            self.after_fit(self.run_dir)
            self.tracker.log_figures(sorted(self.run_dir.glob("*.png")), step=train.epochs)
        barrier(self.dist)
        return self.history

    def _track_epoch(self, record: EpochRecord, metrics: dict[str, Any], seen: int) -> None:
        """Send one epoch to the trackers: each eq-7 term, the validation metrics, each group's lr."""
        if not self.tracker.active:
            return
        values = {"train/loss": record.train_loss, "val/loss": record.val_loss}
        values |= {f"train/loss_{k}": float(v) / max(seen, 1) for k, v in self._term_sums.items()}
        values |= {f"val/{k}": v for k, v in metrics["macro"].items() if not math.isnan(v)}
        values |= {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}
        values["train/samples_per_s"] = record.samples_per_s
        self.tracker.log_scalars(values, step=record.epoch)

    def close(self) -> None:
        """Release the process group, the trackers and the log file."""
        shutdown(self.dist)
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            tracker.close()
        torch.use_deterministic_algorithms(self._was_deterministic)
        handler = getattr(self, "_log_handler", None)
        if handler is not None:
            logging.getLogger("fusionkit").removeHandler(handler)
            handler.close()


def train_run(
    config: RunConfig,
    *,
    run_dir: str | Path,
    data_root: str | Path | None = None,
    synthetic: bool = False,
    resume: bool = False,
    progress: bool = True,
    after_fit: Callable[[Path], object] | None = None,
) -> Trainer:
    """Train a run end to end; returns the trainer (its ``history``, ``model``, ``run_dir``).

    ``after_fit(run_dir)`` runs on the main process once training ends (the evaluation layer passes
    its report writer: :func:`fusionkit.evaluate.train_and_evaluate`); training itself imports
    nothing from :mod:`fusionkit.evaluate`.
    """
    trainer = Trainer(
        config, run_dir=run_dir, data_root=data_root, synthetic=synthetic, resume=resume,
        progress=progress, after_fit=after_fit,
    )
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer

