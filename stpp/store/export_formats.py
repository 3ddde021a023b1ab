"""The dataset formats an export writes into its zip: ``voc``, ``coco``, ``masks`` and ``overlays``.

Each writer gets the export's images one at a time (the upright JPEG bytes, or the decoded image
when it needs pixels, and the class-index mask) and writes their entries at once, so nothing but
small per-image records stays in memory; :func:`stpp.store.export.export_project` drives them.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from typing import IO, Callable

import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as mask_util

from stpp.core.masks import overlay, palette_bytes
from stpp.store.classes import ClassInfo

VOC_ROOT = "VOCdevkit/VOC2012"
"""Where the VOC layout sits in the zip: torchvision's ``VOCSegmentation(root, year="2012")`` reads it."""
JPEG_QUALITY = 95
OVERLAY_QUALITY = 90
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ExportImage:
    """One image as a writer sees it.

    Attributes:
        name: the image's original file stem; every file of this image is named after it.
        split: ``train`` or ``val``.
        jpeg: the upright image as JPEG bytes (the original bytes when they are usable as they are).
        size: (width, height) of the upright image.
        decode: returns the upright RGB image (decodes ``jpeg`` again only when a writer needs pixels).
    """

    name: str
    split: str
    jpeg: bytes
    size: tuple[int, int]
    decode: Callable[[], Image.Image]


def upright_jpeg(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes of an upright RGB image, and its (width, height).

    Upright RGB JPEGs are returned byte for byte; anything else (EXIF rotation, greyscale, CMYK,
    PNG, ...) is turned upright by its EXIF orientation and re-encoded at quality 95.
    """
    with Image.open(io.BytesIO(data)) as image:
        orientation = image.getexif().get(0x0112, 1)
        if image.format == "JPEG" and image.mode == "RGB" and orientation in (None, 1):
            return data, image.size
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), rgb.size


def labelmap_text(classes: ClassInfo) -> str:
    """A VOC / CVAT ``labelmap.txt``: ``# label:color_rgb:parts:actions`` then one line per class."""
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{name}:{r},{g},{b}::" for name, (r, g, b) in zip(classes.names, classes.palette)]
    return "\n".join(lines) + "\n"


def class_folder_names(classes: ClassInfo) -> list[str]:
    """One folder name per class: the class name made safe for a path, unique."""
    names: list[str] = []
    for index, name in enumerate(classes.names):
        safe = re.sub(r"[^\w.\- ]", "_", name).strip(" .") or f"class{index}"
        names.append(safe if safe not in names else f"{safe}_{index}")
    return names


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def palette_png(mask: np.ndarray, classes: ClassInfo) -> bytes:
    """A class-index mask as a palette PNG in the project's colours (255 white)."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(palette_bytes(classes.palette))
    return png_bytes(image)


def _put(zf: zipfile.ZipFile, name: str, data: bytes | str, compress: bool = True) -> None:
    # JPEG and PNG are compressed already: storing them saves time and costs no space.
    zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)


class FormatWriter:
    """Writes one format's entries: :meth:`add` per image, then :meth:`finish` once."""

    def __init__(self, zf: zipfile.ZipFile, classes: ClassInfo):
        self.zf = zf
        self.classes = classes

    def add(self, image: ExportImage, mask: np.ndarray) -> None:
        """Write the entries of one image."""
        raise NotImplementedError

    def finish(self) -> None:
        """Write what comes after all images (split lists, annotation files)."""

    def close(self) -> None:
        """Release temporary files (called whether the export succeeded or not)."""


class VocWriter(FormatWriter):
    """``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}/`` and ``labelmap.txt``."""

    def __init__(self, zf: zipfile.ZipFile, classes: ClassInfo):
        super().__init__(zf, classes)
        self.splits: dict[str, list[str]] = {split: [] for split in SPLITS}

    def add(self, image: ExportImage, mask: np.ndarray) -> None:
        _put(self.zf, f"{VOC_ROOT}/JPEGImages/{image.name}.jpg", image.jpeg, compress=False)
        png = palette_png(mask, self.classes)
        _put(self.zf, f"{VOC_ROOT}/SegmentationClass/{image.name}.png", png, compress=False)
        self.splits[image.split].append(image.name)

    def finish(self) -> None:
        sets = f"{VOC_ROOT}/ImageSets/Segmentation"
        _put(self.zf, f"{sets}/train.txt", "".join(f"{n}\n" for n in self.splits["train"]))
        if self.splits["val"]:
            _put(self.zf, f"{sets}/val.txt", "".join(f"{n}\n" for n in self.splits["val"]))
        _put(self.zf, f"{sets}/trainval.txt", "".join(f"{n}\n" for n in self.splits["train"] + self.splits["val"]))
        _put(self.zf, f"{VOC_ROOT}/labelmap.txt", labelmap_text(self.classes))


class _JsonArray:
    """A JSON array built item by item in a temporary file, so a large one stays out of memory."""

    def __init__(self) -> None:
        self.file: IO[str] = tempfile.SpooledTemporaryFile(max_size=4 << 20, mode="w+", encoding="utf-8")
        self.count = 0

    def append(self, item: dict) -> None:
        self.file.write(("," if self.count else "") + json.dumps(item, separators=(",", ":")))
        self.count += 1

    def copy_to(self, out: IO[str]) -> None:
        out.write("[")
        self.file.seek(0)
        shutil.copyfileobj(self.file, out)
        out.write("]")

    def close(self) -> None:
        self.file.close()


class CocoWriter(FormatWriter):
    """``images/NAME.jpg`` and ``annotations/instances_{train,val}.json``: one RLE annotation per class per image.

    Category ids are class index + 1 (COCO keeps 0 free); each category also carries its
    ``mask_value`` and ``color``. Ignore pixels belong to no annotation.
    """

    def __init__(self, zf: zipfile.ZipFile, classes: ClassInfo):
        super().__init__(zf, classes)
        self.images = {split: _JsonArray() for split in SPLITS}
        self.annotations = {split: _JsonArray() for split in SPLITS}
        self.next_image_id = 1
        self.next_annotation_id = 1

    def add(self, image: ExportImage, mask: np.ndarray) -> None:
        _put(self.zf, f"images/{image.name}.jpg", image.jpeg, compress=False)
        image_id = self.next_image_id
        self.next_image_id += 1
        width, height = image.size
        self.images[image.split].append({"id": image_id, "file_name": f"{image.name}.jpg",
                                         "width": width, "height": height})
        for value in np.unique(mask):
            if value >= self.classes.num_classes:
                continue  # the ignore index: no class owns these pixels
            rle = mask_util.encode(np.asfortranarray(mask == value, dtype=np.uint8))
            self.annotations[image.split].append({
                "id": self.next_annotation_id, "image_id": image_id, "category_id": int(value) + 1,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_util.area(rle)), "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
            })
            self.next_annotation_id += 1

    def finish(self) -> None:
        categories = [{"id": i + 1, "name": name, "supercategory": "", "mask_value": i, "color": list(colour)}
                      for i, (name, colour) in enumerate(zip(self.classes.names, self.classes.palette))]
        head = json.dumps({"info": {"description": "stpp export"}, "licenses": [], "categories": categories})
        for split in SPLITS:
            if split == "val" and not self.images[split].count:
                continue
            with self.zf.open(f"annotations/instances_{split}.json", "w", force_zip64=True) as raw:
                out = io.TextIOWrapper(raw, encoding="utf-8")
                out.write(head[:-1] + ',"images":')
                self.images[split].copy_to(out)
                out.write(',"annotations":')
                self.annotations[split].copy_to(out)
                out.write("}")
                out.flush()
                out.detach()

    def close(self) -> None:
        for array in [*self.images.values(), *self.annotations.values()]:
            array.close()


class MasksWriter(FormatWriter):
    """``images/NAME.jpg`` and ``masks/CLASS/NAME.png``: one 8-bit PNG per class and image, 255 inside, 0 outside.

    Every class gets a file for every image (all zero where the class is absent); a pixel that is
    0 in every class file is an ignore pixel.
    """

    def __init__(self, zf: zipfile.ZipFile, classes: ClassInfo):
        super().__init__(zf, classes)
        self.folders = class_folder_names(classes)

    def add(self, image: ExportImage, mask: np.ndarray) -> None:
        _put(self.zf, f"images/{image.name}.jpg", image.jpeg, compress=False)
        for value, folder in enumerate(self.folders):
            binary = Image.fromarray(np.where(mask == value, 255, 0).astype(np.uint8), mode="L")
            _put(self.zf, f"masks/{folder}/{image.name}.png", png_bytes(binary), compress=False)


class OverlaysWriter(FormatWriter):
    """``overlays/NAME.jpg``: the image with its mask blended in the class colours (ignore left as is)."""

    def add(self, image: ExportImage, mask: np.ndarray) -> None:
        blended = overlay(np.asarray(image.decode()), mask, self.classes.palette,
                          classes=range(self.classes.num_classes))
        buffer = io.BytesIO()
        Image.fromarray(blended).save(buffer, format="JPEG", quality=OVERLAY_QUALITY)
        _put(self.zf, f"overlays/{image.name}.jpg", buffer.getvalue(), compress=False)


FORMATS: dict[str, type[FormatWriter]] = {
    "voc": VocWriter,
    "coco": CocoWriter,
    "masks": MasksWriter,
    "overlays": OverlaysWriter,
}
"""Export formats by name."""
