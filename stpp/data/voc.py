"""Pascal VOC 2012 with the SBD augmented masks (``SegmentationClassAug``): ``--data voc:ROOT``.

Layout (``ROOT`` itself, or ``ROOT/VOC2012``, or ``ROOT/VOCdevkit/VOC2012``)::

    JPEGImages/2007_000032.jpg
    SegmentationClassAug/2007_000032.png   8-bit class indices 0..20, 255 = ignore (SBD + VOC, 12,031)
    SegmentationClass/2007_000032.png      VOC's own palette masks (2,913), used where Aug has none
    ImageSets/Segmentation/{train,val}.txt ID lists

Split files are ID lists (``2007_000032``) or the paper's pair lines
(``JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png``). The ID is the image's file stem;
the mask always comes from ``SegmentationClassAug`` (else ``SegmentationClass``), whatever folder a
line names: the paper's lists say ``SegmentationClass`` for what is the augmented set.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from stpp.core.config import IGNORE_INDEX
from stpp.data.datasets import (
    ClassInfo,
    DataError,
    FolderDataset,
    _index_files,
    default_palette,
    read_split,
    split_line_fields,
)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""The 21 Pascal VOC classes, in index order."""

MASK_FOLDERS = ("SegmentationClassAug", "SegmentationClass")
"""Where masks are looked up, first match wins."""

_IMAGE_SUFFIXES = (".jpg", ".jpeg")


def voc_classes() -> ClassInfo:
    """The VOC classes with the standard VOC colour map."""
    return ClassInfo(names=VOC_CLASSES, palette=default_palette(len(VOC_CLASSES)), ignore_index=IGNORE_INDEX)


def find_voc_root(root: Path) -> Path:
    """The folder that holds ``JPEGImages``: ``root``, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``.

    Raises:
        DataError: none of them does.
    """
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(f"{root}: not a Pascal VOC folder (no JPEGImages/ in it, in VOC2012/ or in VOCdevkit/VOC2012/)")


def split_line_id(line: str) -> str:
    """The image ID of one split line: an ID, an image path, or an ``image_path mask_path`` pair.

    Raises:
        ValueError: more than two fields on the line.
    """
    fields = split_line_fields(line)
    first = fields[0]
    if len(fields) == 2 or "/" in first or Path(first).suffix.lower() in _IMAGE_SUFFIXES:
        return Path(first).stem
    return first


class VOCDataset(FolderDataset):
    """Pascal VOC 2012 + SBD, indexed like a folder dataset; open it with :meth:`open`."""

    @classmethod
    def open(cls, root: str | Path) -> "VOCDataset":
        """Index ``JPEGImages`` and the mask folders.

        Raises:
            DataError: no VOC layout under ``root``, no JPEG image, or a duplicate ID.
        """
        base = find_voc_root(Path(root))
        images = _index_files(base / "JPEGImages", _IMAGE_SUFFIXES, "image")
        if not images:
            raise DataError(f"{base / 'JPEGImages'}: no JPEG images")
        masks: dict[str, Path] = {}
        for folder in reversed(MASK_FOLDERS):
            masks.update(_index_files(base / folder, (".png",), "mask"))
        return cls(base, images, masks)

    @property
    def images_dir(self) -> Path:
        """Where the images are (named in error messages)."""
        return self.root / "JPEGImages"

    @property
    def masks_dir(self) -> Path:
        """Where the masks are looked up first (named in error messages)."""
        return self.root / MASK_FOLDERS[0]

    @cached_property
    def classes(self) -> ClassInfo:
        """The 21 VOC classes and the VOC colour map."""
        return voc_classes()

    def read_split(self, path: str | Path) -> list[str]:
        """The IDs of a split file of ID lines or the paper's pair lines (see the module docstring)."""
        return read_split(path, to_id=split_line_id)
