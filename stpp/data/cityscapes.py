"""Cityscapes fine annotations mapped to the 19 training classes: ``--data cityscapes:ROOT``.

Layout (the official ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` unpacked in ROOT)::

    leftImg8bit/{train,val,test}/CITY/CITY_SEQ_FRAME_leftImg8bit.png
    gtFine/{train,val,test}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png        (34 label IDs)
    gtFine/{train,val,test}/CITY/CITY_SEQ_FRAME_gtFine_labelTrainIds.png   (optional, cityscapesScripts)

The ID of an image is ``CITY_SEQ_FRAME`` (``aachen_000000_000019``). Masks hold the 19 train IDs,
255 elsewhere: a ``labelTrainIds`` file is used as it is; otherwise the ``labelIds`` file is mapped
once into a cache folder (``$STPP_CACHE``, default ``~/.cache/stpp``, under ``cityscapes/<hash of
ROOT>``) and read from there. Split files are ID lists, image paths, or the paper's pair lines
(``leftImg8bit/train/x/x_..._leftImg8bit.png gtFine/train/x/x_..._gtFine_labelTrainIds.png``).
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from stpp.core.config import IGNORE_INDEX
from stpp.core.masks import write_mask
from stpp.data.datasets import ClassInfo, DataError, FolderDataset, _read_mask_checked, read_split, split_line_fields

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
"""The 19 evaluated classes, in train-ID order."""

CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
"""The official colours of the 19 classes."""

LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
"""Cityscapes label IDs (``labelIds`` files) of the 19 classes; every other ID is ignored (255)."""

_LOOKUP = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in LABEL_TO_TRAIN_ID.items():
    _LOOKUP[_label_id] = _train_id


def cityscapes_classes() -> ClassInfo:
    """The 19 train classes with the official palette."""
    return ClassInfo(names=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE, ignore_index=IGNORE_INDEX)


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a ``labelIds`` mask to train IDs (0..18), 255 for every ignored or unknown label."""
    return _LOOKUP[np.asarray(label_ids, dtype=np.uint8)]


def image_id(name: str) -> str:
    """``aachen_000000_000019`` from a ``*_leftImg8bit.png`` or ``*_gtFine_*.png`` file name or path."""
    stem = Path(name).name
    for suffix in (IMAGE_SUFFIX, LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return Path(stem).stem if stem.endswith(".png") else stem


def split_line_id(line: str) -> str:
    """The image ID of one split line: an ID, an image path, or an ``image_path mask_path`` pair.

    Raises:
        ValueError: more than two fields on the line.
    """
    return image_id(split_line_fields(line)[0])


def default_cache_dir(root: Path) -> Path:
    """Where converted masks of the dataset at ``root`` go (``$STPP_CACHE`` or ``~/.cache/stpp``)."""
    base = Path(os.environ.get("STPP_CACHE") or Path.home() / ".cache" / "stpp")
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return base / "cityscapes" / digest


def _index(folder: Path, suffix: str, kind: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.rglob(f"*{suffix}")):
        if path.name.startswith(".") or not path.is_file():
            continue
        key = path.name[: -len(suffix)]
        if key in files:
            raise DataError(f"{folder}: duplicate {kind} ID {key!r}: {files[key]} and {path}")
        files[key] = path
    return files


class CityscapesDataset(FolderDataset):
    """Cityscapes indexed like a folder dataset; open it with :meth:`open`.

    Args:
        root: the dataset folder (holds ``leftImg8bit/`` and ``gtFine/``).
        images: ID -> image file.
        label_ids: ID -> ``labelIds`` file.
        train_ids: ID -> ``labelTrainIds`` file.
        cache_dir: where ``labelIds`` masks are mapped to train IDs.
    """

    def __init__(self, root: Path, images: dict[str, Path], label_ids: dict[str, Path],
                 train_ids: dict[str, Path], cache_dir: Path) -> None:
        super().__init__(root, images, {})
        self._label_ids = label_ids
        self._train_ids = train_ids
        self.cache_dir = cache_dir

    @classmethod
    def open(cls, root: str | Path, cache_dir: str | Path | None = None) -> "CityscapesDataset":
        """Index ``leftImg8bit`` and ``gtFine``.

        Raises:
            DataError: no ``leftImg8bit`` folder, no image in it, or a duplicate ID.
        """
        root = Path(root)
        if not (root / "leftImg8bit").is_dir():
            raise DataError(f"{root}: not a Cityscapes folder (no leftImg8bit/ in it)")
        images = _index(root / "leftImg8bit", IMAGE_SUFFIX, "image")
        if not images:
            raise DataError(f"{root / 'leftImg8bit'}: no *{IMAGE_SUFFIX} images")
        label_ids = _index(root / "gtFine", LABEL_IDS_SUFFIX, "mask")
        train_ids = _index(root / "gtFine", TRAIN_IDS_SUFFIX, "mask")
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
        return cls(root, images, label_ids, train_ids, cache)

    @property
    def images_dir(self) -> Path:
        """Where the images are (named in error messages)."""
        return self.root / "leftImg8bit"

    @property
    def masks_dir(self) -> Path:
        """Where the annotations are (named in error messages)."""
        return self.root / "gtFine"

    @cached_property
    def classes(self) -> ClassInfo:
        """The 19 train classes and the official palette."""
        return cityscapes_classes()

    def mask_path(self, image_id: str) -> Path | None:
        """A mask of train IDs for ``image_id`` (converted into the cache on first use), or None.

        Raises:
            DataError: no image has this ID, or its ``labelIds`` file cannot be read.
        """
        self.image_path(image_id)
        if image_id in self._train_ids:
            return self._train_ids[image_id]
        source = self._label_ids.get(image_id)
        if source is None:
            return None
        target = self.cache_dir / f"{image_id}.png"
        if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
            write_mask(target, to_train_ids(_read_mask_checked(source, image_id)), CITYSCAPES_PALETTE)
        return target

    def read_split(self, path: str | Path) -> list[str]:
        """The IDs of a split file of IDs, image paths or the paper's pair lines."""
        return read_split(path, to_id=split_line_id)
