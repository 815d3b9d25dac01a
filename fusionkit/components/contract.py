"""The image-encoder contract that built models rely on (torch side; the spec bases in
:mod:`fusionkit.components.base` stay free of torch so that specs, presets and the command line's
help load without it)."""

from __future__ import annotations

from torch import nn

from fusionkit.data.preprocessing import ImagePreprocessing
from fusionkit.errors import ConfigError


class ImageEncoder(nn.Module):
    """The image-encoder contract (M_I of eq 1, per image): ``forward((B, 3, H, W)) -> (B, out_dim)``.

    A subclass sets ``out_dim`` and overrides :attr:`preprocessing` with the input it was trained
    for (size, mean, std, interpolation), as a timm model carries its ``pretrained_cfg``. Encoders
    need not subclass it, but every image encoder a model is built with must have both attributes
    (:func:`declared_preprocessing` checks it with a one-line error naming the encoder).
    """

    out_dim: int
    """Width of the pooled features ``forward`` returns."""

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """The preprocessing this encoder's input needs; every image encoder must declare it."""
        raise NotImplementedError(f"{type(self).__name__} declares no preprocessing")


def declared_preprocessing(encoder: nn.Module, *, name: str) -> ImagePreprocessing:
    """The :class:`~fusionkit.data.ImagePreprocessing` that ``encoder`` declares.

    ``name`` says which encoder it is in the error (e.g. ``"image encoder 'timm'"``).

    Raises:
        ConfigError: the encoder has no ``preprocessing`` or it is not an ``ImagePreprocessing``.
    """
    where = f"{name} ({type(encoder).__module__}.{type(encoder).__qualname__})"
    try:
        value = encoder.preprocessing
    except (AttributeError, NotImplementedError):
        value = None
    if value is None:
        raise ConfigError(
            f"{where} declares no preprocessing: give it a `preprocessing` property returning "
            "fusionkit.data.ImagePreprocessing(input_size=..., mean=..., std=..., interpolation=...)"
        )
    if not isinstance(value, ImagePreprocessing):
        raise ConfigError(
            f"{where}: preprocessing must be a fusionkit.data.ImagePreprocessing, got {type(value).__name__}"
        )
    return value
