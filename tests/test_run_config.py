"""The run config file (``fusionkit.runtime.config``): loading with overrides, YAML round trip, the
image cache folder and the preprocessing model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TINY_BACKBONE
from train_helpers import write_config

import fusionkit as fk
from fusionkit.errors import ConfigError, ConfigFieldError
from fusionkit.runtime.config import (
    RunConfig,
    SyntheticSpec,
    default_cache_dir,
    load_run_config,
)


def _preset_config(tmp_path: Path, preset: str = "ji-adf") -> Path:
    return write_config(
        tmp_path / "run.yaml",
        {
            "model": {"preset": preset, "overrides": {"image_encoder": dict(TINY_BACKBONE)}},
            "train": {"lr": 1e-3},
        },
    )


def test_a_config_without_a_model_section_is_refused_with_its_path(tmp_path):
    path = write_config(tmp_path / "run.yaml", {"train": {"lr": 1e-3}})
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert str(info.value) == f"{path}: a run config needs a 'model' section (a spec or a preset)"


def test_a_preset_config_expands_to_the_preset_with_its_overrides(tmp_path):
    config = load_run_config(_preset_config(tmp_path))
    assert config.model == fk.load_preset("ji-adf", {"image_encoder": dict(TINY_BACKBONE)})
    assert config.train.lr == 1e-3
    assert load_run_config(_preset_config(tmp_path), None) == load_run_config(_preset_config(tmp_path), [])


def test_preset_overrides_apply_before_expansion_and_the_rest_after(tmp_path):
    path = _preset_config(tmp_path)
    config = load_run_config(
        path,
        [
            "train.lr=0.01",  # a late override listed first: the order of the two kinds does not matter
            " model.preset =ji-adf-noaux",  # spaces around the key are allowed
            "model.overrides.decision.hidden_dim=32",
            "model.fusion.attention_heads=4",  # of the expanded spec: given to the preset it would be refused
        ],
    )
    expected = fk.load_preset("ji-adf-noaux", {"image_encoder": dict(TINY_BACKBONE), "decision": {"hidden_dim": 32}})
    assert config.model == expected.model_copy(
        update={"fusion": expected.fusion.model_copy(update={"attention_heads": 4})}
    )
    assert config.train.lr == 0.01


def test_a_late_model_override_of_a_preset_is_not_taken_for_a_preset_field(tmp_path):
    with pytest.raises(ValueError, match="a preset takes only 'preset' and 'overrides'"):
        RunConfig.model_validate({"model": {"preset": "ji-adf", "fusion": {"attention_heads": 4}}})
    config = load_run_config(_preset_config(tmp_path), ["model.fusion.attention_heads=4"])
    assert config.model.fusion.attention_heads == 4


def test_a_config_with_a_full_model_spec_takes_overrides_on_it(tmp_path):
    spec = fk.load_preset("meta-only").model_dump(mode="json")
    path = write_config(tmp_path / "run.yaml", {"model": spec})
    config = load_run_config(path, ["model.num_classes=5", "data.val_fraction=0.3"])
    assert config.model == fk.load_preset("meta-only", {"num_classes": 5})
    assert config.data.val_fraction == 0.3


def test_to_yaml_is_the_whole_resolved_config_in_field_order(tmp_path):
    config = load_run_config(_preset_config(tmp_path), ["train.epochs=3", f"data.root={tmp_path}"])
    text = config.to_yaml()  # paths and tuples written as YAML strings and lists
    assert f"root: {tmp_path}" in text
    assert yaml.safe_load(text) == config.model_dump(mode="json")
    assert [line for line in text.splitlines() if not line.startswith(" ")] == ["model:", "train:", "data:"]
    assert text.splitlines()[1].strip() == "name: ji-adf"  # the spec's own field order, not sorted
    assert RunConfig.model_validate(yaml.safe_load(text)) == config


def test_the_image_cache_folder_is_fusionkit_cache_or_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FUSIONKIT_CACHE", raising=False)
    assert default_cache_dir() == tmp_path / ".cache" / "fusionkit"
    monkeypatch.setenv("FUSIONKIT_CACHE", "~/elsewhere")
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv("FUSIONKIT_CACHE", str(tmp_path / "abs"))
    assert default_cache_dir() == tmp_path / "abs"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.seed=-1", "train.seed"),
        ("train.seed=100000000000000000000000", "train.seed"),
        ("data.split_seed=-7", "data.split_seed"),
        ("train.lr=1.0e+308", "train.lr"),
        ("train.backbone_lr=11", "train.backbone_lr"),
        ("data.num_workers=100000", "data.num_workers"),
        ("model.image_size=100000", "model.image_size"),
        ("train.epochs=1000000", "train.epochs"),
        ("data.synthetic.photo_size=[100000,10]", "data.synthetic.photo_size"),
    ],
)
def test_every_number_that_could_take_the_machine_down_has_a_bound(tmp_path, override, field):
    """Issue 28: unbounded seeds, lr, workers and sizes crashed or exhausted the machine."""
    with pytest.raises(ConfigFieldError) as info:
        load_run_config(_preset_config(tmp_path), [override])
    assert [".".join(str(p) for p in e["loc"][:3]) for e in info.value.errors()][0].startswith(field)


def test_the_bounds_leave_every_useful_value_alone(tmp_path):
    config = load_run_config(
        _preset_config(tmp_path),
        ["train.seed=4294967295", "data.split_seed=0", "train.lr=1", "data.num_workers=64", "model.image_size=2048"],
    )
    assert (config.train.seed, config.train.lr, config.data.num_workers, config.model.image_size) == (
        2**32 - 1,
        1.0,
        64,
        2048,
    )


def test_a_config_that_names_the_synthetic_photo_size_image_size_still_reads_with_a_warning():
    with pytest.warns(FutureWarning, match=r"data\.synthetic\.image_size is now data\.synthetic\.photo_size"):
        old = SyntheticSpec.model_validate({"n_lesions": 12, "image_size": [20, 16]})
    assert old == SyntheticSpec(n_lesions=12, photo_size=(20, 16))
