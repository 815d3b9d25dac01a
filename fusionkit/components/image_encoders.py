"""Image encoders: any timm backbone as a pooled-feature extractor (the M_I of eq 1, per image).

The open_clip towers live in :mod:`fusionkit.components.open_clip_encoder`; both read local weights
files through :mod:`fusionkit.components.weights`.
"""

from __future__ import annotations

import os
import socket
import sys
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
from fusionkit.components.weights import check_fit, read_state_dict, strip_prefix
from fusionkit.data.preprocessing import ImagePreprocessing
from fusionkit.errors import ConfigError, PretrainedWeightsError


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
    return _repo_unreachable(cfg.hf_hub_id.split("@")[0])


def _repo_unreachable(
    repo: str, files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
) -> str | None:
    """Why the hub cannot serve ``repo`` now (none of ``files`` cached, the host unreachable), or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    for name in files:
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


class TimmImageEncoder(ImageEncoder):
    """One timm backbone mapping (B, 3, H, W) images to pooled features (B, out_dim).

    ``preprocessing`` is what timm declares for the model it built
    (``timm.data.resolve_model_data_config(backbone)``, i.e. its ``pretrained_cfg``): mean, std,
    interpolation and native input size (``img_size`` when given).

    Foreign weights (a PanDerm-style ViT checkpoint): ``weights_prefix`` strips a key prefix
    (``module.``, ``visual.``; keys without it are dropped), then the model module's own
    ``checkpoint_filter_fn`` converts the state dict as timm does for its pretrained weights (for
    ViTs: the position embedding resampled to the ``img_size`` grid with ``resample_abs_pos_embed``,
    open_clip/OpenAI CLIP key layouts renamed).

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
        weights_prefix: str | None = None,
        img_size: int | None = None,
    ) -> None:
        super().__init__()
        kwargs: dict[str, Any] = {"num_classes": 0, "drop_rate": drop_rate}
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        if img_size is not None:
            kwargs["img_size"] = img_size
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
        except TypeError as exc:
            if img_size is None or "img_size" not in str(exc):
                raise
            raise ConfigError(
                f"timm model {model_name!r} takes no img_size (only models with a fixed input grid, "
                "such as ViTs, do): leave img_size out"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - download/offline/hub errors all mean "cannot have it"
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = " (HF_HUB_OFFLINE=1 is set)" if offline else ""
            reason = str(exc).strip().rstrip(".")
            raise PretrainedWeightsError(
                f"cannot load pretrained weights for {model_name!r}{hint}: "
                f"{type(exc).__name__}: {reason}; set pretrained: false or give weights_file"
            ) from exc
        if weights_file is not None:
            self._load_weights_file(Path(weights_file), prefix=weights_prefix)
        self.model_name = model_name
        self.feature_map = nn.Identity()
        """Passes the backbone's last feature map through (the layer Grad-CAM hooks)."""
        self.img_size = img_size
        self.out_dim = self._measure_width()
        declared = ImagePreprocessing.from_timm_config(resolve_model_data_config(self.backbone))
        self._preprocessing = declared.with_size(img_size) if img_size is not None else declared

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

    @property
    def gradcam_prefix_tokens(self) -> int:
        """Leading class/register tokens of a ViT's Grad-CAM layer (0 for a CNN's spatial map)."""
        return int(getattr(self.backbone, "num_prefix_tokens", 0) or 0) if self._vit_norm() is not None else 0

    def _vit_norm(self) -> nn.Module | None:
        """A timm ViT's last block input norm (``blocks[-1].norm1``), or None for other backbones."""
        blocks = getattr(self.backbone, "blocks", None)
        if not hasattr(self.backbone, "num_prefix_tokens") or not isinstance(blocks, nn.Sequential | nn.ModuleList):
            return None
        norm = getattr(blocks[-1], "norm1", None) if len(blocks) else None
        return norm if isinstance(norm, nn.Module) else None

    def gradcam_layer(self) -> nn.Module:
        """For a CNN, the identity that the output of timm's ``forward_features`` passes through; for a
        timm ViT, the last block's input norm (after the last block only the class token reaches the
        pooled features, so the patch tokens' gradients vanish there)."""
        norm = self._vit_norm()
        return norm if norm is not None else self.feature_map

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

    def _load_weights_file(self, path: Path, *, prefix: str | None = None) -> None:
        state = read_state_dict(path)
        if prefix:
            state = strip_prefix(state, prefix, path=path)
        convert = getattr(sys.modules.get(type(self.backbone).__module__), "checkpoint_filter_fn", None)
        if callable(convert):
            try:
                state = convert(state, self.backbone)
            except Exception as exc:  # noqa: BLE001 - a foreign layout timm cannot convert is a misfit
                raise PretrainedWeightsError(
                    f"{path}: timm cannot convert these weights for {self.backbone.__class__.__name__} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        model_keys = set(self.backbone.state_dict())
        # a checkpoint saved with its classifier carries head keys this backbone (num_classes=0) lacks
        head = self._default_cfg().get("classifier", "classifier")
        heads = (head,) if isinstance(head, str) else tuple(head)
        state = {k: v for k, v in state.items() if k in model_keys or not k.startswith(tuple(heads))}
        check_fit(path, state, model_keys, target=self.backbone.__class__.__name__)
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
        if self.img_size is not None:
            size = (3, self.img_size, self.img_size)
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
