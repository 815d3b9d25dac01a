"""Image transforms built from a model's declared preprocessing, on uint8 ``(3, H, W)`` tensors.

The same transform serves the JPEG path and the cache path (both hand it uint8 tensors). Two ways
to normalise:

* ``normalize=True`` (default): the transform returns float32 images normalised with the mean/std
  the model's image encoders declare (:class:`~fusionkit.data.ImagePreprocessing`).
* ``normalize=False`` (the fast path): the transform returns uint8 images, the DataLoader moves
  4x fewer bytes, and :func:`normalize_batch` turns the collated batch into normalised float32 on
  the device (zeroing absent images, as the per-item path does). Use this when CPU cores are few.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torchvision.transforms import InterpolationMode, v2

from fusionkit.data.preprocessing import ImagePreprocessing
from fusionkit.errors import ConfigError

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}
_IMAGE_KEYS = ("derm", "clinical")


class AugmentConfig(BaseModel):
    """Training-time augmentations (none are applied at evaluation).

    Attributes:
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        rot90: rotate by a random multiple of 90 degrees (lossless; images are square).
        rotation_degrees: further random rotation in ``[-d, d]`` degrees (corners filled with 0);
            off by default because it is the costliest step (it resamples every pixel, where flips
            and rot90 only move them).
        brightness: colour-jitter brightness factor range ``[1 - b, 1 + b]``.
        contrast: colour-jitter contrast factor range.
        saturation: colour-jitter saturation factor range.
        hue: colour-jitter hue shift range ``[-h, h]`` (fraction of the colour circle).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    hflip: float = Field(0.5, ge=0.0, le=1.0)
    vflip: float = Field(0.5, ge=0.0, le=1.0)
    rot90: bool = True
    rotation_degrees: float = Field(0.0, ge=0.0, le=180.0)
    brightness: float = Field(0.1, ge=0.0, le=1.0)
    contrast: float = Field(0.1, ge=0.0, le=1.0)
    saturation: float = Field(0.1, ge=0.0, le=1.0)
    hue: float = Field(0.0, ge=0.0, le=0.5)


def backbone_preprocessing(model_name: str) -> ImagePreprocessing:
    """The preprocessing timm declares for ``model_name`` (its pretrained config; no download).

    This reads timm's registry by name; a built encoder declares its own
    (:attr:`fusionkit.components.TimmImageEncoder.preprocessing` reads the same config from its
    model), and that declaration, not a name, is what the trainer and evaluation use.

    Raises:
        ConfigError: timm knows no such model.
    """
    import timm
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is not None:
        config = resolve_data_config(pretrained_cfg=cfg.to_dict())
    elif timm.is_model(model_name):
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False)
        config = resolve_data_config(model=model)
    else:
        raise ConfigError(f"unknown backbone {model_name!r}; expected a timm model name (see timm.list_models())")
    return ImagePreprocessing.from_timm_config(config)


def _rgb(values: Sequence[float], what: str, model_name: str) -> tuple[float, float, float]:
    """A per-channel ``mean`` or ``std`` of an RGB backbone as three floats."""
    if len(values) != 3:
        raise ConfigError(f"backbone {model_name!r} has a {len(values)}-channel {what}; expected 3 (RGB)")
    return float(values[0]), float(values[1]), float(values[2])


class RandomRot90(torch.nn.Module):
    """Rotate a ``(..., H, W)`` tensor by a uniformly random multiple of 90 degrees."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return ``image`` rotated by 0, 90, 180 or 270 degrees."""
        k = int(torch.randint(4, ()).item())
        return torch.rot90(image, k, dims=(-2, -1)) if k else image


class ColorJitterUint8(torch.nn.Module):
    """Random brightness, contrast and saturation of a uint8 ``(3, H, W)`` image as one colour map.

    Factors are drawn as in ``torchvision.transforms.v2.ColorJitter`` (uniform in
    ``[max(0, 1 - x), 1 + x]``, the three operations in random order; hue is not included). Each
    operation is affine in RGB (brightness scales, contrast blends with the mean grey level,
    saturation blends with the per-pixel grey), so their composition is one ``3x3`` matrix plus an
    offset, applied in a single float pass instead of torchvision's three. Unlike
    torchvision, values are clamped to ``[0, 255]`` once at the end rather than after every step.
    """

    _GRAY = (0.2989, 0.587, 0.114)
    gray: torch.Tensor
    """Buffer: the RGB weights of the grey level."""

    def __init__(self, *, brightness: float, contrast: float, saturation: float) -> None:
        super().__init__()
        self.ranges = (brightness, contrast, saturation)
        self.register_buffer("gray", torch.tensor(self._GRAY), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return the jittered uint8 image."""
        order = torch.randperm(3).tolist()
        factors = [1.0, 1.0, 1.0]
        for op in order:
            spread = self.ranges[op]
            if spread > 0:
                factors[op] = float(torch.empty(()).uniform_(max(0.0, 1.0 - spread), 1.0 + spread))
        return self.jitter(image, order=order, factors=factors)

    def jitter(self, image: torch.Tensor, *, order: Sequence[int], factors: Sequence[float]) -> torch.Tensor:
        """Jitter with given parameters: ``order`` of brightness (0), contrast (1), saturation (2),
        and their ``factors`` (1 leaves a step out)."""
        orders = torch.tensor([list(order)], dtype=torch.int64)
        return colour_map(image[None], order=orders, factors=torch.tensor([list(factors)]), gray=self.gray)[0]


def colour_map(
    images: torch.Tensor, *, order: torch.Tensor, factors: torch.Tensor, gray: torch.Tensor | None = None
) -> torch.Tensor:
    """Brightness, contrast and saturation composed per image into one affine colour map.

    ``images`` is uint8 ``(B, 3, H, W)``; ``order`` ``(B, 3)`` lists each image's steps (brightness
    0, contrast 1, saturation 2) and ``factors`` ``(B, 3)`` their factors (1 is no change), both on
    the images' device. Contrast blends with the mean grey level of the image as it is at that
    step, saturation with each pixel's grey; the composed ``3x3`` matrix and offset are applied in
    one pass, clamped to ``[0, 255]`` once. The CPU transform (:class:`ColorJitterUint8`) and the
    batched device augmentation (:class:`fusionkit.data.DeviceAugment`) both call this.
    """
    device = images.device
    count = images.shape[0]
    pixels = images.reshape(count, 3, -1).float()
    means = pixels.mean(dim=2)
    gray = upload(ColorJitterUint8._GRAY, device) if gray is None else gray.to(device)
    eye = torch.eye(3, device=device)
    to_gray = torch.outer(torch.ones(3, device=device), gray)
    matrix = eye.expand(count, 3, 3)
    offset = torch.zeros(count, 3, device=device)
    for step in range(3):
        op = order[:, step]
        f = factors.gather(1, op[:, None]).squeeze(1)
        # brightness: f x; contrast: f x + (1 - f) grey(mean of the current image)
        grey = (torch.bmm(matrix, means[:, :, None]).squeeze(2) + offset) @ gray
        scaled_m = f[:, None, None] * matrix
        scaled_o = f[:, None] * offset + ((1.0 - f) * grey * (op == 1))[:, None]
        # saturation: f x + (1 - f) grey(x), per pixel
        blend = f[:, None, None] * eye + (1.0 - f)[:, None, None] * to_gray
        sat_m = torch.bmm(blend, matrix)
        sat_o = torch.bmm(blend, offset[:, :, None]).squeeze(2)
        is_sat = op == 2
        matrix = torch.where(is_sat[:, None, None], sat_m, scaled_m)
        offset = torch.where(is_sat[:, None], sat_o, scaled_o)
    out = torch.baddbmm(offset[:, :, None], matrix, pixels)
    return out.clamp_(0.0, 255.0).round_().to(torch.uint8).view(images.shape)


def normalization(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, float32 ``(3, 1, 1)``, with ``(x / 255 - mean) / std == x * scale + shift``.

    Every normalisation of uint8 images applies these with one ``torch.addcmul(shift, x, scale)``:
    :class:`Normalize` (an image), :meth:`ImageTransform.finish_batch` and
    :func:`normalize_batch` (a batch).
    """
    std_t = torch.tensor(std, dtype=torch.float32)
    scale = (1.0 / (255.0 * std_t)).view(3, 1, 1)
    shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(3, 1, 1)
    return scale, shift


class Normalize(torch.nn.Module):
    """uint8 ``(3, H, W)`` to float32 ``(x / 255 - mean) / std`` in one fused multiply-add."""

    scale: torch.Tensor
    """Buffer: ``1 / (255 std)`` per channel, shape ``(3, 1, 1)``."""
    shift: torch.Tensor
    """Buffer: ``-mean / std`` per channel, shape ``(3, 1, 1)``."""

    def __init__(self, *, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        scale, shift = normalization(mean, std)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise one uint8 image."""
        return torch.addcmul(self.shift, image.float(), self.scale)


class ImageTransform:
    """Resize (+ augment when training) (+ normalise) a uint8 ``(3, H, W)`` image.

    Built by :func:`build_transforms`; picklable, so DataLoader workers can use it.

    Attributes:
        preprocessing: the :class:`~fusionkit.data.ImagePreprocessing` it applies.
        image_size: output height and width (``preprocessing.input_size``).
        mean: the per-channel mean (0..1 scale) of ``preprocessing``.
        std: the per-channel std of ``preprocessing``.
        interpolation: resize interpolation name.
        train: whether augmentations are applied.
        augment: the augmentations (``None`` at evaluation).
        normalize: whether the output is normalised float32 (else uint8).
    """

    def __init__(
        self,
        *,
        preprocessing: ImagePreprocessing,
        train: bool,
        augment: AugmentConfig | None,
        normalize: bool,
    ) -> None:
        self.preprocessing = preprocessing
        self.image_size = image_size = preprocessing.input_size
        self.mean = preprocessing.mean
        self.std = preprocessing.std
        self.interpolation = preprocessing.interpolation
        self.train = train
        self.augment = augment if train else None
        self.normalize = normalize
        self._resize = v2.Resize(
            (image_size, image_size), interpolation=_INTERPOLATIONS[self.interpolation], antialias=True
        )
        steps: list[torch.nn.Module] = []
        if self.augment is not None:
            a = self.augment
            if a.hflip > 0:
                steps.append(v2.RandomHorizontalFlip(a.hflip))
            if a.vflip > 0:
                steps.append(v2.RandomVerticalFlip(a.vflip))
            if a.rot90:
                steps.append(RandomRot90())
            if a.rotation_degrees > 0:
                steps.append(v2.RandomRotation(a.rotation_degrees, interpolation=InterpolationMode.BILINEAR))
            if max(a.brightness, a.contrast, a.saturation) > 0:
                steps.append(ColorJitterUint8(brightness=a.brightness, contrast=a.contrast, saturation=a.saturation))
            if a.hue > 0:
                steps.append(v2.ColorJitter(hue=a.hue))
        self._augment = v2.Compose(steps) if steps else None
        self._normalize = Normalize(mean=self.mean, std=self.std) if normalize else None

    @property
    def out_dtype(self) -> torch.dtype:
        """dtype of the transformed image: float32 when normalising, else uint8."""
        return torch.float32 if self.normalize else torch.uint8

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Transform one uint8 ``(3, H, W)`` image into ``(3, image_size, image_size)``."""
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 (3, H, W) image, got {tuple(image.shape)} {image.dtype}")
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            image = self._resize(image)
        image = self.augment_one(image)
        return self._normalize(image) if self._normalize is not None else image

    def augment_one(self, image: torch.Tensor) -> torch.Tensor:
        """Apply only the (random) augmentations to one uint8 image at the output size."""
        return self._augment(image) if self._augment is not None else image

    def finish_batch(
        self, images: torch.Tensor, present: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalise an augmented uint8 ``(B, 3, S, S)`` batch (if this transform normalises).

        Absent images (``present`` False) come out as zeros, as :meth:`blank` gives per item.
        With ``normalize=False`` the uint8 batch is returned as it is.
        """
        if self._normalize is None:
            return images
        result = torch.addcmul(self._normalize.shift, images.float(), self._normalize.scale, out=out)
        if not bool(present.all()):
            result[~present] = 0.0
        return result

    def blank(self) -> torch.Tensor:
        """The zero image standing in for an absent one: ``(3, S, S)`` of :attr:`out_dtype`."""
        return torch.zeros(3, self.image_size, self.image_size, dtype=self.out_dtype)

    def normalize_batch(self, batch: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        """:func:`normalize_batch` with this transform's mean and std."""
        return normalize_batch(batch, mean=self.mean, std=self.std, **kwargs)

    def __repr__(self) -> str:
        return (
            f"ImageTransform(image_size={self.image_size}, interpolation={self.interpolation!r}, "
            f"train={self.train}, augment={self.augment!r}, normalize={self.normalize}, "
            f"mean={self.mean}, std={self.std})"
        )


def build_transforms(
    *,
    preprocessing: ImagePreprocessing | None = None,
    train: bool,
    augment: AugmentConfig | None = None,
    normalize: bool = True,
    model_name: str | None = None,
    image_size: int | None = None,
) -> ImageTransform:
    """The image transform for a model's declared ``preprocessing``.

    Pass the built model's :attr:`fusionkit.FusionModel.preprocessing`: its size, mean/std and
    interpolation are what the model's image encoders declared (e.g. ``tf_efficientnetv2_*``: mean
    = std = 0.5, bicubic). Images are resized to a square (no crop, so the whole lesion stays in view).

    Args:
        preprocessing: the :class:`~fusionkit.data.ImagePreprocessing` to apply.
        train: apply augmentations (``augment``, or ``AugmentConfig()`` when ``None``);
            evaluation transforms never augment.
        augment: the training augmentations.
        normalize: return normalised float32 (default) or uint8 for :func:`normalize_batch`.
        model_name: transitional, instead of ``preprocessing``: a timm model name whose registry
            config (:func:`backbone_preprocessing`) is used at ``image_size``. Only for callers that
            have no built model yet; it knows nothing of plugin encoders.
        image_size: the output size, with ``model_name`` only (``preprocessing`` carries its own).
    """
    if (preprocessing is None) == (model_name is None):
        raise ValueError("build_transforms needs exactly one of preprocessing= (the model's) or model_name=")
    if preprocessing is None:
        if image_size is None:
            raise ValueError("build_transforms(model_name=...) needs image_size")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        preprocessing = backbone_preprocessing(str(model_name)).with_size(image_size)
    elif image_size is not None:
        raise ValueError("image_size goes with model_name only; the preprocessing carries its input_size")
    return ImageTransform(
        preprocessing=preprocessing,
        train=train,
        augment=(augment or AugmentConfig()) if train else None,
        normalize=normalize,
    )


def upload(values: torch.Tensor | Sequence[float], device: torch.device | str) -> torch.Tensor:
    """A small CPU tensor (or list of floats) on ``device`` without a host synchronisation.

    ``torch.tensor(..., device="cuda")`` and a plain ``.to("cuda")`` from pageable memory wait for
    the GPU to finish its queued work; going through pinned memory with ``non_blocking`` does not,
    so per-batch constants never stall a training loop that runs ahead of the GPU.
    """
    tensor = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.float32)
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def normalize_batch(
    batch: Mapping[str, Any],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    non_blocking: bool = True,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Move a collated batch to ``device`` and normalise its uint8 images there.

    ``derm`` and ``clinical`` of dtype uint8 ``(B, 3, H, W)`` become float32
    ``(x / 255 - mean) / std``, with absent images (``present[key]`` False) set to zero exactly
    as the per-item float path does. Float images are assumed normalised already and only moved.
    Other tensors (``meta``, ``label``, ``present``) are moved; ``lesion_id`` is passed through.
    """

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and device is not None:
            return x.to(device, non_blocking=non_blocking)
        if isinstance(x, Mapping):
            return {k: move(v) for k, v in x.items()}
        return x

    out = {k: move(v) for k, v in batch.items() if k not in _IMAGE_KEYS}
    for key in _IMAGE_KEYS:
        if key not in batch:
            continue
        x = move(batch[key])
        if x.dtype == torch.uint8:
            scale, shift = (upload(t, x.device) for t in normalization(mean, std))
            x = torch.addcmul(shift, x.float(), scale)
            present = out.get("present", {}).get(key)
            if present is not None:
                x = x * present.to(x.device).view(-1, 1, 1, 1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out[key] = x
    return out
