"""Transforms from a model's declared preprocessing (``ImagePreprocessing``); batch-level normalisation."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fusionkit.data import (
    INTERPOLATIONS,
    AugmentConfig,
    ImagePreprocessing,
    backbone_preprocessing,
    build_transforms,
    normalize_batch,
)
from fusionkit.data.transforms import ColorJitterUint8
from fusionkit.errors import ConfigError

MODEL = "test_efficientnet"


def _declared(model_name: str, size: int) -> ImagePreprocessing:
    """What a timm encoder of ``model_name`` declares, at ``size``."""
    return backbone_preprocessing(model_name).with_size(size)


def _image(h=24, w=32, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_backbone_preprocessing_comes_from_timm():
    v2s = backbone_preprocessing("tf_efficientnetv2_s")
    assert v2s.mean == (0.5, 0.5, 0.5) and v2s.std == (0.5, 0.5, 0.5) and v2s.interpolation == "bicubic"
    tagged = backbone_preprocessing("tf_efficientnetv2_s.in21k_ft_in1k")
    assert tagged.with_size(v2s.input_size) == v2s
    tiny = backbone_preprocessing(MODEL)
    assert tiny.mean == pytest.approx((0.485, 0.456, 0.406)) and tiny.std == pytest.approx((0.229, 0.224, 0.225))
    with pytest.raises(ConfigError, match="unknown backbone"):
        backbone_preprocessing("no_such_backbone_xyz")


def test_eval_transform_is_deterministic_and_normalised():
    transform = build_transforms(preprocessing=_declared("tf_efficientnetv2_s", 16), train=False)
    assert transform.augment is None
    image = _image()
    a, b = transform(image), transform(image)
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    white = transform(torch.full((3, 16, 16), 255, dtype=torch.uint8))
    assert torch.allclose(white, torch.ones_like(white))  # (1 - 0.5) / 0.5


def test_uint8_output_without_normalisation():
    transform = build_transforms(preprocessing=_declared(MODEL, 16), train=False, normalize=False)
    out = transform(_image())
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    same = _image(16, 16)
    assert transform(same) is same, "no work when the image already has the size"


def test_train_transform_augments_with_seeded_randomness():
    transform = build_transforms(preprocessing=_declared(MODEL, 16), train=True)
    assert transform.augment == AugmentConfig()
    image = _image()
    torch.manual_seed(1)
    a = transform(image)
    torch.manual_seed(1)
    b = transform(image)
    outs = {transform(image).sum().item() for _ in range(8)}
    assert torch.equal(a, b) and len(outs) > 1
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32


def test_every_augmentation_keeps_shape_and_dtype():
    config = AugmentConfig(hflip=1.0, vflip=1.0, rot90=True, rotation_degrees=30, brightness=0.3, hue=0.05)
    transform = build_transforms(preprocessing=_declared(MODEL, 20), train=True, augment=config, normalize=False)
    for seed in range(5):
        torch.manual_seed(seed)
        out = transform(_image())
        assert out.shape == (3, 20, 20) and out.dtype == torch.uint8


def test_no_augmentation_at_evaluation_even_if_given():
    config = AugmentConfig(hflip=1.0)
    transform = build_transforms(preprocessing=_declared(MODEL, 16), train=False, augment=config)
    assert transform.augment is None


def test_augment_config_is_strict_and_frozen():
    with pytest.raises(ValidationError, match="hflipp"):
        AugmentConfig(hflipp=0.5)
    with pytest.raises(ValidationError):
        AugmentConfig(hflip=1.5)
    config = AugmentConfig()
    with pytest.raises(ValidationError):
        config.hflip = 0.0


def test_colour_jitter_identity_and_range():
    image = _image()
    assert torch.equal(ColorJitterUint8(brightness=0, contrast=0, saturation=0)(image), image)
    jitter = ColorJitterUint8(brightness=0.5, contrast=0.5, saturation=0.5)
    out = jitter(image)
    assert out.dtype == torch.uint8 and out.shape == image.shape


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation"])
def test_colour_jitter_matches_torchvision_per_operation(op):
    """One operation at a time (no intermediate clamping to differ), same factor: same image."""
    from torchvision.transforms.v2 import functional as F

    image = torch.randint(60, 190, (3, 24, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    ranges = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, op: 0.2}
    torch.manual_seed(5)
    ours = ColorJitterUint8(**ranges)(image)
    torch.manual_seed(5)
    torch.randperm(3)
    factor = float(torch.empty(()).uniform_(0.8, 1.2))
    adjust = {"brightness": F.adjust_brightness, "contrast": F.adjust_contrast, "saturation": F.adjust_saturation}
    reference = (adjust[op](image.float() / 255, factor) * 255).round().to(torch.uint8)
    assert (ours.int() - reference.int()).abs().max() <= 1


def test_transform_pickles_for_workers():
    transform = build_transforms(preprocessing=_declared(MODEL, 16), train=True)
    clone = pickle.loads(pickle.dumps(transform))
    torch.manual_seed(0)
    a = transform(_image())
    torch.manual_seed(0)
    assert torch.equal(a, clone(_image()))


def test_normalize_batch_matches_the_per_item_path():
    float_t = build_transforms(preprocessing=_declared("tf_efficientnetv2_s", 16), train=False)
    uint8_t = build_transforms(preprocessing=_declared("tf_efficientnetv2_s", 16), train=False, normalize=False)
    images = [_image(seed=i) for i in range(3)]
    present = torch.tensor([True, False, True])
    batch = {
        "lesion_id": ["a", "b", "c"],
        "derm": torch.stack([uint8_t(x) for x in images]),
        "clinical": torch.stack([uint8_t(x) for x in images]),
        "meta": torch.zeros(3, 35),
        "present": {"derm": present, "clinical": torch.ones(3, dtype=bool), "meta": torch.ones(3, dtype=bool)},
        "label": torch.tensor([0, 1, 2]),
    }
    out = uint8_t.normalize_batch(batch, device="cpu", channels_last=True)
    expected = torch.stack([float_t(x) for x in images])
    assert out["derm"].dtype == torch.float32
    assert torch.allclose(out["derm"][0], expected[0]) and torch.allclose(out["derm"][2], expected[2])
    assert not out["derm"][1].any(), "absent image is zero, as in the per-item path"
    assert torch.allclose(out["clinical"], expected)
    assert out["derm"].is_contiguous(memory_format=torch.channels_last)
    assert out["lesion_id"] == ["a", "b", "c"] and torch.equal(out["label"], batch["label"])
    again = normalize_batch(out, mean=uint8_t.mean, std=uint8_t.std)
    assert torch.equal(again["derm"], out["derm"]), "float images pass through"


# -- ImagePreprocessing ------------------------------------------------------------------------
_unit = st.floats(-2.0, 2.0, allow_nan=False)
_positive = st.floats(1e-3, 5.0, allow_nan=False)


@given(
    size=st.integers(1, 4096),
    mean=st.tuples(_unit, _unit, _unit),
    std=st.tuples(_positive, _positive, _positive),
    interpolation=st.sampled_from(INTERPOLATIONS),
)
def test_image_preprocessing_round_trips_through_json(size, mean, std, interpolation):
    import json

    declared = ImagePreprocessing(input_size=size, mean=mean, std=std, interpolation=interpolation)
    back = ImagePreprocessing.from_dict(json.loads(json.dumps(declared.to_dict())))
    assert back == declared and hash(back) == hash(declared)
    assert back.with_size(7) == ImagePreprocessing(input_size=7, mean=mean, std=std, interpolation=interpolation)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input_size": 0}, "preprocessing input_size must be a positive int, got 0"),
        ({"input_size": 2.5}, "preprocessing input_size must be a positive int, got 2.5"),
        ({"mean": (0.5, 0.5)}, "preprocessing mean must be three finite numbers (R, G, B), got (0.5, 0.5)"),
        ({"mean": "abc"}, "preprocessing mean must be three numbers (R, G, B), got 'abc'"),
        ({"std": (0.5, 0.0, 0.5)}, "preprocessing std must be positive, got (0.5, 0.0, 0.5)"),
        (
            {"std": (0.5, float("nan"), 0.5)},
            "preprocessing std must be three finite numbers (R, G, B), got (0.5, nan, 0.5)",
        ),
        (
            {"interpolation": "area"},
            "preprocessing interpolation must be one of bicubic, bilinear, nearest, lanczos, got 'area'",
        ),
    ],
)
def test_image_preprocessing_refuses_bad_values_in_one_line(fields, message):
    good = {"input_size": 8, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}
    with pytest.raises(ConfigError) as info:
        ImagePreprocessing(**{**good, **fields})
    assert str(info.value) == message


def test_image_preprocessing_from_dict_names_missing_and_unknown_keys():
    good = ImagePreprocessing(input_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).to_dict()
    with pytest.raises(ConfigError, match=r"missing \['std'\]"):
        ImagePreprocessing.from_dict({k: v for k, v in good.items() if k != "std"})
    with pytest.raises(ConfigError, match=r"unknown keys \['crop_pct'\]"):
        ImagePreprocessing.from_dict({**good, "crop_pct": 0.9})
    with pytest.raises(ConfigError, match="must be a mapping"):
        ImagePreprocessing.from_dict([1, 2])


def test_the_transform_applies_the_declared_preprocessing_whatever_it_is():
    declared = ImagePreprocessing(input_size=12, mean=(0.1, 0.2, 0.3), std=(0.2, 0.4, 0.8), interpolation="nearest")
    transform = build_transforms(preprocessing=declared, train=False)
    assert transform.preprocessing == declared and transform.image_size == 12
    assert (transform.mean, transform.std, transform.interpolation) == (declared.mean, declared.std, "nearest")
    image = _image(12, 12)
    expected = (image.float() / 255 - torch.tensor(declared.mean).view(3, 1, 1)) / torch.tensor(declared.std).view(
        3, 1, 1
    )
    torch.testing.assert_close(transform(image), expected)
    assert transform(_image(30, 20)).shape == (3, 12, 12)


def test_build_transforms_takes_the_preprocessing_or_a_timm_name_not_both():
    declared = _declared(MODEL, 16)
    by_name = build_transforms(model_name=MODEL, image_size=16, train=False)  # the transitional path
    assert by_name.preprocessing == declared
    with pytest.raises(ValueError, match="exactly one of preprocessing"):
        build_transforms(preprocessing=declared, model_name=MODEL, image_size=16, train=False)
    with pytest.raises(ValueError, match="exactly one of preprocessing"):
        build_transforms(train=False)
    with pytest.raises(ValueError, match="image_size goes with model_name only"):
        build_transforms(preprocessing=declared, image_size=16, train=False)
    with pytest.raises(ValueError, match="needs image_size"):
        build_transforms(model_name=MODEL, train=False)
