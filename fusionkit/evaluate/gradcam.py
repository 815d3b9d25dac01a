"""Grad-CAM (Selvaraju et al., 2017) over the dermoscopic and clinical images of a fusion model.

For an image modality, the backbone's last spatial feature map ``A`` (the output of timm's
``forward_features``) and the gradient of the final log-posterior ``log P_final[c]`` with respect
to it give ``cam = ReLU(sum_k mean_ij(dL/dA_k) A_k)``, upsampled to the image size and scaled to
[0, 1]. Works for any timm backbone whose ``forward_features`` returns a (B, C, h, w) map, with one
backbone per image or a shared one, and for ViTs: there ``A`` is the output of the last block's
input norm (timm ViTs' ``blocks[-1].norm1``, or the module an encoder names with ``gradcam_layer()``,
with ``gradcam_prefix_tokens`` leading tokens, as the open_clip towers do), the usual ViT Grad-CAM layer, since after the last block only the
class token reaches the pooled features; its (B, N, C) tokens become the (B, C, h, w) map of the
patch tokens, the leading class/register tokens dropped.

Kept instead of the ``grad-cam`` package because its ``ActivationsAndGradients`` calls the model
with one input tensor and hooks each target layer once per forward, whereas a fusion model takes
both images and the metadata and a shared backbone sees both images in one 2B batch (and the
package would add opencv, ttach and matplotlib to the dependencies; grad-cam 1.5.7, 2026-11-27).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol, cast

import torch
from torch import nn
from torch.nn import functional as F

from fusionkit.errors import ConfigError
from fusionkit.model import FusionModel


class _FeatureBackbone(Protocol):
    """A timm backbone: ``forward_features`` maps images to the last feature map."""

    forward_features: Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def _capture_output(module: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    """Keep ``module``'s output (with its gradient) in ``store`` while the block runs."""

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        output.retain_grad()
        store.append(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _token_grid(tokens: torch.Tensor, prefix: int, what: str) -> torch.Tensor:
    """(B, N, C) tokens -> the (B, C, h, w) map of the N - ``prefix`` patch tokens (a square grid)."""
    patches = tokens[:, prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1] or side == 0:
        raise ConfigError(
            f"Grad-CAM needs a square grid of patch tokens; {what} gives {tokens.shape[1]} tokens ({prefix} leading)"
        )
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


@contextlib.contextmanager
def _capture_features(backbone: _FeatureBackbone, store: list[torch.Tensor]) -> Iterator[None]:
    original = backbone.forward_features

    def forward_features(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        features = original(x, *args, **kwargs)
        features.retain_grad()
        store.append(features)
        return features

    backbone.forward_features = forward_features  # instance attribute shadows the method
    try:
        yield
    finally:
        del backbone.forward_features


def gradcam(
    model: FusionModel,
    batch: dict[str, Any],
    *,
    modality: str,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Grad-CAM maps (B, H, W) in [0, 1] for one image ``modality`` of a batch normalised as the
    model declares (:attr:`FusionModel.preprocessing <fusionkit.model.FusionModel.preprocessing>`).

    ``target`` holds one class index per sample (default: the predicted class).
    """
    stream = model.image_stream
    if stream is None or modality not in stream.modalities:
        raise ConfigError(f"the model has no {modality!r} image stream for Grad-CAM")
    key = "shared" if stream.shared else modality
    encoder = stream.encoders[key]
    candidate = getattr(encoder, "backbone", encoder)
    layer_of = getattr(encoder, "gradcam_layer", None)
    store: list[torch.Tensor] = []
    vit_blocks = getattr(candidate, "blocks", None)
    if callable(layer_of):  # the encoder names its Grad-CAM layer (and its leading tokens, if tokens)
        try:
            module = layer_of()
        except NotImplementedError as exc:
            raise ConfigError(f"Grad-CAM: {exc}") from None
        prefix = int(getattr(encoder, "gradcam_prefix_tokens", 0) or 0)
        capture = _capture_output(module, store)
    elif hasattr(candidate, "num_prefix_tokens") and isinstance(vit_blocks, nn.Sequential | nn.ModuleList):
        # a timm ViT: the last block's input norm, where the patch tokens still reach the pooled token
        module = getattr(vit_blocks[-1], "norm1", None)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"Grad-CAM found no norm1 in the last block of {type(candidate).__name__}")
        prefix = int(getattr(candidate, "num_prefix_tokens", 0) or 0)
        capture = _capture_output(module, store)
    elif callable(getattr(candidate, "forward_features", None)):
        prefix = 0
        capture = _capture_features(cast(_FeatureBackbone, candidate), store)
    else:
        raise ConfigError(f"Grad-CAM needs a backbone with timm's forward_features; {type(encoder).__name__} has none")
    backbone = candidate
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), capture:
            out = model(batch)
            if target is None:
                target = out.probs.argmax(dim=1)
            score = out.log_probs.gather(1, target.view(-1, 1)).sum()
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        model.train(was_training)
    features = store[0]
    grads = features.grad
    if features.ndim == 3 and grads is not None:  # ViT tokens (B, N, C)
        what = type(backbone).__name__
        features, grads = _token_grid(features, prefix, what), _token_grid(grads, prefix, what)
    if features.ndim != 4:
        raise ConfigError(
            f"Grad-CAM needs a spatial (B, C, h, w) feature map; {type(backbone).__name__} gives "
            f"{tuple(features.shape)}"
        )
    if grads is None:
        raise ConfigError(f"no gradient reached the {modality!r} feature map of {type(backbone).__name__}")
    if stream.shared:  # the shared backbone saw all images stacked in modality order
        index = stream.modalities.index(modality)
        features = features.chunk(len(stream.modalities))[index]
        grads = grads.chunk(len(stream.modalities))[index]
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(dim=1, keepdim=True)).detach().float()
    size = batch[modality].shape[-2:]
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)
    return cam / peak[:, None, None]
