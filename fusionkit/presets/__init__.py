"""Named model specs shipped with fusionkit: every variant of the paper's Tables 2-3 and Figure 3.

``ji-adf.yaml`` spells out the paper's model (Appendix A.2); every other preset file says
``extends: ji-adf`` and lists only the fields in which its variant differs, merged over JI-ADF with
:func:`merge`. The unimodal and C+D variants of Table 2 are not ADF models, so they are named by
their inputs (``derm-only``, ``clinical-only``, ``meta-only``, ``derm-clinical``); their old names
(``ji-adf-d``, ``ji-adf-c``, ``ji-adf-m``, ``ji-adf-cd``) still load, as aliases
(:data:`PRESET_ALIASES`), and give the new name.

``load_preset("ji-adf", overrides={"image_encoder": {"model_name": "test_efficientnet",
"pretrained": False}})`` deep-merges the overrides into the preset before validation; overrides may
also be ``"dotted.key=value"`` strings (values parsed as YAML), as on the command line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fusionkit.errors import ConfigError
from fusionkit.specs.io import read_mapping, safe_yaml
from fusionkit.specs.model import ModelSpec

PRESET_ALIASES: dict[str, str] = {
    "ji-adf-d": "derm-only",
    "ji-adf-c": "clinical-only",
    "ji-adf-m": "meta-only",
    "ji-adf-cd": "derm-clinical",
}
"""Old preset names (fusionkit 0.1.0) and the preset each now loads."""


def _preset_files() -> dict[str, Any]:
    folder = resources.files(__name__)
    return {entry.name[: -len(".yaml")]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def list_presets(pattern: str = "*", *, aliases: bool = False) -> list[str]:
    """Names of the shipped presets matching an fnmatch ``pattern``, sorted (with the old names too
    when ``aliases``)."""
    import fnmatch

    names = set(_preset_files()) | (set(PRESET_ALIASES) if aliases else set())
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def preset_description(name: str) -> str:
    """The one-line description at the top of a preset file."""
    first = _read(name).splitlines()[0]
    return first.lstrip("# ").strip()


def _read(name: str) -> str:
    files = _preset_files()
    name = PRESET_ALIASES.get(name, name)
    if name not in files:
        close = difflib.get_close_matches(name, [*files, *PRESET_ALIASES], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint} (presets: {', '.join(sorted(files))})")
    return files[name].read_text()


def preset_dict(name: str) -> dict[str, Any]:
    """The full mapping of a preset (its ``extends`` chain merged), before overrides and validation."""
    data = yaml.safe_load(_read(name))
    seen = [PRESET_ALIASES.get(name, name)]
    while "extends" in data:
        base = data.pop("extends")
        if base in seen:
            raise ConfigError(f"preset {seen[0]!r}: 'extends' runs in a circle ({' -> '.join([*seen, base])})")
        seen.append(base)
        data = merge(yaml.safe_load(_read(base)), data)
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b=value"`` -> ``{"a": {"b": value}}`` with the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    try:
        value: Any = safe_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise ConfigError(f"override {text!r}: the value is nested too deeply") from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces).

    Changing a slot's ``kind`` replaces the slot instead of merging, so the old kind's fields do
    not leak into the new one.
    """
    out = dict(base)
    for key, value in update.items():
        old = out.get(key)
        if (
            isinstance(old, Mapping)
            and isinstance(value, Mapping)
            and value.get("kind", old.get("kind")) == old.get("kind")
        ):
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """Apply a nested override mapping or ``key.path=value`` strings to a spec mapping."""
    out = dict(data)
    if overrides is None:
        return out
    if isinstance(overrides, Mapping):
        return merge(out, overrides)
    for text in overrides:
        out = merge(out, parse_override(text))
    return out


def expand_preset(spec: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """A spec mapping written as ``{preset: NAME, overrides: {...}}`` expanded into the preset's
    spec with the overrides merged in; any other mapping is returned as a copy.

    Raises:
        ValueError: keys beside ``preset`` and ``overrides`` (the message starts with ``where``).
    """
    if "preset" not in spec:
        return dict(spec)
    extra = set(spec) - {"preset", "overrides"}
    if extra:
        raise ValueError(f"{where}: a preset takes only 'preset' and 'overrides'; found {sorted(map(str, extra))}")
    name, overrides = spec["preset"], spec.get("overrides")
    if not isinstance(name, str):
        raise ValueError(f"{where}.preset is {name!r}; expected a preset name (a string)")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(f"{where}.overrides is {overrides!r}; expected a mapping of spec fields")
    return apply_overrides(preset_dict(name), overrides)


def load_preset(name: str, overrides: Mapping[str, Any] | Iterable[str] | None = None) -> ModelSpec:
    """The validated :class:`ModelSpec` of a preset, with ``overrides`` merged in."""
    return ModelSpec.model_validate(apply_overrides(preset_dict(name), overrides))


def load_spec(path: str | Path) -> ModelSpec:
    """Load a :class:`~fusionkit.specs.ModelSpec` from a ``.yaml``/``.yml``/``.json`` file.

    A file holding a whole run config (a ``model:`` key) yields its model spec; a spec written as
    ``{preset: name, overrides: {...}}`` is expanded from the preset (:func:`expand_preset`).
    """
    data = read_mapping(path)
    if "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    try:
        data = expand_preset(data, where=str(path))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ModelSpec.model_validate(data)
