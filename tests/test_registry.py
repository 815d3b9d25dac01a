"""The component registries: names, fnmatch listing, registration in code, plugins."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pydantic
import pytest
import torch
from conftest import build_tiny, make_batch, tiny_spec
from pydantic import PositiveInt
from torch import nn

import fusionkit as fk
from fusionkit.registry import PLUGIN_GROUP

BUILT_INS = {
    "image_encoder": {"timm"},
    "metadata_encoder": {"mlp"},
    "fusion": {"mmfa", "attention_only", "skip_only", "concat"},
    "decision": {"adf", "average", "single"},
}


class MyTestFusionSpec(fk.specs.FusionSpec):
    """A fusion block defined by a test: a gated sum of two projections."""

    kind: Literal["my_test_fusion"] = "my_test_fusion"
    out_dim: PositiveInt = 6


class MyTestFusion(nn.Module):
    def __init__(self, *, image_dim: int, meta_dim: int, out_dim: int = 6) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, out_dim)
        self.meta = nn.Linear(meta_dim, out_dim)
        self.gate = nn.Parameter(torch.zeros(out_dim))
        self.out_dim = out_dim

    def forward(self, f_image: torch.Tensor, f_meta: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate)
        return g * self.image(f_image) + (1 - g) * self.meta(f_meta)


# -- listing -------------------------------------------------------------------------------------
def test_every_kind_has_a_registry_with_the_built_ins():
    listing = fk.list_components()
    assert set(listing) == set(fk.COMPONENT_KINDS) == set(BUILT_INS)
    for kind, names in BUILT_INS.items():
        assert names <= set(listing[kind]), kind
        assert listing[kind] == sorted(listing[kind])
        assert fk.list_components(kind) == listing[kind]
        for name in names:
            entry = fk.registry(kind).get(name)
            assert entry.name == name and entry.kind == kind
            assert entry.spec.model_fields["kind"].default == name


@pytest.mark.parametrize(
    ("kind", "pattern", "expected"),
    [
        ("fusion", "*_only", ["attention_only", "skip_only"]),
        ("fusion", "mm*", ["mmfa"]),
        ("fusion", "*a*", ["attention_only", "concat", "mmfa"]),
        ("fusion", "MMFA", []),  # fnmatch, case-sensitive like timm.list_models
        ("decision", "a*", ["adf", "average"]),
        ("decision", "s?ngle", ["single"]),
        ("decision", "nothing*", []),
    ],
)
def test_list_components_filters_with_fnmatch(kind, pattern, expected):
    assert fk.list_components(kind, pattern) == expected


def test_list_components_pattern_applies_to_every_kind():
    listing = fk.list_components(pattern="*i*")
    assert listing["decision"] == ["single"]
    assert listing["image_encoder"] == ["open_clip", "timm"]
    assert listing["metadata_encoder"] == []


def test_unknown_kind_and_name_are_config_errors():
    with pytest.raises(fk.ConfigError, match="unknown component kind 'fusions'.*fusion"):
        fk.registry("fusions")
    with pytest.raises(fk.ConfigError, match="unknown component kind"):
        fk.list_components("head")
    with pytest.raises(fk.ConfigError, match="unknown fusion 'mmfx'.*attention_only.*mmfa"):
        fk.registry("fusion").get("mmfx")


# -- registration ----------------------------------------------------------------------------------
def test_duplicate_name_is_an_error_and_keeps_the_original():
    original = fk.registry("fusion").get("mmfa")

    class OtherMMFASpec(fk.specs.FusionSpec):
        kind: Literal["mmfa"] = "mmfa"

    class OtherMMFA(nn.Module):
        pass

    with pytest.raises(ValueError, match="'mmfa' is already registered"):
        fk.register("fusion", OtherMMFASpec, OtherMMFA)
    with pytest.raises(ValueError, match="already registered"):
        fk.register("fusion", OtherMMFASpec)(OtherMMFA)
    assert fk.registry("fusion").get("mmfa") is original


def test_register_in_code_returns_the_class_and_registers_it(registrations):
    returned = fk.register("fusion", MyTestFusionSpec, MyTestFusion)
    assert returned is MyTestFusion
    entry = fk.registry("fusion").get("my_test_fusion")
    assert entry.component is MyTestFusion and entry.spec is MyTestFusionSpec
    assert entry.module == __name__
    assert "my_test_fusion" in fk.list_components("fusion")
    assert fk.list_components("fusion", "my_*") == ["my_test_fusion"]


def test_registered_fusion_is_a_first_class_spec_slot(registrations):
    with pytest.raises(pydantic.ValidationError, match="my_test_fusion"):
        tiny_spec(fusion={"kind": "my_test_fusion"})  # not registered yet

    @fk.register("fusion", MyTestFusionSpec)
    class Decorated(MyTestFusion):
        pass

    spec = tiny_spec(fusion={"kind": "my_test_fusion", "out_dim": 5})
    assert isinstance(spec.fusion, MyTestFusionSpec)
    assert spec.fusion.out_dim == 5
    assert fk.ModelSpec.from_yaml(spec.to_yaml()) == spec
    # a typo inside the new block is reported with its path like any built-in
    with pytest.raises(pydantic.ValidationError, match=r"fusion\.my_test_fusion\.out_dims"):
        tiny_spec(fusion={"kind": "my_test_fusion", "out_dims": 5})

    model = build_tiny(spec).eval()
    assert isinstance(model.fusion, Decorated)
    out = model(make_batch(spec, 3))
    assert out.features["joint"].shape == (3, 5)
    assert out.probs.shape == (3, spec.num_classes)
    assert torch.allclose(out.probs.sum(-1), torch.ones(3), atol=1e-5)

    schema = fk.spec_json_schema()
    text = json.dumps(schema)
    assert "my_test_fusion" in text
    fusion_kinds = _schema_kinds(schema, "fusion")
    assert "my_test_fusion" in fusion_kinds and "mmfa" in fusion_kinds


def test_unregistering_closes_the_union_again():
    # the fixture-free path: register, then unregister by hand, the way the fixture does it
    from conftest import unregister

    fk.register("fusion", MyTestFusionSpec, MyTestFusion)
    try:
        assert tiny_spec(fusion={"kind": "my_test_fusion"}).fusion.kind == "my_test_fusion"
    finally:
        unregister("fusion", "my_test_fusion")
    with pytest.raises(pydantic.ValidationError, match="does not match any of the expected tags"):
        tiny_spec(fusion={"kind": "my_test_fusion"})
    assert "my_test_fusion" not in json.dumps(fk.spec_json_schema())


def test_registration_needs_a_kind_literal_and_a_class(registrations):
    class NoKind(fk.specs.FusionSpec):
        width: int = 3

    class TwoKinds(fk.specs.FusionSpec):
        kind: Literal["a_kind", "b_kind"] = "a_kind"

    with pytest.raises(TypeError, match="Literal with one string value"):
        fk.register("fusion", NoKind, MyTestFusion)
    with pytest.raises(TypeError, match="Literal with one string value"):
        fk.register("fusion", TwoKinds, MyTestFusion)
    with pytest.raises(TypeError, match="must be a class"):
        fk.register("fusion", MyTestFusionSpec, lambda **kw: MyTestFusion(**kw))
    with pytest.raises(fk.ConfigError, match="unknown component kind"):
        fk.register("fusions", MyTestFusionSpec, MyTestFusion)
    assert "my_test_fusion" not in fk.list_components("fusion")


def test_registration_checks_the_spec_base_of_the_slot(registrations):
    class WrongBaseSpec(fk.specs.DecisionSpec):
        kind: Literal["wrong_base_fusion"] = "wrong_base_fusion"

    with pytest.raises(TypeError, match="FusionSpec"):
        fk.register("fusion", WrongBaseSpec, MyTestFusion)
    assert "wrong_base_fusion" not in fk.list_components("fusion")


def _schema_kinds(schema: dict, slot: str) -> set[str]:
    """The ``kind`` values the JSON schema allows in a slot."""
    prop = schema["properties"][slot]
    options = prop.get("anyOf", [prop])
    kinds = set()
    for option in options:
        mapping = option.get("discriminator", {}).get("mapping", {})
        kinds.update(mapping)
        for ref in option.get("oneOf", []) + ([option] if "$ref" in option else []):
            name = ref["$ref"].rsplit("/", 1)[-1]
            kind = schema["$defs"][name]["properties"]["kind"]
            kinds.add(kind.get("const", kind.get("default")))
    return kinds


def test_json_schema_lists_every_registered_component():
    schema = fk.spec_json_schema()
    json.dumps(schema)  # serialisable
    for slot in ("image_encoder", "metadata_encoder", "fusion", "decision"):
        assert _schema_kinds(schema, slot) == set(fk.list_components(slot)), slot


# -- plugins -----------------------------------------------------------------------------------
def _fake_entry_points(eps):
    def entry_points(**params):
        group = params.get("group")
        return [ep for ep in eps if group is None or ep.group == group]

    return entry_points


def test_plugins_load_and_broken_ones_warn_and_are_skipped(monkeypatch, clean_plugin_module):
    eps = [
        importlib.metadata.EntryPoint("good_plugin", "plugin_fixture", PLUGIN_GROUP),
        importlib.metadata.EntryPoint("broken_plugin", "nonexistent_module:thing", PLUGIN_GROUP),
        importlib.metadata.EntryPoint("raising_plugin", "plugin_fixture:broken_register", PLUGIN_GROUP),
        importlib.metadata.EntryPoint("other_group", "nonexistent_module", "some.other.group"),
    ]
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(eps))
    assert "plugin_mean" not in fk.list_components("fusion")

    with pytest.warns(fk.PluginWarning) as caught:
        loaded = fk.load_plugins(force=True)

    assert loaded == ["good_plugin"]
    messages = [str(w.message) for w in caught if issubclass(w.category, fk.PluginWarning)]
    assert len(messages) == 2, messages
    broken = next(m for m in messages if "broken_plugin" in m)
    assert "nonexistent_module:thing" in broken and "ModuleNotFoundError" in broken
    raising = next(m for m in messages if "raising_plugin" in m)
    assert "fails on purpose" in raising
    assert not any("other_group" in m for m in messages)

    # the good plugin's component is usable like a built-in
    assert "plugin_mean" in fk.list_components("fusion")
    spec = tiny_spec(fusion={"kind": "plugin_mean", "out_dim": 4})
    model = build_tiny(spec).eval()
    assert model(make_batch(spec, 2)).features["joint"].shape == (2, 4)
    assert "plugin_mean" in json.dumps(fk.spec_json_schema())

    # plugins load once unless forced
    assert fk.load_plugins() == []


def test_a_plugin_calling_sys_exit_is_skipped_like_any_broken_plugin(monkeypatch, clean_plugin_module):
    eps = [importlib.metadata.EntryPoint("exiting_plugin", "plugin_exits_at_import", PLUGIN_GROUP)]
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(eps))
    monkeypatch.delitem(sys.modules, "plugin_exits_at_import", raising=False)
    with pytest.warns(fk.PluginWarning, match="exiting_plugin.*SystemExit: 3"):
        assert fk.load_plugins(force=True) == []


# -- when the registries fill ------------------------------------------------------------------------
LAZY_PLUGIN = '''\
"""A plugin that registers its fusion block by import path, so listing it needs no torch."""
from typing import Literal

import fusionkit as fk


class LazySumSpec(fk.specs.FusionSpec):
    kind: Literal["lazy_sum"] = "lazy_sum"


fk.register("fusion", LazySumSpec, "lazy_sum_impl:LazySum")
'''

LAZY_PLUGIN_IMPL = """\
import torch
from torch import nn


class LazySum(nn.Module):
    def __init__(self, *, image_dim: int, meta_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(meta_dim, image_dim)
        self.out_dim = image_dim

    def forward(self, f_image: torch.Tensor, f_meta: torch.Tensor) -> torch.Tensor:
        return f_image + self.proj(f_meta)
"""


def test_plugins_load_when_a_registry_is_first_asked_not_on_import(tmp_path):
    """An installed entry point (a dist-info on the path) is loaded by the first listing, not by
    ``import fusionkit``; registered by import path, its class (and torch) waits for a build."""
    (tmp_path / "lazy_sum_plugin.py").write_text(LAZY_PLUGIN)
    (tmp_path / "lazy_sum_impl.py").write_text(LAZY_PLUGIN_IMPL)
    info = tmp_path / "lazy_sum_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lazy-sum-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\nlazy_sum = lazy_sum_plugin\n")
    code = (
        "import sys, fusionkit as fk\n"
        "def loaded(): return [m for m in ('lazy_sum_plugin', 'lazy_sum_impl', 'torch') if m in sys.modules]\n"
        "print(loaded())\n"
        "print(fk.list_components('fusion'))\n"
        "print(loaded())\n"
        "entry = fk.registry('fusion').get('lazy_sum')\n"
        "print(entry.module, entry.qualname, loaded())\n"
        "print(entry.component.__name__, loaded())\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    on_import, listing, after_listing, entry, built = proc.stdout.splitlines()
    assert on_import == "[]"
    assert listing == str(sorted([*BUILT_INS["fusion"], "lazy_sum"]))
    assert after_listing == "['lazy_sum_plugin']"
    assert entry == "lazy_sum_impl LazySum ['lazy_sum_plugin']"
    assert built == "LazySum ['lazy_sum_plugin', 'lazy_sum_impl', 'torch']"


def test_registering_before_anything_was_asked_still_checks_the_slot_base(tmp_path):
    code = (
        "from typing import Literal\n"
        "from pydantic import BaseModel\n"
        "from fusionkit.registry import register\n"
        "class Loose(BaseModel):\n"
        "    kind: Literal['loose'] = 'loose'\n"
        "try:\n"
        "    register('fusion', Loose, 'somewhere:Loose')\n"
        "except TypeError as exc:\n"
        "    print(exc)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.stdout.startswith("a fusion spec must subclass FusionSpec"), proc.stdout + proc.stderr


def test_a_component_named_by_path_must_read_module_colon_class(registrations):
    with pytest.raises(TypeError, match="'module:Class'"):
        fk.register("fusion", MyTestFusionSpec, "no_colon_here")
    fk.register("fusion", MyTestFusionSpec, f"{__name__}:MyTestFusion")
    entry = fk.registry("fusion").get("my_test_fusion")
    assert entry.component is MyTestFusion and entry.module == __name__ and entry.qualname == "MyTestFusion"
    model = build_tiny(tiny_spec(fusion={"kind": "my_test_fusion", "out_dim": 3})).eval()
    assert isinstance(model.fusion, MyTestFusion)
