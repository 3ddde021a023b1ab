"""Importing labels made elsewhere: a Pascal VOC layout (CVAT's "Segmentation mask 1.1" export is one).

The layout, as a folder or a ``.zip`` (possibly one or two folders deep, as in
``VOCdevkit/VOC2012/``)::

    JPEGImages/NAME.jpg               the images
    SegmentationClass/NAME.png        masks: palette / grayscale (class indices) or RGB (labelmap colours)
    ImageSets/Segmentation/*.txt      split lists: train -> labelled, val -> validation, test ->
                                      unlabelled, trainval (when there is no train/val) and any
                                      other list (CVAT's default.txt) -> labelled
    labelmap.txt                      label:r,g,b:parts:actions, one line per class (optional)
    classes.json                      stpp's class file (optional; preferred over labelmap.txt)

Two ways in:

- :func:`import_voc_project` makes a new project of it: its classes (``classes.json``, else
  ``labelmap.txt``, else the 21 Pascal VOC classes), its images and its masks as ground truth.
  Images without a mask are unlabelled.
- :func:`import_voc_labels` adds its masks as ground truth to the images of an existing project
  with the same names: the way back after a person labelled the least-stable images in another
  tool. An unlabelled image that gets a mask becomes labelled (its reference mask is kept); a
  different ground-truth mask replaces the stored one. Classes are matched by name; a
  ``background`` class the project does not have becomes the ignore value.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stpp.core.classes import ClassInfo, DataError, parse_classes_json, parse_labelmap, voc_classes
from stpp.store.db import Store, StoreError, utc_now
from stpp.store.decode import DecodeError, decode_mask
from stpp.store.files import store_mask
from stpp.store.housekeeping import remove_unreferenced
from stpp.store.ingest import BATCH_SIZE, ingest_pairs
from stpp.store.pairing import IMAGE_SUFFIXES, Pair
from stpp.store.projects import Project, create_project, find_project, get_project
from stpp.store.report import ImportReport
from stpp.store.sources import InputError, InputFile, Limits, expand_inputs

IMAGE_DIR = "jpegimages"
MASK_DIR = "segmentationclass"
SPLIT_ROLES = {"train": "labelled", "val": "validation", "test": "unlabelled"}


@dataclass
class VocLayout:
    """A VOC layout read from a folder or an archive.

    Attributes:
        source: the folder or archive, as given.
        images: image files by name (stem).
        masks: ``SegmentationClass`` files by name.
        roles: the role each split list gives a name.
        classes: the classes of its ``classes.json`` or ``labelmap.txt``, or None.
        classes_source: the file the classes came from ("" when none).
    """

    source: str
    images: dict[str, InputFile] = field(default_factory=dict)
    masks: dict[str, InputFile] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    classes: ClassInfo | None = None
    classes_source: str = ""


def read_voc_layout(root: str | Path, limits: Limits, report: ImportReport,
                    stack: contextlib.ExitStack) -> VocLayout:
    """Index a VOC layout (folder or ``.zip``); unreadable parts go to ``report``.

    Raises:
        StoreError: no ``JPEGImages/`` or ``SegmentationClass/`` folder, several layouts in one
            input, or a malformed ``classes.json`` / ``labelmap.txt`` (with the line at fault).
    """
    files = expand_inputs([root], limits, report, stack)
    prefixes = {}
    for item in files:
        lowered = [p.lower() for p in item.relpath.parts[:-1]]
        for key in (IMAGE_DIR, MASK_DIR):
            if key in lowered:
                prefixes.setdefault(tuple(item.relpath.parts[:lowered.index(key)]), None)
    if not prefixes:
        raise StoreError(f"{root} is not a VOC layout: it has no JPEGImages/ or SegmentationClass/ folder")
    if len(prefixes) > 1:
        listed = ", ".join("/".join(p) for p in prefixes)
        raise StoreError(f"{root} holds several VOC layouts ({listed}); import them one at a time")
    prefix = next(iter(prefixes))
    layout = VocLayout(str(root))
    splits: dict[str, list[str]] = {}
    class_files: dict[str, InputFile] = {}
    for item in files:
        parts = item.relpath.parts
        if parts[:len(prefix)] != prefix:
            continue
        rest = [p.lower() for p in parts[len(prefix):]]
        if rest[0] == IMAGE_DIR and item.suffix in IMAGE_SUFFIXES:
            _put(layout.images, item, report)
        elif rest[0] == MASK_DIR and item.suffix == ".png":
            _put(layout.masks, item, report)
        elif rest[:2] == ["imagesets", "segmentation"] and len(rest) == 3 and item.suffix == ".txt":
            splits[item.stem.lower()] = _split_names(item)
        elif len(rest) == 1 and rest[0] in ("classes.json", "labelmap.txt"):
            class_files[rest[0]] = item
    layout.roles = _roles(splits)
    for file_name, parse in (("classes.json", parse_classes_json), ("labelmap.txt", parse_labelmap)):
        if file_name in class_files:
            item = class_files[file_name]
            layout.classes, layout.classes_source = _parse(item, parse), item.source
            break
    return layout


def _put(found: dict[str, InputFile], item: InputFile, report: ImportReport) -> None:
    if item.stem in found:
        report.add(item.stem, item.source, "failed", f"name collision: {found[item.stem].source} has the same name")
        return
    found[item.stem] = item


def _split_names(item: InputFile) -> list[str]:
    try:
        text = item.read().decode("utf-8-sig")
    except (InputError, UnicodeDecodeError) as exc:
        raise StoreError(f"{item.source}: cannot read the split list: {exc}") from None
    return [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _roles(splits: dict[str, list[str]]) -> dict[str, str]:
    roles: dict[str, str] = {}
    if "train" in splits or "val" in splits:
        splits = {k: v for k, v in splits.items() if k != "trainval"}
    # Validation first, so a name in both val and another list stays out of training.
    for split in sorted(splits, key=lambda s: (s != "val", s)):
        for name in splits[split]:
            roles.setdefault(name, SPLIT_ROLES.get(split, "labelled"))
    return roles


def _parse(item: InputFile, parse) -> ClassInfo:
    try:
        text = item.read().decode("utf-8-sig")
    except (InputError, UnicodeDecodeError) as exc:
        raise StoreError(f"{item.source}: cannot read: {exc}") from None
    try:
        return parse(text, item.source)
    except DataError as exc:
        raise StoreError(str(exc)) from None


def import_voc_project(store: Store, root: str | Path, name: str, *, in_place: bool = False,
                       existing_ok: bool = False, limits: Limits = Limits(),
                       batch_size: int = BATCH_SIZE) -> tuple[Project, ImportReport]:
    """Create project ``name`` from a VOC layout: its classes, images, masks (ground truth) and splits.

    Args:
        store: the open store.
        root: the VOC folder or ``.zip``.
        name: the new project's name.
        in_place: register image files where they are (folders only; archive entries are copied).
        existing_ok: when project ``name`` exists with the same class names, add to it (finishes
            an interrupted import; what is there is skipped) instead of refusing.
        limits: pixel, file-size and archive limits.
        batch_size: rows written per transaction.

    Returns:
        The project and the per-file report.

    Raises:
        StoreError: not a VOC layout, malformed class file, or the project name is taken
            (unless ``existing_ok`` and the classes match; nothing is created then).
    """
    report = ImportReport()
    with contextlib.ExitStack() as stack:
        layout = read_voc_layout(root, limits, report, stack)
        classes = layout.classes
        if classes is None:
            classes = voc_classes()
            report.notes.append(f"{root} has no classes.json or labelmap.txt: the 21 Pascal VOC classes were used")
        else:
            report.notes.append(f"classes from {layout.classes_source}")
        project = find_project(store, name.strip()) if existing_ok else None
        if project is None:
            project = create_project(store, name, classes)
        elif project.classes.names != classes.names:
            raise StoreError(f"project {project.name!r} exists with other classes than {root}; "
                             "choose another name")
        pairs = []
        for image_name, image in layout.images.items():
            mask = layout.masks.get(image_name)
            role = layout.roles.get(image_name, "labelled" if mask else "unlabelled")
            if role == "labelled" and mask is None:
                role = "unlabelled"
            pairs.append(Pair(image_name, image, mask, role))
        for mask_name in sorted(set(layout.masks) - set(layout.images)):
            report.add(mask_name, layout.masks[mask_name].source, "failed",
                       f"mask without an image: no JPEGImages/{mask_name}.*")
        ingest_pairs(store, project, pairs, report, in_place=in_place, limits=limits, batch_size=batch_size)
    return project, report


def import_voc_labels(store: Store, project: int | str | Project, root: str | Path, *,
                      limits: Limits = Limits(), batch_size: int = BATCH_SIZE) -> ImportReport:
    """Add the masks of a VOC layout as ground truth to the project's images of the same names.

    Args:
        store: the open store.
        project: the project (id, name or :class:`Project`).
        root: the VOC folder or ``.zip``.
        limits: pixel, file-size and archive limits.
        batch_size: masks recorded per transaction.

    Returns:
        One result per mask: added (new or replaced ground truth), skipped (no such image in the
        project, or the same mask is already stored) or failed (bad mask).

    Raises:
        StoreError: no such project, not a VOC layout, a malformed class file, or classes of the
            layout that the project does not have (nothing is changed then).
    """
    project = get_project(store, project)
    report = ImportReport()
    with contextlib.ExitStack() as stack:
        layout = read_voc_layout(root, limits, report, stack)
        source_classes = layout.classes or project.classes
        lut = _class_lut(source_classes, project, layout.classes_source or str(root), report)
        rows = {row["name"]: row for row in store.db.query(
            "SELECT id, name, hash, width, height, role FROM images WHERE project_id = ?", [project.id])}
        names = sorted(layout.masks)
        for start in range(0, len(names), batch_size):
            batch = []
            for name in names[start:start + batch_size]:
                item = _prepare_label(store, project, layout.masks[name], rows.get(name), source_classes, lut,
                                      limits, report)
                if item is not None:
                    batch.append(item)
            _record_labels(store, batch, report)
    return report


def _class_lut(source: ClassInfo, project: Project, where: str, report: ImportReport) -> np.ndarray:
    """Mask value in the layout's classes -> value in the project's classes, matched by name."""
    target = project.classes
    lut = np.arange(256, dtype=np.uint8)
    lut[source.ignore_index] = target.ignore_index
    missing = []
    for index, class_name in enumerate(source.names):
        if class_name in target.names:
            lut[index] = target.names.index(class_name)
        elif class_name.lower() == "background":
            lut[index] = target.ignore_index
            report.notes.append(f"class {class_name!r} of {where} is not in project {project.name!r}: "
                                f"its pixels become the ignore value {target.ignore_index}")
        else:
            missing.append(class_name)
    if missing:
        raise StoreError(f"{where}: classes {', '.join(missing)} are not in project {project.name!r}; "
                         "add them to the project first")
    return lut


@dataclass
class _Label:
    name: str
    source: str
    image_id: int
    path: str
    digest: str


def _prepare_label(store: Store, project: Project, item: InputFile, row: dict | None, classes: ClassInfo,
                   lut: np.ndarray, limits: Limits, report: ImportReport) -> _Label | None:
    if row is None:
        report.add(item.stem, item.source, "skipped", f"no image named {item.stem!r} in project {project.name!r}")
        return None
    try:
        mask = decode_mask(item.read(), classes, row["width"], row["height"], max_pixels=limits.max_pixels)
    except (InputError, DecodeError) as exc:
        report.add(item.stem, item.source, "failed", f"mask of {item.stem!r}: {exc}")
        return None
    try:
        path, digest = store_mask(store.workspace, project.id, "ground_truth", row["hash"], lut[mask],
                                  project.classes.palette)
    except OSError as exc:
        raise StoreError(f"cannot write to the workspace {store.workspace}: {exc.strerror or exc}") from None
    return _Label(item.stem, item.source, row["id"], path, digest)


def _record_labels(store: Store, batch: list[_Label], report: ImportReport) -> None:
    replaced: list[str] = []
    results = ImportReport()  # merged into report once the transaction has committed
    with store.transaction() as db:
        for label in batch:
            current = db.execute("SELECT id, path, hash FROM masks WHERE image_id = ? AND kind = 'ground_truth'",
                                 [label.image_id]).fetchone()
            if current is not None and current[2] == label.digest:
                results.add(label.name, label.source, "skipped", "the same ground-truth mask is already stored")
                continue
            try:
                if current is None:
                    db["masks"].insert({"image_id": label.image_id, "kind": "ground_truth", "run_id": None,
                                        "stage": None, "path": label.path, "hash": label.digest,
                                        "created": utc_now()})
                else:
                    db.execute("UPDATE masks SET path = ?, hash = ?, created = ? WHERE id = ?",
                               [label.path, label.digest, utc_now(), current[0]])
                    replaced.append(current[1])
            except sqlite3.IntegrityError as exc:
                results.add(label.name, label.source, "failed", f"conflicts with the store: {exc}")
                continue
            role = db.execute("SELECT role FROM images WHERE id = ?", [label.image_id]).fetchone()[0]
            reason = "ground_truth mask " + ("replaced" if current is not None else "added")
            if role == "unlabelled":
                db.execute("UPDATE images SET role = 'labelled' WHERE id = ?", [label.image_id])
                reason += "; the image moved from unlabelled to labelled"
            results.add(label.name, label.source, "added", reason)
    report.results.extend(results.results)
    remove_unreferenced(store, replaced)
