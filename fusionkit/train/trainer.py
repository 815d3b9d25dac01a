"""The trainer: any ModelSpec, the paper's recipe (Appendix A.2), on CPU, one GPU, or many.

The training loop lives here; the units around it have their own modules: the run directory and
its claim (:mod:`fusionkit.runtime.rundir`, across ranks :mod:`fusionkit.train.lifecycle`), the
start options (:mod:`fusionkit.train.options`), signals (:mod:`fusionkit.train.signals`),
``train.log`` (:mod:`fusionkit.train.runlog`), the trackers (:mod:`fusionkit.train.tracking`) and
the hooks (:mod:`fusionkit.train.callbacks`).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Unpack, cast

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from fusionkit.errors import ConfigError, DivergenceError
from fusionkit.losses import JointIndividualLoss
from fusionkit.metrics import isic_metrics, macro_f1_argmax
from fusionkit.model import FusionModel
from fusionkit.runtime.checkpoint import load_checkpoint, save_checkpoint
from fusionkit.runtime.config import RunConfig, TrainSpec
from fusionkit.runtime.device import move_batch, resolve_device, seed_everything
from fusionkit.runtime.distributed import DistInfo, barrier, init_distributed, shutdown, sync_buffers
from fusionkit.runtime.predict import predict
from fusionkit.runtime.rundir import RunDir, RunStart
from fusionkit.train.callbacks import EpochRecord, TrainerCallback, selection_score
from fusionkit.train.data_setup import RunData, prepare_data
from fusionkit.train.ema import ModelEma
from fusionkit.train.freeze import BackboneFreeze
from fusionkit.train.lifecycle import claim_on_every_rank
from fusionkit.train.mixup import mix_batch
from fusionkit.train.options import RunOptions
from fusionkit.train.param_groups import param_groups
from fusionkit.train.resume import record_resume
from fusionkit.train.runlog import RunLog
from fusionkit.train.schedules import LrSchedule
from fusionkit.train.signals import Interrupts
from fusionkit.train.step import CudaGraphStep, EagerStep
from fusionkit.train.tracking import LossTerms, Tracker, epoch_scalars
from fusionkit.train.warm_start import warm_start
from fusionkit.utils.faults import fault_point
from fusionkit.utils.io import atomic_write_text
from fusionkit.utils.progress import bars_enabled

__all__ = ["EpochRecord", "Trainer", "TrainerCallback", "selection_score", "train_run"]

logger = logging.getLogger("fusionkit.train")


class Trainer:
    """Trains one run; see the module docstring for what the run directory holds.

    The constructor runs the setup steps in order: device and process group, the run directory's
    claim (lock, then start/resume/overwrite; ``options`` are :class:`~fusionkit.train.options.RunOptions`),
    seeding, data, determinism, train.log, model,
    training options (warm start, tracking, weight average), optimizer and scheduler, step, and the
    resume of a checkpoint. ``fit()`` returns the history and
    then calls ``after_fit(run_dir)`` when one was given. ``callbacks`` (:class:`TrainerCallback`)
    are called after every batch and every epoch.

    SIGINT (Ctrl-C) and SIGTERM finish the current batch, write a resumable ``last`` checkpoint that
    records how far the epoch got, and raise :class:`~fusionkit.errors.RunInterrupted`. A non-finite
    loss or weight raises :class:`~fusionkit.errors.DivergenceError` at the end of its epoch, before
    that epoch's checkpoint, so ``last`` stays the last good one. :meth:`interrupt` does what a
    signal does, from code.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        run_dir: str | Path,
        after_fit: Callable[[Path], object] | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        **options: Unpack[RunOptions],
    ) -> None:
        self.run_dir = Path(run_dir)
        self.files = RunDir(self.run_dir)
        self.progress = bars_enabled(options.get("progress", True))
        self.after_fit = after_fit
        self.callbacks = tuple(callbacks)
        self.start_epoch, self.start_batch = 0, 0
        self.best_score = -math.inf
        """The best validation score so far of ``train.selection_metric`` (what picks ``best``)."""
        self.history: list[dict[str, Any]] = []
        self._partial = (0.0, 0)  # loss sum and samples of an interrupted epoch's finished batches
        self.tracker: Tracker | None = None
        self.ema: ModelEma[FusionModel] | None = None
        self._log = RunLog(self.files.log)
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        self._setup_device(config.train)
        self.interrupts = Interrupts(run_dir=self.run_dir, announce=self.dist.is_main)
        synthetic = options.get("synthetic", False)
        try:
            start = claim_on_every_rank(
                self.files,
                self.dist,
                resume=options.get("resume", False),
                overwrite=options.get("overwrite", False),
                requested=config,
                synthetic=synthetic,
            )
            seed_everything(config.train.seed + self.dist.rank)
            self.data: RunData = prepare_data(
                config,
                run_dir=self.run_dir,
                data_root=options.get("data_root"),
                synthetic=synthetic,
                dist_info=self.dist,
                saved=start.saved,
            )
            self.config = self.data.config  # resolved: class weights, data root filled in
            if self.config.train.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            if self.dist.is_main:
                self._log.open()
            logger.info(
                "training on %s; augmentation on the %s (data.augment_on: %s)",
                self.device,
                "device" if self.data.augment_on == "device" else "loader (cpu)",
                self.config.data.augment_on,
            )
            self._build_model()
            self._setup_options(start)
            self._build_optimizer()
            self._build_step()
            self._begin(start)
        except BaseException:
            self._close_resources()
            self.files.abandon()  # removes what a failed start left in a folder it created
            raise

    # -- setup steps -------------------------------------------------------------------------------
    def _setup_device(self, train: TrainSpec) -> None:
        """Device, process group, precision, memory format; a graphed step needs one CUDA GPU."""
        self.dist: DistInfo = init_distributed(resolve_device(train.device))
        self.device = self.dist.device
        self.bf16 = train.precision == "bf16" or (train.precision == "auto" and self.device.type == "cuda")
        self.channels_last = self.device.type == "cuda" if train.channels_last == "auto" else bool(train.channels_last)
        if train.step_mode == "cuda_graph" and (self.device.type != "cuda" or self.dist.distributed):
            shutdown(self.dist)
            raise ConfigError(
                "train.step_mode 'cuda_graph' needs one CUDA GPU (no CPU, no torchrun); use 'eager' or 'compile'"
            )

    def _build_model(self) -> None:
        """The model (eq 5-11 as the spec says), its loss (eq 7), the DDP and compile wrappers."""
        spec, train = self.config.model, self.config.train
        self.model = FusionModel.from_spec(spec, metadata_width=self.data.encoder.metadata_width).to(self.device)
        self.data.use_preprocessing(self.model.preprocessing)  # what the image encoders declare
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # masks are checked on the CPU (check_presence) so device steps never wait on the host
        self.model.validate_presence = False
        if train.grad_checkpointing:
            self.model.set_grad_checkpointing()
        self.freeze = BackboneFreeze(train=train, distributed=self.dist.distributed)
        self.freeze.apply(self.model, epoch=0)  # before DDP, which registers the parameters that train
        self.loss_fn = JointIndividualLoss.from_spec(spec.loss).to(self.device)
        self.net: torch.nn.Module = self.model
        if self.dist.distributed:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step_net: torch.nn.Module = self.net
        if train.step_mode == "compile":
            # compiling a Module gives an OptimizedModule (a Module); torch's stubs say only Callable
            self.step_net = cast(torch.nn.Module, torch.compile(self.net, mode=train.compile_mode))

    def _setup_options(self, start: RunStart) -> None:
        """The options of docs/how-to/training-options.md: warm start (a fresh run only), the
        trackers (rank 0), the weight average."""
        train = self.config.train
        if train.init_from is not None and not start.from_checkpoint:
            logger.info(warm_start(self.model, train.init_from).summary())
        self.tracker = Tracker(
            backends=train.tracking if self.dist.is_main else (),
            run_dir=self.run_dir,
            params={f"train.{k}": v for k, v in train.model_dump(mode="json").items()},
        )
        self.ema = None if train.ema_decay is None else ModelEma(model=self.model, decay=train.ema_decay)

    def _param_groups(self) -> list[dict[str, Any]]:
        train = self.config.train
        return param_groups(
            self.model,
            lr=train.lr,
            weight_decay=train.weight_decay,
            backbone_lr=train.backbone_lr,
            backbone_weight_decay=train.backbone_weight_decay,
            no_decay_norm_bias=train.no_decay_norm_bias,
            layer_decay=train.layer_decay,
        )

    def _build_optimizer(self) -> None:
        """AdamW on the param groups; the schedule (Appendix A.2's ReduceLROnPlateau by default)."""
        train = self.config.train
        graphed = train.step_mode == "cuda_graph"
        groups = self._param_groups()
        for group in groups:  # a graphed step reads the lr from a tensor
            group["lr"] = torch.tensor(group["lr"], device=self.device) if graphed else group["lr"]
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=train.lr,
            weight_decay=train.weight_decay,
            fused=(self.device.type == "cuda") or None,
            capturable=graphed,
        )
        steps = 0
        if train.scheduler.kind == "cosine":
            steps = len(self.data.train_loader(epoch=0))
            steps = min(steps, train.max_batches_per_epoch or steps)
        self.scheduler = LrSchedule(
            spec=train.scheduler, optimizer=self.optimizer, epochs=train.epochs, steps_per_epoch=steps
        )

    def _build_step(self) -> None:
        train = self.config.train
        step_cls = CudaGraphStep if train.step_mode == "cuda_graph" else EagerStep
        self.step = step_cls(
            model=self.step_net,
            loss_fn=self.loss_fn,
            optimizer=self.optimizer,
            device=self.device,
            bf16=self.bf16,
            grad_clip=train.grad_clip,
            clip_parameters=self.model.parameters,
        )

    def _begin(self, start: RunStart) -> None:
        """Load the checkpoint when resuming, apply and record the changed settings."""
        if start.from_checkpoint:
            self._resume()
            for change in self.data.changes:
                logger.warning("resume: %s (applied)", change)
            if any(c.startswith("train.lr:") for c in self.data.changes):
                self._reset_lr()
        if self.dist.is_main and (start.from_checkpoint or start.restarted):
            record_resume(
                self.run_dir,
                epoch=self.start_epoch,
                batch=self.start_batch,
                changes=list(self.data.changes),
                restarted=start.restarted,
            )

    def _reset_lr(self) -> None:
        """Every param group's lr as the (changed) config gives it; plateau reductions start afresh."""
        for group, fresh in zip(self.optimizer.param_groups, self._param_groups(), strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(fresh["lr"])
            else:
                group["lr"] = fresh["lr"]

    def _resume(self) -> None:
        last = self.files.last
        info = load_checkpoint(
            last,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            restore_rng=True,
            modules=self._extra_modules(),
        )
        self.start_epoch = int(info["epoch"])
        self.start_batch = int(info.get("batch", 0))
        self.best_score = float(info.get("best_score", info.get("best_dice", -math.inf)))  # "best_dice": before 2026-12
        self.history = list(info.get("history", []))
        self._partial = (float(info.get("epoch_loss_sum", 0.0)), int(info.get("epoch_seen", 0)))
        if self.dist.is_main:
            self._recover_epoch_records()
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
    def _train_epoch(self, epoch: int, start_batch: int) -> tuple[float, int]:
        """Train one epoch from ``start_batch``; returns (mean loss, samples).

        The loss sum stays on the device (no host sync per step) and is read once at the end; a
        non-finite sum means some step's loss was NaN or infinite (:meth:`_check_finite`).
        """
        train = self.config.train
        loader = self.data.train_loader(epoch=epoch, start_batch=start_batch)
        total = len(loader)
        if train.max_batches_per_epoch is not None:
            total = min(total, max(train.max_batches_per_epoch - start_batch, 0))
        self.net.train()
        self.freeze.apply(self.model, epoch)  # the backbone freeze follows the epoch (resumable)
        self._terms = LossTerms()
        loss_sum, seen = self._partial if start_batch else (0.0, 0)
        self._partial = (0.0, 0)
        losses = torch.full((), loss_sum, device=self.device)
        batch_index = start_batch
        bar = tqdm(
            total=total,
            desc=f"epoch {epoch + 1}/{train.epochs}",
            unit="batch",
            disable=not (self.progress and self.dist.is_main),
            leave=False,
        )
        for step, batch in enumerate(loader):
            if step >= total:
                break
            self.model.check_presence(batch)
            size = len(batch["lesion_id"])
            batch = self.data.to_model_batch(
                move_batch(batch, self.device, channels_last=self.channels_last), epoch=epoch, batch_index=batch_index
            )
            if train.mixup.enabled:
                batch, _ = mix_batch(batch, spec=train.mixup, num_classes=len(self.data.class_names))
            # tensors only: strings (lesion ids) would make torch.compile guard on their values
            loss = self.step({k: v for k, v in batch.items() if k != "lesion_id"})
            self.scheduler.after_step()
            if self.ema is not None:
                self.ema.update(self.model)
            if self.tracker is not None and self.tracker.active:
                self._terms.add(self.step.terms, size)
            losses += loss * size
            seen += size
            for callback in self.callbacks:
                callback.on_batch_end(self, epoch=epoch, batch_index=batch_index, loss=loss)
            fault_point("train.batch-done")
            batch_index += 1
            bar.update(1)
            if bar.n % 20 == 1 or bar.n == total:  # reading the loss waits for the GPU: not every step
                bar.set_postfix(loss=f"{float(loss):.4f}")
            if self.interrupts.signum:
                bar.close()
                self._check_finite(epoch, float(losses))
                self._save_last(epoch, batch=batch_index, partial=(float(losses), seen))
                self.interrupts.raise_if_requested()
        bar.close()
        sync_buffers(self.dist, self.model)
        mean = float(losses) / max(seen, 1)
        self._check_finite(epoch, mean)
        return mean, seen

    def _check_finite(self, epoch: int, loss: float) -> None:
        """Raise :class:`DivergenceError` if the epoch's loss or any weight is NaN or infinite."""
        finite = math.isfinite(loss)
        if finite:  # a finite loss can still have left non-finite weights (the last step's update)
            finite = bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all())
        if not finite:
            raise self._divergence(epoch, "the loss or the weights")

    def _divergence(self, epoch: int, what: str) -> DivergenceError:
        kept = (
            f"the last good checkpoint is {self.files.checkpoint('last')} (end of epoch {epoch})"
            if epoch > 0
            else "no checkpoint was saved"
        )
        return DivergenceError(
            f"training diverged in epoch {epoch + 1}: {what} became NaN or infinite "
            f"(train.lr {self.config.train.lr:g} may be too high); {kept}",
            epoch=epoch + 1,
        )

    def validate(self) -> tuple[dict[str, Any], float]:
        """Macro metrics and the eq-7 loss (of P_final) on the validation split."""
        preds = predict(
            self.eval_model,
            self.data.val_loader(),
            device=self.device,
            bf16=self.bf16,
            channels_last=self.channels_last,
            dist_info=self.dist,
            batch_transform=self.data.to_model_batch,
        )
        if not np.isfinite(preds.probs).all():  # finite but huge weights can still overflow
            raise self._divergence(len(self.history), "the validation probabilities")
        metrics = isic_metrics(preds.labels, preds.probs, self.data.class_names)
        metrics["macro_f1_argmax"] = macro_f1_argmax(preds.labels, preds.probs)  # train.selection_metric f1
        nll = float(-preds.log_probs[np.arange(len(preds)), preds.labels].mean())
        return metrics, nll

    # -- checkpoints and signals -------------------------------------------------------------------
    def _save_last(self, epoch: int, *, batch: int = 0, partial: tuple[float, int] = (0.0, 0)) -> None:
        """The resumable checkpoint; mid-epoch it also holds the finished batches' loss sum."""
        barrier(self.dist)
        if self.dist.is_main:
            save_checkpoint(
                self.files.last,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                modules=self._extra_modules(),
                info={
                    "epoch": epoch,
                    "batch": batch,
                    "best_score": self.best_score,
                    "history": self.history,
                    "epoch_loss_sum": partial[0],
                    "epoch_seen": partial[1],
                },
            )
        barrier(self.dist)

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        """Stop the run as a first SIGINT (Ctrl-C) or SIGTERM ``signum`` would: the current batch
        finishes (called before :meth:`fit`: the first batch), a resumable ``last`` checkpoint records
        how far the epoch got (during validation: the whole epoch), and :meth:`fit` raises
        :class:`~fusionkit.errors.RunInterrupted` (exit code 128 + ``signum``). For a callback or
        another thread; call it on every rank of a distributed run."""
        self.interrupts.request(signum)

    # -- the loop ------------------------------------------------------------------------------------
    def _train_and_check(self, epoch: int) -> tuple[EpochRecord, dict[str, Any], int]:
        """One epoch, its validation, the scheduler step and the checkpoints; returns its record,
        the validation metrics and the number of training samples."""
        start_batch = self.start_batch if epoch == self.start_epoch else 0
        began = time.perf_counter()
        train_loss, seen = self._train_epoch(epoch, start_batch)
        seconds = time.perf_counter() - began
        metrics, val_loss = self.validate()
        dice = float(metrics["macro"]["dice"])
        score = selection_score(metrics, self.config.train.selection_metric)
        self.scheduler.after_epoch(score)
        is_best = score > self.best_score
        lr = self.optimizer.param_groups[0]["lr"]
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=train_loss,
            val_loss=val_loss,
            val_dice=dice,
            val_auc=float(metrics["macro"]["auc"]),
            lr=float(lr),
            seconds=seconds,
            samples_per_s=seen * self.dist.world_size / max(seconds, 1e-9),
            best=is_best,
        )
        self.history.append(record.__dict__)
        if is_best:
            self.best_score = score
            if self.dist.is_main:
                save_checkpoint(
                    self.files.best,
                    model=self.eval_model,
                    include_rng=False,
                    info={"epoch": epoch + 1, "val_metrics": metrics, "val_loss": val_loss},
                )
        self._save_last(epoch + 1)
        fault_point("train.epoch-checkpointed")
        return record, metrics, seen

    def _epoch_line(self, record: EpochRecord) -> str:
        return (
            f"epoch {record.epoch}/{self.config.train.epochs}  train loss {record.train_loss:.4f}  "
            f"val loss {record.val_loss:.4f}  val dice {record.val_dice:.4f}  val auc {record.val_auc:.4f}  "
            f"lr {record.lr:.2e}  {record.samples_per_s:.1f} samples/s" + ("  *best*" if record.best else "")
        )

    def _recover_epoch_records(self) -> None:
        """After a resume: the epochs the checkpoint holds but history.json and train.log lack.

        The last checkpoint is written before an epoch's report, so a kill between the two leaves
        them an epoch behind; the records come back from the checkpoint (and, for the final epoch,
        there is no later epoch whose report would have rewritten them)."""
        try:
            written = len(json.loads(self.files.history.read_text()))
        except (OSError, ValueError, TypeError):
            written = 0
        if written >= len(self.history):
            return
        for entry in self.history[written:]:
            try:
                line = self._epoch_line(EpochRecord(**entry))
            except TypeError:  # a record of another layout: history.json still gets it
                line = f"epoch {entry.get('epoch')}"
            logger.info("%s  (recovered from the last checkpoint)", line)
        atomic_write_text(self.files.history, json.dumps(self.history, indent=2))

    def _report(self, record: EpochRecord, metrics: dict[str, Any], seen: int) -> None:
        """One line per epoch on stdout and in train.log; history.json rewritten; the trackers."""
        if not self.dist.is_main:
            return
        line = self._epoch_line(record)
        tqdm.write(line)
        logger.info(line)
        atomic_write_text(self.files.history, json.dumps(self.history, indent=2))
        if self.tracker is not None and self.tracker.active:
            scalars = epoch_scalars(
                train_loss=record.train_loss,
                val_loss=record.val_loss,
                samples_per_s=record.samples_per_s,
                terms=self._terms,
                seen=seen,
                metrics=metrics,
                param_groups=self.optimizer.param_groups,
            )
            self.tracker.log_scalars(scalars, step=record.epoch)

    def fit(self) -> list[dict[str, Any]]:
        """Train from the start (or where ``resume`` left off) to ``train.epochs``."""
        train = self.config.train
        with self.interrupts:  # SIGINT/SIGTERM: finish the batch, save, stop
            epochs = tqdm(
                range(self.start_epoch, train.epochs),
                initial=self.start_epoch,
                total=train.epochs,
                desc="training",
                unit="epoch",
                disable=not (self.progress and self.dist.is_main),
            )
            for epoch in epochs:
                record, metrics, seen = self._train_and_check(epoch)
                self._report(record, metrics, seen)
                for callback in self.callbacks:
                    callback.on_epoch_end(self, record=record, metrics=metrics)
                if self.interrupts.signum:  # the signal came during validation: the epoch is saved
                    epochs.close()
                    self.interrupts.raise_if_requested()
            epochs.close()
        if self.after_fit is not None and self.dist.is_main:
            self.after_fit(self.run_dir)
            if self.tracker is not None:
                self.tracker.log_figures(sorted(self.run_dir.glob("*.png")), step=train.epochs)
        barrier(self.dist)
        return self.history

    def _close_resources(self) -> None:
        """Everything :meth:`close` lets go but the run lock."""
        shutdown(self.dist)
        if self.tracker is not None:
            self.tracker.close()
        torch.use_deterministic_algorithms(self._was_deterministic)
        self._log.close()

    def close(self) -> None:
        """Release the process group, the trackers, train.log and the run lock (safe on a
        half-built trainer, and twice)."""
        self._close_resources()
        self.files.release()


def train_run(
    config: RunConfig,
    *,
    run_dir: str | Path,
    after_fit: Callable[[Path], object] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    **options: Unpack[RunOptions],
) -> Trainer:
    """Train a run end to end; returns the trainer (its ``history``, ``model``, ``run_dir``).

    ``options`` are :class:`~fusionkit.train.options.RunOptions` (``data_root``, ``synthetic``,
    ``resume``, ``overwrite``, ``progress``). ``after_fit(run_dir)`` runs on the main process once
    training ends: :func:`fusionkit.evaluate.train_and_evaluate` passes the storing of the decision
    rule (:func:`fusionkit.inference.pipeline.store_run_decision`, ``inference.json``) and its
    report; training itself imports neither :mod:`fusionkit.inference` nor :mod:`fusionkit.evaluate`. ``callbacks`` go to the :class:`Trainer`.
    """
    trainer = Trainer(config, run_dir=run_dir, after_fit=after_fit, callbacks=callbacks, **options)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer
