"""Device-side batch augmentation: same distribution as the per-image CPU path, seeded per batch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionkit.data import AugmentConfig, DeviceAugment, batch_generator, build_transforms
from fusionkit.data.transforms import ColorJitterUint8

MODEL = "test_efficientnet"
NO_JITTER = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}


def _images(count, size=6, seed=0):
    return torch.randint(
        0, 256, (count, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _geometry_class(out: torch.Tensor, image: torch.Tensor) -> int:
    """Index of the dihedral transform (of 8) that maps ``image`` to ``out``."""
    for i in range(8):
        cand = torch.rot90(image, i % 4, dims=(-2, -1))
        if i >= 4:
            cand = cand.flip(-1)
        if torch.equal(cand, out):
            return i
    raise AssertionError("output is not a flip/rotation of the input")


def test_flips_and_rot90_have_the_cpu_frequencies():
    # 8 dihedral outcomes, each 1/8 for hflip=vflip=0.5 + uniform rot90; compare against the CPU path
    n = 4000
    images = _images(n, size=4)
    config = AugmentConfig(**NO_JITTER)
    device_out = DeviceAugment(config=config)(images, generator=torch.Generator().manual_seed(0))
    cpu = build_transforms(model_name=MODEL, image_size=4, train=True, augment=config, normalize=False)
    torch.manual_seed(0)
    device_counts = torch.zeros(8)
    cpu_counts = torch.zeros(8)
    for i in range(n):
        device_counts[_geometry_class(device_out[i], images[i])] += 1
        cpu_counts[_geometry_class(cpu(images[i]), images[i])] += 1
    # binomial sd of a count near 500 of 4000 is ~21; 4.5 sd each side
    assert torch.all((device_counts - n / 8).abs() < 95), device_counts
    assert torch.all((cpu_counts - n / 8).abs() < 95), cpu_counts


def test_flip_probabilities_are_honoured():
    config = AugmentConfig(hflip=0.2, vflip=0.0, rot90=False, **NO_JITTER)
    params = DeviceAugment(config=config).sample(5000, torch.Generator().manual_seed(1))
    assert abs(float(params.hflip.float().mean()) - 0.2) < 0.025
    assert not params.vflip.any() and not params.rot90.any()
    # and applied: a flipped image equals the input mirrored, an unflipped one the input
    images = _images(64)
    out = DeviceAugment(config=config).apply(
        images, DeviceAugment(config=config).sample(64, torch.Generator().manual_seed(1))
    )
    params = DeviceAugment(config=config).sample(64, torch.Generator().manual_seed(1))
    assert torch.equal(out[params.hflip], images[params.hflip].flip(-1))
    assert torch.equal(out[~params.hflip], images[~params.hflip])


@settings(max_examples=25, deadline=None)
@given(
    brightness=st.floats(0.0, 1.0),
    contrast=st.floats(0.0, 1.0),
    saturation=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_jitter_factors_are_drawn_from_the_cpu_ranges(brightness, contrast, saturation, seed):
    config = AugmentConfig(brightness=brightness, contrast=contrast, saturation=saturation)
    params = DeviceAugment(config=config).sample(256, torch.Generator().manual_seed(seed))
    for column, spread in enumerate((brightness, contrast, saturation)):
        f = params.factors[:, column]
        low = max(0.0, 1.0 - spread)
        assert float(f.min()) >= low - 1e-6 and float(f.max()) <= 1.0 + spread + 1e-6
        if spread > 0.05:  # uniform: the mean is the midpoint (sd of the mean of 256 <= 0.037)
            assert abs(float(f.double().mean()) - (low + 1.0 + spread) / 2) < 0.15 * spread + 0.01
    assert sorted(params.order[0].tolist()) == [0, 1, 2]


def test_jitter_matches_the_cpu_colour_map_for_the_same_factors():
    # same order and factors: the batched map equals ColorJitterUint8 (up to float rounding at .5)
    config = AugmentConfig(hflip=0.0, vflip=0.0, rot90=False, brightness=0.4, contrast=0.4, saturation=0.4)
    augment = DeviceAugment(config=config)
    images = _images(8, size=8, seed=5)
    params = augment.sample(8, torch.Generator().manual_seed(2))
    out = augment.apply(images, params)
    jitter = ColorJitterUint8(brightness=0.4, contrast=0.4, saturation=0.4)
    assert len({tuple(o) for o in params.order.tolist()}) > 1, "orders differ between images"
    for i in range(8):
        expected = jitter.jitter(images[i], order=params.order[i].tolist(), factors=params.factors[i].tolist())
        assert (out[i].int() - expected.int()).abs().max() <= 1
        assert (out[i] != expected).float().mean() < 0.05
    assert not torch.equal(out, images)


def test_batch_generator_is_a_pure_function_of_its_key():
    a = torch.rand(4, generator=batch_generator(seed=1, epoch=2, batch_index=3))
    b = torch.rand(4, generator=batch_generator(seed=1, epoch=2, batch_index=3))
    assert torch.equal(a, b)
    for other in (
        {"seed": 2, "epoch": 2, "batch_index": 3},
        {"seed": 1, "epoch": 3, "batch_index": 3},
        {"seed": 1, "epoch": 2, "batch_index": 4},
        {"seed": 1, "epoch": 2, "batch_index": 3, "rank": 1},
    ):
        assert not torch.equal(a, torch.rand(4, generator=batch_generator(**other)))


def test_absent_images_stay_zero_and_layout_is_kept():
    config = AugmentConfig(brightness=0.5, contrast=0.5, saturation=0.5)
    images = _images(6, size=8)
    images[2] = 0
    images = images.contiguous(memory_format=torch.channels_last)
    out = DeviceAugment(config=config)(images, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert not out[2].any()
    assert out.is_contiguous(memory_format=torch.channels_last)
    # the colour map keeps the per-image pixel multiset's mean close (factors average to 1)
    assert not torch.equal(out, images)


def test_the_cuda_selection_equals_the_cpu_selection():
    from fusionkit.data.device_augment import _where

    images = _images(16, size=6)
    mask = torch.rand(16, generator=torch.Generator().manual_seed(0)) < 0.5
    for op in (lambda x: x.flip(-1), lambda x: torch.rot90(x, 3, dims=(-2, -1))):
        by_index = _where(mask, op, images, batched=False)
        by_where = _where(mask, op, images, batched=True)
        assert torch.equal(by_index, by_where)
        assert torch.equal(by_index[mask], op(images[mask])) and torch.equal(by_index[~mask], images[~mask])
    assert _where(torch.zeros(16, dtype=torch.bool), lambda x: x.flip(-1), images) is images


def test_rotation_and_hue_run_per_image():
    config = AugmentConfig(rotation_degrees=30.0, hue=0.1)
    out = DeviceAugment(config=config)(_images(4, size=10), generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 10, 10) and out.dtype == torch.uint8


def test_bad_batches_are_rejected():
    augment = DeviceAugment(config=AugmentConfig())
    with pytest.raises(ValueError, match="uint8"):
        augment(torch.zeros(2, 3, 4, 4), generator=torch.Generator())
    with pytest.raises(ValueError, match="square"):
        augment(torch.zeros(2, 3, 4, 5, dtype=torch.uint8), generator=torch.Generator())


@pytest.mark.parametrize("augment_on", ["device", "cpu"])
def test_run_data_augments_training_batches_where_the_spec_says(tmp_path, augment_on):
    from train_helpers import tiny_run_config

    from fusionkit.data import ImagePreprocessing
    from fusionkit.runtime.config import RunConfig
    from fusionkit.runtime.distributed import DistInfo
    from fusionkit.train.data_setup import prepare_data

    raw = tiny_run_config(tmp_path / "cache", n_lesions=24)
    raw["data"]["augment_on"] = augment_on
    data = prepare_data(
        RunConfig.model_validate(raw),
        run_dir=tmp_path / "run",
        data_root=None,
        synthetic=True,
        dist_info=DistInfo(0, 1, 0, torch.device("cpu")),
    )
    data.use_preprocessing(ImagePreprocessing(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert (data.train_set.transform.augment is None) == (augment_on == "device")
    batch = data.train_set.collate(range(8))
    plain = data.to_model_batch(batch)
    first = data.to_model_batch(batch, epoch=0, batch_index=0)
    again = data.to_model_batch(batch, epoch=0, batch_index=0)
    other = data.to_model_batch(batch, epoch=0, batch_index=1)
    assert torch.equal(first["derm"], again["derm"]) and torch.equal(first["clinical"], again["clinical"])
    if augment_on == "device":
        assert not torch.equal(first["derm"], plain["derm"]), "training batches are augmented"
        assert not torch.equal(first["derm"], other["derm"]), "each batch index draws its own augmentation"
        assert not torch.equal(first["clinical"], plain["clinical"])
    else:  # augmented in the loader already; to_model_batch only normalises
        assert torch.equal(first["derm"], plain["derm"]) and torch.equal(other["derm"], plain["derm"])


def test_auto_augments_on_a_gpu_and_in_the_loader_on_a_cpu(tmp_path):
    from train_helpers import tiny_run_config

    from fusionkit.runtime.config import RunConfig
    from fusionkit.train.data_setup import augment_on

    raw = tiny_run_config(tmp_path / "cache")
    config = RunConfig.model_validate(raw)
    assert config.data.augment_on == "auto"
    assert augment_on(config, torch.device("cpu")) == "cpu"
    assert augment_on(config, torch.device("cuda", 0)) == "device"
    for where in ("cpu", "device"):
        raw["data"]["augment_on"] = where
        explicit = RunConfig.model_validate(raw)
        assert augment_on(explicit, torch.device("cpu")) == where == augment_on(explicit, torch.device("cuda"))


@pytest.mark.trains
def test_a_run_resumed_mid_epoch_repeats_the_device_augmentation(tmp_path):
    from train_helpers import tiny_run_config

    from fusionkit.runtime.checkpoint import model_state
    from fusionkit.runtime.config import RunConfig
    from fusionkit.train.trainer import Trainer, train_run

    raw = tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=30)
    raw["data"]["augment_on"] = "device"
    config = RunConfig.model_validate(raw)
    whole = train_run(config, run_dir=tmp_path / "a", synthetic=True, progress=False)
    trainer = Trainer(config, run_dir=tmp_path / "b", synthetic=True, progress=False)
    trainer.interrupt()  # Ctrl-C during the first batch: stops after it, mid-epoch
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    trainer.close()
    resumed = train_run(config, run_dir=tmp_path / "b", synthetic=True, resume=True, progress=False)
    a, b = model_state(whole.model), model_state(resumed.model)
    for key in a:
        assert torch.equal(a[key], b[key]), key
