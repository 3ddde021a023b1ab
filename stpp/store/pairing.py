"""Which uploaded file is an image, which is a mask, and whose: pairing by file stem.

Rules, in order:

1. A file's nearest folder decides when it has a known name: ``masks/``, ``labels/``, ``gt/``,
   ``SegmentationClass/`` ... hold masks; ``images/``, ``JPEGImages/`` ... hold images;
   ``SegmentationObject/`` (instance masks) is not used.
2. ``NAME_mask.png`` (also ``-mask``, ``.mask``, ``_label``, ``_gt``) is the mask of ``NAME`` when
   the upload has an image called ``NAME``.
3. Otherwise, of two files with the same stem, the PNG is the mask of the other (``a.jpg`` +
   ``a.png``, as a browser upload of flat files has them).

An image name is its file stem and must be unique in the upload: several different images with
one name are all refused (identical copies are kept once); a mask without an image is refused.
Text and metadata files (``.txt``, ``.json``, ...) are skipped; other non-image types fail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stpp.store.report import ImportReport
from stpp.store.sources import InputError, InputFile

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
META_SUFFIXES = (".txt", ".json", ".md", ".csv", ".xml", ".yaml", ".yml", ".ini", ".log")
MASK_FOLDERS = frozenset({"masks", "mask", "labels", "label", "gt", "groundtruth", "ground_truth", "annotations",
                          "segmentationclass", "segmentationclasspng", "segmentationclassaug"})
IMAGE_FOLDERS = frozenset({"images", "image", "imgs", "img", "jpegimages", "photos", "pictures"})
UNUSED_FOLDERS = frozenset({"segmentationobject", "segmentationobjectpng"})
_MASK_STEM = re.compile(r"^(?P<base>.+)[_.-](?:mask|label|labels|gt)$", re.IGNORECASE)


@dataclass
class Pair:
    """One image to import and its mask (if any).

    Attributes:
        name: the image name (file stem).
        image: the image file, or None when a split list names an image that is missing.
        mask: its mask file, or None.
        role: ``labelled``, ``unlabelled`` or ``validation``.
        source: what the report names when ``image`` is None (the split list).
    """

    name: str
    image: InputFile | None
    mask: InputFile | None
    role: str
    source: str = ""


def classify(item: InputFile) -> str:
    """``image``, ``mask``, ``either`` (decided by pairing), ``unused``, ``meta`` or ``unsupported``."""
    if item.suffix in IMAGE_SUFFIXES:
        for part in reversed(item.relpath.parts[:-1]):
            key = part.lower()
            if key in MASK_FOLDERS:
                return "mask"
            if key in IMAGE_FOLDERS:
                return "image"
            if key in UNUSED_FOLDERS:
                return "unused"
        return "either"
    if item.suffix in META_SUFFIXES:
        return "meta"
    return "unsupported"


def pair_files(files: list[InputFile], role: str, report: ImportReport) -> list[Pair]:
    """Group an upload's files into (image, mask) pairs by stem; files that fit no pair go to ``report``."""
    groups: dict[str, dict[str, list[InputFile]]] = {}
    for item in files:
        kind = classify(item)
        if kind == "meta":
            report.add(item.relpath.name, item.source, "skipped", "not an image or a mask (text or metadata file)")
        elif kind == "unused":
            report.add(item.stem, item.source, "skipped", "instance masks (SegmentationObject) are not used")
        elif kind == "unsupported":
            report.add(item.relpath.name, item.source, "failed",
                       f"not an image: unsupported file type {item.suffix or '(no suffix)'}; "
                       f"images are {', '.join(IMAGE_SUFFIXES)}")
        else:
            groups.setdefault(item.stem, {"image": [], "mask": [], "either": []})[kind].append(item)
    _attach_suffixed_masks(groups)
    pairs = []
    for name, group in groups.items():
        pair = _resolve(name, group, role, report)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _attach_suffixed_masks(groups: dict[str, dict[str, list[InputFile]]]) -> None:
    for stem in list(groups):
        match = _MASK_STEM.match(stem)
        group = groups[stem]
        if not match or match["base"] not in groups or group["image"]:
            continue
        base = groups[match["base"]]
        if not (base["image"] or base["either"]):
            continue
        candidates = group["mask"] + group["either"]
        if len(candidates) == 1 and candidates[0].suffix == ".png":
            base["mask"].extend(candidates)
            del groups[stem]


def _resolve(name: str, group: dict[str, list[InputFile]], role: str, report: ImportReport) -> Pair | None:
    images, masks, either = group["image"], group["mask"], group["either"]
    if either:
        pngs = [f for f in either if f.suffix == ".png"]
        if not images and not masks and len(either) == 2 and len(pngs) == 1:
            images, masks = [f for f in either if f.suffix != ".png"], pngs
        elif images and not masks and len(either) == 1 and pngs:
            masks = pngs
        else:
            images = images + either
    if len(images) > 1:
        images = _one_image(name, images, report)
        if not images:
            return None
    if not images:
        for mask in masks:
            report.add(name, mask.source, "failed", f"mask without an image: no image named {name!r} in this "
                       "upload (to add masks to images already in the project, import them as labels)")
        return None
    if len(masks) > 1:
        listed = ", ".join(m.source for m in masks)
        report.add(name, images[0].source, "failed", f"several masks for {name!r}: {listed}; keep one")
        return None
    return Pair(name, images[0], masks[0] if masks else None, role)


def _one_image(name: str, images: list[InputFile], report: ImportReport) -> list[InputFile]:
    """The image to keep when several files share a name: one copy if identical, else none."""
    try:
        first = images[0].read()
        identical = all(f.read() == first for f in images[1:])
    except InputError:
        identical = False
    if identical:
        for other in images[1:]:
            report.add(name, other.source, "skipped", f"identical to {images[0].source}")
        return images[:1]
    listed = ", ".join(f.source for f in images)
    for item in images:
        report.add(name, item.source, "failed", f"name collision: {len(images)} different files are named "
                   f"{name!r} ({listed}); image names (file stems) must be unique")
    return []
