"""Grad-CAM (Selvaraju et al., 2017) over the dermoscopic and clinical images of a fusion model.

For an image modality, the feature map ``A`` (B, C, h, w) that the image encoder names as its
Grad-CAM layer (:meth:`ImageEncoder.gradcam_layer <fusionkit.components.contract.ImageEncoder.gradcam_layer>`;
for a timm CNN, the output of ``forward_features``; for a ViT, the last block's input norm, since
after the last block only the class token reaches the pooled features, its (B, N, C) tokens made the
(B, C, h, w) grid of the patch tokens, the encoder's ``gradcam_prefix_tokens`` leading
class/register tokens dropped) and the gradient of the final
log-posterior ``log P_final[c]`` with respect to it give ``cam = ReLU(sum_k mean_ij(dL/dA_k) A_k)``,
upsampled to the image size and scaled to [0, 1]. Works for any encoder that names such a layer,
with one encoder per image or a shared one.

Kept instead of the ``grad-cam`` package because its ``ActivationsAndGradients`` calls the model
with one input tensor and hooks each target layer once per forward, whereas a fusion model takes
both images and the metadata and a shared backbone sees both images in one 2B batch (and the
package would add opencv, ttach and matplotlib to the dependencies).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fusionkit.components.contract import gradcam_layer
from fusionkit.errors import ConfigError
from fusionkit.model import FusionModel


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
def _capture_output(layer: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    """Keep ``layer``'s output (with its gradient retained) each time it runs."""

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:  # noqa: ARG001
        if output.requires_grad:
            output.retain_grad()
        else:  # a frozen backbone (no parameter needs a gradient): the map becomes the leaf
            output.requires_grad_(True)
        store.append(output)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


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
    layer = gradcam_layer(encoder, name=f"image encoder {key!r}")
    store: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), _capture_output(layer, store):
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
    if features.ndim == 3 and grads is not None:  # a ViT's (B, N, C) tokens: the grid of its patch tokens
        prefix = int(getattr(encoder, "gradcam_prefix_tokens", 0) or 0)
        what = f"{type(encoder).__name__}'s layer"
        features, grads = _token_grid(features, prefix, what), _token_grid(grads, prefix, what)
    if features.ndim != 4:
        raise ConfigError(
            f"Grad-CAM needs a spatial (B, C, h, w) feature map; {type(encoder).__name__}'s layer gives "
            f"{tuple(features.shape)}"
        )
    if grads is None:
        raise ConfigError(f"no gradient reached the {modality!r} feature map of {type(encoder).__name__}")
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
