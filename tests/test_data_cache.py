"""The preprocessed image cache, the batched fetch path and the seeded loader."""

from __future__ import annotations

import os
import time

import pytest
import torch
from data_fixtures import edit_csv, make_set, read_rows
from PIL import Image
from torch.utils.data import default_collate

import fusionkit.data.images as images_module
from fusionkit.data import Milk10kDataset, build_transforms, make_loader
from fusionkit.data.cache import ImageCache
from fusionkit.errors import DataError

SIZE = 16


@pytest.fixture
def files(tmp_path):
    return make_set(tmp_path / "milk", n_lesions=20, seed=6)


def _eval(normalize=True):
    return build_transforms(model_name="test_efficientnet", image_size=SIZE, train=False, normalize=normalize)


def _all(dataset):
    return default_collate([dataset[i] for i in range(len(dataset))])


def _equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _equal(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_cache_hits_return_the_same_tensors_as_a_cold_read(files, tmp_path):
    cold = Milk10kDataset(files=files, image_size=SIZE, transform=_eval())
    built = Milk10kDataset(files=files, image_size=SIZE, transform=_eval(), cache_dir=tmp_path / "c")
    assert built.cache.built
    hit = Milk10kDataset(files=files, image_size=SIZE, transform=_eval(), cache_dir=tmp_path / "c")
    assert not hit.cache.built
    _equal(_all(cold), _all(built))
    _equal(_all(cold), _all(hit))
    npy = list((tmp_path / "c").glob("*.npy"))
    assert len(npy) == 1 and len(list((tmp_path / "c").glob("*.json"))) == 1
    assert not list((tmp_path / "c").glob("*.tmp")), "atomic write leaves no temporary file"


def test_cached_epochs_decode_no_jpeg(files, tmp_path, monkeypatch):
    Milk10kDataset(files=files, image_size=SIZE, cache_dir=tmp_path / "c")

    def refuse(source):
        raise AssertionError(f"decoded {source.path}")

    monkeypatch.setattr(images_module, "decode_image", refuse)
    dataset = Milk10kDataset(files=files, image_size=SIZE, transform=_eval(), cache_dir=tmp_path / "c")
    for batch in make_loader(dataset, batch_size=8):
        assert batch["derm"].shape == (8, 3, SIZE, SIZE) or batch["derm"].shape[0] == 4
    dataset[3]


def test_changed_source_file_invalidates_the_cache(files, tmp_path):
    first = Milk10kDataset(files=files, image_size=SIZE, transform=_eval(normalize=False), cache_dir=tmp_path / "c")
    rows = read_rows(files.metadata_csv)
    path = next(files.image_dir.rglob(f"{rows[2][2]}.jpg"))  # lesion 0, dermoscopic
    Image.new("RGB", (32, 24), (255, 0, 0)).save(path, quality=95)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = Milk10kDataset(files=files, image_size=SIZE, transform=_eval(normalize=False), cache_dir=tmp_path / "c")
    assert second.cache.built and second.cache.data_path != first.cache.data_path
    assert not first.cache.data_path.exists(), "the stale data file is removed"
    red = second[0]["derm"]
    assert red[0].float().mean() > 240 and red[1].float().mean() < 15
    with pytest.raises(DataError, match="rebuilt the cache"):
        first[0]  # its memory map was never opened, and its file is gone
    # a different size is a different cache
    third = Milk10kDataset(files=files, image_size=8, cache_dir=tmp_path / "c")
    assert third.cache.built and third[0]["derm"].shape == (3, 8, 8)


def test_removed_source_file_is_reported(files, tmp_path):
    Milk10kDataset(files=files, image_size=SIZE, cache_dir=tmp_path / "c", missing_image="absent")
    rows = read_rows(files.metadata_csv)
    next(files.image_dir.rglob(f"{rows[4][2]}.jpg")).unlink()
    dataset = Milk10kDataset(files=files, image_size=SIZE, cache_dir=tmp_path / "c", missing_image="absent")
    assert dataset.cache.built and len(dataset.cache.rows) == 39
    assert not dataset[1]["present"]["derm"]


def test_batched_fetch_equals_default_collate(files, tmp_path):
    for normalize in (True, False):
        for cache_dir in (None, tmp_path / "c"):
            dataset = Milk10kDataset(files=files, image_size=SIZE, transform=_eval(normalize), cache_dir=cache_dir)
            assert dataset.batch_fast_path
            indices = [5, 0, 17, 3]
            _equal(dataset[indices], default_collate([dataset[i] for i in indices]))


def test_batched_fetch_zeroes_absent_images(files, tmp_path):
    edit_csv(files.metadata_csv, lambda rows: rows.pop(2))  # lesion 0 without dermoscopic row
    for normalize in (True, False):
        dataset = Milk10kDataset(
            files=files,
            image_size=SIZE,
            transform=_eval(normalize),
            cache_dir=tmp_path / "c",
            missing_image="absent",
        )
        batch = dataset[[0, 1]]
        _equal(batch, default_collate([dataset[0], dataset[1]]))
        assert not batch["present"]["derm"][0] and not batch["derm"][0].any()


def test_augmented_batches_match_per_item_draws(files, tmp_path):
    train = build_transforms(model_name="test_efficientnet", image_size=SIZE, train=True, normalize=False)
    dataset = Milk10kDataset(files=files, image_size=SIZE, transform=train, cache_dir=tmp_path / "c")
    torch.manual_seed(0)
    fast = dataset[[1, 2, 3]]
    torch.manual_seed(0)
    slow = default_collate([dataset[i] for i in (1, 2, 3)])
    _equal(fast, slow)


def test_loader_is_seeded_and_batches_match(files, tmp_path):
    dataset = Milk10kDataset(files=files, image_size=SIZE, transform=_eval(False), cache_dir=tmp_path / "c")

    def epoch(loader):
        return [b["lesion_id"] for b in loader]

    a = make_loader(dataset, batch_size=6, shuffle=True, seed=3)
    b = make_loader(dataset, batch_size=6, shuffle=True, seed=3, batched=False)
    c = make_loader(dataset, batch_size=6, shuffle=True, seed=4)
    first = epoch(a)
    assert first == epoch(b) and first != epoch(c)
    assert len(a) == 4 and sorted(x for ids in first for x in ids) == sorted(dataset.lesion_ids)
    assert epoch(a) != first, "reshuffled every epoch"
    a = make_loader(dataset, batch_size=6, shuffle=True, seed=3)
    b = make_loader(dataset, batch_size=6, shuffle=True, seed=3, batched=False)
    for x, y in zip(a, b, strict=True):
        _equal(x, y)
    assert len(make_loader(dataset, batch_size=6, drop_last=True)) == 3
    with pytest.raises(ValueError, match="not both"):
        make_loader(dataset, batch_size=2, shuffle=True, sampler=range(3))


def test_loader_with_workers(files, tmp_path):
    dataset = Milk10kDataset(files=files, image_size=SIZE, transform=_eval(False), cache_dir=tmp_path / "c")
    loader = make_loader(dataset, batch_size=8, num_workers=2, seed=0)
    single = list(make_loader(dataset, batch_size=8, num_workers=0, seed=0))
    for _ in range(2):  # persistent workers serve two epochs
        for x, y in zip(loader, single, strict=True):
            _equal(x, y)
    assert loader.persistent_workers


def test_worker_errors_surface_as_data_errors(files):
    rows = read_rows(files.metadata_csv)
    path = next(files.image_dir.rglob(f"{rows[1][2]}.jpg"))
    path.write_bytes(b"garbage")
    dataset = Milk10kDataset(files=files, image_size=SIZE, transform=_eval())

    def first_error() -> str:
        # Drop the traceback so no reference cycle keeps the worker alive until a later garbage
        # collection (torch then spends 5 s joining it); the iterator is then freed at once.
        iterator = iter(make_loader(dataset, batch_size=4, num_workers=1))
        message = "no error"
        try:
            for _ in iterator:
                pass
        except DataError as error:
            message = f"DataError: {error}"
            error.__traceback__ = None
        del iterator
        return message

    message = first_error()
    assert message.startswith("DataError:") and "cannot decode" in message and str(path) in message


def test_cache_survives_pickling(files, tmp_path):
    import pickle

    dataset = Milk10kDataset(files=files, image_size=SIZE, cache_dir=tmp_path / "c")
    _ = dataset.cache.array  # open the memory map
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.cache._array is None
    assert torch.equal(clone[2]["derm"], dataset[2]["derm"])
    assert len(pickle.dumps(dataset.cache)) < 10_000


def test_open_or_build_is_keyed_by_size_and_files(files, tmp_path):
    dataset = Milk10kDataset(files=files)
    sources = list(dataset._sources.values())
    started = time.perf_counter()
    a = ImageCache.open_or_build(cache_dir=tmp_path, name="x", sources=sources, image_size=8)
    b = ImageCache.open_or_build(cache_dir=tmp_path, name="x", sources=sources, image_size=8)
    assert a.built and not b.built and a.data_path == b.data_path
    c = ImageCache.open_or_build(cache_dir=tmp_path, name="x", sources=sources[:-1], image_size=8)
    assert c.built and len(c.rows) == len(sources) - 1
    assert time.perf_counter() - started < 30


def test_a_truncated_cache_file_is_rebuilt_with_a_warning(files, tmp_path, caplog):
    first = Milk10kDataset(files=files, image_size=SIZE, transform=_eval(normalize=False), cache_dir=tmp_path / "c")
    expected = _all(first)
    (npy,) = (tmp_path / "c").glob("*.npy")
    with open(npy, "r+b") as handle:  # a disk filled up or a copy cut short
        handle.truncate(npy.stat().st_size // 2)
    with caplog.at_level("WARNING", logger="fusionkit.data"):
        again = Milk10kDataset(files=files, image_size=SIZE, transform=_eval(normalize=False), cache_dir=tmp_path / "c")
    assert again.cache.built
    assert any("damaged" in r.getMessage() and str(npy) in r.getMessage() for r in caplog.records)
    _equal(expected, _all(again))


def _sources(files):
    return list(Milk10kDataset(files=files)._sources.values())


def test_a_killed_builds_temporary_file_is_removed_by_the_next_build(files, tmp_path, caplog):
    """Issue 28: a build killed mid-way left its full-size ``<name>-<key>.npy.<random>.tmp`` for ever
    (about 9 GB at MILK10k scale). The next build of that cache removes it (it holds the cache's lock,
    so no live build owns it); another cache's files are left alone."""
    cache = tmp_path / "c"
    cache.mkdir()
    orphan = cache / "x-0123456789abcdef.npy.k2j4x9.tmp"
    orphan.write_bytes(b"\0" * 4096)
    other = cache / "y-0123456789abcdef.npy.k2j4x9.tmp"
    other.write_bytes(b"\0")
    with caplog.at_level("WARNING", logger="fusionkit.data"):
        built = ImageCache.open_or_build(cache_dir=cache, name="x", sources=_sources(files), image_size=8)
    assert built.built and not orphan.exists() and other.exists()
    assert any(str(orphan) in r.getMessage() and "interrupted" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith("x")) == [built.data_path.name, "x.json"]


def _count_concurrent_decodes(monkeypatch) -> dict[str, object]:
    """Wrap the decoder: how many decodes ran at once at most, and in how many threads."""
    import threading

    seen: dict[str, object] = {"now": 0, "peak": 0, "threads": set()}
    guard = threading.Lock()
    decode = images_module.decode_image

    def counting(source):
        with guard:
            seen["now"] += 1
            seen["peak"] = max(seen["peak"], seen["now"])
            seen["threads"].add(threading.get_ident())
        try:
            time.sleep(0.01)  # long enough for the other threads to start theirs
            return decode(source)
        finally:
            with guard:
                seen["now"] -= 1

    monkeypatch.setattr(images_module, "decode_image", counting)
    return seen


def test_a_build_decodes_at_most_its_pixel_budget_at_once(files, tmp_path, monkeypatch):
    """Issue 28: a 12000x12000 JPEG cost 1.1 GB more, decoded next to others in os.cpu_count()
    threads. The build now decodes at most ``pixel_budget`` source pixels at once: an image as
    large as the budget is decoded alone, whatever the number of threads."""
    sources = _sources(files)
    h, w = images_module.image_hw(sources[0].path)
    seen = _count_concurrent_decodes(monkeypatch)
    ImageCache.open_or_build(
        cache_dir=tmp_path / "a", name="x", sources=sources, image_size=8, workers=4, pixel_budget=h * w
    )
    assert seen["peak"] == 1
    seen = _count_concurrent_decodes(monkeypatch)
    ImageCache.open_or_build(cache_dir=tmp_path / "b", name="x", sources=sources, image_size=8, workers=4)
    assert seen["peak"] > 1  # ordinary images: several at once under the default budget


def test_a_build_starts_at_most_eight_threads_on_a_large_machine(files, tmp_path, monkeypatch):
    from fusionkit.data.cache import MAX_WORKERS, default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 96)
    assert default_workers() == MAX_WORKERS == 8
    seen = _count_concurrent_decodes(monkeypatch)
    ImageCache.open_or_build(cache_dir=tmp_path, name="x", sources=_sources(files) * 3, image_size=8)
    assert 1 < len(seen["threads"]) <= 8


def test_two_builders_of_one_cache_build_it_once(files, tmp_path):
    """Two processes (here: threads with their own lock files open) that need the same cache at
    once: one builds it, the other waits and opens it."""
    from concurrent.futures import ThreadPoolExecutor

    sources = _sources(files)

    def build(_):
        return ImageCache.open_or_build(cache_dir=tmp_path, name="x", sources=sources, image_size=8)

    with ThreadPoolExecutor(2) as pool:
        caches = list(pool.map(build, range(2)))
    assert sorted(c.built for c in caches) == [False, True]
    assert caches[0].data_path == caches[1].data_path
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*lock"))
