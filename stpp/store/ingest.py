"""Adding images and their masks to a project: uploads of files, folders and zip archives, and folder datasets.

Public API (what the app, the CLI and the tests call):

- ``ingest_files(store, project, paths, role, *, in_place=False, limits=Limits()) -> ImportReport``:
  ``paths`` may be images, masks, folders and ``.zip`` archives, mixed; every image gets ``role``
  (``labelled``, ``unlabelled`` or ``validation``; ``labeled``, ``unlabeled`` and ``val`` also
  work). Images and masks are paired by file stem (:mod:`stpp.store.pairing` has the rules).
- ``import_folder_dataset(store, project, root, labeled=None, unlabeled=None, val=None, *,
  in_place=False, limits=Limits()) -> ImportReport``: the folder layout of DESIGN.md
  (``ROOT/images/**/ID.ext``, ``ROOT/masks/**/ID.png``) with roles from its split lists.
- :class:`ImportReport` / :class:`FileResult`: one result per image (``added``, ``skipped`` or
  ``failed``, with the reason and the file at fault) and one per input that is not part of an
  image (an archive refused, a stray text file).

What is stored: labelled and validation images need a mask, stored as ``ground_truth``; an
unlabelled image's mask, when given, is stored as ``reference`` (never read by training). Masks are
class-index PNGs (grayscale or palette) or RGB PNGs in the project's colours
(:mod:`stpp.store.decode`). Images are decoded fully and converted deliberately (EXIF orientation,
greyscale, alpha, 16-bit, TIFF; see :mod:`stpp.store.decode`). An image whose content is already in
the project (same sha1 of the file) is skipped as a duplicate, whatever its name; a different image
with a name the project already has is refused. ``in_place=True`` registers files on disk where
they are (the row holds their absolute path; they are never copied, changed or deleted by stpp);
archive entries and images that need a conversion stpp's reader would not repeat (16-bit,
multi-frame) are copied instead, and the report says so.

Bad input never stops an import: each bad file is a ``failed`` result naming the file and the
problem, and every valid file of the same upload is still added. Nothing is written outside the
workspace (archives are read in memory, never extracted). Files are written first (atomically,
named by content), then each batch's rows in one transaction, so a killed import leaves no row
without its file and re-running it adds what is missing (the files already written are reused).
Labels made in other tools (VOC / CVAT layouts) come in through :mod:`stpp.store.voc`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from stpp.store.db import Store, StoreError, utc_now
from stpp.store.decode import DecodedImage, DecodeError, decode_image, decode_mask
from stpp.store.files import image_relpath, sha1_bytes, store_mask, write_bytes
from stpp.store.pairing import IMAGE_SUFFIXES, Pair, pair_files
from stpp.store.projects import Project, get_project
from stpp.store.report import FileResult, ImportReport
from stpp.store.sources import InputError, InputFile, Limits, disk_file, expand_inputs

MASK_SUFFIXES = (".png",)
BATCH_SIZE = 64
SPLIT_FILES = {"labelled": "labeled.txt", "validation": "val.txt", "unlabelled": "unlabeled.txt"}
ROLE_ALIASES = {"labelled": "labelled", "labeled": "labelled", "unlabelled": "unlabelled",
                "unlabeled": "unlabelled", "validation": "validation", "val": "validation"}

SplitArg = str | Path | Iterable[str] | None

__all__ = ["BATCH_SIZE", "FileResult", "ImportReport", "Limits", "SPLIT_FILES", "import_folder_dataset",
           "ingest_files", "ingest_pairs", "normalize_role"]


class _Rejected(Exception):
    """One image cannot be used; carries the file at fault, the status and the reason."""

    def __init__(self, reason: str, status: str = "failed", source: str | None = None):
        super().__init__(reason)
        self.status = status
        self.source = source


@dataclass
class _Prepared:
    name: str
    source: str
    role: str
    image: dict
    mask: dict | None
    note: str


def normalize_role(role: str) -> str:
    """``labelled``, ``unlabelled`` or ``validation`` (also from ``labeled``, ``unlabeled``, ``val``).

    Raises:
        StoreError: any other value.
    """
    try:
        return ROLE_ALIASES[str(role).strip().lower()]
    except KeyError:
        raise StoreError(f"unknown role {role!r}: use labelled, unlabelled or validation") from None


def ingest_files(store: Store, project: int | str | Project, paths: Sequence[str | Path], role: str, *,
                 in_place: bool = False, limits: Limits = Limits(), batch_size: int = BATCH_SIZE) -> ImportReport:
    """Add uploaded images (with their masks) to a project.

    Args:
        store: the open store.
        project: the target project (id, name or :class:`Project`).
        paths: images, masks, folders and ``.zip`` archives, in any mix.
        role: the role of every image: ``labelled`` and ``validation`` need a mask (ground truth);
            ``unlabelled`` images may bring one (kept as a ``reference`` mask).
        in_place: register image files on disk where they are instead of copying them.
        limits: pixel, file-size and archive limits.
        batch_size: rows written per transaction.

    Returns:
        The per-file :class:`ImportReport`.

    Raises:
        StoreError: no such project, an unknown role, or the workspace cannot be written.
    """
    project = get_project(store, project)
    role = normalize_role(role)
    report = ImportReport()
    with contextlib.ExitStack() as stack:
        files = expand_inputs(paths, limits, report, stack)
        pairs = pair_files(files, role, report)
        ingest_pairs(store, project, pairs, report, in_place=in_place, limits=limits, batch_size=batch_size)
    return report


def import_folder_dataset(
    store: Store,
    project: int | str | Project,
    root: str | Path,
    labeled: SplitArg = None,
    unlabeled: SplitArg = None,
    val: SplitArg = None,
    *,
    in_place: bool = False,
    limits: Limits = Limits(),
    batch_size: int = BATCH_SIZE,
) -> ImportReport:
    """Import a folder dataset (``ROOT/images/**/ID.ext``, ``ROOT/masks/**/ID.png``) into a project.

    Args:
        store: the open store.
        project: the target project (id, name or :class:`Project`).
        root: the dataset folder.
        labeled, unlabeled, val: split lists: a text file (one ID per line; a relative path is
            looked up under ``root`` when it does not exist as given) or a sequence of IDs. When
            all three are None, ``ROOT/labeled.txt``, ``unlabeled.txt`` and ``val.txt`` are used if
            present; with none of those either, images with a mask are labelled and the rest
            unlabelled.
        in_place: register the image files where they are instead of copying them.
        limits: pixel and file-size limits.
        batch_size: rows written per transaction.

    Returns:
        An :class:`ImportReport` with one result per listed ID (and per unusable file found).

    Raises:
        StoreError: no such project, ``root`` is not a folder dataset, or a split list cannot be read.
    """
    project = get_project(store, project)
    root = Path(root)
    if not (root / "images").is_dir():
        raise StoreError(f"{root} is not a folder dataset: it has no images/ folder")
    report = ImportReport()
    images = _index(root / "images", IMAGE_SUFFIXES, limits, report)
    masks = _index(root / "masks", MASK_SUFFIXES, limits, report) if (root / "masks").is_dir() else {}
    pairs = _plan(root, {"labelled": labeled, "unlabelled": unlabeled, "validation": val}, images, masks, report)
    ingest_pairs(store, project, pairs, report, in_place=in_place, limits=limits, batch_size=batch_size)
    return report


def _index(folder: Path, suffixes: tuple[str, ...], limits: Limits, report: ImportReport) -> dict[str, InputFile]:
    """Files under ``folder`` by stem; a stem found twice is reported and left out."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in suffixes and not path.name.startswith(".") and not path.is_dir():
            found.setdefault(path.stem, []).append(path)
    index = {}
    for stem, paths in found.items():
        if len(paths) == 1:
            index[stem] = disk_file(paths[0], PurePosixPath(folder.name, paths[0].name), limits)
        else:
            others = ", ".join(str(p.relative_to(folder)) for p in paths)
            report.add(stem, str(paths[0]), "failed",
                       f"name collision: {len(paths)} files are named {stem!r} under {folder} ({others})")
    return index


def _plan(root: Path, splits: dict[str, SplitArg], images: dict[str, InputFile], masks: dict[str, InputFile],
          report: ImportReport) -> list[Pair]:
    """The pairs to import, labelled first, each ID once."""
    if all(v is None for v in splits.values()):
        splits = {role: root / name for role, name in SPLIT_FILES.items() if (root / name).is_file()}
        if not splits:
            return [Pair(name, image, masks.get(name), "labelled" if name in masks else "unlabelled")
                    for name, image in images.items()]
    seen: dict[str, str] = {}
    pairs = []
    for role in SPLIT_FILES:  # labelled, validation, unlabelled
        if splits.get(role) is None:
            continue
        ids, listed_in = _read_split(root, splits[role])
        for name in ids:
            image = images.get(name)
            if name in seen:
                if seen[name] != role:
                    report.add(name, image.source if image else listed_in, "failed",
                               f"listed as both {seen[name]} and {role}; kept as {seen[name]}")
                continue
            seen[name] = role
            pairs.append(Pair(name, image, masks.get(name), role, source=listed_in))
    return pairs


def _read_split(root: Path, value: str | Path | Iterable[str]) -> tuple[list[str], str]:
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.exists() and not path.is_absolute():
            path = root / path
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"cannot read split list {path}: {exc}") from None
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")], str(path)
    return [str(v).strip() for v in value if str(v).strip()], "the split list"


def ingest_pairs(store: Store, project: Project, pairs: Sequence[Pair], report: ImportReport, *,
                 in_place: bool = False, limits: Limits = Limits(), batch_size: int = BATCH_SIZE) -> None:
    """Check, write and record images already paired with their masks and roles (the step every import shares).

    One result per pair goes to ``report``. Files are written before rows; each batch of rows is
    one transaction.

    Raises:
        StoreError: the workspace cannot be written, or the project's classes changed during the
            import (masks were read with the old ones; the batches committed before stay).
    """
    known = {row["name"]: row["hash"] for row in
             store.db.query("SELECT name, hash FROM images WHERE project_id = ?", [project.id])}
    by_hash = {digest: name for name, digest in known.items()}
    for start in range(0, len(pairs), batch_size):
        prepared = []
        for pair in pairs[start:start + batch_size]:
            try:
                item = _prepare(store, project, pair, known, by_hash, in_place, limits)
            except _Rejected as exc:
                source = exc.source or (pair.image.source if pair.image else pair.source)
                report.add(pair.name, source, exc.status, str(exc))
                continue
            known[pair.name] = item.image["hash"]
            by_hash[item.image["hash"]] = pair.name
            prepared.append(item)
        report.results.extend(_insert(store, project, prepared))


def _prepare(store: Store, project: Project, pair: Pair, known: dict[str, str], by_hash: dict[str, str],
             in_place: bool, limits: Limits) -> _Prepared:
    """Check one image and its mask and write their files; the rows come later, per batch."""
    name = pair.name
    if pair.image is None:
        raise _Rejected(f"no image named {name!r} under images/")
    if any(ord(ch) < 32 for ch in name):
        raise _Rejected("the file name contains control characters")
    data = _read(pair.image)
    digest = sha1_bytes(data)
    if name in known:
        if known[name] == digest:
            raise _Rejected("already in the project", status="skipped")
        raise _Rejected(f"a different image named {name!r} is already in the project")
    if digest in by_hash:
        raise _Rejected(f"duplicate: same content as {by_hash[digest]!r}, already in the project", status="skipped")
    try:
        decoded = decode_image(data, limits.max_pixels)
    except DecodeError as exc:
        raise _Rejected(str(exc)) from None

    mask_row = None
    if pair.role in ("labelled", "validation") and pair.mask is None:
        raise _Rejected(f"a {pair.role} image needs a mask (a PNG named {name}.png in a masks/ folder, "
                        f"or {name}_mask.png)")
    if pair.mask is not None:
        mask_row = _prepare_mask(store, project, pair, decoded, digest, limits)

    notes = [decoded.note] if decoded.note else []
    if in_place and pair.image.path is not None and decoded.readable_as_is:
        path, owned = str(pair.image.path.resolve()), 0
        notes.insert(0, "registered in place")
    else:
        if in_place:
            notes.insert(0, "copied, not registered in place: "
                         + ("archive entries are always copied" if pair.image.path is None
                            else "stpp's reader would not repeat its conversion"))
        path, owned = image_relpath(project.id, digest, decoded.suffix), 1
        _write(store, path, decoded.data)
    image_row = {"project_id": project.id, "name": name, "hash": digest, "path": path, "in_place": 1 - owned,
                 "width": decoded.width, "height": decoded.height, "role": pair.role}
    return _Prepared(name, pair.image.source, pair.role, image_row, mask_row, "; ".join(notes))


def _prepare_mask(store: Store, project: Project, pair: Pair, decoded: DecodedImage, image_hash: str,
                  limits: Limits) -> dict:
    source = pair.mask.source
    data = _read(pair.mask, source)
    try:
        mask = decode_mask(data, project.classes, decoded.width, decoded.height, max_pixels=limits.max_pixels,
                           file_size=decoded.file_size)
    except DecodeError as exc:
        raise _Rejected(f"mask of {pair.name!r}: {exc}", source=source) from None
    kind = "reference" if pair.role == "unlabelled" else "ground_truth"
    try:
        relpath, mask_hash = store_mask(store.workspace, project.id, kind, image_hash, mask, project.classes.palette)
    except OSError as exc:
        raise StoreError(f"cannot write to the workspace {store.workspace}: {exc.strerror or exc}") from None
    return {"kind": kind, "path": relpath, "hash": mask_hash}


def _read(item: InputFile, source: str | None = None) -> bytes:
    try:
        return item.read()
    except InputError as exc:
        raise _Rejected(str(exc), source=source) from None


def _write(store: Store, relpath: str, data: bytes) -> None:
    try:
        write_bytes(store.workspace, relpath, data)
    except OSError as exc:
        raise StoreError(f"cannot write to the workspace {store.workspace}: {exc.strerror or exc}") from None


def _insert(store: Store, project: Project, prepared: Sequence[_Prepared]) -> list[FileResult]:
    """Write the rows of a batch in one transaction; on a conflict, one transaction per item."""
    if not prepared:
        return []
    try:
        with store.transaction() as db:
            _check_classes(db, project)
            for item in prepared:
                _insert_one(db, item)
        return [_added(item) for item in prepared]
    except sqlite3.IntegrityError:
        pass
    results = []
    for item in prepared:
        try:
            with store.transaction() as db:
                _check_classes(db, project)
                _insert_one(db, item)
            results.append(_added(item))
        except sqlite3.IntegrityError as exc:
            results.append(FileResult(item.name, item.source, "failed", f"conflicts with the store: {exc}"))
    return results


def _check_classes(db, project: Project) -> None:
    # Masks were mapped with the classes read at the start; a merge, delete or recolour since then
    # would leave them with stale indices (renames do not matter).
    row = db.execute("SELECT palette FROM projects WHERE id = ?", [project.id]).fetchone()
    if row is None or [tuple(c) for c in json.loads(row[0])] != list(project.classes.palette):
        raise StoreError(f"the classes of project {project.name!r} changed during the import; run it again")


def _insert_one(db, item: _Prepared) -> None:
    now = utc_now()
    image_id = db["images"].insert({**item.image, "created": now}).last_pk
    if item.mask is not None:
        db["masks"].insert({**item.mask, "image_id": image_id, "run_id": None, "stage": None, "created": now})


def _added(item: _Prepared) -> FileResult:
    reason = item.role + (f", {item.mask['kind']} mask" if item.mask else "")
    return FileResult(item.name, item.source, "added", reason + (f"; {item.note}" if item.note else ""))
