"""Warm start: initialise a model from another run's checkpoint or a weights file, by name and shape.

E.g. train a dermoscopy-only model, then start the trimodal one from it: the backbone tensors
(same names, same shapes) load, the fusion, heads and gate that did not exist keep their fresh
initialisation, and every tensor not loaded is listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fusionkit.errors import ConfigError
from fusionkit.runtime.checkpoint import read_checkpoint
from fusionkit.runtime.rundir import RunDir


@dataclass
class WarmStartReport:
    """Which tensors a warm start loaded and which it left: ``missing`` (in the model, not in the
    file), ``unexpected`` (in the file only) and ``mismatched`` (both, shapes differ:
    ``name: file shape -> model shape``)."""

    source: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, then the names not loaded."""
        parts = [f"warm start from {self.source}: loaded {len(self.loaded)} tensors"]
        for name in ("missing", "mismatched", "unexpected"):
            values = getattr(self, name)
            if values:
                parts.append(f"{name} {len(values)}: {', '.join(values)}")
        return "; ".join(parts)


def source_weights(path: str | Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The weights at ``path``: a run directory (its best checkpoint), a fusionkit checkpoint
    (its ``model.*`` tensors) or a plain safetensors state dict."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"train.init_from: {path}: no such run directory or weights file")
    if path.is_dir():
        path = RunDir(path).checkpoint("best")
        if not path.is_file():
            raise ConfigError(f"train.init_from: {path.parent.parent} is a folder without {path}")
    tensors, _ = read_checkpoint(path)
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    if model:
        return path, model
    return path, {k: v for k, v in tensors.items() if not k.startswith(("optim.", "rng.", "ema."))}


@torch.no_grad()
def warm_start(model: nn.Module, path: str | Path) -> WarmStartReport:
    """Copy into ``model`` every tensor of ``path`` whose name and shape match; report the rest."""
    source, weights = source_weights(path)
    report = WarmStartReport(source=source)
    state = model.state_dict()
    matched = {}
    for name, value in state.items():
        if name not in weights:
            report.missing.append(name)
        elif tuple(weights[name].shape) != tuple(value.shape):
            report.mismatched.append(f"{name}: {tuple(weights[name].shape)} -> {tuple(value.shape)}")
        else:
            matched[name] = weights[name]
            report.loaded.append(name)
    report.unexpected = sorted(set(weights) - set(state))
    if not matched:
        raise ConfigError(f"train.init_from: {source} shares no tensor (same name and shape) with this model")
    model.load_state_dict(matched, strict=False)
    return report
