"""Checkpoints as single safetensors files: tensors in the file, everything else as JSON metadata.

A training checkpoint holds the model (``model.*``), the optimizer state (``optim.*``), the torch
RNG states (``rng.*``), any further models such as the weight average (``ema.*``) and, in the JSON metadata under ``"fusionkit"``, the epoch, the scheduler
state, the optimizer's param groups, Python/NumPy RNG states and the metrics. Files are written to
a temporary file and renamed, so a crash never leaves a broken checkpoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from fusionkit.errors import ConfigError
from fusionkit.utils.io import atomic_write_bytes

META_KEY = "fusionkit"


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[key] = value
    groups = [
        {k: (float(v) if isinstance(v, torch.Tensor) and v.ndim == 0 else v) for k, v in group.items()}
        for group in state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "plain": plain}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta["plain"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The process's RNG states: torch (CPU and CUDA) as tensors, Python and NumPy as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    # the global generator is an MT19937 and legacy=True (the default) gives the tuple; numpy's stubs say dict
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    plain = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    py = plain["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = plain["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with the DDP/compile wrappers' prefixes removed, on the CPU."""
    state = model.state_dict()
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value.detach().cpu().contiguous()
    return out


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    info: dict[str, Any] | None = None,
    include_rng: bool = True,
    modules: dict[str, torch.nn.Module] | None = None,
) -> Path:
    """Write a checkpoint atomically; ``info`` (epoch, metrics, ...) goes into the JSON metadata.

    ``modules`` are further models saved under their key as prefix (``{"ema": averaged_model}``
    gives ``ema.*`` tensors).
    """
    path = Path(path)
    tensors = {f"model.{k}": v for k, v in model_state(model).items()}
    for prefix, module in (modules or {}).items():
        tensors.update({f"{prefix}.{k}": v for k, v in model_state(module).items()})
    meta: dict[str, Any] = {"info": info or {}}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _optimizer_tensors(optimizer.state_dict())
        tensors.update(opt_tensors)
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    if include_rng:
        rng_tensors, meta["rng"] = rng_state()
        tensors.update(rng_tensors)
    # tensors that share storage (tied weights) must be cloned for safetensors
    tensors = {k: v.clone() for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All tensors and the JSON metadata of a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint there")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get(META_KEY, "{}"))
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{path}: not a readable fusionkit checkpoint ({exc})") from exc
    return tensors, meta


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = False,
    modules: dict[str, torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into the given objects (``modules`` as :func:`save_checkpoint` took
    them); returns its ``info`` dict.

    Raises:
        ConfigError: no such file, not a checkpoint, weights that do not fit ``model``, or weights
            that are NaN or infinite (named).
    """
    tensors, meta = read_checkpoint(path)
    bad = [
        k
        for k, v in tensors.items()
        if not k.startswith(("optim.", "rng.")) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise ConfigError(
            f"{path}: the checkpoint holds NaN or infinite weights ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); it comes from a diverged run and cannot be used"
        )
    for prefix, module in {"model": model, **(modules or {})}.items():
        weights = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}
        if prefix != "model" and not weights:
            raise ConfigError(f"{path}: the checkpoint holds no '{prefix}' weights")
        target = module
        for attr in ("module", "_orig_mod"):
            while hasattr(target, attr) and isinstance(getattr(target, attr), torch.nn.Module):
                target = getattr(target, attr)
        try:
            target.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"{path}: the checkpoint does not fit this model: {exc}") from exc
    if optimizer is not None and "optimizer" in meta:
        opt = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        optimizer.load_state_dict(_optimizer_state(opt, meta["optimizer"]))
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(meta["scheduler"])
    if restore_rng and "rng" in meta:
        set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, meta["rng"])
    return meta.get("info", {})
