"""``fusionkit.train.data_setup`` driven directly on a small generated MILK10k set: the data root,
the split, what the datasets, samplers and loaders are built with (recorded by spies that call the
real functions), the resolved config and the files rank 0 writes, and ``RunData``'s loaders and
device batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from train_helpers import tiny_run_config

import fusionkit as fk
import fusionkit.train.data_setup as ds
from fusionkit.data import (
    ImagePreprocessing,
    MetadataEncoder,
    backbone_preprocessing,
    batch_generator,
    find_split,
    kfold_splits,
    lesion_labels,
    make_synthetic_milk10k,
    normalize_batch,
    train_val_split,
)
from fusionkit.errors import ConfigError
from fusionkit.runtime.config import RunConfig
from fusionkit.runtime.distributed import DistInfo

CPU = DistInfo(0, 1, 0, torch.device("cpu"))
# a preprocessing no timm model declares, so what the transforms use can only have come from it
DECLARED = ImagePreprocessing(input_size=32, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), interpolation="bilinear")
FLIP_ONLY = {
    "hflip": 1.0,
    "vflip": 0.0,
    "rot90": False,
    "rotation_degrees": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "hue": 0.0,
}


@pytest.fixture(scope="module")
def milk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("milk")
    make_synthetic_milk10k(root, n_lesions=24, photo_size=(40, 30), seed=3)
    return root


def _config(tmp_path: Path, *, data: dict | None = None, model: dict | None = None, **train: Any) -> RunConfig:
    raw = tiny_run_config(tmp_path / "cache", n_lesions=24, **train)
    raw["data"].update(data or {})
    raw["model"]["overrides"].update(model or {})
    return RunConfig.model_validate(raw)


class Spy:
    """Records the keyword (and positional) arguments of each call, then calls ``real``."""

    def __init__(self, real: Any, log: list[tuple[str, tuple, dict]], name: str) -> None:
        self.real, self.log, self.name = real, log, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.log.append((self.name, args, kwargs))
        return self.real(*args, **kwargs)

    def calls(self) -> list[tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.log if n == self.name]


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Spies on what ``prepare_data`` and ``RunData`` build, all sharing one ordered log."""
    log: list[tuple[str, tuple, dict]] = []
    out: dict[str, Any] = {"log": log}
    for name in (
        "Milk10kDataset",
        "build_transforms",
        "make_loader",
        "EpochSampler",
        "barrier",
        "make_synthetic_milk10k",
        "batch_generator",
        "DeviceAugment",
    ):
        spy = Spy(getattr(ds, name), log, name)
        monkeypatch.setattr(ds, name, spy)
        out[name] = spy
    return out


def _names(log: list) -> list[str]:
    return [n for n, _, _ in log]


# -- a fresh run ---------------------------------------------------------------------------------
def test_a_fresh_run_is_built_from_its_settings_and_recorded(tmp_path: Path, milk: Path, spies: dict) -> None:
    config = _config(
        tmp_path,
        data={"val_fraction": 0.5, "split_seed": 5, "missing_image": "absent", "num_workers": 1},
        seed=7,
        sampler="balanced",
        eval_batch_size=5,
    )
    run = tmp_path / "run"
    run.mkdir()
    data = ds.prepare_data(config, run_dir=run, data_root=milk, synthetic=False, dist_info=CPU)

    files = find_split(milk, "Training")
    ids, labels = lesion_labels(files)
    split = train_val_split(ids, labels, val_fraction=0.5, seed=5)
    assert split != train_val_split(ids, labels, seed=5)  # not the default fraction
    assert data.split == split and data.files == files and data.changes == ()
    assert data.class_names == ds.CLASS_NAMES

    # the image transforms wait for the model's declared preprocessing
    assert spies["build_transforms"].calls() == [] and data.preprocessing is None
    with pytest.raises(ConfigError, match="use_preprocessing"):
        data.train_loader(epoch=0)
    data.use_preprocessing(DECLARED)
    assert spies["build_transforms"].calls() == [
        ((), {"preprocessing": DECLARED, "train": True, "augment": config.data.augment, "normalize": False}),
        ((), {"preprocessing": DECLARED, "train": False, "normalize": False}),
    ]
    assert data.preprocessing == data.train_set.transform.preprocessing == data.val_set.transform.preprocessing
    assert data.preprocessing == DECLARED
    (_, train_kw), (_, val_kw) = spies["Milk10kDataset"].calls()
    common = {"files": files, "image_size": 32, "missing_image": "absent", "cache_dir": tmp_path / "cache"}
    # a fresh run hands the training set an unfitted encoder of data.metadata_features; the set fits it in place
    assert train_kw == {"lesion_ids": split.train, "encoder": data.train_set.encoder, **common}
    assert data.encoder.features == config.data.metadata_features and data.encoder.n_fitted == len(split.train)
    assert val_kw == {"lesion_ids": split.val, "encoder": data.train_set.encoder, **common}
    assert data.train_set.transform.train and not data.val_set.transform.train
    assert data.encoder is data.train_set.encoder is data.val_set.encoder

    (train_labels,), train_sampler = spies["EpochSampler"].calls()[0]
    (val_labels,), val_sampler = spies["EpochSampler"].calls()[1]
    assert (train_labels, val_labels) == (data.train_set.labels, data.val_set.labels)
    assert train_sampler == {"seed": 7, "mode": "balanced", "rank": 0, "world_size": 1, "batch_size": 8}
    assert val_sampler == {"seed": 0, "mode": "sequential", "rank": 0, "world_size": 1}
    (train_set,), train_loader = spies["make_loader"].calls()[0]
    (val_set,), val_loader = spies["make_loader"].calls()[1]
    assert (train_set, val_set) == (data.train_set, data.val_set)
    assert train_loader == {"batch_size": 8, "sampler": data._train_sampler, "num_workers": 1, "seed": 7}
    assert val_loader == {"batch_size": 5, "sampler": val_loader["sampler"], "num_workers": 1, "seed": 0}
    assert data.val_loader() is data._val_loader and data._device_augment is None
    assert _names(spies["log"]).count("barrier") == 2 and spies["make_synthetic_milk10k"].calls() == []

    # the resolved config: the folder read, nothing else filled in (no class weighting asked for)
    assert data.config.data.root == milk.resolve() and data.config.model.loss.class_weights is None
    assert data.config.model.loss.class_prior is None
    record = data.config.model_dump(mode="json")
    del record["data"]["synthetic"]
    assert (run / "config.yaml").read_text() == yaml.safe_dump(record, sort_keys=False)
    assert (run / "split.json").read_text() == json.dumps(
        {"root": str(milk.resolve()), "train": list(split.train), "val": list(split.val), "test": []}, indent=1
    )
    saved = MetadataEncoder.load(run / "metadata_encoder.json")
    assert saved.to_dict() == data.encoder.to_dict()


def test_the_val_batch_defaults_to_twice_the_train_batch(tmp_path: Path, milk: Path, spies: dict) -> None:
    data = ds.prepare_data(_config(tmp_path), run_dir=tmp_path / "run", data_root=milk, synthetic=False, dist_info=CPU)
    assert spies["make_loader"].calls()[1][1]["batch_size"] == 16
    assert spies["Milk10kDataset"].calls()[0][1]["missing_image"] == "error"
    assert data.config.data.root == milk.resolve()


def test_folds_choose_the_fold_of_kfold_splits(tmp_path: Path, milk: Path) -> None:
    config = _config(tmp_path, data={"folds": 3, "fold": 1, "split_seed": 2, "cache": False})
    data = ds.prepare_data(config, run_dir=tmp_path / "run", data_root=milk, synthetic=False, dist_info=CPU)
    ids, labels = lesion_labels(find_split(milk, "Training"))
    assert data.split == kfold_splits(ids, labels, k=3, seed=2)[1]


def test_no_cache_reads_the_images_every_time(tmp_path: Path, milk: Path, spies: dict) -> None:
    ds.prepare_data(
        _config(tmp_path, data={"cache": False}),
        run_dir=tmp_path / "run",
        data_root=milk,
        synthetic=False,
        dist_info=CPU,
    )
    assert [k["cache_dir"] for _, k in spies["Milk10kDataset"].calls()] == [None, None]


def test_class_weights_and_prior_are_resolved_from_the_training_labels(tmp_path: Path, milk: Path) -> None:
    config = _config(tmp_path, model={"loss": {"logit_adjustment": 1.0}}, class_weighting="inverse_frequency")
    data = ds.prepare_data(config, run_dir=tmp_path / "run", data_root=milk, synthetic=False, dist_info=CPU)
    loss = data.config.model.loss
    labels = data.train_set.labels
    assert loss.class_weights == pytest.approx(ds._class_weights(labels))
    assert loss.class_prior == pytest.approx(ds._class_prior(labels))
    given = _config(
        tmp_path,
        model={"loss": {"logit_adjustment": 1.0, "class_weights": [2.0] * 11, "class_prior": [1 / 11] * 11}},
        class_weighting="inverse_frequency",
    )
    kept = ds.prepare_data(given, run_dir=tmp_path / "run2", data_root=milk, synthetic=False, dist_info=CPU)
    assert kept.config.model.loss.class_weights == pytest.approx([2.0] * 11)
    assert kept.config.model.loss.class_prior == pytest.approx([1 / 11] * 11)


def test_the_class_prior_alone_leaves_the_class_weights_unset(tmp_path: Path, milk: Path) -> None:
    config = _config(tmp_path, model={"loss": {"logit_adjustment": 0.5}})
    data = ds.prepare_data(config, run_dir=tmp_path / "run", data_root=milk, synthetic=False, dist_info=CPU)
    loss = data.config.model.loss
    assert loss.class_prior == pytest.approx(ds._class_prior(data.train_set.labels))
    assert loss.class_weights is None and loss.logit_adjustment == 0.5


def test_the_class_prior_is_laplace_smoothed_and_absent_classes_weigh_one() -> None:
    prior = ds._class_prior((0, 0, 1, 3))
    assert prior == pytest.approx((3 / 15, 2 / 15, 1 / 15, 2 / 15) + (1 / 15,) * 7)
    weights = ds._class_weights((0, 0, 1, 3))
    assert weights == pytest.approx((4 / 22, 4 / 11, 1.0, 4 / 11) + (1.0,) * 7)


# -- ranks ---------------------------------------------------------------------------------------
def test_rank_1_waits_for_rank_0_and_writes_nothing(tmp_path: Path, milk: Path, spies: dict) -> None:
    run = tmp_path / "run"
    run.mkdir()
    spies["barrier"].real = lambda info: None  # no process group: the spy only records
    info = DistInfo(1, 2, 1, torch.device("cpu"))
    data = ds.prepare_data(_config(tmp_path), run_dir=run, data_root=milk, synthetic=False, dist_info=info)
    assert [n for n in _names(spies["log"]) if n in ("barrier", "Milk10kDataset")] == [
        "barrier",
        "Milk10kDataset",
        "Milk10kDataset",
        "barrier",
    ]
    assert {a[0] for n, a, _ in spies["log"] if n == "barrier"} == {info}
    assert list(run.iterdir()) == []
    for _, kw in spies["EpochSampler"].calls():
        assert (kw["rank"], kw["world_size"]) == (1, 2)
    val_sampler = spies["make_loader"].calls()[1][1]["sampler"]
    assert isinstance(val_sampler, ds.EpochSampler.real)
    assert (val_sampler.rank, val_sampler.world_size, val_sampler.mode) == (1, 2, "sequential")
    assert data.dist_info is info


def test_rank_0_builds_first_then_lets_the_others_in(tmp_path: Path, milk: Path, spies: dict) -> None:
    spies["barrier"].real = lambda info: None
    info = DistInfo(0, 2, 0, torch.device("cpu"))
    ds.prepare_data(_config(tmp_path), run_dir=tmp_path / "run", data_root=milk, synthetic=False, dist_info=info)
    assert [n for n in _names(spies["log"]) if n in ("barrier", "Milk10kDataset")] == [
        "Milk10kDataset",
        "Milk10kDataset",
        "barrier",
        "barrier",
    ]
    assert (tmp_path / "run" / "split.json").is_file()


# -- the data root -------------------------------------------------------------------------------
def test_a_synthetic_run_generates_its_set_once_and_records_it(tmp_path: Path, spies: dict) -> None:
    config = _config(tmp_path, data={"synthetic": {"n_lesions": 12, "photo_size": [20, 16], "seed": 4}})
    run = tmp_path / "run"
    run.mkdir()
    data = ds.prepare_data(config, run_dir=run, data_root=None, synthetic=True, dist_info=CPU)
    assert spies["make_synthetic_milk10k"].calls() == [
        ((run / "synthetic",), {"n_lesions": 12, "photo_size": (20, 16), "seed": 4})
    ]
    assert data.config.data.root == (run / "synthetic").resolve()
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["synthetic"] == {
        "n_lesions": 12,
        "photo_size": [20, 16],
        "seed": 4,
    }
    assert len(data.split.train) + len(data.split.val) == 12
    root = ds._data_root(config, run_dir=run, data_root=None, synthetic=True, saved=None, dist_info=CPU)
    assert root == (run / "synthetic").resolve()
    assert len(spies["make_synthetic_milk10k"].calls()) == 1  # the set is there: not generated again
    assert spies["barrier"].calls()[-1] == ((CPU,), {})
    other = tmp_path / "other"
    spies["barrier"].real = lambda info: None
    ds._data_root(
        config,
        run_dir=other,
        data_root=None,
        synthetic=True,
        saved=None,
        dist_info=DistInfo(1, 2, 1, torch.device("cpu")),
    )
    assert len(spies["make_synthetic_milk10k"].calls()) == 1  # only rank 0 generates


def test_the_data_root_is_the_argument_the_config_or_the_saved_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = _config(tmp_path, data={"root": "from-config"})
    plain = _config(tmp_path)
    saved = _config(tmp_path, data={"root": "~/saved"})

    def root(cfg: RunConfig, data_root: Any, saved_cfg: RunConfig | None = None) -> Path:
        return ds._data_root(
            cfg, run_dir=tmp_path, data_root=data_root, synthetic=False, saved=saved_cfg, dist_info=CPU
        )

    assert root(config, "given") == tmp_path / "given"
    assert root(config, None, saved) == tmp_path / "from-config"
    assert root(plain, None, saved) == tmp_path / "home" / "saved"
    assert root(plain, Path("~/x")) == tmp_path / "home" / "x"
    with pytest.raises(ConfigError) as exc:
        root(plain, None)
    assert str(exc.value) == "no data: pass --data DIR (a MILK10k folder), --synthetic, or set data.root"


def test_a_folder_without_ground_truth_is_refused_by_name(tmp_path: Path, milk: Path) -> None:
    test_like = tmp_path / "milk"
    test_like.mkdir()
    for entry in milk.iterdir():
        if entry.name != "MILK10k_Training_GroundTruth.csv":
            (test_like / entry.name).symlink_to(entry)
    with pytest.raises(ConfigError) as exc:
        ds.prepare_data(
            _config(tmp_path), run_dir=tmp_path / "run", data_root=test_like, synthetic=False, dist_info=CPU
        )
    assert str(exc.value) == f"{test_like.resolve()}: training needs MILK10k_Training_GroundTruth.csv"


# -- resume --------------------------------------------------------------------------------------
def test_a_resumed_run_reads_back_its_split_encoder_and_root(tmp_path: Path, milk: Path, spies: dict) -> None:
    run = tmp_path / "run"
    run.mkdir()
    first = ds.prepare_data(_config(tmp_path), run_dir=run, data_root=milk, synthetic=False, dist_info=CPU)
    # a stored split other than the one the seed gives, and an encoder other than a refit's
    stored = {"root": "elsewhere", "train": list(first.split.train[2:]), "val": list(first.split.val)}
    (run / "split.json").write_text(json.dumps(stored))
    state = first.encoder.to_dict()
    state["age"] = {"mean": 12.5, "std": 3.0}
    MetadataEncoder.from_dict(state).save(run / "metadata_encoder.json")
    spies["log"].clear()
    new = _config(tmp_path, epochs=3)
    data = ds.prepare_data(new, run_dir=run, data_root=None, synthetic=False, dist_info=CPU, saved=first.config)
    assert data.split.train == tuple(stored["train"]) and data.split.val == tuple(stored["val"])
    assert spies["Milk10kDataset"].calls()[0][1]["encoder"].to_dict() == state
    assert data.encoder.age_mean == 12.5
    assert data.config.data.root == milk.resolve()
    assert data.changes == ("train.epochs: 2 -> 3",)
    (run / "split.json").unlink()
    again = ds.prepare_data(new, run_dir=run, data_root=None, synthetic=False, dist_info=CPU, saved=first.config)
    assert again.split == first.split


def test_a_resume_that_changes_a_fixed_setting_is_refused(tmp_path: Path, milk: Path) -> None:
    run = tmp_path / "run"
    first = ds.prepare_data(_config(tmp_path), run_dir=run, data_root=milk, synthetic=False, dist_info=CPU)
    with pytest.raises(ConfigError) as exc:
        ds.prepare_data(
            _config(tmp_path, batch_size=4),
            run_dir=run,
            data_root=None,
            synthetic=False,
            dist_info=CPU,
            saved=first.config,
        )
    assert str(exc.value).startswith(f"{run}: --resume cannot change train.batch_size (8 -> 4); ")


def test_a_synthetic_run_cannot_resume_with_another_generated_set(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    first = ds.prepare_data(_config(tmp_path), run_dir=run, data_root=None, synthetic=True, dist_info=CPU)
    bigger = _config(tmp_path, data={"synthetic": {"n_lesions": 30, "photo_size": [40, 30], "seed": 3}})
    with pytest.raises(ConfigError) as exc:
        ds.prepare_data(bigger, run_dir=run, data_root=None, synthetic=True, dist_info=CPU, saved=first.config)
    assert str(exc.value).startswith(f"{run}: --resume cannot change data.synthetic.n_lesions (24 -> 30); ")


# -- RunData ---------------------------------------------------------------------------------------
def test_train_loader_sets_the_epoch_the_skipped_items_and_the_seed(tmp_path: Path, milk: Path) -> None:
    data = ds.prepare_data(
        _config(tmp_path, seed=3), run_dir=tmp_path / "run", data_root=milk, synthetic=False, dist_info=CPU
    )
    data.use_preprocessing(DECLARED)
    loader = data.train_loader(epoch=2, start_batch=1)
    assert loader is data._train_loader
    assert (data._train_sampler.epoch, data._train_sampler.start) == (2, 8)
    assert loader.generator.initial_seed() == 3 * 1_000_003 + 2
    data.train_loader(epoch=4)
    assert (data._train_sampler.epoch, data._train_sampler.start) == (4, 0)
    assert loader.generator.initial_seed() == 3 * 1_000_003 + 4


def test_device_batches_are_augmented_only_for_training_batches(tmp_path: Path, milk: Path, spies: dict) -> None:
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    config = _config(tmp_path, data={"augment_on": "device", "augment": FLIP_ONLY}, seed=6)
    data = ds.prepare_data(config, run_dir=tmp_path / "run", data_root=milk, synthetic=False, dist_info=info)
    assert data.augment_on == "device"
    assert spies["DeviceAugment"].calls() == [((), {"config": config.data.augment})]
    data.use_preprocessing(DECLARED)
    assert not spies["build_transforms"].calls()[0][1]["train"]
    batch = data.train_set.collate(range(4))
    original = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    transform = DECLARED
    plain = normalize_batch(batch, mean=transform.mean, std=transform.std)
    for kwargs in ({}, {"epoch": 1}, {"batch_index": 2}):
        out = data.to_model_batch(batch, **kwargs)
        assert torch.equal(out["derm"], plain["derm"]) and torch.equal(out["clinical"], plain["clinical"])
    spies["log"].clear()
    out = data.to_model_batch(batch, epoch=1, batch_index=2)
    assert spies["batch_generator"].calls() == [((), {"seed": 6, "epoch": 1, "batch_index": 2, "rank": 0})]
    for key in ("derm", "clinical"):  # hflip 1.0 and nothing else: every image mirrored
        expected = normalize_batch({key: batch[key].flip(-1)}, mean=transform.mean, std=transform.std)[key]
        assert torch.equal(out[key], expected), key
        assert torch.equal(batch[key], original[key])  # the caller's batch is not changed
    assert torch.equal(out["meta"], plain["meta"])
    del batch["clinical"]
    assert set(data.to_model_batch(batch, epoch=0, batch_index=0)) == set(batch)


def test_device_augmentation_draws_from_the_batch_generator_alone(tmp_path: Path, milk: Path) -> None:
    config = _config(tmp_path, data={"augment_on": "device"}, seed=6)
    data = ds.prepare_data(config, run_dir=tmp_path / "run", data_root=milk, synthetic=False, dist_info=CPU)
    data.use_preprocessing(DECLARED)
    batch = data.train_set.collate(range(4))
    torch.manual_seed(0)
    out = data.to_model_batch(batch, epoch=2, batch_index=1)
    generator = batch_generator(seed=6, epoch=2, batch_index=1, rank=0)
    augment = ds.DeviceAugment(config=config.data.augment)
    transform = DECLARED
    for key in ("derm", "clinical"):  # one generator, derm first
        expected = normalize_batch(
            {key: augment(batch[key], generator=generator)}, mean=transform.mean, std=transform.std
        )[key]
        assert torch.equal(out[key], expected), key


def test_augment_on_auto_is_the_device_on_a_gpu_only(tmp_path: Path) -> None:
    auto = _config(tmp_path)
    assert [ds.augment_on(auto, torch.device(d)) for d in ("cpu", "cuda", "meta")] == ["cpu", "device", "cpu"]
    for where in ("cpu", "device"):
        fixed = _config(tmp_path, data={"augment_on": where})
        assert ds.augment_on(fixed, torch.device("cuda")) == ds.augment_on(fixed, torch.device("cpu")) == where


def test_augmentation_draws_are_seeded_by_rank(tmp_path: Path, milk: Path, spies: dict) -> None:
    spies["barrier"].real = lambda info: None
    info = DistInfo(1, 2, 1, torch.device("cpu"))
    config = _config(tmp_path, data={"augment_on": "device"}, seed=6)
    data = ds.prepare_data(config, run_dir=tmp_path / "run", data_root=milk, synthetic=False, dist_info=info)
    data.use_preprocessing(DECLARED)
    spies["log"].clear()
    data.to_model_batch(data.train_set.collate(range(2)), epoch=0, batch_index=0)
    assert spies["batch_generator"].calls() == [((), {"seed": 6, "epoch": 0, "batch_index": 0, "rank": 1})]
    assert (
        batch_generator(seed=6, epoch=0, batch_index=0, rank=1).initial_seed()
        != batch_generator(seed=6, epoch=0, batch_index=0, rank=0).initial_seed()
    )


def test_the_datasets_take_the_built_models_declared_preprocessing(tmp_path: Path, milk: Path, caplog) -> None:
    """What the trainer does: the model built from the spec declares the preprocessing (timm's config of
    its backbone, at the spec's image_size); a model without images passes them through as x / 255;
    a preprocessing for another size than the spec's is refused."""
    config = _config(tmp_path, data={"cache": False})
    data = ds.prepare_data(config, run_dir=tmp_path / "run", data_root=milk, synthetic=False, dist_info=CPU)
    model = fk.build_model(config.model, metadata_width=data.encoder.metadata_width)
    with caplog.at_level("INFO", logger="fusionkit.train.data_setup"):
        data.use_preprocessing(model.preprocessing)
    assert data.preprocessing == model.preprocessing == backbone_preprocessing("test_efficientnet").with_size(32)
    assert "image preprocessing (declared by the model's image encoders): 32px, mean [0.485" in caplog.text
    batch = data.to_model_batch(data.val_set.collate([0]))
    mean = torch.tensor(model.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(3, 1, 1)
    raw = data.val_set.collate([0])["derm"][0].float() / 255
    torch.testing.assert_close(batch["derm"][0], (raw - mean) / std)

    data.use_preprocessing(None)
    assert data.preprocessing == ImagePreprocessing(input_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ConfigError, match="preprocessing is for 64px images but model.image_size is 32"):
        data.use_preprocessing(DECLARED.with_size(64))
