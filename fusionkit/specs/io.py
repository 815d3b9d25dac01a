"""Reading and writing spec files (YAML or JSON by suffix), atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fusionkit.errors import ConfigError
from fusionkit.utils.io import atomic_write_text


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON file that must hold a mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def load_spec(path: str | Path):  # -> ModelSpec
    """Load a :class:`~fusionkit.specs.ModelSpec` from a ``.yaml``/``.yml``/``.json`` file.

    A file holding a whole run config (a ``model:`` key) yields its model spec; a spec written as
    ``{preset: name, overrides: {...}}`` is expanded from the preset.
    """
    from fusionkit.presets import apply_overrides, preset_dict
    from fusionkit.specs.model import ModelSpec

    data = read_mapping(path)
    if "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    if "preset" in data:
        extra = set(data) - {"preset", "overrides"}
        if extra:
            raise ConfigError(f"{path}: a preset takes only 'preset' and 'overrides'; found {sorted(extra)}")
        data = apply_overrides(preset_dict(data["preset"]), data.get("overrides"))
    return ModelSpec.model_validate(data)


def dump_spec(spec, path: str | Path) -> Path:
    """Write a spec to ``path`` as YAML (or JSON for ``.json``), atomically."""
    path = Path(path)
    text = spec.to_json() if path.suffix == ".json" else spec.to_yaml()
    atomic_write_text(path, text)
    return path
