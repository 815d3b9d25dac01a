"""A seeded, multi-worker DataLoader for MILK10k datasets."""

from __future__ import annotations

import random
from collections.abc import Callable, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` that seeds ``random`` and NumPy from the worker's torch seed.

    torch already seeds each worker from the loader's generator; this extends that to the other
    random number generators an augmentation might use.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    seed: int = 0,
    drop_last: bool = False,
    prefetch_factor: int | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    batched: bool = True,
) -> DataLoader:
    """A ``DataLoader`` with a seeded generator, seeded workers and persistent workers.

    For a dataset with a ``collate(indices)`` method (:class:`~fusionkit.data.milk10k.Milk10kDataset`)
    and no ``collate_fn``, whole batches are fetched at once: the loader gets ``batch_size=None``
    and a ``BatchSampler`` as sampler, and each worker builds a batch with ``dataset[indices]``
    (one copy per image into shared memory). The batches are the same as with ``default_collate``;
    only ``loader.batch_size`` reads ``None`` (the batch size is ``loader.sampler.batch_size``).
    Pass ``batched=False`` for the plain per-item path.

    Args:
        dataset: e.g. a :class:`~fusionkit.data.milk10k.Milk10kDataset`.
        batch_size: items per batch.
        shuffle: reshuffle every epoch (exclusive with ``sampler``); the order depends only on
            ``seed`` and the epoch.
        sampler: a custom sampler (e.g. class-balanced); exclusive with ``shuffle``.
        num_workers: worker processes (0 loads in the main process); workers persist across epochs.
        pin_memory: pin batches for fast host-to-device copies (default: when CUDA is available).
        seed: seeds the loader's generator, hence shuffling and the per-worker seeds.
        drop_last: drop the last incomplete batch.
        prefetch_factor: batches prefetched per worker (default 2 in torch; only with workers).
        collate_fn: defaults to ``default_collate``.
        batched: fetch whole batches via ``dataset.collate`` when the dataset has one.
    """
    if shuffle and sampler is not None:
        raise ValueError("give shuffle=True or a sampler, not both")
    generator = torch.Generator()
    generator.manual_seed(seed)
    options: dict[str, Any] = {}
    if num_workers > 0:
        options["persistent_workers"] = True
        options["worker_init_fn"] = seed_worker
        if prefetch_factor is not None:
            options["prefetch_factor"] = prefetch_factor
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    if batched and collate_fn is None and callable(getattr(dataset, "collate", None)) and isinstance(dataset, Sized):
        if shuffle:
            base: Sampler = RandomSampler(dataset, generator=generator)
        else:
            base = sampler if sampler is not None else SequentialSampler(dataset)
        return DataLoader(
            dataset,
            batch_size=None,
            sampler=BatchSampler(base, batch_size=batch_size, drop_last=drop_last),
            num_workers=num_workers,
            pin_memory=pin,
            generator=generator,
            **options,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin,
        drop_last=drop_last,
        generator=generator,
        collate_fn=collate_fn,
        **options,
    )
