"""The folder dataset layout, split files, input validation and torch datasets.

A folder dataset (``DESIGN.md``, "Folder dataset") is ``ROOT/images/**/ID.<ext>``,
``ROOT/masks/**/ID.png`` (8-bit class indices, 255 = ignore) and an optional ``ROOT/classes.json``;
split lists are text files with one ID per line. Everything that can be wrong with a user's data is
reported as a :class:`DataError` that names the file (or the ID and its file) and the problem, and
:func:`check_run_inputs` finds it before any training starts. Class metadata (:class:`ClassInfo`,
:func:`load_classes`, :class:`DataError`) lives in :mod:`stpp.core.classes` and is re-exported here.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from stpp.core.classes import ClassInfo, DataError, default_palette, load_classes
from stpp.core.config import IGNORE_INDEX
from stpp.core.masks import IMAGE_SUFFIXES, read_image, read_mask
from stpp.data.transforms import StrongAugment, WeakAugment, to_eval_tensor

MASK_EXTENSIONS = (".png",)
# EXIF orientations 5-8 rotate by 90 degrees: read_image swaps width and height for them.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
_MAX_LISTED = 20


def _index_files(folder: Path, extensions: tuple[str, ...], kind: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() not in extensions or not path.is_file():
            continue
        if path.stem in files:
            raise DataError(f"{folder}: duplicate {kind} ID {path.stem!r}: {files[path.stem]} and {path}")
        files[path.stem] = path
    return files


class FolderDataset:
    """An indexed folder dataset; open it with :meth:`open`.

    Attributes:
        root: the dataset folder.
        ids: every image ID, sorted.
    """

    def __init__(self, root: Path, images: dict[str, Path], masks: dict[str, Path]) -> None:
        self.root = root
        self._images = images
        self._masks = masks
        self.ids: list[str] = sorted(images)

    @classmethod
    def open(cls, root: str | Path) -> "FolderDataset":
        """Index ``ROOT/images/**/ID.<ext>`` (jpg, jpeg, png, bmp, tif, tiff, any case) and ``ROOT/masks/**/ID.png``.

        Raises:
            DataError: ``ROOT/images`` is missing or holds no image, or two images (or two masks)
                share an ID.
        """
        root = Path(root)
        images_dir = root / "images"
        if not images_dir.is_dir():
            raise DataError(f"{root}: not a folder dataset (no images/ folder)")
        images = _index_files(images_dir, IMAGE_SUFFIXES, "image")
        if not images:
            raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        masks = _index_files(root / "masks", MASK_EXTENSIONS, "mask")
        return cls(root, images, masks)

    def __len__(self) -> int:
        return len(self._images)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._images

    def image_path(self, image_id: str) -> Path:
        """The image file of ``image_id``.

        Raises:
            DataError: no image has this ID.
        """
        try:
            return self._images[image_id]
        except KeyError:
            raise DataError(f"{self.root / 'images'}: no image with ID {image_id!r}") from None

    def mask_path(self, image_id: str) -> Path | None:
        """The mask file of ``image_id``, or None when it has none.

        Raises:
            DataError: no image has this ID.
        """
        self.image_path(image_id)
        return self._masks.get(image_id)

    @cached_property
    def classes(self) -> ClassInfo:
        """The classes: ``ROOT/classes.json``, or inferred from the masks when it is absent.

        Inference takes the largest mask value other than 255 plus one as the class count, names the
        classes ``class_0``, ``class_1``, ... and colours them with :func:`default_palette`.

        Raises:
            DataError: ``classes.json`` is invalid, or it is absent and no mask can say how many
                classes there are.
        """
        path = self.root / "classes.json"
        if path.exists():
            return load_classes(path)
        largest = -1
        for image_id, mask_file in sorted(self._masks.items()):
            values = np.unique(_read_mask_checked(mask_file, image_id))
            values = values[values != IGNORE_INDEX]
            if values.size:
                largest = max(largest, int(values.max()))
        if largest < 0:
            raise DataError(f"{path}: not found, and no mask under {self.root / 'masks'} to infer the classes from")
        num_classes = largest + 1
        return ClassInfo(names=tuple(f"class_{i}" for i in range(num_classes)),
                         palette=default_palette(num_classes), ignore_index=IGNORE_INDEX)


def split_line_fields(line: str) -> list[str]:
    """The fields of a split line in the paper's lists: an ID or image path, or ``image_path mask_path``.

    Raises:
        ValueError: more than two fields on the line.
    """
    fields = line.split()
    if len(fields) > 2:
        raise ValueError(f"expected an ID or 'image_path mask_path', got {len(fields)} fields: {line!r}")
    return fields


def read_split(path: str | Path, to_id: Callable[[str], str] | None = None) -> list[str]:
    """The IDs of a split file, one per line, in file order; blank lines are skipped.

    Args:
        path: the split file.
        to_id: maps a stripped line to its ID (readers of other layouts parse their own line
            formats with it, e.g. the paper's ``image_path mask_path`` pairs); it raises
            ``ValueError`` for a line it cannot read. None: the line is the ID.

    Raises:
        DataError: the file is missing or unreadable, a line cannot be read, or an ID appears twice
            (with both line numbers).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the split file ({exc})") from None
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if to_id is not None:
            try:
                image_id = to_id(image_id)
            except ValueError as exc:
                raise DataError(f"{path}: line {number}: {exc}") from None
        if image_id in seen:
            raise DataError(f"{path}: ID {image_id!r} is listed twice (lines {seen[image_id]} and {number})")
        seen[image_id] = number
    return list(seen)


@dataclass(frozen=True)
class RunInputs:
    """The validated ID lists of a run (what :func:`check_run_inputs` returns)."""

    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    val: tuple[str, ...]


SplitSource = str | os.PathLike | Sequence[str]


def _load_split(source: SplitSource | None, name: str,
                reader: Callable[[str | Path], list[str]] = read_split) -> tuple[list[str], str]:
    """The IDs of a split given as a file (read by ``reader``) or a list, and how messages should name it."""
    if source is None:
        return [], f"{name} split"
    if isinstance(source, (str, os.PathLike)):
        return reader(source), f"{name} split {source}"
    ids = list(source)
    duplicates = sorted(i for i, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise DataError(f"{name} ID list: IDs listed twice: {_listing(duplicates)}")
    return ids, f"{name} ID list"


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def check_run_inputs(dataset: FolderDataset, labeled: SplitSource, unlabeled: SplitSource,
                     val: SplitSource | None, num_classes: int, ignore_index: int = IGNORE_INDEX, *,
                     require_labeled: bool = True) -> RunInputs:
    """Validate a run's data before any training, so that it fails now and not hours later.

    Checks: the labeled split is not empty (unless ``require_labeled`` is False); no ID is both
    labeled and unlabeled, and no validation ID is in either; every ID has an image that opens and
    verifies; every labeled and validation ID has a mask that is a single-channel 8-bit PNG of its
    image's size, with values below ``num_classes`` or ``ignore_index``. Image sizes come from the file headers; masks are read
    fully. Unlabeled images need no mask, and their masks (if any) are not read.

    Args:
        dataset: the opened folder dataset.
        labeled: the labeled split, a split file path or a list of IDs.
        unlabeled: the unlabeled split, likewise (may be empty for a supervised run).
        val: the validation split, likewise, or None.
        num_classes: the number of classes.
        ignore_index: the mask value meaning "no label".
        require_labeled: refuse an empty labeled split (training); False to check evaluation data.

    Returns:
        The ID lists that were checked.

    Raises:
        DataError: naming the split file or ID list, the IDs and files concerned and each problem;
            per-image problems are all collected into one error.
    """
    # Readers of other layouts (VOC, Cityscapes) parse their own split-line formats.
    reader = getattr(dataset, "read_split", read_split)
    labeled_ids, labeled_name = _load_split(labeled, "labeled", reader)
    unlabeled_ids, unlabeled_name = _load_split(unlabeled, "unlabeled", reader)
    val_ids, val_name = _load_split(val, "validation", reader)
    if require_labeled and not labeled_ids:
        raise DataError(f"{labeled_name} is empty: training needs at least one labeled image")
    unlabeled_set = set(unlabeled_ids)
    both = [i for i in labeled_ids if i in unlabeled_set]
    if both:
        raise DataError(f"IDs in both the {labeled_name} and the {unlabeled_name}: {_listing(both)}")
    train = set(labeled_ids) | set(unlabeled_ids)
    leaked = [i for i in val_ids if i in train]
    if leaked:
        raise DataError(f"validation overlaps training: IDs in the {val_name} that are also in the "
                        f"{labeled_name} or the {unlabeled_name}: {_listing(leaked)}")
    problems: list[str] = []
    for ids, name, needs_mask in ((labeled_ids, labeled_name, True), (unlabeled_ids, unlabeled_name, False),
                                  (val_ids, val_name, True)):
        for image_id in ids:
            problem = _check_item(dataset, image_id, needs_mask, num_classes, ignore_index)
            if problem:
                problems.append(f"{name}: ID {image_id!r}: {problem}")
    if problems:
        listed = problems[:_MAX_LISTED]
        more = [f"... and {len(problems) - _MAX_LISTED} more"] if len(problems) > _MAX_LISTED else []
        raise DataError(f"{len(problems)} problem(s) in the data under {dataset.root}:\n"
                        + "\n".join(f"  {p}" for p in listed + more))
    return RunInputs(tuple(labeled_ids), tuple(unlabeled_ids), tuple(val_ids))


def _check_item(dataset: FolderDataset, image_id: str, needs_mask: bool, num_classes: int,
                ignore_index: int) -> str | None:
    if image_id not in dataset:
        return f"no image in {getattr(dataset, 'images_dir', dataset.root / 'images')}"
    image_file = dataset.image_path(image_id)
    try:
        size = image_size(image_file)
    except DataError as exc:
        return str(exc)
    if not needs_mask:
        return None
    mask_file = dataset.mask_path(image_id)
    if mask_file is None:
        return (f"no mask in {getattr(dataset, 'masks_dir', dataset.root / 'masks')} "
                "(labeled and validation images need one)")
    try:
        mask = _read_mask_checked(mask_file, image_id)
    except DataError as exc:
        return str(exc)
    if (mask.shape[1], mask.shape[0]) != size:
        return (f"{mask_file}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_file.name} "
                f"is {size[0]}x{size[1]}")
    values = np.unique(mask)
    bad = [int(v) for v in values if v >= num_classes and v != ignore_index]
    if bad:
        return (f"{mask_file}: mask values {bad} are not class indices (0..{num_classes - 1}) "
                f"nor the ignore index {ignore_index}")
    return None


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`read_image` returns it, from the header only.

    The file is opened and verified (for PNG that checks every chunk's CRC; nothing is decoded).

    Raises:
        DataError: the file cannot be opened or fails verification.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = _orientation(image)
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or corrupt image ({exc})") from None
    if orientation in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def _orientation(image: Image.Image) -> int | None:
    if image.format == "PNG":
        # PngImageFile.getexif() decodes the whole image when there is no eXIf chunk before the data.
        raw = image.info.get("exif")
        if not raw:
            return None
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(0x0112)
    return image.getexif().get(0x0112)


def _read_mask_checked(path: Path, image_id: str) -> np.ndarray:
    try:
        with Image.open(path) as probe:
            file_format = probe.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or corrupt mask of ID {image_id!r} ({exc})") from None
    if file_format != "PNG":
        raise DataError(f"{path}: mask of ID {image_id!r} is {file_format}, not PNG")
    try:
        return read_mask(path)
    except ValueError as exc:
        raise DataError(f"{path}: mask of ID {image_id!r} must be a 1-channel 8-bit PNG "
                        f"(grayscale or palette): {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable or corrupt mask of ID {image_id!r} ({exc})") from None


@dataclass(frozen=True)
class TrainItem:
    """One training sample.

    Attributes:
        id: the image ID.
        image_path: the image file.
        mask_path: the mask it trains on (ground truth, pseudo or reviewed).
        strong: apply strong augmentation after weak (pseudo-labelled images).
    """

    id: str
    image_path: Path
    mask_path: Path
    strong: bool = False


class TrainDataset(Dataset):
    """Training pairs: weak augmentation, then strong where the item asks for it.

    Args:
        items: the samples (repeat an item to over-sample it).
        weak: the weak augmentation.
        strong: the strong augmentation, or None for none at all.
    """

    def __init__(self, items: Sequence[TrainItem], weak: WeakAugment, strong: StrongAugment | None = None) -> None:
        self.items = list(items)
        self.weak = weak
        self.strong = strong

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """``(image uint8 [3, crop, crop], mask uint8 [crop, crop])``.

        Samples stay 8-bit until they reach the training device (:func:`stpp.engine.train.train_step`
        normalises them there): a fifth of the float32/int64 bytes through the loader's shared memory,
        pinned buffers and the host-to-GPU copy.
        """
        item = self.items[index]
        image = read_image(item.image_path)
        mask = _read_mask_checked(Path(item.mask_path), item.id)
        if mask.shape != (image.height, image.width):
            raise DataError(f"{item.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{item.image_path} is {image.width}x{image.height}")
        image_t, mask_t = self.weak(image, mask)
        if item.strong and self.strong is not None:
            image_t, mask_t = self.strong(image_t, mask_t)
        return image_t, mask_t


class EvalDataset(Dataset):
    """Whole images at original size for evaluation and labelling (batch size 1: sizes vary).

    Args:
        ids: the image IDs.
        image_paths: their image files.
        mask_paths: their mask files, None where there is none.
    """

    def __init__(self, ids: Sequence[str], image_paths: Sequence[Path], mask_paths: Sequence[Path | None]) -> None:
        if not len(ids) == len(image_paths) == len(mask_paths):
            raise ValueError(f"{len(ids)} IDs, {len(image_paths)} image paths and {len(mask_paths)} mask paths")
        self.ids = list(ids)
        self.image_paths = [Path(p) for p in image_paths]
        self.mask_paths = [Path(p) if p is not None else None for p in mask_paths]

    @classmethod
    def from_folder(cls, dataset: FolderDataset, ids: Iterable[str], with_masks: bool = True) -> "EvalDataset":
        """The given IDs of a folder dataset, with their masks (or none, for labelling)."""
        ids = list(ids)
        masks = [dataset.mask_path(i) if with_masks else None for i in ids]
        return cls(ids, [dataset.image_path(i) for i in ids], masks)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"image": float [3, H, W], "mask": int64 [H, W] or empty, "id": str}``."""
        image_id = self.ids[index]
        image = read_image(self.image_paths[index])
        mask_file = self.mask_paths[index]
        if mask_file is None:
            mask = torch.empty(0, dtype=torch.long)
        else:
            mask_array = _read_mask_checked(mask_file, image_id)
            if mask_array.shape != (image.height, image.width):
                raise DataError(f"{mask_file}: mask is {mask_array.shape[1]}x{mask_array.shape[0]} but its "
                                f"image {self.image_paths[index]} is {image.width}x{image.height}")
            mask = torch.from_numpy(mask_array).long()
        return {"image": to_eval_tensor(image), "mask": mask, "id": image_id}


def collate_single(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate one :class:`EvalDataset` item into a batch of one.

    Returns:
        ``{"image": [1, 3, H, W], "mask": [1, H, W] (or an empty tensor), "id": str}``.

    Raises:
        ValueError: the batch does not hold exactly one item.
    """
    if len(batch) != 1:
        raise ValueError(f"evaluation batches hold one image (sizes vary), got {len(batch)}")
    item = batch[0]
    mask = item["mask"]
    return {"image": item["image"].unsqueeze(0), "mask": mask.unsqueeze(0) if mask.numel() else mask,
            "id": item["id"]}
