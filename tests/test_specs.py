"""ModelSpec: defaults, exact YAML/JSON/dict round trips, and errors that name the field and the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import yaml
from conftest import TINY_BACKBONE, spec_dicts, tiny_spec
from hypothesis import given, settings

import fusionkit as fk
from fusionkit.presets import preset_dict

PRESETS = fk.list_presets()


def _roundtrips(spec: fk.ModelSpec) -> None:
    """YAML, JSON and dict each give back an equal spec, and the text is a fixed point."""
    text = spec.to_yaml()
    again = fk.ModelSpec.from_yaml(text)
    assert again == spec
    assert again.to_yaml() == text

    text = spec.to_json()
    again = fk.ModelSpec.from_json(text)
    assert again == spec
    assert again.to_json() == text

    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    assert json.loads(spec.to_json()) == data
    assert yaml.safe_load(spec.to_yaml()) == data
    again = fk.ModelSpec.model_validate(data)
    assert again == spec
    assert again.to_dict() == data


# -- defaults ----------------------------------------------------------------------------------
def test_defaults_are_the_papers_ji_adf():
    spec = fk.ModelSpec()
    assert spec.modalities == ("derm", "clinical", "meta")
    assert spec.num_classes == 11 and spec.image_size == 384
    assert spec.image_encoder.kind == "timm"
    assert spec.image_encoder.model_name == "tf_efficientnetv2_s.in1k"
    assert spec.image_encoder.pretrained is True and spec.image_encoder.shared is False
    assert spec.metadata_encoder.out_dim == 256  # D_M
    assert spec.fusion.kind == "mmfa" and spec.decision.kind == "adf"
    assert (spec.loss.lambda_joint, spec.loss.lambda_image, spec.loss.lambda_meta) == (0.5, 0.25, 0.25)
    assert spec.loss.class_weights is None
    assert spec.modality_dropout.p == 0.0
    assert spec.available_branches == spec.decision_branches == spec.head_branches == fk.specs.BRANCHES


def test_specs_are_frozen_and_modalities_canonical():
    spec = tiny_spec(
        modalities=["meta", "derm"],
        fusion=None,
        decision={"kind": "average"},
        loss={"lambda_joint": 0},
    )
    assert spec.modalities == ("derm", "meta")
    assert spec.image_modalities == ("derm",) and spec.uses_meta
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.num_classes = 3
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.fusion = None


def test_component_kwargs_leave_out_the_slot_fields():
    spec = tiny_spec(image_encoder={**TINY_BACKBONE, "shared": True, "combine": "mean"})
    kwargs = spec.image_encoder.component_kwargs()
    assert "kind" not in kwargs and "shared" not in kwargs and "combine" not in kwargs
    assert kwargs["model_name"] == "test_efficientnet" and kwargs["pretrained"] is False
    assert spec.fusion.component_kwargs() == {"attention_heads": 2, "head_dim": 4, "out_dim": 16, "activation": "gelu"}
    assert spec.decision.component_kwargs() == {"hidden_dim": 8, "activation": "relu", "detach_logits": False}


@pytest.mark.parametrize(
    ("decision", "lambdas", "heads"),
    [
        ({"kind": "adf"}, (0.5, 0.25, 0.25), ("image", "joint", "meta")),
        ({"kind": "single"}, (0.0, 0.0, 0.0), ("joint",)),
        ({"kind": "single"}, (0.0, 0.25, 0.0), ("image", "joint")),
        ({"kind": "single", "branch": "meta"}, (0.5, 0.0, 0.0), ("joint", "meta")),
        ({"kind": "average"}, (0.0, 0.0, 0.0), ("image", "joint", "meta")),
    ],
)
def test_head_branches_are_the_decision_and_the_supervised_ones(decision, lambdas, heads):
    joint, image, meta = lambdas
    spec = tiny_spec(decision=decision, loss={"lambda_joint": joint, "lambda_image": image, "lambda_meta": meta})
    assert spec.head_branches == heads


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_roundtrips_exactly(name):
    spec = fk.load_preset(name)
    assert spec.name == name
    _roundtrips(spec)
    # the preset file itself describes the same spec as its canonical dump
    assert fk.ModelSpec.model_validate(preset_dict(name)) == spec


@settings(max_examples=60)
@given(spec_dicts())
def test_generated_specs_validate_and_roundtrip_exactly(data):
    spec = fk.ModelSpec.model_validate(data)
    _roundtrips(spec)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_dump_and_load_spec_files(tmp_path, suffix):
    spec = fk.load_preset("ji-mmfa", {"num_classes": 4, "loss": {"class_weights": [1, 2, 3, 0.5]}})
    path = fk.dump_spec(spec, tmp_path / f"sub/spec{suffix}")
    assert path == tmp_path / f"sub/spec{suffix}" and path.is_file()
    text = path.read_text()
    if suffix == ".json":
        assert json.loads(text) == spec.to_dict()
    else:
        assert text == spec.to_yaml()
    assert fk.load_spec(path) == spec
    assert fk.load_spec(str(path)) == spec
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_load_spec_takes_the_model_of_a_run_config(tmp_path):
    spec = fk.load_preset("jf-concat")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": spec.to_dict(), "train": {"epochs": 3}}))
    assert fk.load_spec(path) == spec


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.yaml", None, "no such file"),
        ("bad.yaml", "fusion: [unclosed", "not valid YAML"),
        ("bad.json", "{'single': 'quotes'}", "not valid JSON"),
        ("list.yaml", "- derm\n- meta\n", "expected a mapping"),
        ("twice.yaml", "image_size: 64\nimage_size: 32\n", "not valid YAML: the key 'image_size' is given twice"),
        ("nested.yaml", "fusion:\n  kind: mmfa\n  kind: concat\n", "the key 'kind' is given twice"),
        ("twice.json", '{"image_size": 64, "image_size": 32}', "not valid JSON: the key 'image_size' is given twice"),
        ("latin1.yaml", b"# r\xe9sum\xe9\nimage_size: 64\n", "not UTF-8 text"),
        ("deep.yaml", "a: " + "[" * 50_000 + "]" * 50_000 + "\n", "not valid YAML"),
    ],
)
def test_load_spec_file_errors_name_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(fk.ConfigError, match=message) as info:
        fk.load_spec(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_spec_reports_validation_errors_with_paths(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("fusion:\n  kind: mmfa\n  num_head: 4\n")
    with pytest.raises(pydantic.ValidationError, match=r"fusion\.mmfa\.num_head"):
        fk.load_spec(path)


# -- bad specs -----------------------------------------------------------------------------------
def _error(data: dict) -> pydantic.ValidationError:
    with pytest.raises(pydantic.ValidationError) as info:
        fk.ModelSpec.model_validate(data)
    return info.value


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ({"fusion": {"kind": "mmfa", "num_head": 4}}, "fusion.mmfa.num_head", "Extra inputs"),
        ({"decision": {"kind": "adf", "hiden_dim": 4}}, "decision.adf.hiden_dim", "Extra inputs"),
        ({"losses": {"lambda_joint": 1}}, "losses", "Extra inputs"),
        ({"loss": {"lambda_join": 1}}, "loss.lambda_join", "Extra inputs"),
        ({"fusion": {"kind": "mmfa", "out_dim": 0}}, "fusion.mmfa.out_dim", "greater than 0"),
        ({"fusion": {"kind": "mmfa", "attention_heads": -2}}, "fusion.mmfa.attention_heads", "greater than 0"),
        ({"fusion": {"kind": "skip_only", "out_dim": 0}}, "fusion.skip_only.out_dim", "greater than 0"),
        (
            {"metadata_encoder": {"kind": "mlp", "hidden_dims": [8, 0]}},
            "metadata_encoder.mlp.hidden_dims.1",
            "greater than 0",
        ),
        (
            {"metadata_encoder": {"kind": "mlp", "out_dim": -1}},
            "metadata_encoder.mlp.out_dim",
            "greater than 0",
        ),
        ({"decision": {"kind": "adf", "hidden_dim": 0}}, "decision.adf.hidden_dim", "greater than 0"),
        ({"num_classes": 0}, "num_classes", "greater than 0"),
        ({"heads": {"dropout": 1.0}}, "heads.dropout", "less than 1"),
        ({"loss": {"lambda_meta": -0.1}}, "loss.lambda_meta", "greater than or equal to 0"),
        ({"loss": {"class_weights": [1.0] * 10 + [0.0]}}, "loss.class_weights.10", "greater than 0"),
        ({"modalities": ["derm", "dermoscopy"]}, "modalities.1", "'derm', 'clinical' or 'meta'"),
        ({"modalities": []}, "modalities", "at least one modality"),
        ({"modalities": ["meta", "meta"]}, "modalities", "repeat"),
        ({"fusion": {"kind": "mmfa", "activation": "swish"}}, "fusion.mmfa.activation", "relu"),
        ({"decision": {"kind": "single", "branch": "both"}}, "decision.single.branch", "'joint'"),
        (
            {"image_encoder": {"kind": "timm", "model_name": "efficientnet_b99"}},
            "image_encoder.timm.model_name",
            "timm has no model 'efficientnet_b99'",
        ),
        (
            {"image_encoder": {"kind": "timm", "model_name": "test_efficientnet.bogus"}},
            "image_encoder.timm.model_name",
            "no pretrained tag 'bogus'; its tags: test_efficientnet.r160_in1k",
        ),
        (
            {"image_encoder": {"kind": "timm", "combine": "sum"}},
            "image_encoder.timm.combine",
            "'concat' or 'mean'",
        ),
    ],
)
def test_bad_field_names_its_path(data, path, message):
    err = _error(data)
    assert len(err.errors()) == 1, str(err)
    loc = ".".join(str(part) for part in err.errors()[0]["loc"])
    assert loc == path
    assert path in str(err)
    assert message in str(err)


@pytest.mark.parametrize("slot", ["image_encoder", "metadata_encoder", "fusion", "decision"])
def test_unknown_kind_lists_the_registered_kinds(slot):
    err = _error({slot: {"kind": "no_such_kind"}})
    text = str(err)
    assert slot in text and "'no_such_kind'" in text
    for name in fk.list_components(slot):
        assert f"'{name}'" in text, (slot, name, text)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (  # ADF over one modality group
            {
                "modalities": ["derm", "clinical"],
                "fusion": None,
                "decision": {"kind": "adf"},
                "loss": {"lambda_joint": 0, "lambda_meta": 0},
            },
            "'adf' decision (eq 5) weighs the image, joint and metadata branches",
        ),
        (  # ADF without a fusion block
            {"fusion": None, "decision": {"kind": "adf"}, "loss": {"lambda_joint": 0}},
            "needs an image, 'meta' and a fusion block",
        ),
        (  # MMFA without metadata
            {"modalities": ["derm", "clinical"], "fusion": {"kind": "mmfa"}},
            "fusion 'mmfa' fuses image and metadata features, but the model only uses images",
        ),
        (  # MMFA without images
            {"modalities": ["meta"], "fusion": {"kind": "mmfa"}},
            "but the model only uses metadata",
        ),
        (  # average over one branch
            {
                "modalities": ["clinical"],
                "fusion": None,
                "decision": {"kind": "average"},
                "loss": {"lambda_joint": 0, "lambda_meta": 0},
            },
            "'average' decision needs at least two branches",
        ),
        (  # an auxiliary weight for a branch the model lacks
            {
                "modalities": ["derm"],
                "fusion": None,
                "decision": {"kind": "single", "branch": "image"},
                "loss": {"lambda_joint": 0, "lambda_image": 0.25, "lambda_meta": 0.25},
            },
            "loss.lambda_meta is 0.25 but the model has no meta branch",
        ),
        (
            {"fusion": None, "decision": {"kind": "average"}},
            "loss.lambda_joint is 0.5 but the model has no joint branch",
        ),
        (  # a single head on a branch the model lacks
            {
                "modalities": ["meta"],
                "fusion": None,
                "decision": {"kind": "single", "branch": "image"},
                "loss": {"lambda_joint": 0, "lambda_image": 0},
            },
            "uses the 'image' branch, which this model does not have",
        ),
        (  # no fusion, both groups, one head
            {"fusion": None, "decision": {"kind": "single", "branch": "image"}, "loss": {"lambda_joint": 0}},
            "a single head cannot see both groups",
        ),
        (
            {"num_classes": 3, "loss": {"class_weights": [1, 1]}},
            "loss.class_weights has 2 values; expected one per class (3)",
        ),
        (
            {
                "modalities": ["meta"],
                "fusion": None,
                "decision": {"kind": "single", "branch": "meta"},
                "loss": {"lambda_joint": 0, "lambda_image": 0},
                "modality_dropout": {"p": 0.2},
            },
            "modality_dropout needs at least two modalities",
        ),
    ],
)
def test_impossible_combinations_fail_validation_with_a_reason(data, reason):
    err = _error({"image_encoder": dict(TINY_BACKBONE), **data})
    assert len(err.errors()) == 1, str(err)
    assert reason in str(err)


def test_timm_names_with_and_without_a_tag_validate():
    for name in ("test_efficientnet", "test_efficientnet.r160_in1k", "tf_efficientnetv2_s.in1k"):
        assert fk.specs.TimmImageEncoderSpec(model_name=name).model_name == name


def test_valid_neighbours_of_the_impossible_combinations_build():
    # the fixes the messages suggest do validate
    tiny_spec(
        modalities=["derm", "clinical"],
        fusion=None,
        decision={"kind": "single", "branch": "image"},
        loss={"lambda_joint": 0, "lambda_meta": 0},
    )
    tiny_spec(fusion=None, decision={"kind": "average"}, loss={"lambda_joint": 0})
    tiny_spec(num_classes=3, loss={"class_weights": [1, 2, 3]})


def test_json_schema_is_generated_from_the_specs():
    schema = fk.spec_json_schema()
    assert schema == fk.ModelSpec.model_json_schema()
    assert {"modalities", "fusion", "decision", "loss", "image_encoder"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    text = json.dumps(schema)
    for kind, names in fk.list_components().items():
        for name in names:
            assert f'"{name}"' in text, (kind, name)
    mmfa = schema["$defs"]["MMFASpec"]
    assert mmfa["additionalProperties"] is False
    assert mmfa["properties"]["out_dim"]["exclusiveMinimum"] == 0


def test_spec_file_paths_survive_the_roundtrip(tmp_path):
    weights = Path(tmp_path / "w.safetensors")
    spec = tiny_spec(image_encoder={**TINY_BACKBONE, "weights_file": str(weights)})
    assert spec.image_encoder.weights_file == weights
    _roundtrips(spec)


def test_a_slot_without_kind_takes_the_default_component() -> None:
    spec = fk.ModelSpec(
        image_encoder={"model_name": "test_efficientnet", "pretrained": False}, fusion={"attention_heads": 2}
    )
    assert spec.image_encoder.kind == "timm" and spec.fusion.kind == "mmfa" and spec.fusion.attention_heads == 2
    assert fk.ModelSpec.from_yaml(spec.to_yaml()) == spec


def test_a_spec_that_names_mmfa_heads_heads_still_reads_with_a_warning():
    with pytest.warns(FutureWarning, match=r"fusion\.heads is now fusion\.attention_heads"):
        old = tiny_spec(fusion={"kind": "mmfa", "heads": 3, "head_dim": 4, "out_dim": 16})
    assert old == tiny_spec(fusion={"kind": "mmfa", "attention_heads": 3, "head_dim": 4, "out_dim": 16})
    with pytest.raises(pydantic.ValidationError, match="heads is the old name of attention_heads"):
        tiny_spec(fusion={"kind": "mmfa", "heads": 3, "attention_heads": 2})
