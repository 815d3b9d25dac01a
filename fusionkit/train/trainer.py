"""The trainer: any ModelSpec, the paper's recipe (Appendix A.2), on CPU, one GPU, or many.

What the run directory holds is listed in :mod:`fusionkit.runtime.rundir`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from fusionkit.errors import ConfigError, DivergenceError, FusionkitError, RunInterrupted
from fusionkit.inference.pipeline import store_run_decision
from fusionkit.inference.predict import predict
from fusionkit.losses import JointIndividualLoss
from fusionkit.metrics import isic_metrics, macro_f1_argmax
from fusionkit.model import FusionModel
from fusionkit.runtime.checkpoint import load_checkpoint, save_checkpoint
from fusionkit.runtime.config import RunConfig, TrainSpec, load_run_config
from fusionkit.runtime.device import move_batch, resolve_device, seed_everything
from fusionkit.runtime.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown,
    sync_buffers,
)
from fusionkit.runtime.lock import LOCK_NAME, RunLock
from fusionkit.runtime.rundir import RunFiles
from fusionkit.train.data_setup import RunData, prepare_data
from fusionkit.train.ema import ModelEma
from fusionkit.train.mixup import mix_batch
from fusionkit.train.param_groups import param_groups
from fusionkit.train.resume import RunStart, claim_run_dir, record_resume
from fusionkit.train.schedules import LrSchedule
from fusionkit.train.step import CudaGraphStep, EagerStep
from fusionkit.train.tracking import Tracker
from fusionkit.train.warm_start import warm_start
from fusionkit.utils.io import atomic_write_text
from fusionkit.utils.progress import bars_enabled

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


class Trainer:
    """Trains one run; see the module docstring for what the run directory holds.

    The constructor runs the setup steps in order (each a method below): device and process group,
    run directory (lock, start/resume/overwrite), seeding, data, determinism, logging, model,
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
        data_root: str | Path | None = None,
        synthetic: bool = False,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        after_fit: Callable[[Path], object] | None = None,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        self.run_dir = Path(run_dir)
        self.files = RunFiles(self.run_dir)
        self.progress = bars_enabled(progress)
        self.after_fit = after_fit
        self.callbacks = tuple(callbacks)
        self.start_epoch, self.start_batch = 0, 0
        self.best_dice = -math.inf
        self.history: list[dict[str, Any]] = []
        self._partial = (0.0, 0)  # loss sum and samples of an interrupted epoch's finished batches
        self._interrupted = 0  # the signal number interrupt() was given; 0 while none was
        self._lock: RunLock | None = None
        self.tracker: Tracker | None = None
        self.ema: ModelEma[FusionModel] | None = None
        self._log_handler: logging.Handler | None = None
        self._created_dir = False
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        self._setup_device(config.train)
        try:
            start = self._claim_run_dir(resume=resume, overwrite=overwrite)
            seed_everything(config.train.seed + self.dist.rank)
            self.data: RunData = prepare_data(
                config,
                run_dir=self.run_dir,
                data_root=data_root,
                synthetic=synthetic,
                dist_info=self.dist,
                saved=start.saved,
            )
            self.config = self.data.config  # resolved: class weights, data root filled in
            self._setup_determinism()
            self._setup_logging()
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
            self._abandon_start()
            raise

    def _abandon_start(self) -> None:
        """Undo a failed start: close everything and, if this process made the run directory and no
        checkpoint exists, remove it. The directory's contents go while the lock is still held, so a
        process waiting for the lock never finds its own new run deleted."""
        lock, self._lock = self._lock, None
        self.close()
        remove = lock is not None and self._created_dir and not self.files.checkpoint("last").is_file()
        if remove:
            for path in self.run_dir.iterdir():
                if path.name == LOCK_NAME:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        if lock is not None:
            lock.release()
        if remove:
            with contextlib.suppress(OSError):  # not empty: another process has claimed it since
                self.run_dir.rmdir()

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

    def _claim_run_dir(self, *, resume: bool, overwrite: bool) -> RunStart:
        """Lock the run directory (rank 0) and decide how the run starts (:mod:`fusionkit.train.resume`).

        Under torchrun a refusal on rank 0 (a run already there, a held lock) is raised on every rank.
        """
        start = RunStart(saved=None)
        refused: FusionkitError | None = None
        if self.dist.is_main:
            created = not self.run_dir.exists()
            try:
                self._lock = RunLock(self.run_dir).acquire()
                self._created_dir = created  # only a process that holds the lock may remove what it made
                start = claim_run_dir(self.run_dir, resume=resume, overwrite=overwrite)
            except FusionkitError as exc:  # told to every rank first, or they would wait forever
                refused = exc
            if start.restarted:
                logger.warning("%s: no checkpoint yet; starting the run from the beginning", self.run_dir)
        # a broadcast, not a barrier: the other ranks learn whether rank 0 took the run directory
        reason = broadcast_object(self.dist, None if refused is None else str(refused))
        if refused is not None:
            raise refused
        if reason is not None:
            raise ConfigError(f"rank 0 refused the run: {reason}")
        if not self.dist.is_main and resume and self.files.checkpoint("last").is_file():
            start = RunStart(saved=load_run_config(self.files.config))
        return start

    def _setup_determinism(self) -> None:
        if self.config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _setup_logging(self) -> None:
        if not self.dist.is_main:
            return
        handler = logging.FileHandler(self.files.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("fusionkit")
        root.setLevel(logging.INFO)
        if not any(
            isinstance(h, logging.FileHandler) and h.baseFilename == handler.baseFilename for h in root.handlers
        ):
            root.addHandler(handler)
        self._log_handler = handler

    def _build_model(self) -> None:
        """The model (eq 5-11 as the spec says), its loss (eq 7), the DDP and compile wrappers."""
        spec, train = self.config.model, self.config.train
        self.model = FusionModel.from_spec(spec, metadata_width=self.data.encoder.metadata_width).to(self.device)
        self.data.use_preprocessing(self.model.preprocessing)  # what the image encoders declare
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # masks are checked on the CPU (check_presence) so device steps never wait on the host
        self.model.validate_presence = False
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
        last = self.files.checkpoint("last")
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
        self.best_dice = float(info.get("best_dice", -math.inf))
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
    def _train_epoch(self, epoch: int, start_batch: int) -> tuple[float, int, int]:
        """Train one epoch from ``start_batch``; returns (mean loss, samples, batches done).

        The loss sum stays on the device (no host sync per step) and is read once at the end; a
        non-finite sum means some step's loss was NaN or infinite (:meth:`_check_finite`).
        """
        train = self.config.train
        loader = self.data.train_loader(epoch=epoch, start_batch=start_batch)
        total = len(loader)
        if train.max_batches_per_epoch is not None:
            total = min(total, max(train.max_batches_per_epoch - start_batch, 0))
        self.net.train()
        self._term_sums: dict[str, torch.Tensor] = {}
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
                for key, value in self.step.terms.items():
                    self._term_sums[key] = self._term_sums.get(key, 0.0) + value * size
            losses += loss * size
            seen += size
            for callback in self.callbacks:
                callback.on_batch_end(self, epoch=epoch, batch_index=batch_index, loss=loss)
            batch_index += 1
            bar.update(1)
            if bar.n % 20 == 1 or bar.n == total:  # reading the loss waits for the GPU: not every step
                bar.set_postfix(loss=f"{float(loss):.4f}")
            if self._interrupted:
                bar.close()
                self._check_finite(epoch, float(losses))
                self._save_last(epoch, batch=batch_index, partial=(float(losses), seen))
                self._raise_interrupted()
        bar.close()
        sync_buffers(self.dist, self.model)
        mean = float(losses) / max(seen, 1)
        self._check_finite(epoch, mean)
        return mean, seen, batch_index

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
                self.files.checkpoint("last"),
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                modules=self._extra_modules(),
                info={
                    "epoch": epoch,
                    "batch": batch,
                    "best_dice": self.best_dice,
                    "history": self.history,
                    "epoch_loss_sum": partial[0],
                    "epoch_seen": partial[1],
                },
            )
        barrier(self.dist)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self._interrupted:  # a second signal: stop at once
            raise RunInterrupted(signum, self.run_dir)
        self.interrupt(signum)
        if self.dist.is_main:
            tqdm.write("interrupt: finishing this batch and saving a resumable checkpoint ...", file=sys.stderr)

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        """Stop the run as a first SIGINT (Ctrl-C) or SIGTERM ``signum`` would: the current batch
        finishes (called before :meth:`fit`: the first batch), a resumable ``last`` checkpoint records
        how far the epoch got (during validation: the whole epoch), and :meth:`fit` raises
        :class:`~fusionkit.errors.RunInterrupted` (exit code 128 + ``signum``). For a callback or
        another thread; call it on every rank of a distributed run."""
        self._interrupted = int(signum)

    def _raise_interrupted(self) -> None:
        raise RunInterrupted(int(self._interrupted), self.run_dir)

    # -- the loop ------------------------------------------------------------------------------------
    def _train_and_check(self, epoch: int) -> tuple[EpochRecord, dict[str, Any], int]:
        """One epoch, its validation, the scheduler step and the checkpoints; returns its record,
        the validation metrics and the number of training samples."""
        start_batch = self.start_batch if epoch == self.start_epoch else 0
        began = time.perf_counter()
        train_loss, seen, _ = self._train_epoch(epoch, start_batch)
        seconds = time.perf_counter() - began
        metrics, val_loss = self.validate()
        dice = float(metrics["macro"]["dice"])
        score = selection_score(metrics, self.config.train.selection_metric)  # best_dice holds this score
        self.scheduler.after_epoch(score)
        is_best = score > self.best_dice
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
            self.best_dice = score
            if self.dist.is_main:
                save_checkpoint(
                    self.files.checkpoint("best"),
                    model=self.eval_model,
                    include_rng=False,
                    info={"epoch": epoch + 1, "val_metrics": metrics, "val_loss": val_loss},
                )
        self._save_last(epoch + 1)
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
        self._track_epoch(record, metrics, seen)

    def _track_epoch(self, record: EpochRecord, metrics: dict[str, Any], seen: int) -> None:
        """Send one epoch to the trackers: each eq-7 term, the validation metrics, each group's lr."""
        if self.tracker is None or not self.tracker.active:
            return
        values = {"train/loss": record.train_loss, "val/loss": record.val_loss}
        values |= {f"train/loss_{k}": float(v) / max(seen, 1) for k, v in self._term_sums.items()}
        values |= {f"val/{k}": v for k, v in metrics["macro"].items() if not math.isnan(v)}
        values |= {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}
        values["train/samples_per_s"] = record.samples_per_s
        self.tracker.log_scalars(values, step=record.epoch)

    def fit(self) -> list[dict[str, Any]]:
        """Train from the start (or where ``resume`` left off) to ``train.epochs``."""
        train = self.config.train
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread
                pass
        try:
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
                if self._interrupted:  # the signal came during validation: the epoch is saved
                    epochs.close()
                    self._raise_interrupted()
            epochs.close()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.dist.is_main:  # the decision rule travels with the model: predicting never reads the training data
            store_run_decision(self.run_dir, device=self.device)
        if self.after_fit is not None and self.dist.is_main:
            self.after_fit(self.run_dir)
            if self.tracker is not None:
                self.tracker.log_figures(sorted(self.run_dir.glob("*.png")), step=train.epochs)
        barrier(self.dist)
        return self.history

    def close(self) -> None:
        """Release the process group, the trackers, the log file and the run lock (safe on a
        half-built trainer)."""
        shutdown(self.dist)
        if self.tracker is not None:
            self.tracker.close()
        torch.use_deterministic_algorithms(self._was_deterministic)
        if self._log_handler is not None:
            logging.getLogger("fusionkit").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def train_run(
    config: RunConfig,
    *,
    run_dir: str | Path,
    data_root: str | Path | None = None,
    synthetic: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    after_fit: Callable[[Path], object] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    """Train a run end to end; returns the trainer (its ``history``, ``model``, ``run_dir``).

    ``after_fit(run_dir)`` runs on the main process once training ends (the evaluation layer passes
    its report writer: :func:`fusionkit.evaluate.train_and_evaluate`); training itself imports
    nothing from :mod:`fusionkit.evaluate`. ``callbacks`` go to the :class:`Trainer`.
    """
    trainer = Trainer(
        config,
        run_dir=run_dir,
        data_root=data_root,
        synthetic=synthetic,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        after_fit=after_fit,
        callbacks=callbacks,
    )
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer
