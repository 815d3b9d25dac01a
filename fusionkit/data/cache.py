"""A preprocessed image cache: every image of a split resized once to the training size, as uint8.

One memory-mapped ``.npy`` file of shape ``(N, 3, S, S)`` per split and size, plus a JSON index
(``<name>.json``) holding the image ids in row order and a key. The key hashes the cache format,
the size, the resize method and, for every source image, its id, folder, byte size and modification
time (nanoseconds): change, add or remove a source file and the cache is rebuilt on next use. The
cache name encodes the split, the size and the resolved input folder.

Writes are atomic: the data goes to a temporary file renamed to ``<name>-<key>.npy``, then the
index is renamed into place, so a reader sees either the old complete cache or the new one.
With the cache, no JPEG is decoded after the first build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fusionkit.data.images import ImageSource, image_hw, load_image, missing_image_error
from fusionkit.errors import DataError
from fusionkit.utils.faults import fault_point
from fusionkit.utils.io import atomic_write_text, file_mode
from fusionkit.utils.locking import FileLock

logger = logging.getLogger("fusionkit.data")

_FORMAT = "fusionkit.image_cache"
_VERSION = 1
_RESIZE = "torchvision-bicubic-antialias-uint8"

MAX_WORKERS = 8
"""The most decoding threads a cache build starts by default, however many CPUs the machine has."""
PIXEL_BUDGET = 2**27
"""Source pixels a cache build decodes at once, over all its threads (134 M: about 400 MB of RGB,
plus the resize's buffers): a 12000x12000 JPEG is decoded alone, ordinary images several at a time."""


def cache_key(sources: Sequence[ImageSource], image_size: int) -> str:
    """Hex digest identifying the cache contents: format, size, resize method and, per image, its id,
    folder name, byte size and modification time (the cache *name* already encodes which input
    folder; see :class:`~fusionkit.data.milk10k.Milk10kDataset`)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([_FORMAT, _VERSION, _RESIZE, image_size]).encode())
    for source in sorted(sources, key=lambda s: s.isic_id):
        try:
            stat = source.path.stat()
        except OSError as error:
            raise missing_image_error(source) from error
        entry = [source.isic_id, source.path.parent.name, stat.st_size, stat.st_mtime_ns]
        digest.update(json.dumps(entry).encode())
    return digest.hexdigest()


class ImageCache:
    """Read access to a built cache; open or build one with :meth:`open_or_build`.

    The memory map is opened lazily in each process (a pickled cache, e.g. in a DataLoader worker,
    carries only the file name), so workers share the page cache instead of copying data.

    Attributes:
        data_path: the ``.npy`` file.
        image_size: height and width of every cached image.
        rows: ``isic_id -> row`` of the array.
        built: whether :meth:`open_or_build` had to (re)build it.
    """

    def __init__(self, *, data_path: Path, image_size: int, ids: Sequence[str], built: bool = False) -> None:
        self.data_path = data_path
        self.image_size = image_size
        self.rows = {isic_id: row for row, isic_id in enumerate(ids)}
        self.built = built
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """The read-only ``(N, 3, S, S)`` uint8 memory map."""
        if self._array is None:
            try:
                self._array = np.load(self.data_path, mmap_mode="r")
            except FileNotFoundError as error:
                raise DataError(
                    "image cache file is gone (a later dataset rebuilt the cache because source images "
                    "changed); expected it to exist: create the dataset again",
                    path=self.data_path,
                ) from error
        return self._array

    def read(self, isic_id: str) -> torch.Tensor:
        """A copy of one cached image as a uint8 ``(3, S, S)`` tensor."""
        return torch.from_numpy(np.array(self.array[self.rows[isic_id]]))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None
        return state

    @classmethod
    def open_or_build(
        cls,
        *,
        cache_dir: str | Path,
        name: str,
        sources: Sequence[ImageSource],
        image_size: int,
        workers: int | None = None,
        pixel_budget: int = PIXEL_BUDGET,
    ) -> ImageCache:
        """Open the cache ``name`` in ``cache_dir`` if its key matches ``sources``, else build it.

        One process builds a cache at a time (a lock file ``.<name>.lock`` in ``cache_dir``); another
        that needs the same cache waits and then opens what the first built. A build removes the
        temporary files of an earlier build that was killed.

        Args:
            cache_dir: folder of the cache files (created if needed).
            name: stem of the cache files, unique per split (e.g. ``milk10k-training-384``).
            sources: every image to cache.
            image_size: the square size images are resized to.
            workers: decoding threads for a build (default :func:`default_workers`).
            pixel_budget: the most source pixels decoded at once over all threads (an image larger
                than the budget is decoded alone), which bounds a build's memory.

        Raises:
            DataError: a source image is missing or cannot be decoded (names file, line, lesion).
        """
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = cache_key(sources, image_size)
        with FileLock(cache_dir / f".{name}.lock"):  # one builder at a time; a waiter then finds it built
            return cls._open_or_build(
                cache_dir=cache_dir,
                name=name,
                key=key,
                sources=sources,
                image_size=image_size,
                workers=workers or default_workers(),
                pixel_budget=pixel_budget,
            )

    @classmethod
    def _open_or_build(
        cls,
        *,
        cache_dir: Path,
        name: str,
        key: str,
        sources: Sequence[ImageSource],
        image_size: int,
        workers: int,
        pixel_budget: int,
    ) -> ImageCache:
        index_path = cache_dir / f"{name}.json"
        data_path = cache_dir / f"{name}-{key[:16]}.npy"
        index = _read_index(index_path)
        if index is not None and index.get("key") == key and data_path.is_file():
            problem = _check_array(data_path, (len(index["ids"]), 3, image_size, image_size))
            if problem is None:
                logger.info(
                    "image cache hit: %s (%d images at %dx%d)", data_path, len(index["ids"]), image_size, image_size
                )
                return cls(data_path=data_path, image_size=image_size, ids=index["ids"])
            logger.warning("image cache %s is damaged (%s); rebuilding it", data_path, problem)
        for orphan in cache_dir.glob(f"{name}-*.npy.*.tmp"):  # a killed build's (we hold the lock)
            logger.warning("image cache: removing %s, left by a build that was interrupted", orphan)
            orphan.unlink(missing_ok=True)
        ids = [s.isic_id for s in sources]
        started = time.perf_counter()
        _build(data_path, sources, image_size, workers, pixel_budget)
        atomic_write_text(
            index_path,
            json.dumps(
                {
                    "format": _FORMAT,
                    "version": _VERSION,
                    "key": key,
                    "image_size": image_size,
                    "resize": _RESIZE,
                    "data": data_path.name,
                    "ids": ids,
                }
            ),
        )
        for stale in cache_dir.glob(f"{name}-*.npy"):
            if stale != data_path:
                stale.unlink(missing_ok=True)
        logger.info(
            "image cache built: %s (%d images at %dx%d in %.1f s)",
            data_path,
            len(ids),
            image_size,
            image_size,
            time.perf_counter() - started,
        )
        return cls(data_path=data_path, image_size=image_size, ids=ids, built=True)


def _check_array(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why the cached array at ``path`` is unusable (truncated, wrong shape or type), or ``None``."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:  # a truncated file fails to map
        return str(error)
    if array.shape != shape or array.dtype != np.uint8:
        return f"holds {array.dtype} {array.shape}, expected uint8 {shape}"
    return None


def _read_index(path: Path) -> dict[str, Any] | None:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(index, dict) or index.get("format") != _FORMAT or index.get("version") != _VERSION:
        return None
    return index


def default_workers() -> int:
    """Decoding threads of a cache build: the CPUs, at most :data:`MAX_WORKERS`."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


class _PixelBudget:
    """At most ``budget`` source pixels decoded at once; one image larger than it is decoded alone."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self.free = threading.Condition()

    @contextlib.contextmanager
    def take(self, pixels: int) -> Iterator[None]:
        pixels = min(max(pixels, 1), self.budget)
        with self.free:
            self.free.wait_for(lambda: self.used == 0 or self.used + pixels <= self.budget)
            self.used += pixels
        try:
            yield
        finally:
            with self.free:
                self.used -= pixels
                self.free.notify_all()


def _pixels(source: ImageSource) -> int:
    try:
        height, width = image_hw(source.path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # load_image names the problem
        return 1
    return height * width


def _build(data_path: Path, sources: Sequence[ImageSource], image_size: int, workers: int, pixel_budget: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=data_path.name + ".", suffix=".tmp", dir=data_path.parent)
    os.close(fd)
    try:
        shape = (len(sources), 3, image_size, image_size)
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)

        budget = _PixelBudget(pixel_budget)

        def fill(row: int) -> None:  # one image: decode, resize, store (threads share the map)
            with budget.take(_pixels(sources[row])):
                image = load_image(sources[row], image_size).numpy()
            array[row] = image  # noqa: F821 (deleted after use)
            fault_point("cache.image-written")

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for _ in pool.map(fill, range(len(sources))):
                pass
        array.flush()
        del array
        os.chmod(tmp, file_mode(data_path))
        os.replace(tmp, data_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
