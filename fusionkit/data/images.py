"""Find, decode and resize the JPEG images of a MILK10k split."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from fusionkit.errors import DataError

#: File suffixes accepted as images (compared case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg")

#: Interpolation used whenever fusionkit resizes a decoded image to the training size (uint8).
RESIZE_INTERPOLATION = InterpolationMode.BICUBIC

_SKIPPED_DIRS = ("__MACOSX",)

UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What Pillow raises for a file it cannot read: missing, corrupt, truncated, too large."""


@dataclass(frozen=True)
class ImageSource:
    """One image file and where the metadata CSV lists it (for error messages).

    Attributes:
        isic_id: the image id (file stem), e.g. ``ISIC_8149219``.
        lesion_id: the lesion the image belongs to.
        path: the JPEG file.
        metadata_csv: the metadata CSV that lists the image.
        line: the 1-based line of that CSV (the header is line 1).
    """

    isic_id: str
    lesion_id: str
    path: Path
    metadata_csv: Path
    line: int


def scan_images(image_dir: str | Path) -> dict[str, Path]:
    """Map every ``<isic_id>.jpg`` found recursively under ``image_dir`` to its path.

    Hidden files and folders (names starting with ``.``), ``__MACOSX`` folders and files that are not
    JPEGs (a licence text, say) are ignored. The doubled folder of the official zip
    (``MILK10k_Training_Input/MILK10k_Training_Input/...``) is found like any other nesting.

    Raises:
        DataError: the same image id occurs in two places (the message names both files).
    """
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(image_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIPPED_DIRS)
        for name in sorted(filenames):
            stem, suffix = os.path.splitext(name)
            if name.startswith(".") or suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(dirpath, name)
            if stem in found:
                raise DataError(
                    f"image {stem} found twice (also at {found[stem]}); expected each image id once "
                    "under the input folder (remove the duplicate copy)",
                    path=path,
                )
            found[stem] = path
    return found


def missing_image_error(source: ImageSource) -> DataError:
    """The error for an image the metadata lists but whose file is not there."""
    return DataError(
        f"image file missing (listed on line {source.line} of {source.metadata_csv.name}); expected the JPEG to exist",
        path=source.path,
        lesion_id=source.lesion_id,
    )


def _rgb8(image: Image.Image) -> np.ndarray:
    """An (H, W, 3) uint8 array of ``image``. 16-bit greyscale keeps its high byte: PIL's own
    ``convert("RGB")`` clips every value above 255, turning a 16-bit image all white. Other modes
    with more than 8 bits per sample (32-bit integer, float) have no agreed scale and are refused."""
    if image.mode.startswith("I;16"):
        high = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(high[:, :, None], 3, axis=2)
    if image.mode in ("I", "F"):
        raise ValueError(f"{image.mode!r} images (32 bits per sample) are not supported")
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def _check_pixels(image: Image.Image) -> None:
    """Refuse an image larger than Pillow's ``Image.MAX_IMAGE_PIXELS`` from its header, before any
    pixel is decoded (Pillow itself only warns below twice that limit: a 12000x12000 header, 144
    million pixels, would allocate 432 MB; MILK10k's images are 600x450)."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        raise Image.DecompressionBombError(
            f"{width}x{height} = {width * height:,} pixels, over the limit of {limit:,} (PIL.Image.MAX_IMAGE_PIXELS); "
            "a decompression bomb or a wrong header, refused before decoding"
        )


def decode_image(source: ImageSource) -> torch.Tensor:
    """Decode one JPEG into a uint8 RGB tensor of shape ``(3, H, W)`` (channels-last strided).

    An image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (by its header) is refused before
    its pixels are decoded.

    Raises:
        DataError: the file is missing, corrupt, truncated or too large; the message names the file,
            the lesion and the metadata line that lists it.
    """
    try:
        with Image.open(source.path) as image:
            _check_pixels(image)
            image.load()
            array = _rgb8(image)
    except FileNotFoundError as error:
        raise missing_image_error(source) from error
    except UNREADABLE as error:
        raise DataError(
            f"cannot decode image {source.isic_id} ({error}) (listed on line {source.line} of "
            f"{source.metadata_csv.name}); expected a complete, readable RGB JPEG",
            path=source.path,
            lesion_id=source.lesion_id,
        ) from error
    return torch.from_numpy(array).permute(2, 0, 1)


def resize_image(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize a uint8 ``(3, H, W)`` image to ``(3, image_size, image_size)`` (bicubic, antialiased).

    Returns the input unchanged when it already has that size; the cache stores exactly this output.
    """
    return F.resize(image, [image_size, image_size], interpolation=RESIZE_INTERPOLATION, antialias=True)


def load_image(source: ImageSource, image_size: int | None) -> torch.Tensor:
    """Decode ``source`` and resize it to ``image_size`` (``None`` keeps the file's size)."""
    image = decode_image(source)
    return image if image_size is None else resize_image(image, image_size)


def image_hw(path: Path) -> tuple[int, int]:
    """Height and width of an image file, read from its header only (raises one of :data:`UNREADABLE`)."""
    with Image.open(path) as image:
        width, height = image.size
    return height, width
