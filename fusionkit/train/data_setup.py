"""Everything a run needs from the data: the split, the fitted metadata encoder, datasets, loaders.

Images travel as uint8 (4x fewer bytes through the DataLoader) and are normalised on the device
with the mean and std the model's image encoders declare (:attr:`fusionkit.FusionModel.preprocessing`,
given to :meth:`RunData.use_preprocessing` once the model is built; :func:`fusionkit.data.normalize_batch`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from fusionkit.data import (
    CLASS_NAMES,
    DeviceAugment,
    ImagePreprocessing,
    MetadataEncoder,
    Milk10kDataset,
    Split,
    batch_generator,
    build_transforms,
    find_split,
    kfold_test_splits,
    lesion_labels,
    make_loader,
    make_synthetic_milk10k,
    normalize_batch,
    read_split_file,
    train_val_test_split,
)
from fusionkit.data.layout import Milk10kFiles
from fusionkit.errors import ConfigError
from fusionkit.runtime.config import RunConfig, default_cache_dir
from fusionkit.runtime.distributed import DistInfo, barrier
from fusionkit.runtime.rundir import RunDir
from fusionkit.train.resume import resume_changes
from fusionkit.train.sampler import EpochSampler
from fusionkit.utils.faults import fault_point
from fusionkit.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    """The data side of a run (see :func:`prepare_data`)."""

    config: RunConfig
    files: Milk10kFiles
    split: Split
    encoder: MetadataEncoder
    train_set: Milk10kDataset
    val_set: Milk10kDataset
    dist_info: DistInfo
    class_names: tuple[str, ...] = CLASS_NAMES
    changes: tuple[str, ...] = ()
    """Settings a resumed run changed (``"path: old -> new"``); empty for a fresh run."""
    preprocessing: ImagePreprocessing | None = None
    """The image preprocessing the datasets apply: the model's, set by :meth:`use_preprocessing`."""

    def use_preprocessing(self, preprocessing: ImagePreprocessing | None) -> None:
        """Give both datasets the built model's declared image preprocessing (its
        :attr:`~fusionkit.FusionModel.preprocessing`) and log it to train.log.

        ``None`` (a model without image inputs, which never reads the images) passes the images
        through as ``x / 255``. Until this is called the loaders and :meth:`to_model_batch` refuse.

        Raises:
            ConfigError: the preprocessing's ``input_size`` is not the spec's ``image_size``.
        """
        size = self.config.model.image_size
        if preprocessing is None:
            preprocessing = ImagePreprocessing(input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
            source = "the model takes no images"
        else:
            source = "declared by the model's image encoders"
        if preprocessing.input_size != size:
            raise ConfigError(
                f"the model's preprocessing is for {preprocessing.input_size}px images but model.image_size is {size}"
            )
        self.train_set.transform = build_transforms(
            preprocessing=preprocessing,
            train=self.augment_on == "cpu",
            augment=self.config.data.augment,
            normalize=False,
        )
        self.val_set.transform = build_transforms(preprocessing=preprocessing, train=False, normalize=False)
        self.preprocessing = preprocessing
        logger.info(
            "image preprocessing (%s): %dpx, mean %s, std %s, %s",
            source,
            preprocessing.input_size,
            list(preprocessing.mean),
            list(preprocessing.std),
            preprocessing.interpolation,
        )

    def _require_preprocessing(self) -> ImagePreprocessing:
        if self.preprocessing is None:
            raise ConfigError(
                "the run's image preprocessing is not set: call RunData.use_preprocessing(model.preprocessing) "
                "once the model is built"
            )
        return self.preprocessing

    @property
    def augment_on(self) -> str:
        """Where training augmentation runs: ``data.augment_on`` with ``auto`` resolved (see :func:`augment_on`)."""
        return augment_on(self.config, self.dist_info.device)

    def to_model_batch(
        self, batch: dict[str, Any], *, epoch: int | None = None, batch_index: int | None = None
    ) -> dict[str, Any]:
        """Normalise a device batch's uint8 images (absent images stay zero).

        With ``epoch`` and ``batch_index`` (a training batch) and ``data.augment_on: device``, the
        images are first augmented on their device (:class:`~fusionkit.data.DeviceAugment`) with a
        generator seeded by ``(train.seed, epoch, batch_index, rank)``, so a resumed run repeats
        them exactly.
        """
        preprocessing = self._require_preprocessing()
        if self._device_augment is not None and epoch is not None and batch_index is not None:
            generator = batch_generator(
                seed=self.config.train.seed, epoch=epoch, batch_index=batch_index, rank=self.dist_info.rank
            )
            batch = dict(batch)
            for key in ("derm", "clinical"):
                if key in batch:
                    batch[key] = self._device_augment(batch[key], generator=generator)
        return normalize_batch(batch, mean=preprocessing.mean, std=preprocessing.std)

    def train_loader(self, *, epoch: int, start_batch: int = 0) -> DataLoader:
        """The training loader for ``epoch``, skipping ``start_batch`` batches (resume)."""
        self._require_preprocessing()
        train = self.config.train
        sampler = self._train_sampler
        sampler.set_epoch(epoch, start=start_batch * train.batch_size)
        self._train_loader.generator.manual_seed(train.seed * 1_000_003 + epoch)
        return self._train_loader

    def val_loader(self) -> DataLoader:
        """The validation loader (sharded across ranks, dataset order)."""
        self._require_preprocessing()
        return self._val_loader

    def __post_init__(self) -> None:
        train, data = self.config.train, self.config.data
        info = self.dist_info
        self._device_augment = DeviceAugment(config=data.augment) if self.augment_on == "device" else None
        self._train_sampler = EpochSampler(
            _labels(self.train_set),
            seed=train.seed,
            mode=train.sampler,
            rank=info.rank,
            world_size=info.world_size,
            batch_size=train.batch_size,
        )
        self._train_loader = make_loader(
            self.train_set,
            batch_size=train.batch_size,
            sampler=self._train_sampler,
            num_workers=data.num_workers,
            seed=train.seed,
        )
        val_sampler = EpochSampler(
            _labels(self.val_set), seed=0, mode="sequential", rank=info.rank, world_size=info.world_size
        )
        self._val_loader = make_loader(
            self.val_set,
            batch_size=train.eval_batch_size or 2 * train.batch_size,
            sampler=val_sampler,
            num_workers=data.num_workers,
            seed=0,
        )


def _labels(dataset: Milk10kDataset) -> tuple[int, ...]:
    """The class indices of a labelled split's dataset (training needs a ground truth)."""
    if dataset.labels is None:
        raise ConfigError(f"{dataset.files.metadata_csv}: training needs a labelled split (a ground-truth CSV)")
    return dataset.labels


def _class_weights(labels: tuple[int, ...]) -> tuple[float, ...]:
    counts = Counter(labels)
    n, k = len(labels), len(CLASS_NAMES)
    return tuple(n / (k * counts[c]) if counts.get(c) else 1.0 for c in range(k))


def _class_prior(labels: tuple[int, ...]) -> tuple[float, ...]:
    """pi of logit adjustment: the training class frequencies, Laplace-smoothed ((count + 1) / (n + N))
    so a class absent from the training split keeps a finite log prior."""
    counts = Counter(labels)
    n, k = len(labels), len(CLASS_NAMES)
    return tuple((counts.get(c, 0) + 1) / (n + k) for c in range(k))


def locate_data_root(
    config: RunConfig,
    *,
    data_root: str | Path | None,
    synthetic_dir: Path | None = None,
    saved: RunConfig | None = None,
) -> Path:
    """The MILK10k folder a run (or a sweep's runs) reads: with ``synthetic_dir``, a set generated
    there once from ``data.synthetic``; else ``data_root``, ``data.root``, or the folder a resumed
    run recorded (``saved``).

    Raises:
        ConfigError: no folder is given anywhere.
    """
    if synthetic_dir is not None:
        if not (synthetic_dir / "MILK10k_Training_GroundTruth.csv").is_file():
            s = config.data.synthetic
            make_synthetic_milk10k(synthetic_dir, n_lesions=s.n_lesions, photo_size=s.photo_size, seed=s.seed)
        return synthetic_dir
    given = data_root if data_root is not None else config.data.root
    if given is None and saved is not None:  # a resumed run reads the folder it recorded
        given = saved.data.root
    if given is None:
        raise ConfigError("no data: pass --data DIR (a MILK10k folder), --synthetic, or set data.root")
    return Path(given).expanduser()


def _data_root(
    config: RunConfig,
    *,
    run_dir: Path,
    data_root: str | Path | None,
    synthetic: bool,
    saved: RunConfig | None,
    dist_info: DistInfo,
) -> Path:
    """:func:`locate_data_root` for a run: the synthetic set goes into the run directory (rank 0
    generates it, the other ranks wait)."""
    synthetic_dir = RunDir(run_dir).synthetic if synthetic else None
    if synthetic_dir is not None and not dist_info.is_main:
        barrier(dist_info)
        return synthetic_dir.resolve()
    root = locate_data_root(config, data_root=data_root, synthetic_dir=synthetic_dir, saved=saved)
    if synthetic_dir is not None:
        barrier(dist_info)
    return root.resolve()


def augment_on(config: RunConfig, device: torch.device) -> str:
    """``cpu`` or ``device``: ``data.augment_on``, with ``auto`` meaning the device on a GPU and the
    loader (per image) otherwise."""
    if config.data.augment_on != "auto":
        return config.data.augment_on
    return "device" if device.type == "cuda" else "cpu"


def prepare_data(
    config: RunConfig,
    *,
    run_dir: Path,
    data_root: str | Path | None,
    synthetic: bool,
    dist_info: DistInfo,
    saved: RunConfig | None = None,
) -> RunData:
    """Locate or generate the data, split it, fit the metadata encoder, resolve the config
    (metadata width, class weights, class prior, ``data.root``: the folder actually read) and write the run's
    files (rank 0). ``saved`` is the run's own config when it resumes from a checkpoint: the split
    and the encoder are read back, and the changed fields are checked
    (:func:`fusionkit.train.resume.resume_changes`; listed in ``RunData.changes``).

    The datasets get their image transforms from the built model: call
    :meth:`RunData.use_preprocessing` with ``model.preprocessing`` before reading batches.
    """
    resume = saved is not None
    data = config.data
    root = _data_root(
        config, run_dir=run_dir, data_root=data_root, synthetic=synthetic, saved=saved, dist_info=dist_info
    )
    files = find_split(root, "Training")
    if files.ground_truth_csv is None:
        raise ConfigError(f"{root}: training needs MILK10k_Training_GroundTruth.csv")

    split_file = RunDir(run_dir).split
    if resume and split_file.is_file():
        stored = json.loads(split_file.read_text())
        split = Split(train=tuple(stored["train"]), val=tuple(stored["val"]), test=tuple(stored.get("test", ())))
    else:
        ids, labels = lesion_labels(files)
        if data.split_file is not None:
            split = read_split_file(data.split_file, ids, folds=data.folds, fold=data.fold)
        elif data.folds is not None:
            folds = kfold_test_splits(ids, labels, k=data.folds, test_fraction=data.test_fraction, seed=data.split_seed)
            split = folds[data.fold]
        else:
            split = train_val_test_split(
                ids, labels, val_fraction=data.val_fraction, test_fraction=data.test_fraction, seed=data.split_seed
            )
    for part, lesions in (("training", split.train), ("validation", split.val)):
        if not lesions:
            raise ConfigError(
                f"{files.metadata_csv}: the {part} split is empty ({len(split.train) + len(split.val)} lesion(s), "
                f"data.val_fraction {data.val_fraction}); expected at least one lesion in each part"
            )

    logger.info(
        "split: %d training, %d validation (selects the checkpoint, fits the thresholds), %d held-out test lesions%s",
        len(split.train),
        len(split.val),
        len(split.test),
        " (the report's headline)" if split.test else " (the report is on the validation split)",
    )

    size = config.model.image_size
    cache_dir = (data.cache_dir or default_cache_dir()) if data.cache else None
    encoder = (
        MetadataEncoder.load(RunDir(run_dir).metadata_encoder)
        if resume
        else MetadataEncoder(features=data.metadata_features)  # fitted on the training split below
    )
    # rank 0 builds the image cache first; the others then open it. The image transforms come from
    # the built model (RunData.use_preprocessing), which needs the metadata width fitted here.
    if not dist_info.is_main:
        barrier(dist_info)
    train_set = Milk10kDataset(
        lesion_ids=split.train,
        encoder=encoder,
        files=files,
        image_size=size,
        missing_image=data.missing_image,
        cache_dir=cache_dir,
    )
    val_set = Milk10kDataset(
        lesion_ids=split.val,
        encoder=train_set.encoder,
        files=files,
        image_size=size,
        missing_image=data.missing_image,
        cache_dir=cache_dir,
    )
    if dist_info.is_main:
        barrier(dist_info)

    model = config.model
    updates: dict[str, Any] = {}
    if config.train.class_weighting == "inverse_frequency" and model.loss.class_weights is None:
        updates["loss"] = model.loss.model_copy(update={"class_weights": _class_weights(_labels(train_set))})
    if model.loss.logit_adjustment > 0 and model.loss.class_prior is None:
        loss = updates.get("loss", model.loss)
        updates["loss"] = loss.model_copy(update={"class_prior": _class_prior(_labels(train_set))})
    resolved = config.model_copy(
        update={
            "model": model.model_copy(update=updates),
            "data": data.model_copy(update={"root": root}),
        }
    )
    resolved = RunConfig.model_validate(resolved.model_dump(mode="json"))
    changes = resume_changes(saved, resolved, run_dir=run_dir, synthetic=synthetic) if saved is not None else []
    if dist_info.is_main:
        record = resolved.model_dump(mode="json")
        if not synthetic:  # the generated set's block would read as if it had been used
            record["data"].pop("synthetic")
        atomic_write_text(RunDir(run_dir).config, yaml.safe_dump(record, sort_keys=False))
        train_set.encoder.save(RunDir(run_dir).metadata_encoder)
        atomic_write_text(
            split_file,
            json.dumps(
                {"root": str(root), "train": list(split.train), "val": list(split.val), "test": list(split.test)},
                indent=1,
            ),
        )
        fault_point("train.run-files-written")
    barrier(dist_info)
    return RunData(
        config=resolved,
        files=files,
        split=split,
        encoder=train_set.encoder,
        train_set=train_set,
        val_set=val_set,
        dist_info=dist_info,
        changes=tuple(changes),
    )
