"""Dermatology artefacts drawn on a uint8 image at severities 1-5 (after MedMNIST-C's dermoscopy set).

Black vignette corners (the round field of a contact dermoscope), hair lines, surgical-marker ink
and a ruler with text: none of torchvision, kornia or albumentations draws these, so they are
drawn here with Pillow (a dependency already). Each takes ``(image, severity, rng)`` like
:mod:`fusionkit.evaluate.robustness.images` and returns a uint8 image of the same shape, layout and
type. Sizes are relative to the image's short side, so any resolution gets the same look. The
random draws for the ``i``-th hair or ink mark come before those of the ``i+1``-th, so for one
generator state a higher severity adds marks to the lower severity's marks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fusionkit.evaluate.robustness.images import as_chw, check_severity

__all__ = ["hair", "ink_marks", "ruler_text", "vignette"]

#: Severity -> radius of the visible disc, in half short-sides (1.414 would touch the corners).
VIGNETTE_RADIUS = (1.35, 1.25, 1.15, 1.05, 0.95)
#: Severity -> number of hair lines.
HAIR_COUNT = (2, 5, 10, 16, 25)
#: Severity -> number of ink marks.
INK_COUNT = (1, 2, 3, 5, 8)
#: Severity -> ruler width as a fraction of the short side, and number of text labels.
RULER_WIDTH = (0.05, 0.07, 0.09, 0.11, 0.14)
TEXT_COUNT = (0, 1, 2, 3, 4)

_INK_COLOURS = ((94, 53, 177), (63, 81, 181), (46, 125, 50), (33, 33, 33))  # violet, blue, green, black


def _to_pil(image: Any) -> tuple[Image.Image, Any]:
    chw, back = as_chw(image)
    return Image.fromarray(chw.permute(1, 2, 0).numpy()), back


def _from_pil(picture: Image.Image, back: Any) -> Any:
    return back(torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1))


def vignette(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """Black corners outside a centred disc of radius :data:`VIGNETTE_RADIUS` half short-sides.

    Deterministic; the blackened area grows with the severity."""
    del rng
    radius = VIGNETTE_RADIUS[check_severity(severity) - 1]
    chw, back = as_chw(image)
    _, h, w = chw.shape
    yy, xx = np.mgrid[0:h, 0:w]
    half = min(h, w) / 2.0
    distance = np.hypot((yy + 0.5 - h / 2.0) / half, (xx + 0.5 - w / 2.0) / half)
    out = chw.clone()
    out[:, torch.from_numpy(distance > radius)] = 0
    return back(out)


def hair(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """:data:`HAIR_COUNT` dark curved hairs (quadratic Bezier curves, 1-3 px on a 224-px image)."""
    count = HAIR_COUNT[check_severity(severity) - 1]
    picture, back = _to_pil(image)
    w, h = picture.size
    short = min(w, h)
    draw = ImageDraw.Draw(picture)
    t = np.linspace(0.0, 1.0, 24)[:, None]
    for _ in range(count):
        points = rng.uniform(0.0, 1.0, size=(3, 2)) * (w, h)
        width = max(1, round(rng.uniform(1.0, 3.0) * short / 224.0))
        shade = int(rng.integers(10, 60))
        curve = (1 - t) ** 2 * points[0] + 2 * (1 - t) * t * points[1] + t**2 * points[2]
        draw.line([tuple(p) for p in curve.tolist()], fill=(shade, shade // 2 + 5, 5), width=width, joint="curve")
    return _from_pil(picture, back)


def ink_marks(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """:data:`INK_COUNT` translucent surgical-marker marks (dots and short strokes) in violet, blue,
    green or black, each covering a few percent of the image."""
    count = INK_COUNT[check_severity(severity) - 1]
    picture, back = _to_pil(image)
    w, h = picture.size
    short = min(w, h)
    overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(count):
        colour = _INK_COLOURS[int(rng.integers(len(_INK_COLOURS)))]
        alpha = int(rng.integers(150, 220))
        x, y = rng.uniform(0.0, 1.0, size=2) * (w, h)
        size = rng.uniform(0.04, 0.1) * short
        if rng.random() < 0.5:
            draw.ellipse([x - size, y - size, x + size, y + size], fill=(*colour, alpha))
        else:
            angle = rng.uniform(0.0, np.pi)
            dx, dy = 2.5 * size * np.cos(angle), 2.5 * size * np.sin(angle)
            draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=(*colour, alpha), width=max(1, round(size * 0.6)))
    picture = Image.alpha_composite(picture.convert("RGBA"), overlay)
    return _from_pil(picture, back)


def ruler_text(image: Any, severity: int, rng: np.random.Generator) -> Any:
    """A white ruler with millimetre ticks along a random edge (width :data:`RULER_WIDTH`) and
    :data:`TEXT_COUNT` black-on-white labels (dates, ids, "1 cm") at random places."""
    s = check_severity(severity) - 1
    picture, back = _to_pil(image)
    w, h = picture.size
    short = min(w, h)
    draw = ImageDraw.Draw(picture)
    band = max(2, round(RULER_WIDTH[s] * short))
    edge = int(rng.integers(4))  # 0 top, 1 bottom, 2 left, 3 right
    horizontal = edge < 2
    box = {0: (0, 0, w, band), 1: (0, h - band, w, h), 2: (0, 0, band, h), 3: (w - band, 0, w, h)}[edge]
    draw.rectangle(box, fill=(235, 235, 225))
    step = max(2, round(short / 40))
    length = w if horizontal else h
    for i, pos in enumerate(range(0, length, step)):
        tick = band * (0.8 if i % 10 == 0 else 0.5 if i % 5 == 0 else 0.3)
        if edge == 0:
            draw.line([(pos, 0), (pos, tick)], fill=(20, 20, 20))
        elif edge == 1:
            draw.line([(pos, h - 1), (pos, h - 1 - tick)], fill=(20, 20, 20))
        elif edge == 2:
            draw.line([(0, pos), (tick, pos)], fill=(20, 20, 20))
        else:
            draw.line([(w - 1, pos), (w - 1 - tick, pos)], fill=(20, 20, 20))
    font = ImageFont.load_default(size=max(6, round(short / 14)))
    for _ in range(TEXT_COUNT[s]):
        text = str(rng.choice(["1 cm", "L", "R", "#", "ID"])) + f" {int(rng.integers(10, 99))}"
        x, y = rng.uniform(0.0, 0.75, size=2) * (w, h)
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(250, 250, 250))
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return _from_pil(picture, back)
