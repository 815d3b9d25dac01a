"""A CPU-sized open_clip architecture, registered through open_clip's own model-config registry.

``register()`` writes the config once per process and adds it with ``open_clip.add_model_config``,
exactly as a user adds an architecture of their own; the tower builds and runs in milliseconds.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

TINY_OPEN_CLIP = "fk-tiny-vit"
"""The name the tiny architecture is registered under."""

TINY_OPEN_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
"""A 2-block ViT at 32 px (a 4 x 4 grid of 8 px patches), 16-wide embedding, and a token text tower."""


def write_config(folder: Path, name: str = TINY_OPEN_CLIP, config: dict[str, Any] | None = None) -> Path:
    """Write ``config`` (the tiny one by default) as ``folder/name.json``, open_clip's config format."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config or TINY_OPEN_CLIP_CONFIG))
    return path


def register() -> str:
    """Register the tiny architecture with open_clip (once per process); returns its name."""
    import open_clip

    if TINY_OPEN_CLIP not in open_clip.list_models():
        open_clip.add_model_config(write_config(Path(tempfile.mkdtemp(prefix="fk-open-clip-"))))
    return TINY_OPEN_CLIP
