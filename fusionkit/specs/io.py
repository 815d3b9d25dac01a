"""Reading and writing spec files (YAML or JSON by suffix), atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fusionkit.errors import ConfigError
from fusionkit.utils.io import atomic_write_text

if TYPE_CHECKING:  # the spec classes import every component; reading a file needs none of them
    from fusionkit.specs.model import ModelSpec


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


def dump_spec(spec: ModelSpec, path: str | Path) -> Path:
    """Write a spec to ``path`` as YAML (or JSON for ``.json``), atomically."""
    path = Path(path)
    text = spec.to_json() if path.suffix == ".json" else spec.to_yaml()
    atomic_write_text(path, text)
    return path
