"""Reading and writing spec files (YAML or JSON by suffix), atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fusionkit.errors import ConfigError, ConfigFieldError
from fusionkit.utils.io import atomic_write_text

if TYPE_CHECKING:  # the spec classes import every component; reading a file needs none of them
    from pydantic import ValidationError

    from fusionkit.specs.model import ModelSpec


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def validation_message(error: ValidationError) -> str:
    """pydantic's ``ValidationError`` in one line: ``invalid RunConfig: train.lr: Input should be ...; ...``."""
    parts = []
    for e in error.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "spec"
        parts.append(f"{loc}: {' '.join(str(e['msg']).split())}")
    return f"invalid {error.title}: " + "; ".join(parts)


def field_error(path: str | Path, error: ValidationError) -> ConfigFieldError:
    """A :class:`~fusionkit.errors.ConfigFieldError` naming ``path`` and every failing field of ``error``."""
    return ConfigFieldError(f"{path}: {validation_message(error)}", errors=[dict(e) for e in error.errors()])


def safe_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader that refuses a key given twice (``yaml.YAMLError`` else)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"the key {twice[0]!r} is given twice")
    return dict(pairs)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON file that must hold a mapping; errors name the file.

    Safe YAML only (no Python tags); a key given twice in one mapping, text that is not UTF-8 and
    nesting too deep to parse are refused with one line, like any other syntax error.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is no content
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the {kind} file as UTF-8") from None
    try:
        if kind == "JSON":
            data = json.loads(text, object_pairs_hook=_unique_json_object)
        else:
            data = safe_yaml(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid {kind}: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid {kind}: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def dump_spec(spec: ModelSpec, path: str | Path) -> Path:
    """Write a spec to ``path`` as YAML (or JSON for ``.json``), atomically."""
    path = Path(path)
    text = spec.to_json() if path.suffix == ".json" else spec.to_yaml()
    atomic_write_text(path, text)
    return path
