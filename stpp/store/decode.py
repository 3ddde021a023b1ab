"""Checking and converting one uploaded image or mask, from its bytes, before anything is stored.

Images are decoded fully (a truncated file is caught here, not in training), refused above a pixel
limit (decompression bombs) and turned into an upright 8-bit RGB image by deliberate, reported
conversions:

- EXIF orientation is applied (the stored image is upright; masks are aligned with it);
- greyscale, 1-bit and palette images become RGB; an alpha channel is dropped (colours kept);
- 16-bit and 32-bit integer greyscale is scaled linearly from 0..65535 to 0..255;
- CMYK and other colour spaces go through Pillow's conversion to RGB;
- multi-frame files (TIFF pages, animations) keep their first frame;
- floating-point images are refused (no scale to assume).

Upright RGB JPEG and PNG files are kept byte for byte; everything else is stored as PNG.

Masks must be PNG (a lossy format changes class values) of the image's upright size. An 8-bit
grayscale or palette PNG is read as class indices; an RGB(A) PNG is mapped through the project's
palette (white and the VOC boundary colour 224,224,192 mean "ignore" unless they are class colours;
fully transparent pixels are ignored). Colours not in the palette are reported with their pixel
counts.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stpp.core.classes import ClassInfo

IGNORE_COLOURS = ((255, 255, 255), (224, 224, 192))
"""Colours read as the ignore value in RGB masks (stpp's own, Pascal VOC's), unless a class uses them."""
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_MAX_LISTED = 8


class DecodeError(Exception):
    """An image or mask that cannot be used; the message is the problem, for the report."""


@dataclass(frozen=True)
class DecodedImage:
    """An image ready to store.

    Attributes:
        data: the bytes to store (the original bytes when ``original`` is True, else a PNG).
        suffix: ``.jpg`` or ``.png``.
        width: upright width.
        height: upright height.
        file_size: (width, height) as written in the file, before the EXIF orientation.
        original: the stored bytes are the uploaded file, unchanged.
        readable_as_is: stpp's image reader (EXIF transpose, then RGB) gives the same picture from
            the original file, so it can be registered in place.
        note: the conversions applied, for the report ("" when none).
    """

    data: bytes
    suffix: str
    width: int
    height: int
    file_size: tuple[int, int]
    original: bool
    readable_as_is: bool
    note: str = ""


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Verify and convert one image.

    Args:
        data: the file's bytes.
        max_pixels: images with more pixels are refused before decoding.

    Raises:
        DecodeError: empty, not an image, corrupt or truncated, too many pixels, or floating-point.
    """
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies; Pillow still raises DecompressionBombError far above it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt, mode, size = image.format, image.mode, image.size
                _check_pixels(size, max_pixels, "image")
                frames = getattr(image, "n_frames", 1)
                image.load()
                if fmt == "JPEG" and _jpeg_truncated(data):
                    raise DecodeError("corrupt or truncated image: the JPEG data ends before its end marker")
                orientation = image.getexif().get(0x0112, 1) or 1
                upright = ImageOps.exif_transpose(image)
                rgb, notes = _to_rgb(upright)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        kind = _looks_like(data)
        if kind:
            raise DecodeError(f"corrupt or truncated image: it starts like a {kind} file but cannot be "
                              "decoded") from None
        raise DecodeError("not an image (no format Pillow can read)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None
    if orientation != 1:
        notes.insert(0, f"EXIF orientation {orientation} applied (stored upright)")
    if frames > 1:
        notes.append(f"first of {frames} frames kept")
    original = fmt in ("JPEG", "PNG") and mode == "RGB" and orientation == 1 and frames == 1
    if original:
        return DecodedImage(data, ".jpg" if fmt == "JPEG" else ".png", rgb.width, rgb.height, size, True, True)
    if fmt not in ("JPEG", "PNG"):
        notes.append(f"{fmt} stored as PNG")
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return DecodedImage(buffer.getvalue(), ".png", rgb.width, rgb.height, size, False,
                        readable_as_is=mode not in _SIXTEEN_BIT_MODES and frames == 1, note="; ".join(notes))


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8", "JPEG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
               (b"MM\x00*", "TIFF"))


def _looks_like(data: bytes) -> str:
    return next((kind for magic, kind in _SIGNATURES if data.startswith(magic)), "")


def _check_pixels(size: tuple[int, int], max_pixels: int, what: str) -> None:
    if size[0] * size[1] > max_pixels:
        raise DecodeError(f"refused as a decompression bomb: the {what} is {size[0]}x{size[1]} = "
                          f"{size[0] * size[1]:,} pixels, more than the limit of {max_pixels:,}")


def _jpeg_truncated(data: bytes) -> bool:
    # Entropy-coded data escapes 0xFF, so the end marker cannot occur inside it: a complete file has
    # one after its last start-of-scan. Checked here too because Pillow's LOAD_TRUNCATED_IMAGES is a
    # process-wide switch any library may turn on.
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def _to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    mode = image.mode
    if mode == "RGB":
        return image, []
    if mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB"), [f"{mode} greyscale scaled to 8 bits (value / 257)"]
    if mode == "F":
        raise DecodeError("floating-point (mode F) images are not supported: convert to 8 or 16 bits first")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return image.convert("RGB"), [f"{mode}: alpha channel dropped"]
    if mode == "P":
        return image.convert("RGB"), ["palette image stored as RGB"]
    if mode in ("L", "1"):
        return image.convert("RGB"), ["greyscale stored as RGB"]
    return image.convert("RGB"), [f"{mode} converted to RGB"]


def decode_mask(data: bytes, classes: ClassInfo, width: int, height: int, *, max_pixels: int,
                file_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read one mask as class indices (H, W) uint8, checked against its image and the classes.

    Args:
        data: the PNG file's bytes.
        classes: the project's classes (colours for RGB masks, the valid range for index masks).
        width, height: the upright size of its image.
        max_pixels: larger masks are refused before decoding.
        file_size: the image's size before EXIF rotation, to explain a mask aligned with that.

    Raises:
        DecodeError: not a PNG, corrupt, a different size, values outside the classes, colours
            not in the palette, or a colour shared by two classes.
    """
    if not data:
        raise DecodeError("empty mask file")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies; Pillow still raises DecompressionBombError far above it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format != "PNG":
                    raise DecodeError(f"masks must be PNG files, not {image.format} (lossy formats change "
                                      "class values)")
                _check_pixels(image.size, max_pixels, "mask")
                if image.size != (width, height):
                    raise DecodeError(_size_message(image.size, (width, height), file_size))
                image.load()
                mode = image.mode
                if mode in ("RGB", "RGBA"):
                    return _map_colours(np.asarray(image), classes)
                if mode in ("L", "P", "1") or mode in _SIXTEEN_BIT_MODES:
                    values = np.asarray(image)
                else:
                    raise DecodeError(f"mask mode {mode} is not supported: use an 8-bit grayscale or palette PNG "
                                      "(class indices) or an RGB PNG in the project's colours")
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError("the mask is not an image (no format Pillow can read)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise DecodeError(f"corrupt or truncated mask: {exc}") from None
    return _check_indices(values, classes)


def _size_message(mask_size: tuple[int, int], size: tuple[int, int], file_size: tuple[int, int] | None) -> str:
    message = f"mask is {mask_size[0]}x{mask_size[1]}, its image is {size[0]}x{size[1]}"
    if file_size is not None and file_size != size and mask_size == file_size:
        message += (" (the mask matches the image before its EXIF rotation; masks must be aligned "
                    "with the upright image)")
    return message


def _check_indices(values: np.ndarray, classes: ClassInfo) -> np.ndarray:
    found, counts = np.unique(values, return_counts=True)
    bad = [(int(v), int(n)) for v, n in zip(found, counts) if v >= classes.num_classes and v != classes.ignore_index]
    if bad:
        listed = ", ".join(f"{v} ({n} px)" for v, n in bad[:_MAX_LISTED])
        more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise DecodeError(f"mask values outside the classes 0..{classes.num_classes - 1} and the ignore value "
                          f"{classes.ignore_index}: {listed}{more}")
    return values.astype(np.uint8)


def _map_colours(pixels: np.ndarray, classes: ClassInfo) -> np.ndarray:
    """Class indices of an RGB(A) mask, through the class palette."""
    rgb = pixels[..., :3].astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours, inverse, counts = np.unique(packed.ravel(), return_inverse=True, return_counts=True)
    owners: dict[int, list[int]] = {}
    for index, (r, g, b) in enumerate(classes.palette):
        owners.setdefault((r << 16) | (g << 8) | b, []).append(index)
    for colour in IGNORE_COLOURS:
        owners.setdefault((colour[0] << 16) | (colour[1] << 8) | colour[2], [classes.ignore_index])
    lut = np.full(len(colours), -1, dtype=np.int32)
    unknown = []
    for position, (colour, count) in enumerate(zip(colours.tolist(), counts.tolist())):
        indices = owners.get(colour)
        if indices is None:
            unknown.append((colour, count))
        elif len(indices) > 1:
            names = " and ".join(classes.names[i] for i in indices)
            raise DecodeError(f"colour {_rgb(colour)} is used by classes {names}: colour masks cannot be "
                              "mapped; give the classes distinct colours")
        else:
            lut[position] = indices[0]
    if unknown:
        raise DecodeError(_unknown_colours_message(unknown, packed.size))
    mask = lut[inverse].reshape(packed.shape).astype(np.uint8)
    if pixels.shape[-1] == 4:
        mask[pixels[..., 3] == 0] = classes.ignore_index
    return mask


def _unknown_colours_message(unknown: list[tuple[int, int]], total: int) -> str:
    unknown.sort(key=lambda item: (-item[1], item[0]))
    pixels = sum(n for _, n in unknown)
    listed = ", ".join(f"{_rgb(c)} {n} px" for c, n in unknown[:_MAX_LISTED])
    more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
    message = (f"{len(unknown)} colour(s) not in the project palette ({pixels} of {total} pixels): "
               f"{listed}{more}")
    if all(c >> 16 == (c >> 8) & 255 == c & 255 for c, _ in unknown):
        message += " (grey values: if this is a class-index mask saved as RGB, save it as 8-bit grayscale)"
    return message


def _rgb(packed: int) -> str:
    return f"({packed >> 16}, {(packed >> 8) & 255}, {packed & 255})"
