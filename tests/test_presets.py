"""The shipped presets: exactly the paper's variants, each builds and trains; names and overrides."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pydantic
import pytest
import torch
import yaml
from conftest import METADATA_WIDTH, TINY_OVERRIDES, make_batch

import fusionkit as fk
from fusionkit.presets import PRESET_ALIASES, parse_override, preset_description

PAPER_PRESETS = {
    "skip-only",
    "attention-only",
    "ji-adf",
    "late-concat",
    "jf-concat",
    "jf-mmfa",
    "ji-mmfa",
    "ji-adf-noaux",
    "clinical-only",
    "derm-only",
    "meta-only",
    "derm-clinical",
    "ji-adf-cm",
    "ji-adf-dm",
}
OLD_NAMES = {
    "ji-adf-c": "clinical-only",
    "ji-adf-d": "derm-only",
    "ji-adf-m": "meta-only",
    "ji-adf-cd": "derm-clinical",
}
PAPER_LAMBDAS = (0.5, 0.25, 0.25)  # (joint, image, meta), Section 2.1
NO_AUX = (0.0, 0.0, 0.0)
ALL = ("derm", "clinical", "meta")

# name: (modalities, fusion kind, decision kind (and branch), lambdas, branches with a head)
STRUCTURE = {
    "ji-adf": (ALL, "mmfa", "adf", PAPER_LAMBDAS, ("image", "joint", "meta")),
    "ji-adf-noaux": (ALL, "mmfa", "adf", NO_AUX, ("image", "joint", "meta")),
    "ji-mmfa": (ALL, "mmfa", "average", PAPER_LAMBDAS, ("image", "joint", "meta")),
    "jf-mmfa": (ALL, "mmfa", "single:joint", NO_AUX, ("joint",)),
    "jf-concat": (ALL, "concat", "single:joint", PAPER_LAMBDAS, ("image", "joint", "meta")),
    "late-concat": (ALL, "concat", "single:joint", NO_AUX, ("joint",)),
    "skip-only": (ALL, "skip_only", "adf", PAPER_LAMBDAS, ("image", "joint", "meta")),
    "attention-only": (ALL, "attention_only", "adf", PAPER_LAMBDAS, ("image", "joint", "meta")),
    "clinical-only": (("clinical",), None, "single:image", NO_AUX, ("image",)),
    "derm-only": (("derm",), None, "single:image", NO_AUX, ("image",)),
    "meta-only": (("meta",), None, "single:meta", NO_AUX, ("meta",)),
    "derm-clinical": (("derm", "clinical"), None, "single:image", NO_AUX, ("image",)),
    "ji-adf-cm": (("clinical", "meta"), "mmfa", "adf", PAPER_LAMBDAS, ("image", "joint", "meta")),
    "ji-adf-dm": (("derm", "meta"), "mmfa", "adf", PAPER_LAMBDAS, ("image", "joint", "meta")),
}


def _tiny_preset(name: str) -> fk.ModelSpec:
    uses_images = any(m != "meta" for m in fk.load_preset(name).modalities)
    return fk.load_preset(name, TINY_OVERRIDES if uses_images else None)


def test_list_presets_is_exactly_the_papers_variants():
    assert fk.list_presets() == sorted(PAPER_PRESETS)
    assert set(STRUCTURE) == PAPER_PRESETS
    assert fk.list_presets("ji-adf-?") == []
    assert fk.list_presets("ji-adf-?", aliases=True) == ["ji-adf-c", "ji-adf-d", "ji-adf-m"]
    assert fk.list_presets("*-only") == ["attention-only", "clinical-only", "derm-only", "meta-only", "skip-only"]
    assert fk.list_presets("*concat") == ["jf-concat", "late-concat"]


@pytest.mark.parametrize("name", sorted(STRUCTURE))
def test_preset_matches_the_papers_structure(name):
    modalities, fusion, decision, lambdas, heads = STRUCTURE[name]
    spec = fk.load_preset(name)
    assert spec.name == name
    assert spec.modalities == modalities
    assert (spec.fusion.kind if spec.fusion else None) == fusion
    kind, _, branch = decision.partition(":")
    assert spec.decision.kind == kind
    if branch:
        assert spec.decision.branch == branch
    assert (spec.loss.lambda_joint, spec.loss.lambda_image, spec.loss.lambda_meta) == lambdas
    assert spec.head_branches == heads
    assert spec.loss.class_weights is None
    # Appendix A.2: 11 MILK10k classes, 384 px, ImageNet-1k EfficientNetV2-S, D_M = 256
    assert spec.num_classes == 11 and spec.image_size == 384
    if spec.image_modalities:
        assert spec.image_encoder.model_name == "tf_efficientnetv2_s.in1k"
        assert spec.image_encoder.pretrained is True and spec.image_encoder.shared is False
        assert spec.image_encoder.combine == "concat"
    if spec.uses_meta:
        assert spec.metadata_encoder.out_dim == 256
    assert preset_description(name)


@pytest.mark.trains
@pytest.mark.parametrize("name", sorted(STRUCTURE))
def test_preset_builds_and_one_adamw_step_lowers_the_loss(name):
    spec = _tiny_preset(name)
    torch.manual_seed(0)
    model = fk.build_model(spec, metadata_width=METADATA_WIDTH)
    # the built model has the preset's structure
    assert tuple(model.heads) == spec.head_branches
    assert (model.fusion is None) == (spec.fusion is None)
    assert (model.meta_stream is None) != spec.uses_meta
    if spec.image_modalities:
        assert tuple(model.image_stream.encoders) == spec.image_modalities  # a backbone per image
    else:
        assert model.image_stream is None

    batch = make_batch(spec, 6, seed=1)
    target = torch.tensor([0, 3, 10, 5, 0, 7])
    loss_fn = fk.JointIndividualLoss.from_spec(spec.loss)
    model.eval()  # no dropout or batch-norm noise between the two measurements
    out = model(batch)
    assert out.probs.shape == (6, 11)
    assert (out.weights is None) == (spec.decision.kind == "single")
    before = loss_fn(out, target).total
    assert torch.isfinite(before)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss_fn(model(batch), target).total
    assert torch.isfinite(after)
    assert after < before, f"{name}: {before.item():.5f} -> {after.item():.5f}"


def test_unknown_preset_suggests_a_name():
    with pytest.raises(fk.ConfigError, match=r"unknown preset 'ji-adf-x'.*did you mean.*ji-adf") as info:
        fk.load_preset("ji-adf-x")
    assert "presets:" in str(info.value) and "late-concat" in str(info.value)
    with pytest.raises(fk.ConfigError, match="unknown preset 'zzz'"):
        fk.load_preset("zzz")
    assert issubclass(fk.ConfigError, fk.FusionkitError)


def test_overrides_as_a_dict():
    spec = fk.load_preset(
        "ji-adf",
        {
            "image_encoder": {"model_name": "test_efficientnet", "pretrained": False},
            "fusion": {"attention_heads": 2},
            "num_classes": 3,
            "loss": {"lambda_meta": 0.0},
        },
    )
    # deep merge: the untouched fields keep the preset's values
    assert spec.image_encoder.kind == "timm" and spec.image_encoder.model_name == "test_efficientnet"
    assert spec.fusion.kind == "mmfa" and spec.fusion.attention_heads == 2 and spec.fusion.head_dim == 64
    assert spec.num_classes == 3 and spec.loss.lambda_meta == 0.0 and spec.loss.lambda_joint == 0.5
    assert spec.name == "ji-adf"
    # changing a slot's kind replaces the slot: the old kind's fields do not leak in
    spec = fk.load_preset("ji-adf", {"fusion": {"kind": "concat"}})
    assert spec.fusion == fk.specs.ConcatFusionSpec()
    spec = fk.load_preset("ji-adf", ["fusion.attention_heads=2", "fusion.kind=skip_only", "fusion.out_dim=8"])
    assert spec.fusion == fk.specs.SkipOnlySpec(out_dim=8)


def test_overrides_as_dotted_strings():
    spec = fk.load_preset(
        "ji-adf",
        [
            "image_encoder.model_name=test_efficientnet",
            "image_encoder.pretrained=false",
            "fusion.attention_heads=4",
            "decision.kind=average",
            "modalities=[derm, meta]",
            "loss.class_weights=[1, 2, 3]",
            "num_classes=3",
            "name=mine",
        ],
    )
    assert spec.image_encoder.model_name == "test_efficientnet" and spec.image_encoder.pretrained is False
    assert spec.fusion.attention_heads == 4 and spec.decision.kind == "average"
    assert spec.modalities == ("derm", "meta") and spec.loss.class_weights == (1.0, 2.0, 3.0)
    assert spec.name == "mine"
    spec = fk.load_preset("late-concat", ["fusion=null", "decision.kind=average"])
    assert spec.fusion is None and spec.decision.kind == "average"
    assert parse_override("a.b.c= 0.5") == {"a": {"b": {"c": 0.5}}}
    assert parse_override("fusion.kind=") == {"fusion": {"kind": None}}


def test_bad_overrides():
    with pytest.raises(fk.ConfigError, match="key.path=value"):
        fk.load_preset("ji-adf", ["fusion.attention_heads"])
    with pytest.raises(fk.ConfigError, match="key.path=value"):
        fk.load_preset("ji-adf", ["=3"])
    with pytest.raises(pydantic.ValidationError, match=r"fusion\.mmfa\.num_head"):
        fk.load_preset("ji-adf", ["fusion.num_head=3"])
    with pytest.raises(pydantic.ValidationError, match="only uses images"):
        fk.load_preset("ji-adf", {"modalities": ["derm", "clinical"]})


EXPANDED_BEFORE_DELTAS = json.loads((Path(__file__).parent / "fixtures" / "preset_specs.json").read_text())
"""Every preset's full spec as fusionkit 0.1.0 expanded it, captured before the files became deltas."""


@pytest.mark.parametrize("old_name", sorted(EXPANDED_BEFORE_DELTAS))
def test_each_delta_preset_expands_to_the_full_spec_it_had(old_name):
    expected = dict(EXPANDED_BEFORE_DELTAS[old_name], name=OLD_NAMES.get(old_name, old_name))
    # the one field removed since: the metadata input width, which comes from the data alone
    expected["metadata_encoder"] = dict(expected["metadata_encoder"])
    assert expected["metadata_encoder"].pop("in_dim") is None
    # the field renamed since: MMFA's number of attention heads
    if expected["fusion"] is not None and "heads" in expected["fusion"]:
        expected["fusion"] = {"attention_heads" if k == "heads" else k: v for k, v in expected["fusion"].items()}
    # the fields added since: the long-tail loss options, off (the paper's plain CE)
    expected["loss"] = {
        **expected["loss"],
        "focal_gamma": 0.0,
        "label_smoothing": 0.0,
        "logit_adjustment": 0.0,
        "class_prior": None,
    }
    if expected.get("image_encoder"):  # the timm encoder's foreign-weights options (issue 26), off
        expected["image_encoder"] = {**expected["image_encoder"], "weights_prefix": None, "img_size": None}
    assert fk.load_preset(old_name).to_dict() == expected
    assert fk.load_preset(OLD_NAMES.get(old_name, old_name)).to_dict() == expected


def test_preset_files_are_deltas_from_ji_adf():
    for name in fk.list_presets():
        raw = yaml.safe_load(resources.files("fusionkit.presets").joinpath(f"{name}.yaml").read_text())
        if name == "ji-adf":
            assert "extends" not in raw
            continue
        assert raw["extends"] == "ji-adf"
        assert len(raw) <= 6, f"{name} repeats JI-ADF's fields: {sorted(raw)}"
        assert "image_encoder" not in raw and "num_classes" not in raw


def test_old_preset_names_load_the_new_presets():
    assert set(OLD_NAMES) == set(PRESET_ALIASES) and OLD_NAMES == PRESET_ALIASES
    for old, new in OLD_NAMES.items():
        assert fk.load_preset(old) == fk.load_preset(new)
        assert fk.load_preset(old).name == new
        assert preset_description(old) == preset_description(new)
    with pytest.raises(fk.ConfigError, match="did you mean.*ji-adf-c"):
        fk.load_preset("ji-adf-cc")


def test_the_sweep_accepts_every_name_load_preset_accepts():
    """Issue 23: ``--presets ji-adf-d`` was refused by the sweep although ``load_preset`` takes it."""
    from fusionkit.presets import PRESET_ALIASES
    from fusionkit.sweep.plan import select_presets

    for old, new in PRESET_ALIASES.items():
        assert fk.load_preset(old) == fk.load_preset(new)
        assert select_presets(group=None, presets=f"ji-adf,{old},{new}") == ("ji-adf", new)
    with pytest.raises(fk.ConfigError, match="unknown preset 'ji-adf-x'"):
        select_presets(group=None, presets="ji-adf-x")
