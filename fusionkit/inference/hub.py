"""A pipeline as a folder (and a Hugging Face Hub repository): JSON and safetensors only.

``FusionPipeline.save(folder)`` writes::

    config.json             format, fusionkit version, the run config (model spec in full), class
                            names, decision rule with its thresholds, provenance, where each plugin
                            component comes from (``components``), file checksums
    model.safetensors       the model's weights (nothing executable)
    metadata_encoder.json   the fitted metadata encoder (fusionkit.data.MetadataEncoder)
    preprocessing.json      image size, mean, std, interpolation
    README.md               the model card (YAML front matter the Hub reads)

following ``huggingface_hub``'s ``ModelHubMixin`` conventions (``config.json`` + weights + card), so
``pipe.push_to_hub(repo_id)`` uploads it and ``FusionPipeline.from_pretrained(repo_id)`` downloads
it with ``snapshot_download``. Loading reads JSON and safetensors only and checks each file's
SHA-256 against ``config.json``: a missing, corrupted or inconsistent file, a component kind that is
not installed (named with the plugin distribution ``components`` records) and a symbolic link leading
outside the folder are refused with one line naming it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError

from fusionkit.data import MetadataEncoder
from fusionkit.errors import ConfigError, FusionkitError
from fusionkit.inference.decision import DecisionRecord
from fusionkit.model import FusionModel
from fusionkit.registry import COMPONENT_KINDS, get_registry
from fusionkit.runtime.checkpoint import model_state
from fusionkit.runtime.config import RunConfig
from fusionkit.runtime.rundir import refuse_escaping_links
from fusionkit.specs.io import field_error
from fusionkit.utils.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from fusionkit.inference.pipeline import FusionPipeline

FORMAT = "fusionkit.pipeline"
VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ENCODER_NAME = "metadata_encoder.json"
PREPROCESSING_NAME = "preprocessing.json"
CARD_NAME = "README.md"
CHECKED_FILES = (WEIGHTS_NAME, ENCODER_NAME, PREPROCESSING_NAME)
"""The files whose SHA-256 ``config.json`` records and loading checks."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_savable(pipe: FusionPipeline) -> None:
    """Refuse, in one line, a pipeline whose model a saved folder cannot rebuild (composed from modules)."""
    if pipe.model.spec is None:
        raise ConfigError(
            "the pipeline's model was composed from modules (FusionModel(...), no spec): a saved folder is "
            "rebuilt from its spec, so it cannot hold this model; save its weights with safetensors and "
            "rebuild it with its code"
        )


def component_sources(pipe: FusionPipeline) -> dict[str, dict[str, str | None]]:
    """Where each component of the model that is not fusionkit's own comes from: per slot, its
    ``kind``, ``module`` and, when an installed distribution provides that module, the plugin
    ``distribution`` and its ``version`` (recorded in ``config.json``, so that a folder loaded where
    the plugin is missing names what to install)."""
    import importlib.metadata

    spec = pipe.model.spec
    assert spec is not None  # check_savable
    sources: dict[str, dict[str, str | None]] = {}
    providers = None
    for slot in COMPONENT_KINDS:
        part = getattr(spec, slot, None)
        if part is None:
            continue
        module = get_registry(slot).get(part.kind).module
        if module.split(".")[0] == "fusionkit":
            continue
        if providers is None:
            providers = importlib.metadata.packages_distributions()
        names = providers.get(module.split(".")[0]) or []
        dist = names[0] if names else None
        version = None
        if dist is not None:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = None
        sources[slot] = {"kind": part.kind, "module": module, "distribution": dist, "version": version}
    return sources


def _check_kinds(config: dict[str, Any], path: Path) -> None:
    """Refuse, in one line, a component kind that no installed component registers, naming the kind
    and the plugin distribution ``config.json`` records for it. Nothing named by the file is
    imported: the registries hold only fusionkit's components and the installed plugins' entry points."""
    run_config = config.get("run_config")
    model = run_config.get("model") if isinstance(run_config, dict) else None
    if not isinstance(model, dict):
        return
    recorded: Any = config.get("components")
    recorded = recorded if isinstance(recorded, dict) else {}
    for slot in COMPONENT_KINDS:
        part = model.get(slot)
        kind = part.get("kind") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind in get_registry(slot):
            continue
        source: Any = recorded.get(slot)
        source = source if isinstance(source, dict) else {}
        dist, version = source.get("distribution"), source.get("version")
        if isinstance(dist, str) and dist:
            hint = (
                f"it comes from the plugin distribution {dist}{f' {version}' if version else ''}: pip install '{dist}"
            )
            hint += f"=={version}'" if version else "'"
        else:
            hint = "install the plugin that provides it"
        known = ", ".join(get_registry(slot).names()) or "none"
        raise ConfigError(
            f"{path}: model.{slot} kind {kind!r} is not installed (installed: {known}); {' '.join(hint.split())}"
        )


def write_folder(pipe: FusionPipeline, folder: str | Path) -> Path:
    """Write ``pipe``'s files into ``folder`` (see the module docstring); returns the folder."""
    from safetensors.torch import save

    from fusionkit.inference.card import model_card

    check_savable(pipe)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.clone() for k, v in model_state(pipe.model).items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    encoder = pipe.encoder.to_dict() if pipe.encoder is not None else None
    atomic_write_text(folder / ENCODER_NAME, json.dumps(encoder, indent=2) + "\n")
    atomic_write_text(folder / PREPROCESSING_NAME, json.dumps({"image": pipe.preprocessing.to_dict()}, indent=2) + "\n")
    from fusionkit import __version__

    config = {
        "format": FORMAT,
        "version": VERSION,
        "fusionkit_version": __version__,
        "class_names": list(pipe.class_names),
        "modalities": list(pipe.modalities),
        "metadata_features": list(pipe.encoder.feature_names) if pipe.encoder is not None else [],
        "decision": pipe.decision.to_dict(),
        "run_config": pipe.run_config.model_dump(mode="json"),
        "provenance": pipe.provenance,
        "components": component_sources(pipe),
        "sha256": {name: _sha256(folder / name) for name in CHECKED_FILES},
    }
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    atomic_write_text(folder / CARD_NAME, model_card(pipe))
    return folder


def resolve_folder(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Path:
    """A local folder for ``name_or_path``: the folder itself, or a Hub repository's snapshot."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ConfigError(f"{name_or_path}: not a folder written by FusionPipeline.save, nor a Hub repository id")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id=text,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=local_files_only,
                force_download=force_download,
            )
        )
    except Exception as exc:  # noqa: BLE001  (offline, not found, unauthorised: one line)
        raise ConfigError(f"{name_or_path}: cannot download the Hub repository ({type(exc).__name__}: {exc})") from None


def _json(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: missing; a saved fusionkit pipeline needs it (save it again with pipe.save)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc}); the folder is corrupted") from None


def read_folder(folder: str | Path, *, boundary: str | Path | None = None) -> dict[str, Any]:
    """The keyword arguments of ``FusionPipeline(...)`` read from a saved folder.

    ``boundary`` is where links in the folder may lead (default: the folder itself; a Hub snapshot's
    repository cache folder, whose ``blobs/`` its files link to).

    Raises:
        ConfigError: a missing file, a checksum mismatch, malformed JSON, a component kind that is not
            installed, a link leading outside the folder or weights that do not fit the model the
            config describes (each names the file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from fusionkit.data import ImagePreprocessing
    from fusionkit.inference.pipeline import inference_spec

    folder = Path(folder)
    refuse_escaping_links(folder, boundary=boundary)
    config_path = folder / CONFIG_NAME
    config = _json(config_path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ConfigError(f"{config_path}: not a fusionkit pipeline config (format {FORMAT!r} expected)")
    if config.get("version") != VERSION:
        raise ConfigError(
            f"{config_path}: pipeline format version {config.get('version')!r}; this fusionkit reads {VERSION}"
        )
    for name in CHECKED_FILES:
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing; a saved fusionkit pipeline needs it")
        expected = (config.get("sha256") or {}).get(name)
        if expected is not None and _sha256(path) != expected:
            raise ConfigError(f"{path}: its SHA-256 differs from the one config.json records; the file is corrupted")
    _check_kinds(config, config_path)
    try:
        run_config = RunConfig.model_validate(config["run_config"])
        decision = DecisionRecord.from_dict(config["decision"])
    except ValidationError as exc:
        raise field_error(config_path, exc) from None
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{config_path}: malformed ({str(exc).splitlines()[0]})") from None
    except FusionkitError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    state = _json(folder / ENCODER_NAME)
    encoder = None if state is None else MetadataEncoder.from_dict(state, path=folder / ENCODER_NAME)
    try:
        preprocessing = ImagePreprocessing.from_dict(_json(folder / PREPROCESSING_NAME)["image"])
    except (KeyError, ValueError, TypeError, ConfigError) as exc:
        raise ConfigError(f"{folder / PREPROCESSING_NAME}: malformed ({exc})") from None
    weights_path = folder / WEIGHTS_NAME
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{weights_path}: not a readable safetensors file ({exc}); the folder is corrupted") from None
    model = FusionModel(
        inference_spec(run_config), metadata_width=encoder.metadata_width if encoder is not None else None
    )
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError(f"{weights_path}: NaN or infinite weights ({', '.join(bad[:3])})")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{weights_path}: the weights do not fit the model config.json describes ({first})") from None
    return {
        "model": model,
        "encoder": encoder,
        "preprocessing": preprocessing,
        "decision": decision,
        "run_config": run_config,
        "provenance": config.get("provenance") or {},
    }
