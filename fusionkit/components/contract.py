"""The image-encoder contract that built models and their callers rely on (torch side; the spec bases
in :mod:`fusionkit.components.base` stay free of torch so that specs, presets and the command line's
help load without it).

Callers never probe an encoder's insides: the optimizer's parameter groups, the freeze schedule,
Grad-CAM and gradient checkpointing ask through the functions below, which call the
:class:`ImageEncoder` methods and fall back to the documented defaults for an encoder that does not
subclass it.
"""

from __future__ import annotations

from torch import nn

from fusionkit.data.preprocessing import ImagePreprocessing
from fusionkit.errors import ConfigError


class ImageEncoder(nn.Module):
    """The image-encoder contract (M_I of eq 1, per image): ``forward((B, 3, H, W)) -> (B, out_dim)``.

    Required of every image encoder:

    - ``out_dim``: the width of the pooled features ``forward`` returns.
    - :attr:`preprocessing`: the input it was trained for (size, mean, std, interpolation), as a timm
      model carries its ``pretrained_cfg`` (:func:`declared_preprocessing` checks it).

    Optional, with defaults that work for any module:

    - :meth:`backbone_layers`: which parameters are the (pretrained) backbone, in layer groups from
      the input to the output (timm's ``group_matcher`` idea). Default: every parameter, one layer.
      Used by ``train.backbone_lr``, ``train.layer_decay`` and the backbone freeze.
    - :meth:`gradcam_layer`: the module whose (B, C, h, w) output Grad-CAM weighs. No default.
    - :meth:`set_grad_checkpointing`: recompute activations in the backward pass
      (``train.grad_checkpointing``). No default.

    Encoders need not subclass it; one that does not gets the defaults (and Grad-CAM and gradient
    checkpointing refuse it with one line naming it).
    """

    out_dim: int
    """Width of the pooled features ``forward`` returns."""

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """The preprocessing this encoder's input needs; every image encoder must declare it."""
        raise NotImplementedError(f"{type(self).__name__} declares no preprocessing")

    def backbone_layers(self) -> list[list[str]]:
        """The backbone's parameter names (as ``named_parameters()`` gives them), grouped by layer
        from the input (index 0: stem, embeddings) to the output (the last group).

        Parameters in no group are not backbone: they train at ``train.lr`` like the fusion and the
        heads, and are never frozen (a freshly initialised projection, say). Default: every parameter
        of the encoder, as one layer.
        """
        return [[name for name, _ in self.named_parameters()]]

    def gradcam_layer(self) -> nn.Module:
        """The submodule whose output, a (B, C, h, w) feature map, Grad-CAM weighs by its gradient.

        Raises:
            NotImplementedError: the encoder names none (the default).
        """
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's activations in the backward pass instead of keeping them
        (less memory, one more forward per step); outputs and gradients stay the same.

        Raises:
            NotImplementedError: the encoder cannot (the default).
        """
        raise NotImplementedError


def _where(encoder: nn.Module, name: str) -> str:
    return f"{name} ({type(encoder).__module__}.{type(encoder).__qualname__})"


def declared_preprocessing(encoder: nn.Module, *, name: str) -> ImagePreprocessing:
    """The :class:`~fusionkit.data.ImagePreprocessing` that ``encoder`` declares.

    ``name`` says which encoder it is in the error (e.g. ``"image encoder 'timm'"``).

    Raises:
        ConfigError: the encoder has no ``preprocessing`` or it is not an ``ImagePreprocessing``.
    """
    where = _where(encoder, name)
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


def backbone_layers(encoder: nn.Module, *, name: str) -> list[list[str]]:
    """``encoder``'s backbone parameter names by layer (:meth:`ImageEncoder.backbone_layers`; for an
    encoder that does not subclass :class:`ImageEncoder`, every parameter as one layer).

    Raises:
        ConfigError: a group names a parameter the encoder does not have, or names one twice.
    """
    if not isinstance(encoder, ImageEncoder):
        return ImageEncoder.backbone_layers(encoder)  # type: ignore[arg-type]  # the default needs only nn.Module
    layers = [list(group) for group in encoder.backbone_layers()]
    names = [n for group in layers for n in group]
    unknown = sorted(set(names) - {n for n, _ in encoder.named_parameters()})
    if unknown or len(set(names)) != len(names):
        what = f"unknown parameters {unknown[:3]}" if unknown else "a parameter twice"
        raise ConfigError(f"{_where(encoder, name)}: backbone_layers() names {what}")
    return [group for group in layers if group]


def gradcam_layer(encoder: nn.Module, *, name: str) -> nn.Module:
    """The submodule Grad-CAM hooks in ``encoder`` (:meth:`ImageEncoder.gradcam_layer`).

    Raises:
        ConfigError: the encoder names none.
    """
    layer = None
    if isinstance(encoder, ImageEncoder):
        try:
            layer = encoder.gradcam_layer()
        except NotImplementedError:
            layer = None
    if not isinstance(layer, nn.Module):
        raise ConfigError(
            f"{_where(encoder, name)} names no Grad-CAM layer: subclass fusionkit.components.contract.ImageEncoder "
            "and return the submodule whose output is the (B, C, h, w) feature map from gradcam_layer()"
        )
    return layer


def set_grad_checkpointing(encoder: nn.Module, *, name: str, enable: bool = True) -> None:
    """Turn gradient checkpointing on (or off) in ``encoder`` (:meth:`ImageEncoder.set_grad_checkpointing`).

    Raises:
        ConfigError: the encoder cannot checkpoint.
    """
    try:
        if not isinstance(encoder, ImageEncoder):
            raise NotImplementedError
        encoder.set_grad_checkpointing(enable)
    except NotImplementedError:
        raise ConfigError(
            f"{_where(encoder, name)} has no gradient checkpointing (train.grad_checkpointing): subclass "
            "fusionkit.components.contract.ImageEncoder and implement set_grad_checkpointing()"
        ) from None
