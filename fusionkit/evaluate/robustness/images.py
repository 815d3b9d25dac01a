"""Photometric and geometric corruptions of a uint8 image, ImageNet-C style, at severities 1-5.

Every function takes a uint8 image, a severity in 1..5 and a :class:`numpy.random.Generator`, and
returns a new uint8 image of the same shape, layout and type (a NumPy array or a torch tensor,
channels-first ``(3, H, W)`` or channels-last ``(H, W, 3)``; see :func:`as_chw`). The severity
tables follow ImageNet-C (Hendrycks and Dietterich, 2019) where it defines one, with blur radii
scaled to the image size so a 224-pixel and a 1024-pixel image are blurred alike.

torchvision's ``transforms.v2.functional`` (a dependency already) does the blur, brightness,
contrast and affine warps on uint8 tensors and Pillow the JPEG round trip (torchvision's own JPEG
codec is deprecated since 0.29), so no new package is needed: albumentations would add OpenCV for
the same operations and ``imagecorruptions`` is unmaintained since 2020 and pins old scikit-image.
The noise and the colour cast are written here because they must draw from the caller's seeded
generator (torchvision's noise uses the global torch RNG).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = [
    "ImageCorruption",
    "as_chw",
    "brightness",
    "check_severity",
    "colour_cast",
    "contrast",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg_compression",
    "rotation_scale",
]

#: Signature of an image corruption: ``(image, severity, rng) -> image``.
ImageCorruption = Callable[[Any, int, np.random.Generator], Any]

#: Severity -> noise standard deviation as a fraction of 255 (ImageNet-C ``gaussian_noise``).
NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
#: Severity -> Gaussian blur sigma in pixels of a 224-pixel image (scaled to the image's short side).
BLUR_SIGMA = (1.0, 2.0, 3.0, 4.0, 6.0)
#: Severity -> JPEG quality (ImageNet-C ``jpeg_compression``).
JPEG_QUALITY = (25, 18, 15, 10, 7)
#: Severity -> brightness factor (1 leaves the image as it is).
BRIGHTNESS_FACTOR = (1.15, 1.3, 1.45, 1.6, 1.8)
#: Severity -> contrast factor (ImageNet-C ``contrast``; 1 leaves the image as it is, 0 is flat grey).
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)
#: Severity -> largest relative change of a colour channel's gain (white-balance error).
CAST_STRENGTH = (0.1, 0.2, 0.3, 0.4, 0.5)
#: Severity -> rotation in degrees (sign drawn at random) and zoom (in or out, drawn at random).
ROTATION_DEGREES = (5.0, 10.0, 15.0, 22.5, 30.0)
ZOOM = (0.05, 0.1, 0.15, 0.2, 0.3)


def check_severity(severity: int) -> int:
    """``severity`` as an int in 1..5, or ValueError."""
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return int(severity)


def as_chw(image: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """A uint8 ``(3, H, W)`` tensor view of ``image`` and the function that turns a result back.

    ``image`` is a NumPy array or a torch tensor of dtype uint8, channels-first ``(3, H, W)``
    when its first axis has 3 entries and its last does not, else channels-last ``(H, W, 3)`` (so a
    ``(3, H, 3)`` array is read as channels-last).

    Raises:
        ValueError: not uint8, not 3-D, or no axis of 3 colour channels.
    """
    is_numpy = isinstance(image, np.ndarray)
    if not is_numpy and not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a NumPy array or a torch tensor, got {type(image).__name__}")
    tensor = torch.from_numpy(np.ascontiguousarray(image)) if is_numpy else image
    if tensor.dtype != torch.uint8:
        raise ValueError(f"image must be uint8, got {tensor.dtype}")
    if tensor.ndim != 3:
        raise ValueError(f"image must be 3-D (3, H, W) or (H, W, 3), got shape {tuple(tensor.shape)}")
    channels_first = tensor.shape[0] == 3 and tensor.shape[2] != 3
    if not channels_first and tensor.shape[2] != 3:
        raise ValueError(f"image must have 3 colour channels, got shape {tuple(tensor.shape)}")
    chw = tensor if channels_first else tensor.permute(2, 0, 1)
    device = tensor.device

    def back(result: torch.Tensor) -> Any:
        out = result if channels_first else result.permute(1, 2, 0)
        out = out.contiguous()
        return out.numpy() if is_numpy else out.to(device)

    return chw.cpu().contiguous(), back


def _apply(image: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    chw, back = as_chw(image)
    return back(fn(chw))


def _from_float(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def gaussian_noise(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """Additive Gaussian noise with standard deviation :data:`NOISE_STD` x 255, clipped to 0..255.

    The same generator state gives the same noise field at every severity, scaled: a pixel's change
    never shrinks as the severity grows."""
    std = NOISE_STD[check_severity(severity) - 1] * 255.0

    def noise(x: torch.Tensor) -> torch.Tensor:
        field = rng.standard_normal(size=tuple(x.shape))
        return _from_float(x.numpy().astype(np.float64) + std * field)

    return _apply(image, noise)


def gaussian_blur(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """Gaussian (defocus-like) blur with sigma :data:`BLUR_SIGMA`, scaled to the short side / 224."""
    del rng  # deterministic
    base = BLUR_SIGMA[check_severity(severity) - 1]

    def blur(x: torch.Tensor) -> torch.Tensor:
        short = min(x.shape[1], x.shape[2])
        sigma = base * short / 224.0
        size = 2 * math.ceil(3.0 * sigma) + 1
        size = min(size, 2 * short - 1)  # odd, and reflect padding (size // 2) stays below the side
        if size < 3:
            return x.clone()
        return F.gaussian_blur(x, [size, size], [sigma, sigma])

    return _apply(image, blur)


def jpeg_compression(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """A JPEG encode/decode round trip (Pillow, 4:2:0 chroma subsampling) at quality :data:`JPEG_QUALITY`."""
    del rng
    quality = JPEG_QUALITY[check_severity(severity) - 1]

    def round_trip(x: torch.Tensor) -> torch.Tensor:
        buffer = io.BytesIO()
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return torch.from_numpy(np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)

    return _apply(image, round_trip)


def brightness(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """Over-exposure: every value multiplied by :data:`BRIGHTNESS_FACTOR` (clipped at 255)."""
    del rng
    factor = BRIGHTNESS_FACTOR[check_severity(severity) - 1]
    return _apply(image, lambda x: F.adjust_brightness(x, factor))


def contrast(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """Lower contrast: blended towards the mean grey level by :data:`CONTRAST_FACTOR`."""
    del rng
    factor = CONTRAST_FACTOR[check_severity(severity) - 1]
    return _apply(image, lambda x: F.adjust_contrast(x, factor))


def colour_cast(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """A white-balance error: per-channel gains ``1 + s * d``, ``s`` from :data:`CAST_STRENGTH`
    and ``d`` a random zero-mean direction of unit largest entry (a tint of random hue)."""
    strength = CAST_STRENGTH[check_severity(severity) - 1]
    direction = rng.standard_normal(3)
    direction -= direction.mean()
    direction /= max(np.abs(direction).max(), 1e-12)
    gains = 1.0 + strength * direction

    def cast(x: torch.Tensor) -> torch.Tensor:
        return _from_float(x.numpy().astype(np.float64) * gains[:, None, None])

    return _apply(image, cast)


def rotation_scale(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """A rotation by :data:`ROTATION_DEGREES` (random sign) and a zoom in or out by :data:`ZOOM`
    about the centre; uncovered corners are black (bilinear interpolation)."""
    s = check_severity(severity) - 1
    angle = ROTATION_DEGREES[s] * (1.0 if rng.random() < 0.5 else -1.0)
    scale = 1.0 + ZOOM[s] * (1.0 if rng.random() < 0.5 else -1.0)
    return _apply(
        image,
        lambda x: F.affine(
            x,
            angle=angle,
            translate=[0.0, 0.0],
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
            fill=[0.0, 0.0, 0.0],
        ),
    )
