"""The MILK10k dataset: one item per lesion with its dermoscopic image, clinical image and metadata.

Typical use (the encoder is fitted on the training lesions only and shared with validation;
images travel as uint8 and are normalised on the device)::

    files = find_split(root, "Training")
    ids, labels = lesion_labels(files)
    split = train_val_split(ids, labels, val_fraction=0.2, seed=0)
    common = dict(files=files, image_size=384, cache_dir=cache)
    train = Milk10kDataset(lesion_ids=split.train, **common,
                           transform=build_transforms(model_name=m, image_size=384, train=True, normalize=False))
    val = Milk10kDataset(lesion_ids=split.val, encoder=train.encoder, **common,
                         transform=build_transforms(model_name=m, image_size=384, train=False, normalize=False))
    for batch in make_loader(train, batch_size=32, shuffle=True, seed=0):
        batch = train.transform.normalize_batch(batch, device="cuda", channels_last=True)
"""

from __future__ import annotations

import hashlib
import logging
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from fusionkit.data.cache import ImageCache
from fusionkit.data.images import UNREADABLE, ImageSource, image_hw, load_image
from fusionkit.data.layout import Milk10kFiles, find_split
from fusionkit.data.metadata import MetadataEncoder
from fusionkit.data.schema import CLASS_NAMES
from fusionkit.data.tables import LesionRecord, MissingImagePolicy, read_milk10k, summarize
from fusionkit.data.transforms import ImageTransform
from fusionkit.errors import DataError

logger = logging.getLogger("fusionkit.data")

#: Height and width assumed for an absent image when neither ``image_size`` nor any file gives one.
_DEFAULT_HW = (450, 600)
_IMAGE_KEYS = ("derm", "clinical")


class ToFloat:
    """The default image transform: uint8 ``(3, H, W)`` to float32 in ``[0, 1]`` (no normalisation)."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Scale one uint8 image to float32 ``[0, 1]``."""
        return image.float().div_(255.0)


def lesion_labels(files: Milk10kFiles) -> tuple[list[str], list[int]]:
    """Lesion ids and class indices of a labelled split, read from its CSVs (for making splits).

    Raises:
        DataError: the split has no ground truth, or a CSV is invalid.
    """
    if files.ground_truth_csv is None:
        raise DataError("split has no ground truth; expected a labelled split", path=files.metadata_csv)
    table = read_milk10k(files, missing_image="absent")
    return [x.lesion_id for x in table.lesions], [_label(x) for x in table.lesions]


class Milk10kDataset(Dataset):
    """Lesion-level MILK10k dataset (``torch.utils.data.Dataset``).

    Each item is a dict::

        {"lesion_id": str,
         "derm": Tensor(3, H, W), "clinical": Tensor(3, H, W),   # float32, or uint8 with a
         "meta": FloatTensor(F),                                   # normalize=False transform
         "present": {"derm": BoolTensor(), "clinical": BoolTensor(), "meta": BoolTensor()},
         "label": int}                                             # absent for an unlabelled split

    and ``default_collate`` stacks items into the model batch (``present[...]`` of shape ``(B,)``,
    ``label`` ``(B,)``, ``lesion_id`` a list). An absent image (policy ``"absent"``) is a zero
    tensor with ``present`` False.

    Args:
        root: a folder in the MILK10k layout (give ``root`` or ``files``).
        files: the split's files from :func:`~fusionkit.data.layout.find_split`.
        split: ``"Training"`` or ``"Test"`` (with ``root``).
        lesion_ids: restrict to these lesions, in this order (e.g. ``Split.train``); default all.
        encoder: a fitted :class:`~fusionkit.data.metadata.MetadataEncoder`; when ``None`` (or not
            yet fitted) one is fitted on this dataset's lesions, so pass ``train_dataset.encoder`` to every
            validation/test dataset.
        transform: maps a uint8 ``(3, H, W)`` image to the model input
            (:func:`~fusionkit.data.transforms.build_transforms`); default :class:`ToFloat`.
        image_size: resize every image to ``image_size`` x ``image_size`` (bicubic, uint8) before
            the transform; ``None`` keeps the file size. Required with ``cache_dir``.
        missing_image: ``"error"`` (default) raises :class:`~fusionkit.errors.DataError` for a lesion
            without both images; ``"absent"`` keeps it with the image marked absent.
        cache_dir: keep a preprocessed uint8 cache of the whole split there
            (:class:`~fusionkit.data.cache.ImageCache`); later epochs decode no JPEG.
        cache_workers: decoding threads when the cache is built (default: the CPUs, at most 8).
    """

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        files: Milk10kFiles | None = None,
        split: str = "Training",
        lesion_ids: Sequence[str] | None = None,
        encoder: MetadataEncoder | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        image_size: int | None = None,
        missing_image: MissingImagePolicy = "error",
        cache_dir: str | Path | None = None,
        cache_workers: int | None = None,
    ) -> None:
        if (root is None) == (files is None):
            raise ValueError("give exactly one of root= or files=")
        if cache_dir is not None and image_size is None:
            raise ValueError("cache_dir needs image_size (the cache stores images at that size)")
        if files is None:
            assert root is not None  # exactly one of the two, checked above
            files = find_split(root, split)
        self.files = files
        table = read_milk10k(self.files, missing_image=missing_image)
        logger.info(summarize(table))
        self.records: tuple[LesionRecord, ...] = _select(table.lesions, lesion_ids, self.files)
        self.labelled = table.labelled
        self.image_size = image_size
        self.transform = transform if transform is not None else ToFloat()
        self._sources = table.image_sources
        if encoder is None or not encoder.fitted:
            encoder = (encoder or MetadataEncoder()).fit(self.records)
            logger.info("metadata encoder fitted on %d lesions (width %d)", len(self.records), encoder.metadata_width)
        self.encoder = encoder
        self._meta = encoder.transform(self.records)
        self._present = torch.tensor(
            [
                [
                    r.derm is not None and r.derm.isic_id in self._sources,
                    r.clinical is not None and r.clinical.isic_id in self._sources,
                    True,
                ]
                for r in self.records
            ],
            dtype=torch.bool,
        ).reshape(len(self.records), 3)
        self.cache: ImageCache | None = None
        if cache_dir is not None:
            assert image_size is not None  # checked above
            self.cache = ImageCache.open_or_build(
                cache_dir=cache_dir,
                name=_cache_name(self.files, image_size),
                sources=list(self._sources.values()),
                image_size=image_size,
                workers=cache_workers,
            )
        self._blank_hw = (image_size, image_size) if image_size else _first_hw(self._sources.values())
        self._blank: torch.Tensor | None = None

    @property
    def lesion_ids(self) -> tuple[str, ...]:
        """Lesion ids in item order."""
        return tuple(r.lesion_id for r in self.records)

    @property
    def labels(self) -> tuple[int, ...] | None:
        """Class indices in item order (``None`` for an unlabelled split)."""
        return tuple(_label(r) for r in self.records) if self.labelled else None

    @property
    def metadata_width(self) -> int:
        """Width ``F`` of the encoded metadata vector."""
        return self.encoder.metadata_width

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names, indexed by ``label``."""
        return CLASS_NAMES

    def class_counts(self) -> dict[str, int]:
        """Lesions per class of this dataset (all classes, zeros included)."""
        if not self.labelled:
            raise DataError("split has no ground truth", path=self.files.metadata_csv)
        counts = Counter(r.label for r in self.records)
        return {name: counts.get(i, 0) for i, name in enumerate(CLASS_NAMES)}

    def __len__(self) -> int:
        return len(self.records)

    def _raw(self, isic_id: str) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.read(isic_id)
        return load_image(self._sources[isic_id], self.image_size)

    def _absent(self) -> torch.Tensor:
        if isinstance(self.transform, ImageTransform):
            return self.transform.blank()
        if self._blank is None:
            probe = torch.zeros(3, *self._blank_hw, dtype=torch.uint8)
            self._blank = torch.zeros_like(self.transform(probe))
        return self._blank.clone()

    def _image_id(self, index: int, key: str) -> str | None:
        """The isic id of item ``index``'s ``key`` image, or ``None`` when it is absent."""
        if not self._present[index, _IMAGE_KEYS.index(key)]:
            return None
        return getattr(self.records[index], key).isic_id

    def _item(self, index: int, images: dict[str, torch.Tensor]) -> dict[str, Any]:
        record = self.records[index]
        item: dict[str, Any] = {"lesion_id": record.lesion_id}
        for key in _IMAGE_KEYS:
            item[key] = self.transform(images[key]) if key in images else self._absent()
        item["meta"] = self._meta[index]
        present = self._present[index]
        item["present"] = {"derm": present[0], "clinical": present[1], "meta": present[2]}
        if self.labelled:
            item["label"] = _label(self.records[index])
        return item

    def __getitem__(self, index: int | Sequence[int]) -> dict[str, Any]:
        """One item, or, for a sequence of indices, the collated batch of those items.

        ``dataset[[i, j, ...]]`` equals ``default_collate([dataset[i], dataset[j], ...])`` (for
        random augmentations: the same distribution, drawn in the same order), but with an
        :class:`~fusionkit.data.transforms.ImageTransform` at ``image_size`` it is built with one
        copy per image straight into the batch (in shared memory inside a worker).
        :func:`~fusionkit.data.loader.make_loader` uses this with a batch sampler.
        """
        value: Any = index  # an integer (Python, numpy or torch) or a sequence of them: told apart by trying
        try:
            position = operator.index(value)
        except TypeError:
            return self.collate(list(value))
        images = {}
        for key in _IMAGE_KEYS:
            isic_id = self._image_id(position, key)
            if isic_id is not None:
                images[key] = self._raw(isic_id)
        return self._item(position, images)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items for a whole batch (used by ``DataLoader``'s default fetcher)."""
        return [self[int(i)] for i in indices]

    @property
    def batch_fast_path(self) -> bool:
        """Whether :meth:`collate` copies images straight into the batch (see ``__getitem__``)."""
        return (
            isinstance(self.transform, ImageTransform)
            and self.image_size is not None
            and self.transform.image_size == self.image_size
        )

    def collate(self, indices: Sequence[int]) -> dict[str, Any]:
        """The batch of items ``indices``, in ``default_collate``'s format."""
        indices = [int(i) for i in indices]
        if not self.batch_fast_path:
            return default_collate([self[i] for i in indices])
        transform = self.transform
        assert isinstance(transform, ImageTransform)
        size = self.image_size
        assert size is not None  # batch_fast_path holds
        count = len(indices)
        index_t = torch.tensor(indices, dtype=torch.long)
        present = self._present.index_select(0, index_t)
        raw: dict[str, torch.Tensor] = {}
        for key in _IMAGE_KEYS:
            # uint8 images go straight to the batch when nothing else changes them.
            direct = transform.out_dtype == torch.uint8
            raw[key] = _new_batch((count, 3, size, size), torch.uint8, shared=direct)
            target = raw[key].numpy()
            for slot, i in enumerate(indices):
                isic_id = self._image_id(i, key)
                if isic_id is None:
                    target[slot] = 0
                elif self.cache is not None:
                    target[slot] = self.cache.array[self.cache.rows[isic_id]]
                else:
                    target[slot] = load_image(self._sources[isic_id], size).numpy()
        if transform.augment is not None:
            for slot in range(count):
                for m, key in enumerate(_IMAGE_KEYS):
                    if present[slot, m]:
                        raw[key][slot] = transform.augment_one(raw[key][slot])
        batch: dict[str, Any] = {"lesion_id": [self.records[i].lesion_id for i in indices]}
        for m, key in enumerate(_IMAGE_KEYS):
            out = None
            if transform.out_dtype != torch.uint8:
                out = _new_batch((count, 3, size, size), transform.out_dtype, shared=True)
            batch[key] = transform.finish_batch(raw[key], present[:, m], out=out)
        batch["meta"] = self._meta.index_select(0, index_t)
        batch["present"] = {key: present[:, m].contiguous() for m, key in enumerate(("derm", "clinical", "meta"))}
        if self.labelled:
            batch["label"] = torch.tensor([_label(self.records[i]) for i in indices], dtype=torch.long)
        return batch

    def __repr__(self) -> str:
        return (
            f"Milk10kDataset(split={self.files.split!r}, lesions={len(self)}, labelled={self.labelled}, "
            f"image_size={self.image_size}, cached={self.cache is not None})"
        )


def _new_batch(shape: tuple[int, ...], dtype: torch.dtype, *, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker, allocated in shared memory (as default_collate does)."""
    if shared and get_worker_info() is not None:
        return torch.empty(shape, dtype=dtype).share_memory_()
    return torch.empty(shape, dtype=dtype)


def _select(
    lesions: Sequence[LesionRecord], lesion_ids: Sequence[str] | None, files: Milk10kFiles
) -> tuple[LesionRecord, ...]:
    if lesion_ids is None:
        return tuple(lesions)
    if isinstance(lesion_ids, str):
        raise ValueError("lesion_ids must be a sequence of ids, not one string")
    by_id = {x.lesion_id: x for x in lesions}
    chosen = []
    seen: set[str] = set()
    for lesion_id in lesion_ids:
        if lesion_id in seen:
            raise ValueError(f"lesion id {lesion_id!r} given twice in lesion_ids")
        seen.add(lesion_id)
        if lesion_id not in by_id:
            raise DataError(
                f"lesion not in the {files.split} split; expected ids from this metadata file",
                path=files.metadata_csv,
                lesion_id=lesion_id,
            )
        chosen.append(by_id[lesion_id])
    return tuple(chosen)


def _label(record: LesionRecord) -> int:
    """The class index of a lesion of a labelled split."""
    if record.label is None:
        raise DataError(
            "lesion has no label; expected a labelled split",
            path=record.metadata_csv,
            row=record.line,
            lesion_id=record.lesion_id,
        )
    return record.label


def _cache_name(files: Milk10kFiles, image_size: int) -> str:
    where = hashlib.sha256(str(files.image_dir.resolve()).encode()).hexdigest()[:10]
    return f"milk10k-{files.split.lower()}-{image_size}px-{where}"


def _first_hw(sources: Iterable[ImageSource]) -> tuple[int, int]:
    for source in sorted(sources, key=lambda s: s.isic_id):
        try:
            return image_hw(source.path)
        except UNREADABLE:  # decoding it refuses it, naming the file and the lesion
            continue
    return _DEFAULT_HW
