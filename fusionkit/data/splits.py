"""Lesion-level, stratified, seeded train/validation and k-fold splits.

A lesion's two images always travel together, because splits are made over lesion ids. The result
depends only on the set of ``(lesion_id, label)`` pairs and the seed, not on the input order.

Kept instead of scikit-learn's ``StratifiedShuffleSplit``/``StratifiedKFold`` because those break
the guarantees tests/test_data_splits.py states: ``StratifiedShuffleSplit`` refuses a class with one
lesion and can leave a two-lesion class out of validation (MAL_OTH, 2 of 216 lesions, got none at
``val_fraction=0.2``, seed 0, scikit-learn 1.x, checked 2026-11-27), and both depend on the order
of the input rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """One split of lesion ids; both tuples keep the order of the input ids.

    Attributes:
        train: lesion ids to train on.
        val: lesion ids to validate on (never also in ``train``).
    """

    train: tuple[str, ...]
    val: tuple[str, ...]


def _shuffled_classes(lesion_ids: Sequence[str], labels: Sequence[Hashable], seed: int) -> list[list[str]]:
    if len(lesion_ids) != len(labels):
        raise ValueError(f"{len(lesion_ids)} lesion ids but {len(labels)} labels; expected one label per lesion")
    if len(set(lesion_ids)) != len(lesion_ids):
        seen: set[str] = set()
        for lesion_id in lesion_ids:
            if lesion_id in seen:
                raise ValueError(f"lesion id {lesion_id!r} occurs twice; expected unique lesion ids")
            seen.add(lesion_id)
    groups: dict[Hashable, list[str]] = defaultdict(list)
    for lesion_id, label in zip(lesion_ids, labels, strict=True):
        groups[label].append(lesion_id)
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted(groups, key=repr):
        members = sorted(groups[label])
        out.append([members[i] for i in rng.permutation(len(members))])
    return out


def train_val_split(
    lesion_ids: Sequence[str], labels: Sequence[Hashable], *, val_fraction: float = 0.2, seed: int = 0
) -> Split:
    """Split lesions into train and validation, stratified by label.

    A class with ``n >= 2`` lesions puts ``floor(n * val_fraction)`` or ``ceil(n * val_fraction)``
    lesions in validation, but at least one and at most ``n - 1``; a class with one lesion stays in
    train. Classes are rounded up, largest remainder first (ties broken by the seed), until the
    total reaches ``round(len(lesion_ids) * val_fraction)`` or no class can take more.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    classes = _shuffled_classes(lesion_ids, labels, seed)
    sizes = [len(c) for c in classes]
    exact = [n * val_fraction for n in sizes]
    low = [min(max(math.floor(x), 1), n - 1) if n >= 2 else 0 for x, n in zip(exact, sizes, strict=True)]
    high = [min(max(math.ceil(x), 1), n - 1) if n >= 2 else 0 for x, n in zip(exact, sizes, strict=True)]
    counts = list(low)
    target = round(len(lesion_ids) * val_fraction)
    tie = np.random.default_rng(seed + 1).random(len(classes))
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - counts[i]), tie[i]))
    for i in order:
        if sum(counts) >= target:
            break
        counts[i] = high[i]
    val = {x for members, k in zip(classes, counts, strict=True) for x in members[:k]}
    return Split(
        train=tuple(x for x in lesion_ids if x not in val),
        val=tuple(x for x in lesion_ids if x in val),
    )


def kfold_splits(lesion_ids: Sequence[str], labels: Sequence[Hashable], *, k: int = 5, seed: int = 0) -> list[Split]:
    """Split lesions into ``k`` stratified folds; fold ``i``'s validation set is the ``i``-th fold.

    Every lesion is in exactly one validation set. The lesions of each class are dealt round-robin
    over the folds, continuing where the previous class stopped, so fold sizes differ by at most one
    and a class with ``n`` lesions appears in the validation set of ``min(n, k)`` folds, each fold
    holding ``floor(n / k)`` or ``ceil(n / k)`` of them.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if k > len(lesion_ids):
        raise ValueError(f"k={k} folds need at least {k} lesions, got {len(lesion_ids)}")
    classes = _shuffled_classes(lesion_ids, labels, seed)
    fold_of: dict[str, int] = {}
    position = int(np.random.default_rng(seed + 1).integers(k))
    for members in classes:
        for lesion_id in members:
            fold_of[lesion_id] = position % k
            position += 1
    return [
        Split(
            train=tuple(x for x in lesion_ids if fold_of[x] != fold),
            val=tuple(x for x in lesion_ids if fold_of[x] == fold),
        )
        for fold in range(k)
    ]
