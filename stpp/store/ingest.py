"""Importing images and masks into a project: the folder-dataset layout of DESIGN.md, in one call.

Every file is checked on its own; a bad file is reported and skipped while the valid ones are
added. Files are written to the workspace first (atomically), then each batch of rows goes in one
transaction, so a killed import leaves no row without its file and can simply be run again.
"""

from __future__ import annotations

import io
import sqlite3
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from stpp.data.masks import read_image, read_mask
from stpp.store.db import Store, StoreError, utc_now
from stpp.store.files import image_relpath, mask_relpath, sha1_bytes, write_bytes, write_palette_mask
from stpp.store.projects import Project, get_project

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (".png",)
DEFAULT_MAX_PIXELS = 64_000_000
"""Images with more pixels are refused (decompression bombs); about 8000 x 8000."""
BATCH_SIZE = 64
SPLIT_FILES = {"labelled": "labeled.txt", "validation": "val.txt", "unlabelled": "unlabeled.txt"}

SplitArg = str | Path | Iterable[str] | None


@dataclass(frozen=True)
class FileResult:
    """What happened to one input.

    Attributes:
        name: the image ID (file stem).
        source: the input file (or the split list that named a missing one).
        status: ``added``; ``skipped`` (already in the project, nothing to do); ``failed`` (bad input).
        reason: why it was skipped or failed; for ``added``, the role and mask kind.
    """

    name: str
    source: str
    status: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.status}: {self.source}" + (f": {self.reason}" if self.reason else "")


@dataclass
class ImportReport:
    """The per-file outcome of one import."""

    results: list[FileResult] = field(default_factory=list)

    def by_status(self, status: str) -> list[FileResult]:
        """The results with this status."""
        return [r for r in self.results if r.status == status]

    @property
    def added(self) -> list[FileResult]:
        """Inputs that were added."""
        return self.by_status("added")

    @property
    def skipped(self) -> list[FileResult]:
        """Inputs already in the project."""
        return self.by_status("skipped")

    @property
    def failed(self) -> list[FileResult]:
        """Inputs refused, each with its reason."""
        return self.by_status("failed")

    def summary(self) -> str:
        """One line: how many files were added, skipped and failed."""
        return f"{len(self.added)} added, {len(self.skipped)} skipped, {len(self.failed)} failed"


class _Rejected(Exception):
    """One input cannot be used; carries the status and the reason."""

    def __init__(self, reason: str, status: str = "failed"):
        super().__init__(reason)
        self.status = status


@dataclass
class _Prepared:
    name: str
    source: str
    role: str
    image: dict
    mask: dict | None


def import_folder_dataset(
    store: Store,
    project: int | str | Project,
    root: str | Path,
    labeled: SplitArg = None,
    unlabeled: SplitArg = None,
    val: SplitArg = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch_size: int = BATCH_SIZE,
) -> ImportReport:
    """Import a folder dataset (``ROOT/images/**/ID.ext``, ``ROOT/masks/**/ID.png``) into a project.

    Images are copied into the workspace. Labelled and validation images need a mask, stored as
    ``ground_truth``; an unlabelled image's mask, when there is one, is stored as ``reference``
    (never read by training). Images already in the project with the same content are skipped,
    so an interrupted import can be re-run.

    Args:
        store: the open store.
        project: the target project (id, name or :class:`Project`).
        root: the dataset folder.
        labeled, unlabeled, val: split lists: a text file (one ID per line; a relative path is
            looked up under ``root`` when it does not exist as given) or a sequence of IDs. When
            all three are None, ``ROOT/labeled.txt``, ``unlabeled.txt`` and ``val.txt`` are used if
            present; with none of those either, images with a mask are labelled and the rest
            unlabelled.
        max_pixels: larger images are refused.
        batch_size: rows written per transaction.

    Returns:
        An :class:`ImportReport` with one result per listed ID (and per unusable file found).

    Raises:
        StoreError: no such project, ``root`` is not a folder, or a split list cannot be read.
    """
    project = get_project(store, project)
    root = Path(root)
    if not (root / "images").is_dir():
        raise StoreError(f"{root} is not a folder dataset: it has no images/ folder")
    report = ImportReport()
    images = _index(root / "images", IMAGE_SUFFIXES, report)
    masks = _index(root / "masks", MASK_SUFFIXES, report) if (root / "masks").is_dir() else {}
    work = _plan(root, {"labelled": labeled, "unlabelled": unlabeled, "validation": val}, images, masks, report)

    known = {row["name"]: row["hash"] for row in
             store.db.query("SELECT name, hash FROM images WHERE project_id = ?", [project.id])}
    by_hash = {digest: name for name, digest in known.items()}
    for start in range(0, len(work), batch_size):
        prepared = []
        for name, role, source in work[start:start + batch_size]:
            try:
                item = _prepare(store, project, name, role, images.get(name), masks.get(name), source,
                                known, by_hash, max_pixels)
            except _Rejected as exc:
                report.results.append(FileResult(name, source, exc.status, str(exc)))
                continue
            known[name] = item.image["hash"]
            by_hash[item.image["hash"]] = name
            prepared.append(item)
        report.results.extend(_insert(store, prepared))
    return report


def _index(folder: Path, suffixes: tuple[str, ...], report: ImportReport) -> dict[str, Path]:
    """Files under ``folder`` by stem; a stem found twice is reported and left out."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file() and not path.name.startswith("."):
            found.setdefault(path.stem, []).append(path)
    index = {}
    for stem, paths in found.items():
        if len(paths) == 1:
            index[stem] = paths[0]
        else:
            others = ", ".join(str(p.relative_to(folder)) for p in paths)
            report.results.append(FileResult(stem, str(paths[0]), "failed", f"the name {stem!r} is used by {others}"))
    return index


def _plan(root: Path, splits: dict[str, SplitArg], images: dict[str, Path], masks: dict[str, Path],
          report: ImportReport) -> list[tuple[str, str, str]]:
    """The (ID, role, source) to import, labelled first, each ID once."""
    if all(v is None for v in splits.values()):
        splits = {role: root / name for role, name in SPLIT_FILES.items() if (root / name).is_file()}
        if not splits:
            return [(name, "labelled" if name in masks else "unlabelled", str(path)) for name, path in images.items()]
    seen: dict[str, str] = {}
    work = []
    for role in SPLIT_FILES:  # labelled, validation, unlabelled
        if splits.get(role) is None:
            continue
        ids, listed_in = _read_split(root, splits[role])
        for name in ids:
            source = str(images.get(name, listed_in))
            if name in seen:
                if seen[name] != role:
                    report.results.append(FileResult(name, source, "failed",
                                                     f"listed as both {seen[name]} and {role}; kept as {seen[name]}"))
                continue
            seen[name] = role
            work.append((name, role, source))
    return work


def _read_split(root: Path, value: str | Path | Iterable[str]) -> tuple[list[str], str]:
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.exists() and not path.is_absolute():
            path = root / path
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"cannot read split list {path}: {exc}") from None
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")], str(path)
    return [str(v).strip() for v in value if str(v).strip()], "the split list"


def _prepare(store: Store, project: Project, name: str, role: str, image_path: Path | None,
             mask_path: Path | None, source: str, known: dict[str, str], by_hash: dict[str, str],
             max_pixels: int) -> _Prepared:
    """Check one image (and its mask) and write their files; rows come later."""
    if image_path is None:
        raise _Rejected(f"no image named {name!r} under images/")
    try:
        data = image_path.read_bytes()
    except OSError as exc:
        raise _Rejected(f"cannot read: {exc.strerror or exc}") from None
    digest = sha1_bytes(data)
    if name in known:
        if known[name] == digest:
            raise _Rejected("already in the project", status="skipped")
        raise _Rejected(f"a different image named {name!r} is already in the project")
    if digest in by_hash:
        raise _Rejected(f"same content as {by_hash[digest]!r}, already in the project")
    stored, suffix, width, height = _decode_image(image_path, data, max_pixels)

    mask_row = None
    if role in ("labelled", "validation") and mask_path is None:
        raise _Rejected(f"a {role} image needs a mask masks/{name}.png")
    if mask_path is not None:
        kind = "reference" if role == "unlabelled" else "ground_truth"
        mask = _check_mask(mask_path, width, height, project)
        rel = mask_relpath(project.id, kind, digest)
        mask_row = {"kind": kind, "path": rel,
                    "hash": write_palette_mask(store.workspace, rel, mask, project.classes.palette)}

    rel = image_relpath(project.id, digest, suffix)
    write_bytes(store.workspace, rel, stored)
    image_row = {"project_id": project.id, "name": name, "hash": digest, "path": rel, "in_place": 0,
                 "width": width, "height": height, "role": role}
    return _Prepared(name, str(image_path), role, image_row, mask_row)


def _decode_image(path: Path, data: bytes, max_pixels: int) -> tuple[bytes, str, int, int]:
    """Verify an image; returns (bytes to store, suffix, width, height) of the upright RGB image.

    JPEG and PNG files that are already upright RGB are kept byte for byte; anything else (EXIF
    rotation, greyscale, alpha, palette, 16-bit, BMP, TIFF) is stored as an upright RGB PNG.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    raise _Rejected(f"{image.width}x{image.height} is more than {max_pixels} pixels")
                image.load()
                fmt, mode = image.format, image.mode
                orientation = image.getexif().get(0x0112, 1)
                upright = (image.height, image.width) if orientation in (5, 6, 7, 8) else image.size[::-1]
    except _Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _Rejected(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise _Rejected("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _Rejected(f"corrupt or truncated image: {exc}") from None
    height, width = upright
    if fmt in ("JPEG", "PNG") and mode == "RGB" and orientation in (None, 1):
        return data, ".jpg" if fmt == "JPEG" else ".png", width, height
    rgb = read_image(path)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue(), ".png", rgb.width, rgb.height


def _check_mask(path: Path, width: int, height: int, project: Project) -> np.ndarray:
    try:
        mask = read_mask(path)
    except ValueError:
        raise _Rejected(f"mask {path}: must be an 8-bit index PNG (grayscale or palette); "
                        "RGB colour masks are not supported yet") from None
    except (OSError, SyntaxError) as exc:
        raise _Rejected(f"mask {path}: cannot read: {exc}") from None
    if mask.shape != (height, width):
        raise _Rejected(f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, its image is {width}x{height}")
    classes = project.classes
    values = np.unique(mask)
    bad = [int(v) for v in values if v >= classes.num_classes and v != classes.ignore_index]
    if bad:
        raise _Rejected(f"mask {path} has values {bad[:10]} outside the classes 0..{classes.num_classes - 1} "
                        f"and the ignore index {classes.ignore_index}")
    return mask


def _insert(store: Store, prepared: Sequence[_Prepared]) -> list[FileResult]:
    """Write the rows of a batch in one transaction; on a conflict, one transaction per item."""
    if not prepared:
        return []
    try:
        with store.transaction() as db:
            for item in prepared:
                _insert_one(db, item)
        return [_added(item) for item in prepared]
    except sqlite3.IntegrityError:
        pass
    results = []
    for item in prepared:
        try:
            with store.transaction() as db:
                _insert_one(db, item)
            results.append(_added(item))
        except sqlite3.IntegrityError as exc:
            results.append(FileResult(item.name, item.source, "failed", f"conflicts with the store: {exc}"))
    return results


def _insert_one(db, item: _Prepared) -> None:
    now = utc_now()
    image_id = db["images"].insert({**item.image, "created": now}).last_pk
    if item.mask is not None:
        db["masks"].insert({**item.mask, "image_id": image_id, "run_id": None, "stage": None, "created": now})


def _added(item: _Prepared) -> FileResult:
    return FileResult(item.name, item.source, "added", item.role + (f", {item.mask['kind']} mask" if item.mask else ""))
