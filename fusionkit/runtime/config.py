"""Run configs: one YAML file holding the model spec, the training recipe and the data settings.

The training defaults are the paper's Appendix A.2: AdamW (lr 1e-4, weight decay 1e-5),
ReduceLROnPlateau, 50 epochs, batch 16, an 80/20 lesion-level split, and the checkpoint with the
best validation macro Dice (the ISIC macro F1) kept.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, ValidationError, model_validator

from fusionkit.components.base import FrozenSpec
from fusionkit.data.transforms import AugmentConfig
from fusionkit.errors import ConfigError
from fusionkit.presets import apply_overrides, expand_preset
from fusionkit.specs.io import field_error, read_mapping
from fusionkit.specs.model import ModelSpec

MAX_SEED = 2**32 - 1
"""Largest seed (numpy's seed range); seeds are non-negative."""
MAX_LR = 10.0
"""Largest learning rate a spec accepts: far above any useful one, and far below float32 overflow in AdamW."""
MAX_WORKERS = 64
"""Most DataLoader workers a spec accepts (each is a process: 100,000 spawned ~1,500 before it was stopped)."""


class SchedulerSpec(FrozenSpec):
    """The learning-rate schedule: the paper's ReduceLROnPlateau, or linear warmup then cosine.

    ``plateau`` (default): ``torch.optim.lr_scheduler.ReduceLROnPlateau`` on the validation macro
    Dice (mode max), stepped per epoch; the paper names the scheduler only, factor 0.5 and
    patience 3 are fusionkit's choices. ``cosine``: ``warmup_epochs`` of linear warmup, then a
    cosine decay to ``min_lr`` over the rest of the run, stepped per optimizer step
    (:mod:`fusionkit.train.schedules`).
    """

    kind: Literal["plateau", "cosine"] = Field(
        default="plateau",
        description="plateau (the paper's ReduceLROnPlateau on val macro Dice, per epoch) or cosine "
        "(linear warmup then cosine decay, per optimizer step).",
    )
    factor: float = Field(default=0.5, gt=0.0, lt=1.0, description="plateau: multiply the lr by this when Dice stalls.")
    patience: int = Field(default=3, ge=0, description="plateau: epochs without improvement before the lr drops.")
    min_lr: float = Field(default=1e-7, ge=0.0, description="plateau: lowest lr; cosine: the lr the decay ends at.")
    warmup_epochs: float = Field(
        default=0.0, ge=0.0, description="cosine: epochs (fractions allowed) of linear warmup from lr/W to lr."
    )

    @model_validator(mode="after")
    def _warmup_needs_cosine(self) -> SchedulerSpec:
        if self.kind == "plateau" and self.warmup_epochs > 0:
            raise ValueError("warmup_epochs needs kind: cosine (plateau has no warmup)")
        return self


class MixupSpec(FrozenSpec):
    """Mixup and cutmix on whole lesions (:mod:`fusionkit.train.mixup`); off by default.

    With probability ``prob`` a batch is mixed with a shuffled copy of itself: cutmix (when
    ``cutmix_alpha > 0``, chosen with probability ``switch_prob`` if mixup is also on) pastes the
    same box into both images of a lesion; mixup blends both images and the metadata. Labels
    become soft targets weighted by the mixed share, and the eq-7 loss takes them.
    """

    mixup_alpha: float = Field(
        default=0.0, ge=0.0, description="Beta(alpha, alpha) for the mixup weight (0: no mixup)."
    )
    cutmix_alpha: float = Field(
        default=0.0, ge=0.0, description="Beta(alpha, alpha) for the cutmix area (0: no cutmix)."
    )
    prob: float = Field(default=1.0, ge=0.0, le=1.0, description="Probability that a batch is mixed.")
    switch_prob: float = Field(
        default=0.5, ge=0.0, le=1.0, description="With both on: probability of cutmix rather than mixup."
    )

    @property
    def enabled(self) -> bool:
        """Whether any mixing happens."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


class TrainSpec(FrozenSpec):
    """The training recipe (defaults: Appendix A.2) and how fast it runs.

    - ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    - ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on the CPU), ``bf16`` or ``fp32``.
    - ``channels_last``: ``auto`` (on CUDA) or a bool.
    - ``step_mode``: ``eager``; ``cuda_graph`` (the whole step — forward, backward, AdamW — captured
      once in a CUDA graph and replayed, so batch 16 is not launch-bound; one GPU, CUDA only); or
      ``compile`` (``torch.compile`` of the model with ``compile_mode``).
    - ``class_weighting``: ``none`` or ``inverse_frequency`` (weights the CE terms of eq 7);
      ``sampler``: ``shuffle`` or ``balanced`` (class-balanced sampling with replacement).
    - ``max_batches_per_epoch``: cap for quick runs (``null`` = whole epoch).
    """

    epochs: int = Field(default=50, ge=1, le=100_000)
    """Epochs to train (50 in the paper)."""
    batch_size: int = Field(default=16, ge=1, le=65_536)
    """Training batch size per process (16 in the paper)."""
    eval_batch_size: int | None = Field(default=None, ge=1, le=65_536)
    """Evaluation batch size (default: twice batch_size)."""
    lr: float = Field(default=1e-4, gt=0.0, le=MAX_LR)
    """AdamW learning rate (1e-4 in the paper)."""
    weight_decay: float = Field(default=1e-5, ge=0.0)
    """AdamW weight decay (1e-5 in the paper)."""
    scheduler: SchedulerSpec = SchedulerSpec()
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seeds initialisation, sampling order, augmentation and dropout."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    step_mode: Literal["eager", "compile", "cuda_graph"] = "eager"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "reduce-overhead"
    class_weighting: Literal["none", "inverse_frequency"] = "none"
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    max_batches_per_epoch: PositiveInt | None = None
    """Cap on batches per epoch, for quick runs (null: the whole epoch)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms (exact resume on the CPU; slower on CUDA)."""
    grad_clip: float | None = Field(default=None, gt=0.0)
    """Clip the gradient norm to this value (null: no clipping)."""
    selection_metric: Literal["dice", "f1", "auc"] = Field(
        default="dice",
        description="Validation metric that picks the best checkpoint and drives ReduceLROnPlateau: dice (the "
        "ISIC macro Dice at > 0.5, the paper's choice), f1 (macro F1 of the argmax) or auc (macro AUC).",
    )
    ema_decay: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Keep an exponential moving average of the weights with this decay (e.g. 0.999) and "
        "validate, select and save the averaged weights (null: off).",
    )
    backbone_lr: float | None = Field(
        default=None, gt=0.0, le=MAX_LR, description="Learning rate of the image backbones (null: train.lr)."
    )
    backbone_weight_decay: float | None = Field(
        default=None, ge=0.0, description="Weight decay of the image backbones (null: train.weight_decay)."
    )
    no_decay_norm_bias: bool = Field(
        default=False, description="No weight decay on normalisation weights and biases (any 1-d tensor)."
    )
    layer_decay: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Layer-wise lr decay d of the image backbones: layer k of L (0 = the input end) trains at "
        "(backbone_lr or lr) * d ** (L - k), per block for a ViT and per stage for a CNN (null: off).",
    )
    freeze_backbone_epochs: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="Train only the fusion, heads and gate for this many epochs with the image backbones frozen "
        "(eval mode, no gradients), then unfreeze them (0: off).",
    )
    linear_probe: bool = Field(
        default=False,
        description="Keep the image backbones frozen (eval mode, no gradients) for the whole run: a linear probe "
        "of their features by the fusion and heads.",
    )
    grad_checkpointing: bool = Field(
        default=False,
        description="Recompute the image backbones' activations in the backward pass (less memory, slower), "
        "through timm's set_grad_checkpointing.",
    )
    mixup: MixupSpec = MixupSpec()
    init_from: Path | None = Field(
        default=None,
        description="Warm start: a run directory (its best checkpoint), a checkpoint or a safetensors "
        "weights file; tensors whose names and shapes match are loaded, the rest are listed in the log.",
    )
    tracking: tuple[Literal["tensorboard", "mlflow"], ...] = Field(
        default=(),
        description="Experiment trackers: tensorboard (event files in <run>/tensorboard) and/or mlflow "
        "(the mlflow extra); per-epoch loss terms, validation metrics, lr and the report figures.",
    )

    @model_validator(mode="after")
    def _freeze_is_one_schedule(self) -> TrainSpec:
        if self.linear_probe and self.freeze_backbone_epochs:
            raise ValueError(
                "linear_probe freezes the backbones for the whole run; leave freeze_backbone_epochs at 0 with it"
            )
        if self.freeze_backbone_epochs and self.step_mode == "cuda_graph":
            raise ValueError(
                "freeze_backbone_epochs changes which weights train mid-run, which a captured CUDA graph cannot "
                "follow; use step_mode eager or compile"
            )
        if self.linear_probe and self.step_mode == "cuda_graph":
            raise ValueError("linear_probe is not supported with step_mode cuda_graph yet; use eager or compile")
        return self


class SyntheticSpec(FrozenSpec):
    """A generated MILK10k-layout set (used by ``--synthetic``).

    ``photo_size`` is the ``(width, height)`` of the generated JPEGs, not the model's square
    ``image_size`` (the transforms resize the photos to that). A config that still says
    ``image_size`` here (its name before) is read as ``photo_size``, with a ``FutureWarning``.
    """

    n_lesions: int = Field(default=200, ge=1, le=100_000)
    photo_size: tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]] = (96, 72)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)

    @model_validator(mode="before")
    @classmethod
    def _renamed_image_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and "image_size" in data and "photo_size" not in data:
            warnings.warn(
                "data.synthetic.image_size is now data.synthetic.photo_size (the generated JPEGs' width and height)",
                FutureWarning,
                stacklevel=2,
            )
            data = {("photo_size" if k == "image_size" else k): v for k, v in data.items()}
        return data


class DataSpec(FrozenSpec):
    """Where the data comes from and how it is loaded.

    ``root`` is a MILK10k folder (the command line's ``--data`` overrides it); ``synthetic`` is the
    generated set used with ``--synthetic``. ``val_fraction`` is the lesion-level stratified split.
    """

    root: Path | None = None
    """A MILK10k folder (the command line's --data overrides it)."""
    synthetic: SyntheticSpec = SyntheticSpec()
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Share of lesions in the validation split (0.2 in the paper): what selects the checkpoint, fits
    the decision thresholds and drives early stopping and the learning-rate plateau."""
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Share of all lesions held out as a test part that no selection sees (0: none, the paper's setup).
    Lesion-level and stratified, carved before the validation split (or before the ``folds``); the
    run's report and a sweep's numbers are computed on it when it is set
    (``fusionkit.data.train_val_test_split``)."""
    split_seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seeds the lesion-level split (train/validation, or the k folds)."""
    folds: int | None = Field(default=None, ge=2)
    """k-fold cross-validation: the number of lesion-level stratified folds (null: one split by
    ``val_fraction``). With it, ``fold`` picks the validation fold (``fusionkit.data.kfold_splits``)."""
    fold: int = Field(default=0, ge=0)
    """Which of the ``folds`` folds is the validation set (0-based; only with ``folds``)."""
    split_file: Path | None = None
    """A supplied split instead of a drawn one (``split_seed``, ``val_fraction`` and ``test_fraction``
    then unused): JSON lesion ids per part, ``{"train": [...], "val": [...]}`` with an optional held-out
    ``"test": [...]`` (a run's ``split.json`` is one), or per fold, ``{"folds": [...]}`` with ``folds``
    set to their number (``fusionkit.data.read_split_file``)."""
    num_workers: int = Field(default=0, ge=0, le=MAX_WORKERS)
    """DataLoader workers (0 is fastest for the cached uint8 pipeline without heavy augmentation)."""
    cache: bool = True
    """Keep a memory-mapped uint8 cache of resized images (no JPEG decoding after the first epoch)."""
    cache_dir: Path | None = None
    """Where the cache lives (default $FUSIONKIT_CACHE or ~/.cache/fusionkit)."""
    missing_image: Literal["error", "absent"] = "error"
    """A lesion with one image: an error, or the image marked absent in the presence masks."""
    metadata_features: tuple[Literal["age", "sex", "site", "skin_tone", "monet", "altered"], ...] = (
        "age",
        "sex",
        "site",
        "skin_tone",
        "monet",
        "altered",
    )
    """The metadata feature groups the model sees (default all). Leave out ``monet`` to train a model
    that needs no MONET concept scores (a clinic has none for a new photo); see
    :class:`fusionkit.data.MetadataEncoder`."""
    augment: AugmentConfig = AugmentConfig()
    augment_on: Literal["auto", "cpu", "device"] = "auto"
    """Where training augmentation runs: ``device`` (whole batches on the training device after the
    uint8 batch arrives, seeded per (seed, epoch, batch); the loader only copies cached images),
    ``cpu`` (per image in the DataLoader), or ``auto``: ``device`` when training on a GPU, ``cpu``
    otherwise (on a CPU the batched ops are slower than per-image ones: benchmarks/results/loading-*).
    Both draw from the same distribution; train.log says which ran."""

    @model_validator(mode="after")
    def _features_known(self) -> DataSpec:
        from fusionkit.data.metadata import check_features

        check_features(self.metadata_features)
        return self

    @model_validator(mode="after")
    def _fold_in_range(self) -> DataSpec:
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} is out of range for {self.folds} folds (0 to {self.folds - 1})")
        if self.folds is None and self.fold != 0:
            raise ValueError("fold is set but folds is not; set data.folds to use k-fold cross-validation")
        return self

    @model_validator(mode="after")
    def _test_fraction_fits(self) -> DataSpec:
        if self.test_fraction > 0 and self.split_file is not None:
            raise ValueError(
                'test_fraction is unused with split_file; put the held-out lesions in the file\'s "test" list'
            )
        if self.folds is None and self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} must be below 1 "
                "(no lesions left to train on)"
            )
        return self


class RunConfig(FrozenSpec):
    """A whole run: ``model`` (a spec, or ``{preset: name, overrides: {...}}``), ``train``, ``data``."""

    model: ModelSpec
    train: TrainSpec = TrainSpec()
    data: DataSpec = DataSpec()

    @model_validator(mode="before")
    @classmethod
    def _expand_model_preset(cls, data: Any) -> Any:
        return _expand_preset(data)

    def to_yaml(self) -> str:
        """The resolved config as YAML (the model spec in full)."""
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _expand_preset(data: Any) -> Any:
    """``data`` with a ``model: {preset: NAME, overrides: {...}}`` section expanded (:func:`fusionkit.presets.expand_preset`)."""
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = {**data, "model": expand_preset(data["model"], where="model")}
    return data


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config file, apply ``key.path=value`` overrides, and validate it.

    Raises:
        ConfigError: the file is unreadable or not a mapping, a preset or an override is bad; a
            :class:`~fusionkit.errors.ConfigFieldError` when a field fails validation. Every message
            is one line naming the file (and the field).
    """
    data = read_mapping(path)
    if "model" not in data:
        raise ConfigError(f"{path}: a run config needs a 'model' section (a spec or a preset)")
    try:
        return _validated(data, overrides)
    except ValidationError as exc:
        raise field_error(path, exc) from None
    except ValueError as exc:  # the preset section's own checks (_expand_preset), outside pydantic
        raise ConfigError(f"{path}: {' '.join(str(exc).split())}") from None
    except ConfigError as exc:
        if str(path) not in str(exc):
            exc.args = (f"{path}: {exc}",)
        raise


def _validated(data: dict[str, Any], overrides: list[str] | None) -> RunConfig:
    """:func:`load_run_config` after the file is read: overrides, the preset, validation."""
    overrides = list(overrides or [])
    # overrides of the preset itself (model.preset=..., model.overrides.x=...) apply before it is
    # expanded; every other override applies to the expanded spec
    early = [o for o in overrides if o.split("=", 1)[0].strip().startswith(("model.preset", "model.overrides"))]
    late = [o for o in overrides if o not in early]
    data = apply_overrides(data, early)
    data = _expand_preset(data)
    data = apply_overrides(data, late)
    return RunConfig.model_validate(data)


def default_cache_dir() -> Path:
    """``$FUSIONKIT_CACHE`` or ``~/.cache/fusionkit``: where preprocessed image caches live."""
    return Path(os.environ.get("FUSIONKIT_CACHE", "~/.cache/fusionkit")).expanduser()
