"""The vision tower of an open_clip model as an image encoder (M_I of eq 1, per image).

Dermatology foundation models such as DermLIP and MONET are CLIP models trained with open_clip;
only their image tower is needed here, so only it is built (the text tower, often as large, never
is). The architecture comes from open_clip's model-config registry (``open_clip.list_models()``,
extendable with ``open_clip.add_model_config``) or from an ``hf-hub:`` repository's
``open_clip_config.json``; the weights from an open_clip pretrained tag, the repository, or a
local file; the preprocessing (size, mean, std, interpolation) from the same place open_clip takes
it, and it travels with the model (:attr:`fusionkit.FusionModel.preprocessing`).

Needs the ``clip`` extra (``pip install 'jiadf-fusion[clip]'``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionkit.components.catalog import OpenClipImageEncoderSpec  # noqa: F401 - spec re-exported
from fusionkit.components.contract import ImageEncoder
from fusionkit.components.image_encoders import _repo_unreachable
from fusionkit.components.weights import check_fit, read_state_dict
from fusionkit.data.preprocessing import INTERPOLATIONS, ImagePreprocessing
from fusionkit.errors import ConfigError, PretrainedWeightsError, require_extra

HF_HUB_PREFIX = "hf-hub:"
"""The model-name prefix of an open_clip model hosted on the Hugging Face hub."""

_HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip() -> Any:
    return require_extra("open-clip-torch", what="the open_clip image encoder", module="open_clip")


class OpenClipImageEncoder(ImageEncoder):
    """An open_clip vision tower mapping (B, 3, H, W) images to pooled features (B, out_dim).

    ``features="pooled"`` returns what ``CLIP.encode_image`` returns (the tower's output, projected
    into the joint image-text space, not normalised); ``"pre_projection"`` returns the pooled token
    before that projection (ViT towers; width = the tower's width).

    Weights (never a silent random initialisation when weights were asked for):

    - ``weights_file``: a local ``.safetensors``/``.pth`` checkpoint of the whole CLIP model (its
      ``visual.`` keys are taken, the text tower's dropped) or of the vision tower alone; a leading
      ``module.`` (DataParallel) is stripped. Keys that do not fit are one line naming the file.
    - else ``pretrained``: an open_clip tag of ``model_name`` (downloaded, or read from the hub
      cache), or ``True`` for an ``hf-hub:`` repository's own weights.
    - ``load_weights=False`` builds the architecture and its preprocessing without any weights
      (a saved model is rebuilt so, before its trained weights are loaded).

    A tag trained with QuickGELU (OpenAI's CLIP weights) builds the tower with QuickGELU even under
    a plain architecture name (``ViT-B-16`` + ``openai``), so the weights run as they were trained.

    Preprocessing: open_clip's defaults, overlaid with the tag's (or the hub repository's
    ``preprocess_cfg``), at the tower's ``image_size`` (``image_size`` overrides the config's; the
    position embedding of loaded weights is resized to it with open_clip's ``resize_pos_embed``).
    """

    def __init__(
        self,
        *,
        model_name: str,
        pretrained: bool | str = False,
        weights_file: Path | None = None,
        features: str = "pooled",
        image_size: int | None = None,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        open_clip = _open_clip()
        if features not in ("pooled", "pre_projection"):
            raise ConfigError(f"open_clip features must be pooled or pre_projection, got {features!r}")
        self.model_name = model_name
        self.features = features
        self._pre_width: int | None = None
        model_cfg, overlay = self._config(open_clip, model_name, pretrained)
        source: Path | None = None  # found (or downloaded) before the tower is built: fail fast
        if load_weights and weights_file is not None:
            source = Path(weights_file)
        elif load_weights and pretrained:
            source = self._download(open_clip, model_name, pretrained)
        vision_cfg = dict(model_cfg["vision_cfg"])
        if image_size is not None:
            vision_cfg["image_size"] = image_size
        if "timm_model_name" in vision_cfg:
            vision_cfg["timm_model_pretrained"] = False  # CLIP weights replace the trunk's ImageNet ones
        from open_clip.model import _build_vision_tower  # what CLIP.__init__ builds its image tower with

        # a tag trained with QuickGELU (OpenAI's) gets it even under a plain config name, where
        # open_clip's create_model only warns of the mismatch
        quick_gelu = bool(model_cfg.get("quick_gelu", False) or overlay.get("quick_gelu", False))
        self.visual: nn.Module = _build_vision_tower(model_cfg["embed_dim"], vision_cfg, quick_gelu=quick_gelu)
        if source is not None:
            self._load(open_clip, source, read_state_dict(source))
        if features == "pre_projection":
            self._drop_projection()
        self.out_dim = self._width()
        self._preprocessing = self._declared_preprocessing(open_clip, overlay)

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """The tower's preprocessing as open_clip configures it (size, mean, std, interpolation)."""
        return self._preprocessing

    # -- configuration -------------------------------------------------------------------------
    @staticmethod
    def _config(open_clip: Any, model_name: str, pretrained: bool | str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model config and the preprocessing overlay (the tag's or the hub repository's)."""
        if model_name.startswith(HF_HUB_PREFIX):
            repo = model_name.removeprefix(HF_HUB_PREFIX)
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            unreachable = None if offline else _repo_unreachable(repo, ("open_clip_config.json",))
            if unreachable:
                raise PretrainedWeightsError(f"cannot load the config of {model_name!r}: {unreachable}")
            try:
                path = open_clip.pretrained.download_pretrained_from_hf(repo, filename="open_clip_config.json")
                config = json.loads(Path(path).read_text(encoding="utf-8"))
            except Exception as exc:  # noqa: BLE001 - offline, no such repo, not an open_clip repo
                raise PretrainedWeightsError(_cannot(model_name, "config", exc)) from exc
            model_cfg = config.get("model_cfg", config)
            if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg:
                raise PretrainedWeightsError(f"{model_name}: open_clip_config.json has no model_cfg with a vision_cfg")
            return model_cfg, dict(config.get("preprocess_cfg") or {})
        name = model_name.replace("/", "-")
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise ConfigError(f"open_clip has no model {model_name!r}")
        overlay = open_clip.get_pretrained_cfg(name, pretrained) if isinstance(pretrained, str) else {}
        return model_cfg, dict(overlay or {})

    @staticmethod
    def _download(open_clip: Any, model_name: str, pretrained: bool | str) -> Path:
        """The local path of the pretrained weights (downloaded unless cached); one line if it cannot be had."""
        hub = model_name.startswith(HF_HUB_PREFIX)
        if hub:
            repo = model_name.removeprefix(HF_HUB_PREFIX)
        else:
            cfg = open_clip.get_pretrained_cfg(model_name.replace("/", "-"), pretrained)
            repo = (cfg.get("hf_hub") or "").strip("/") if cfg else ""
        unreachable = (
            _repo_unreachable(repo, _HUB_WEIGHTS) if repo and os.environ.get("HF_HUB_OFFLINE") != "1" else None
        )
        if unreachable:
            raise PretrainedWeightsError(
                f"cannot load pretrained weights for {model_name!r}: {unreachable}; "
                "set pretrained: false or give weights_file"
            )
        try:
            if hub:
                found = open_clip.pretrained.download_pretrained_from_hf(repo)
            else:
                found = open_clip.pretrained.download_pretrained(cfg)
        except Exception as exc:  # noqa: BLE001 - download/offline/hub errors all mean "cannot have it"
            raise PretrainedWeightsError(_cannot(model_name, "pretrained weights", exc)) from exc
        if not found:
            raise PretrainedWeightsError(f"open_clip found no weights for {model_name!r} tag {pretrained!r}")
        return Path(found)

    def _declared_preprocessing(self, open_clip: Any, overlay: dict[str, Any]) -> ImagePreprocessing:
        cfg = open_clip.transform.merge_preprocess_dict(open_clip.transform.PreprocessCfg(), overlay)
        size = getattr(self.visual, "image_size", None) or cfg["size"]
        size = max(size) if isinstance(size, list | tuple) else size
        interpolation = str(cfg.get("interpolation") or "bicubic")
        return ImagePreprocessing(
            input_size=int(size),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
        )

    # -- weights -------------------------------------------------------------------------------
    def _load(self, open_clip: Any, path: Path, state: dict[str, torch.Tensor]) -> None:
        """Load a whole-CLIP or vision-tower state dict into the tower, strictly."""
        if state and all(key.startswith("module.") for key in state):
            state = {key.removeprefix("module."): value for key, value in state.items()}
        if any(key.startswith("visual.") for key in state):
            state = {key.removeprefix("visual."): value for key, value in state.items() if key.startswith("visual.")}
        target = type(self.visual).__name__
        check_fit(path, state, self.visual.state_dict(), target=f"the open_clip {target} of {self.model_name!r}")
        whole = {f"visual.{key}": value for key, value in state.items()}
        open_clip.model.resize_pos_embed(whole, self)  # reads self.visual.grid_size; a no-op at the same size
        state = {key.removeprefix("visual."): value for key, value in whole.items()}
        try:
            self.visual.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise PretrainedWeightsError(f"{path}: weights do not fit: {exc}".replace("\n", " ")) from exc

    def _drop_projection(self) -> None:
        proj = getattr(self.visual, "proj", None)
        if not isinstance(proj, nn.Parameter):
            raise ConfigError(
                f"open_clip features: pre_projection needs a ViT tower with a projection; "
                f"{self.model_name!r} has a {type(self.visual).__name__} (use features: pooled)"
            )
        self._pre_width = int(proj.shape[0])
        setattr(self.visual, "proj", None)  # noqa: B010 - open_clip checks `proj is not None`

    def _width(self) -> int:
        """The feature width: the projection's output or input width, else measured by a forward."""
        proj = getattr(self.visual, "proj", None)
        if self.features == "pre_projection" and isinstance(self._pre_width, int):
            return self._pre_width
        if isinstance(proj, nn.Parameter) and proj.ndim == 2:
            return int(proj.shape[1])
        size = getattr(self.visual, "image_size", 224)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        was_training = self.visual.training
        self.visual.eval()
        with torch.no_grad():
            out = int(self.visual(torch.zeros(1, 3, height, width)).shape[-1])
        self.visual.train(was_training)
        return out

    gradcam_prefix_tokens: int = 1
    """Leading non-patch tokens in the output of :meth:`gradcam_layer` (the class token)."""

    def backbone_layers(self) -> list[list[str]]:
        """The tower's parameters by layer from the input: the patch embedding, class token,
        position embedding and ``ln_pre`` first, then one group per residual block, with the final
        norm and the projection in the last; a timm trunk (``visual.trunk``) in timm's
        ``group_matcher(coarse=True)`` groups, its head with the last; any other tower one layer."""
        names = [name for name, _ in self.named_parameters()]
        blocks = _resblocks(self.visual)
        trunk = getattr(self.visual, "trunk", None)
        if blocks is not None:
            depth = len(blocks)
            stem = ("visual.conv1.", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.")
            layers: list[list[str]] = [[] for _ in range(depth + 1)]
            for name in names:
                match = _BLOCK.match(name)
                index = int(match.group(1)) + 1 if match else (0 if name.startswith(stem) else depth)
                layers[index].append(name)
            return [group for group in layers if group]
        if trunk is not None and callable(getattr(trunk, "group_matcher", None)):
            from timm.models import group_parameters

            groups = group_parameters(trunk, trunk.group_matcher(coarse=True))
            layers = [[f"visual.trunk.{name}" for name in groups[k]] for k in sorted(groups)]
            grouped = {name for group in layers for name in group}
            layers[-1] += [name for name in names if name not in grouped]  # the head: with the last layer
            return layers
        return [names]

    def gradcam_layer(self) -> nn.Module:
        """The last residual block's input norm: its (B, N, C) tokens, after which the patch tokens
        still reach the class token (at the tower's output only the class token has a gradient)."""
        blocks = _resblocks(self.visual)
        norm = getattr(blocks[-1], "ln_1", None) if blocks is not None and len(blocks) else None
        if not isinstance(norm, nn.Module):
            raise NotImplementedError(
                f"Grad-CAM supports open_clip ViT towers; {self.model_name!r} has a {type(self.visual).__name__}"
            )
        if getattr(self.visual.transformer, "batch_first", True) is not True:
            raise NotImplementedError(
                "Grad-CAM needs a batch-first open_clip transformer (open-clip-torch 2.24 or later)"
            )
        return norm

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """open_clip's own gradient checkpointing of the tower's blocks (ViT and timm towers).

        Raises:
            NotImplementedError: the tower cannot (open_clip's ModifiedResNet ignores the request).
        """
        if _resblocks(self.visual) is None and getattr(self.visual, "trunk", None) is None:
            raise NotImplementedError(f"open_clip's {type(self.visual).__name__} has no gradient checkpointing")
        visual: Any = self.visual  # an open_clip tower: set_grad_checkpointing is its API
        visual.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, out_dim) of an image batch (B, 3, H, W): ``encode_image`` or the pre-projection token.

        Raises:
            ConfigError: the images are not the size the tower is built for (a ViT's grid is fixed).
        """
        size = self._preprocessing.input_size
        if images.shape[-2:] != (size, size) and hasattr(self.visual, "grid_size"):
            raise ConfigError(
                f"the open_clip tower {self.model_name!r} is built for {size}x{size} images, got "
                f"{images.shape[-2]}x{images.shape[-1]}: set the model's image_size: {size}, "
                f"or the encoder's image_size to {images.shape[-1]}"
            )
        return self.visual(images)


_BLOCK = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.")


def _resblocks(visual: nn.Module) -> nn.ModuleList | None:
    """The residual blocks of an open_clip ViT tower, or None for another tower."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    return blocks if isinstance(blocks, nn.ModuleList) else None


def _cannot(model_name: str, what: str, exc: Exception) -> str:
    hint = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    reason = " ".join(str(exc).split()).rstrip(".")
    return (
        f"cannot load the {what} of {model_name!r}{hint}: {type(exc).__name__}: {reason}; "
        "set pretrained: false or give weights_file"
    )
