"""Lesion-level, stratified, seeded train/validation(/test) and k-fold splits.

A lesion's two images always travel together, because splits are made over lesion ids. The result
depends only on the set of ``(lesion_id, label)`` pairs and the seed, not on the input order.

Kept instead of scikit-learn's ``StratifiedShuffleSplit``/``StratifiedKFold`` because those break
the guarantees tests/test_data_splits.py states: ``StratifiedShuffleSplit`` refuses a class with one
lesion and can leave a two-lesion class out of validation, and both depend on the order of the
input rows.

:func:`read_split_file` reads a split the user supplies instead (``data.split_file``), so a
comparison with another library or a published split uses the same lesions.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionkit.errors import DataError


@dataclass(frozen=True)
class Split:
    """One split of lesion ids; the tuples keep the order of the input ids and share no lesion.

    Attributes:
        train: lesion ids to train on.
        val: lesion ids to validate on: what selects the checkpoint, fits the thresholds and drives
            early stopping and the learning-rate plateau.
        test: held-out lesion ids (``data.test_fraction`` or a split file's ``"test"`` part) that no
            selection sees; the run's report is computed on them when there are any. Empty: no test part.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...] = ()


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


def train_val_test_split(
    lesion_ids: Sequence[str],
    labels: Sequence[Hashable],
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> Split:
    """Split lesions into train, validation and a held-out test part, each stratified by label.

    Both fractions are shares of all the lesions (0.2 and 0.1 leave 70% to train). The test part is
    carved first, exactly as :func:`train_val_split` carves validation with ``val_fraction=test_fraction``
    (per class ``floor`` or ``ceil`` of ``n * test_fraction``, at least one and at most ``n - 1`` of a
    class with two or more lesions); the rest is then split by :func:`train_val_split` with
    ``val_fraction / (1 - test_fraction)``. ``test_fraction=0`` gives :func:`train_val_split`'s split.
    """
    if test_fraction == 0.0:
        return train_val_split(lesion_ids, labels, val_fraction=val_fraction, seed=seed)
    rest, test = _carve_test(lesion_ids, labels, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    label_of = dict(zip(lesion_ids, labels, strict=True))
    inner = train_val_split(
        rest, [label_of[x] for x in rest], val_fraction=val_fraction / (1.0 - test_fraction), seed=seed
    )
    return Split(train=inner.train, val=inner.val, test=test)


def _carve_test(
    lesion_ids: Sequence[str], labels: Sequence[Hashable], *, test_fraction: float, val_fraction: float, seed: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the rest, the test part): the stratified held-out part drawn first (seed offset so that it is
    not the validation part of the same seed)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction {val_fraction} + test_fraction {test_fraction} must be below 1 (no lesions left to train on)"
        )
    carved = train_val_split(lesion_ids, labels, val_fraction=test_fraction, seed=seed + 7919)
    return carved.train, carved.val


def kfold_test_splits(
    lesion_ids: Sequence[str], labels: Sequence[Hashable], *, k: int = 5, test_fraction: float = 0.0, seed: int = 0
) -> list[Split]:
    """:func:`kfold_splits` after a held-out test part is carved first (as in :func:`train_val_test_split`):
    every fold shares the same ``test`` lesions and folds the rest. ``test_fraction=0`` gives
    :func:`kfold_splits`."""
    if test_fraction == 0.0:
        return kfold_splits(lesion_ids, labels, k=k, seed=seed)
    rest, test = _carve_test(lesion_ids, labels, test_fraction=test_fraction, val_fraction=0.0, seed=seed)
    label_of = dict(zip(lesion_ids, labels, strict=True))
    folds = kfold_splits(rest, [label_of[x] for x in rest], k=k, seed=seed)
    return [Split(train=f.train, val=f.val, test=test) for f in folds]


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


def read_split_file(path: str | Path, lesion_ids: Sequence[str], *, folds: int | None, fold: int = 0) -> Split:
    """The split a user supplies in a JSON file, checked against the data's lesion ids.

    The file holds lesion ids per part, ``{"train": [...], "val": [...]}`` (a run's ``split.json`` is
    one; other keys are ignored), or per fold, ``{"folds": [...]}`` whose entries are either such a
    ``{"train", "val"}`` mapping or the list of that fold's validation ids (it then trains on the
    lesions of the other folds). Either form may also carry a held-out ``"test"`` list (a fold file's
    applies to every fold), returned as :attr:`Split.test`. ``folds`` must be None for a two-part file and
    equal the number of folds in a fold file, whose fold ``fold`` is returned. Lesions the file does not
    list are not used; the order of the file is kept. Raises :class:`~fusionkit.errors.DataError` (one line naming the file,
    and the part and lesion where one is at fault).
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(f"cannot read the split file: {exc.strerror or exc}", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"not JSON (line {exc.lineno}: {exc.msg})", path=path) from None
    if not isinstance(content, dict) or not ({"train", "val"} <= content.keys() or "folds" in content):
        raise DataError('expected {"train": [ids], "val": [ids]} or {"folds": [...]}', path=path)
    if "folds" in content:
        entries = content["folds"]
        if not isinstance(entries, list) or len(entries) < 2:
            raise DataError('"folds" must list at least two folds', path=path)
        if folds != len(entries):
            asked = f"{folds} folds" if folds is not None else f"none (set data.folds / --folds to {len(entries)})"
            raise DataError(f"the file has {len(entries)} folds but the run asks for {asked}", path=path)
        entry = entries[fold]
        if isinstance(entry, dict):
            if not {"train", "val"} <= entry.keys():
                raise DataError(f'fold {fold}: expected {{"train": [ids], "val": [ids]}} or a list of ids', path=path)
            parts = {"train": entry["train"], "val": entry["val"]}
        else:
            others = [e["val"] if isinstance(e, dict) else e for i, e in enumerate(entries) if i != fold]
            parts = {"train": [x for part in others for x in _id_list(part, path, "folds")], "val": entry}
        where = f"fold {fold} "
    else:
        if folds is not None:
            raise DataError(f"the run asks for {folds} folds but the file has one train/val split", path=path)
        parts = {"train": content["train"], "val": content["val"]}
        where = ""
    if content.get("test"):  # a run's split.json without a test part holds "test": []
        parts["test"] = content["test"]
    known = set(lesion_ids)
    checked: dict[str, tuple[str, ...]] = {}
    for name, ids in parts.items():
        label = name if name == "test" else f"{where}{name}"
        ids = _id_list(ids, path, label)
        if not ids:
            raise DataError(f'"{label}" lists no lesions', path=path)
        seen: set[str] = set()
        for lesion in ids:
            if lesion not in known:
                raise DataError(
                    f'listed in "{label}" but not in the data\'s Training split', path=path, lesion_id=lesion
                )
            if lesion in seen:
                raise DataError(f'occurs twice in "{label}"', path=path, lesion_id=lesion)
            seen.add(lesion)
        checked[name] = tuple(ids)
    names = list(checked)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            inside = set(checked[first])
            overlap = next((x for x in checked[second] if x in inside), None)
            if overlap is not None:
                a, b = (f'"{where}{n}"' if n != "test" else '"test"' for n in (first, second))
                raise DataError(f"is in both {a} and {b}", path=path, lesion_id=overlap)
    return Split(train=checked["train"], val=checked["val"], test=checked.get("test", ()))


def _id_list(value: object, path: Path, part: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise DataError(f'"{part}" must be a list of lesion ids (strings)', path=path)
    return value
