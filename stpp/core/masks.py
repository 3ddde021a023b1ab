"""Mask and image files (class-index PNGs in, palette PNGs out, always written atomically), and masks
as pictures: class colours alone or blended over their image."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

IGNORE_COLOUR = (255, 255, 255)
"""How :func:`colorize` shows ignored pixels."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
"""The image files a folder dataset, a headless prediction and the app's prediction take."""


def read_image(path: str | Path) -> Image.Image:
    """An RGB image, upright according to its EXIF orientation."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def read_mask(path: str | Path) -> np.ndarray:
    """A class-index mask (H, W) uint8 from an 8-bit grayscale or palette PNG.

    Palette PNGs are read as their indices, not their colours.

    Raises:
        ValueError: the file is not a single-channel 8-bit image.
    """
    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            raise ValueError(f"{path}: mask must be an 8-bit grayscale or palette PNG, not mode {image.mode}")
        return np.array(image, dtype=np.uint8)


def palette_bytes(palette: Sequence[Sequence[int]]) -> list[int]:
    """A 768-entry flat PIL palette: the class colours, then black, with 255 (ignore) white."""
    flat = [0] * 768
    for index, colour in enumerate(palette[:255]):
        flat[3 * index : 3 * index + 3] = [int(c) for c in colour]
    flat[765:768] = [255, 255, 255]
    return flat


def write_mask(path: str | Path, mask: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """Write a class-index mask as a palette PNG, atomically (temp file, then ``os.replace``)."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(palette_bytes(palette))
    atomic_save(path, lambda tmp: image.save(tmp, format="PNG"))


def atomic_save(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it over ``path``.

    The temp file is created as an ordinary ``open`` creates a file (mode 0666 less the umask), so
    the result is as readable as any other file the process writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # Not mkstemp: it creates 0600 whatever the umask.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """A class-index mask as an RGB image (ignore white, values without a colour black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    lut[ignore_index] = IGNORE_COLOUR
    return lut[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], opacity: float = 0.5,
            classes: Sequence[int] | None = None, ignore_index: int = 255) -> np.ndarray:
    """The image with the mask's class colours blended in.

    Args:
        image: RGB (H, W, 3) uint8.
        mask: class indices (H, W).
        opacity: 0 (image only) to 1 (colours only).
        classes: only these classes are coloured (all when None); ignore pixels are never coloured.
    """
    image = np.asarray(image, dtype=np.uint8)[..., :3]
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} and mask {mask.shape[1]}x{mask.shape[0]} differ")
    coloured = mask != ignore_index
    if classes is not None:
        coloured &= np.isin(mask, np.asarray(list(classes), dtype=np.int64))
    alpha = float(np.clip(opacity, 0.0, 1.0)) * coloured[..., None]
    blended = image * (1.0 - alpha) + colorize(mask, palette, ignore_index) * alpha
    return np.round(blended).astype(np.uint8)
