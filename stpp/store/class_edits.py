"""Editing a project's classes at any time: rename, recolour, add, and merge or delete with mask remapping.

Renaming, recolouring and adding (at the end) change only the project row: mask values stay
valid. (Stored palette PNGs keep the colours they were written with; the project row is what
colours mean from then on.) Merging or deleting a class changes what mask values mean, so every
stored mask of the project (ground truth, reference, pseudo, reviewed) is remapped:

- deleted class: its pixels become the ignore value;
- merged class: its pixels take the target's index;
- in both cases the classes after it move down by one index.

The remap is atomic: the remapped masks are written as new files (content-named, beside nothing
a row uses), then the mask rows and the class list change in one transaction, then the old files
go. A process killed half-way leaves the old classes and masks in force. Merging and deleting are
refused while one of the project's runs is queued or running (it would keep writing old indices);
runs made before the edit keep the models of the old classes.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from stpp.core.classes import ClassInfo, DataError, default_palette, make_classes
from stpp.core.masks import read_mask
from stpp.store.db import Store, StoreError
from stpp.store.files import store_mask
from stpp.store.housekeeping import remove_unreferenced
from stpp.store.projects import Project, get_project

_ATTEMPTS = 3


def rename_class(store: Store, project: int | str | Project, old: str, new: str) -> Project:
    """Give class ``old`` the name ``new``.

    Raises:
        StoreError: no such class, or the new name is empty or taken.
    """
    project = get_project(store, project)
    classes = project.classes
    index = _index(classes, old)
    names = list(classes.names)
    names[index] = new
    return _save(store, project, _checked(names, classes.palette, classes.ignore_index))


def recolour_class(store: Store, project: int | str | Project, name: str, colour: Sequence[int]) -> Project:
    """Give class ``name`` the colour ``(r, g, b)``.

    Raises:
        StoreError: no such class, an invalid colour, or a colour another class has.
    """
    project = get_project(store, project)
    classes = project.classes
    index = _index(classes, name)
    palette = list(classes.palette)
    palette[index] = colour
    info = _checked(classes.names, palette, classes.ignore_index)
    _refuse_shared_colour(info, index)
    return _save(store, project, info)


def add_class(store: Store, project: int | str | Project, name: str, colour: Sequence[int] | None = None) -> Project:
    """Add a class after the last one (existing mask values keep their meaning).

    Args:
        colour: ``(r, g, b)``; by default the first VOC colour no class has.

    Raises:
        StoreError: the name is empty or taken, the colour invalid or taken, or no index is left
            below the ignore value.
    """
    project = get_project(store, project)
    classes = project.classes
    if colour is None:
        taken = set(classes.palette)
        colour = next((c for c in default_palette(256) if c not in taken), (255, 0, 255))
    info = _checked(classes.names + (name,), classes.palette + (tuple(colour),), classes.ignore_index)
    _refuse_shared_colour(info, info.num_classes - 1)
    return _save(store, project, info)


def delete_class(store: Store, project: int | str | Project, name: str) -> Project:
    """Delete a class: its mask pixels become the ignore value, later classes move down one index.

    Raises:
        StoreError: no such class, it is the last class, a run is in progress, or a mask file
            cannot be read.
    """
    project = get_project(store, project)
    classes = project.classes
    index = _index(classes, name)
    if classes.num_classes == 1:
        raise StoreError(f"{name!r} is the only class of project {project.name!r}; a project needs one")
    lut = _shift_lut(classes, index, classes.ignore_index)
    info = _checked(classes.names[:index] + classes.names[index + 1:],
                    classes.palette[:index] + classes.palette[index + 1:], classes.ignore_index)
    return _remap(store, project, lut, info)


def merge_classes(store: Store, project: int | str | Project, source: str, target: str) -> Project:
    """Merge class ``source`` into ``target``: its pixels take ``target``'s index; later classes move down one.

    Raises:
        StoreError: no such class, the two are the same, a run is in progress, or a mask file
            cannot be read.
    """
    project = get_project(store, project)
    classes = project.classes
    index, into = _index(classes, source), _index(classes, target)
    if index == into:
        raise StoreError(f"cannot merge class {source!r} into itself")
    lut = _shift_lut(classes, index, into if into < index else into - 1)
    info = _checked(classes.names[:index] + classes.names[index + 1:],
                    classes.palette[:index] + classes.palette[index + 1:], classes.ignore_index)
    return _remap(store, project, lut, info)


def _index(classes: ClassInfo, name: str) -> int:
    try:
        return classes.index(name)
    except DataError as exc:
        raise StoreError(str(exc)) from None


def _checked(names: Sequence[str], palette: Sequence[Sequence[int]], ignore_index: int) -> ClassInfo:
    try:
        return make_classes(list(names), [list(c) for c in palette], ignore_index)
    except DataError as exc:
        raise StoreError(str(exc)) from None


def _refuse_shared_colour(info: ClassInfo, index: int) -> None:
    for other, colour in enumerate(info.palette):
        if other != index and colour == info.palette[index]:
            raise StoreError(f"colour {list(colour)} is already the colour of class {info.names[other]!r}; "
                             "colour masks could not tell them apart")


def _shift_lut(classes: ClassInfo, removed: int, replacement: int) -> np.ndarray:
    """Mask value -> new value: ``removed`` becomes ``replacement``, values above it move down one."""
    lut = np.arange(256, dtype=np.uint8)
    lut[removed] = replacement
    lut[removed + 1:classes.num_classes] -= 1
    return lut


def _save(store: Store, project: Project, info: ClassInfo) -> Project:
    with store.transaction() as db:
        _write_classes(db, project.id, info)
    return get_project(store, project.id)


def _write_classes(db, project_id: int, info: ClassInfo) -> None:
    db.execute("UPDATE projects SET classes = ?, palette = ?, ignore_index = ? WHERE id = ?",
               [json.dumps(list(info.names)), json.dumps([list(c) for c in info.palette]), info.ignore_index,
                project_id])


_MASKS = ("SELECT masks.id, masks.kind, masks.path, images.hash AS image_hash FROM masks "
          "JOIN images ON images.id = masks.image_id WHERE images.project_id = ? ORDER BY masks.id")


def _remap(store: Store, project: Project, lut: np.ndarray, info: ClassInfo) -> Project:
    """Rewrite every mask of the project through ``lut`` and switch to ``info``, atomically."""
    for _ in range(_ATTEMPTS):
        _refuse_active_runs(store, project)
        before = _state(store, project.id)
        updates = []
        for row in store.db.query(_MASKS, [project.id]):
            try:
                mask = read_mask(store.path(row["path"]))
            except (OSError, ValueError, SyntaxError) as exc:
                raise StoreError(f"cannot remap mask {row['path']}: {exc}") from None
            try:
                relpath, digest = store_mask(store.workspace, project.id, row["kind"], row["image_hash"], lut[mask],
                                             info.palette)
            except OSError as exc:
                raise StoreError(f"cannot write to the workspace {store.workspace}: {exc.strerror or exc}") from None
            updates.append((row["id"], row["path"], relpath, digest))
        with store.transaction() as db:
            # Files were written outside the transaction: commit only if no mask or class changed meanwhile.
            if _state(store, project.id) != before:
                continue
            _refuse_active_runs(store, project)
            for mask_id, _, relpath, digest in updates:
                db.execute("UPDATE masks SET path = ?, hash = ? WHERE id = ?", [relpath, digest, mask_id])
            _write_classes(db, project.id, info)
        remove_unreferenced(store, [old for _, old, new, _ in updates if old != new])
        return get_project(store, project.id)
    raise StoreError(f"the masks of project {project.name!r} kept changing during the class edit; try again")


def _state(store: Store, project_id: int) -> tuple:
    masks = store.db.execute(_MASKS, [project_id]).fetchall()
    row = store.db.execute("SELECT classes, palette, ignore_index FROM projects WHERE id = ?", [project_id]).fetchone()
    return tuple(masks), tuple(row)


def _refuse_active_runs(store: Store, project: Project) -> None:
    active = store.db.execute("SELECT id, status FROM runs WHERE project_id = ? AND status IN ('queued', 'running')",
                              [project.id]).fetchall()
    if active:
        listed = ", ".join(f"run {r[0]} ({r[1]})" for r in active)
        raise StoreError(f"cannot merge or delete classes of project {project.name!r} while {listed} is in "
                         "progress; wait for it or cancel it")
