"""Image encoders: any timm backbone as a pooled-feature extractor (the M_I of eq 1, per image)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from timm.data import resolve_model_data_config
from timm.models import group_parameters
from torch import nn

from fusionkit.components.catalog import TimmImageEncoderSpec  # noqa: F401 - spec re-exported

# the spec lives in the catalog (no torch there) and is importable here too, next to its component
from fusionkit.components.contract import ImageEncoder
from fusionkit.data.preprocessing import ImagePreprocessing
from fusionkit.errors import PretrainedWeightsError


def _has_pretrained_source(model_name: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(model_name, allow_unregistered=False)
    if cfg is None:
        return False
    return bool(cfg.hf_hub_id or cfg.url or cfg.file)


HUB_PROBE_SECONDS = 3.0
"""How long a pretrained-weights download waits to reach the hub before giving up."""


def _hub_unreachable(model_name: str) -> str | None:
    """Why the Hugging Face hub cannot serve ``model_name``'s weights now, or ``None`` if it may.

    Without ``HF_HUB_OFFLINE=1`` an unreachable hub makes ``huggingface_hub`` retry for about a
    minute; one short connection attempt answers first. Weights already in the local hub cache,
    and weights hosted elsewhere than the hub, are left to timm.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return None
    cfg = timm.models.get_pretrained_cfg(model_name, allow_unregistered=False)
    if cfg is None or not cfg.hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo = cfg.hf_hub_id.split("@")[0]
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        try:
            if isinstance(try_to_load_from_cache(repo, name), str):
                return None
        except Exception:  # noqa: BLE001 - an odd repo id: let timm report it
            return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as exc:
        return f"the hub {host}:{port} cannot be reached ({exc}); weights not in the local cache"
    return None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise PretrainedWeightsError(f"{path}: cannot read weights ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


class TimmImageEncoder(ImageEncoder):
    """One timm backbone mapping (B, 3, H, W) images to pooled features (B, out_dim).

    ``preprocessing`` is what timm declares for the model it built
    (``timm.data.resolve_model_data_config(backbone)``, i.e. its ``pretrained_cfg``): mean, std,
    interpolation and native input size.

    ``out_dim`` is the backbone's ``head_hidden_size`` (the width of what ``forward`` returns with
    ``num_classes=0``), which differs from ``num_features`` on models with a hidden head layer; when
    a model lacks it, a dummy forward measures it.

    ``forward`` is timm's own definition of a model's forward, ``forward_head(forward_features(x))``,
    with the feature map passing through ``feature_map`` (an ``nn.Identity``, no weights): the layer
    Grad-CAM hooks (:meth:`gradcam_layer`). The backbone's layers (:meth:`backbone_layers`) are
    timm's ``group_matcher(coarse=True)`` groups: one per block for a ViT, one per stage for a CNN.
    """

    def __init__(
        self,
        *,
        model_name: str,
        pretrained: bool = False,
        weights_file: Path | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        kwargs: dict[str, Any] = {"num_classes": 0, "drop_rate": drop_rate}
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        use_hub = pretrained and weights_file is None
        if use_hub and not _has_pretrained_source(model_name):
            raise PretrainedWeightsError(
                f"timm has no pretrained weights for {model_name!r}; "
                "set pretrained: false, name a tag with weights, or give weights_file"
            )
        unreachable = _hub_unreachable(model_name) if use_hub else None
        if unreachable:
            raise PretrainedWeightsError(
                f"cannot load pretrained weights for {model_name!r}: {unreachable}; "
                "set pretrained: false or give weights_file"
            )
        try:
            self.backbone = timm.create_model(model_name, pretrained=use_hub, **kwargs)
        except Exception as exc:  # noqa: BLE001 - download/offline/hub errors all mean "cannot have it"
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = " (HF_HUB_OFFLINE=1 is set)" if offline else ""
            reason = str(exc).strip().rstrip(".")
            raise PretrainedWeightsError(
                f"cannot load pretrained weights for {model_name!r}{hint}: "
                f"{type(exc).__name__}: {reason}; set pretrained: false or give weights_file"
            ) from exc
        if weights_file is not None:
            self._load_weights_file(Path(weights_file))
        self.model_name = model_name
        self.feature_map = nn.Identity()
        """Passes the backbone's last feature map through (the layer Grad-CAM hooks)."""
        self.out_dim = self._measure_width()
        self._preprocessing = ImagePreprocessing.from_timm_config(resolve_model_data_config(self.backbone))

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """The backbone's preprocessing as timm declares it (its pretrained config)."""
        return self._preprocessing

    def backbone_layers(self) -> list[list[str]]:
        """Every parameter, in timm's layer groups (``group_matcher(coarse=True)``: stem, then one
        group per ViT block or CNN stage, the final norm or head convolution with the last one); a
        model without a ``group_matcher`` is one layer."""
        matcher = getattr(self.backbone, "group_matcher", None)
        if matcher is None:
            return super().backbone_layers()
        groups = group_parameters(self.backbone, matcher(coarse=True))
        return [[f"backbone.{name}" for name in groups[k]] for k in sorted(groups)]

    def gradcam_layer(self) -> nn.Module:
        """The identity that the output of timm's ``forward_features`` passes through."""
        return self.feature_map

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's ``set_grad_checkpointing`` on the backbone (checkpointing its blocks or stages).

        Raises:
            NotImplementedError: this timm model does not support it.
        """
        backbone: Any = self.backbone  # a timm model (torch types submodule attributes as Tensor | Module)
        try:
            backbone.set_grad_checkpointing(enable)
        except AssertionError as exc:  # timm's models that cannot checkpoint assert so
            raise NotImplementedError(str(exc)) from exc

    def _load_weights_file(self, path: Path) -> None:
        state = _read_state_dict(path)
        model_keys = set(self.backbone.state_dict())
        # a checkpoint saved with its classifier carries head keys this backbone (num_classes=0) lacks
        head = self._default_cfg().get("classifier", "classifier")
        heads = (head,) if isinstance(head, str) else tuple(head)
        state = {k: v for k, v in state.items() if k in model_keys or not k.startswith(tuple(heads))}
        missing = sorted(model_keys - set(state))
        unexpected = sorted(set(state) - model_keys)
        if missing or unexpected:
            raise PretrainedWeightsError(
                f"{path}: weights do not fit {self.backbone.__class__.__name__} "
                f"({len(missing)} missing keys, e.g. {missing[:3]}; "
                f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
            )
        try:
            self.backbone.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise PretrainedWeightsError(f"{path}: weights do not fit: {exc}") from exc

    def _default_cfg(self) -> dict[str, Any]:
        """The timm backbone's ``default_cfg`` (its pretrained config as a dict; empty if it has none)."""
        cfg: dict[str, Any] = getattr(self.backbone, "default_cfg", None) or {}
        return cfg

    def _measure_width(self) -> int:
        width = getattr(self.backbone, "head_hidden_size", None)
        if isinstance(width, int) and width > 0:
            return width
        size = self._default_cfg().get("input_size", (3, 224, 224))
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            width = int(self.backbone(torch.zeros(1, *size)).shape[-1])
        self.backbone.train(was_training)
        return width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, out_dim) of an image batch (B, 3, H, W)."""
        backbone: Any = self.backbone  # a timm model: forward_features and forward_head are its API
        features: torch.Tensor = self.feature_map(backbone.forward_features(images))
        return backbone.forward_head(features)
