"""The training sampler: a seeded per-epoch order, sharded across ranks, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

SAMPLER_MODES = ("shuffle", "balanced", "sequential")
"""The orders :class:`EpochSampler` draws."""


class EpochSampler(Sampler[int]):
    """Indices for one epoch, a pure function of ``(seed, epoch)``.

    - ``shuffle`` order: a random permutation; ``balanced``: draws with replacement, each sample
      weighted by the inverse frequency of its class (every class equally likely per draw);
      ``sequential``: the dataset order (evaluation).
    - Distributed: the epoch's order is padded to a multiple of ``world_size`` and rank ``r`` takes
      every ``world_size``-th index from ``r`` (like ``DistributedSampler``).
    - ``start`` skips the first ``start`` indices of this rank (resuming an interrupted epoch).
    - ``batch_size`` (training): when this rank's epoch would end in a batch of one sample, that
      sample is dropped, so BatchNorm never sees a training batch of one (which it refuses); the
      order changes every epoch, so a different sample sits out each time.
    """

    def __init__(
        self,
        labels: Sequence[int],
        *,
        seed: int,
        mode: str = "shuffle",
        rank: int = 0,
        world_size: int = 1,
        batch_size: int | None = None,
    ) -> None:
        if mode not in SAMPLER_MODES:
            raise ValueError(f"sampler mode {mode!r}; expected one of {SAMPLER_MODES}")
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.seed = seed
        self.mode = mode
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch (its order) and how many of this rank's indices to skip."""
        self.epoch = epoch
        self.start = start

    def _order(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        if self.mode == "sequential":
            return torch.arange(n)
        if self.mode == "balanced":
            counts = torch.bincount(self.labels).float()
            weights = 1.0 / counts[self.labels]
            return torch.multinomial(weights, n, replacement=True, generator=gen)
        return torch.randperm(n, generator=gen)

    def _per_rank(self) -> int:
        per_rank = -(-len(self.labels) // self.world_size)
        if self.batch_size is not None and self.batch_size > 1 and per_rank % self.batch_size == 1:
            per_rank -= 1  # no last batch of one
        return per_rank

    def __len__(self) -> int:
        return max(self._per_rank() - self.start, 0)

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        per_rank = -(-len(order) // self.world_size)
        total = per_rank * self.world_size
        if total > len(order):
            order = torch.cat([order, order[: total - len(order)]])
        mine = order[self.rank : total : self.world_size][: self._per_rank()]
        return iter(mine[self.start :].tolist())
