"""Turning an upload (files, folders, zip archives) into a flat list of input files, safely.

Nothing is extracted to disk: an archive entry is read into memory when it is needed (one at a
time, bounded by a per-file limit), so no entry name can ever make us write outside the
workspace. Entries that would be dangerous to extract anyway are refused and reported: absolute
paths, ``..`` components, symbolic links, encrypted entries and archives inside archives. An
archive whose entry count or total uncompressed size (its declared sizes, which ``zipfile``
enforces while reading) is over the limits is refused as a whole, as a zip bomb.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from stpp.store.report import ImportReport

ARCHIVE_SUFFIXES = (".zip",)
HIDDEN_NAMES = ("__MACOSX", "Thumbs.db", "desktop.ini")
"""Folders and files that operating systems add to archives and folders; never data."""


@dataclass(frozen=True)
class Limits:
    """What one upload may hold.

    Attributes:
        max_pixels: an image (or mask) with more pixels is refused before decoding.
        max_file_bytes: a larger file (or archive entry, uncompressed) is refused.
        max_archive_entries: an archive with more entries is refused as a whole.
        max_archive_bytes: an archive whose entries add up to more bytes (uncompressed) is
            refused as a whole.
    """

    max_pixels: int = 64_000_000
    max_file_bytes: int = 256 * 2**20
    max_archive_entries: int = 100_000
    max_archive_bytes: int = 16 * 2**30


class InputError(Exception):
    """One input file that cannot be read; the message is the problem, for the report."""


@dataclass(frozen=True)
class InputFile:
    """One file of an upload.

    Attributes:
        source: how the report names it: a path, or ``ARCHIVE:ENTRY``.
        relpath: its path below the upload item it came from (a folder's name is the first part;
            a single file is just its name), used to tell images from masks by folder name.
        path: the file on disk, or None for an archive entry.
    """

    source: str
    relpath: PurePosixPath
    path: Path | None
    _reader: Callable[[], bytes]

    @property
    def stem(self) -> str:
        """The file name without its last suffix: the image name."""
        return self.relpath.stem

    @property
    def suffix(self) -> str:
        """The lower-case suffix (``.png``)."""
        return self.relpath.suffix.lower()

    def read(self) -> bytes:
        """The file's bytes.

        Raises:
            InputError: unreadable, not a regular file, or over the size limit.
        """
        return self._reader()


def expand_inputs(paths: Sequence[str | os.PathLike], limits: Limits, report: ImportReport,
                  stack: contextlib.ExitStack) -> list[InputFile]:
    """Every file named by ``paths``: files as they are, folders walked, zip archives opened.

    Problems with a whole input (missing path, corrupt or over-limit archive) and with unsafe
    archive entries go to ``report`` as failures; hidden files are left out silently.

    Args:
        paths: files, folders and ``.zip`` archives.
        limits: the size limits.
        report: where refusals are recorded.
        stack: keeps archives open until the caller is done reading entries.
    """
    found: list[InputFile] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(_walk(path, limits, report, stack))
        elif path.suffix.lower() in ARCHIVE_SUFFIXES and path.is_file():
            found.extend(_archive(path, limits, report, stack))
        elif path.exists() or path.is_symlink():
            found.append(disk_file(path, PurePosixPath(path.name), limits))
        else:
            report.add(path.name, str(path), "failed", "no such file or folder")
    return found


def disk_file(path: Path, relpath: PurePosixPath, limits: Limits) -> InputFile:
    """An :class:`InputFile` for a file on disk, read lazily within ``limits``."""
    return InputFile(str(path), relpath, path, lambda: _read_disk(path, limits.max_file_bytes))


def _read_disk(path: Path, max_bytes: int) -> bytes:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InputError("not a regular file")
        if info.st_size > max_bytes:
            raise InputError(f"the file is {info.st_size:,} bytes, more than the limit of {max_bytes:,}")
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except OSError as exc:
        hint = " (a broken link?)" if path.is_symlink() and not path.exists() else ""
        raise InputError(f"cannot read: {exc.strerror or exc}{hint}") from None


def _walk(folder: Path, limits: Limits, report: ImportReport,
          stack: contextlib.ExitStack) -> list[InputFile]:
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not _hidden(d))
        for name in sorted(files):
            if _hidden(name):
                continue
            path = Path(directory) / name
            relpath = PurePosixPath(folder.name, *path.relative_to(folder).parts)
            if path.suffix.lower() in ARCHIVE_SUFFIXES:
                report.add(path.name, str(path), "failed", "archives inside folders are not opened; upload it directly")
                continue
            found.append(disk_file(path, relpath, limits))
    return found


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in HIDDEN_NAMES


def _archive(path: Path, limits: Limits, report: ImportReport, stack: contextlib.ExitStack) -> list[InputFile]:
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        report.add(path.name, str(path), "failed", f"not a readable zip archive: {exc}")
        return []
    files = [e for e in entries if not e.is_dir()]
    if len(entries) > limits.max_archive_entries:
        report.add(path.name, str(path), "failed", f"refused as a zip bomb: {len(entries):,} entries, more than "
                   f"the limit of {limits.max_archive_entries:,}; nothing imported from it")
        return []
    total = sum(e.file_size for e in files)
    if total > limits.max_archive_bytes:
        report.add(path.name, str(path), "failed", f"refused as a zip bomb: {total:,} bytes uncompressed, more "
                   f"than the limit of {limits.max_archive_bytes:,}; nothing imported from it")
        return []
    found = []
    for entry in files:
        source = f"{path}:{entry.filename}"
        name = entry.filename.replace("\\", "/")
        problem = _unsafe(entry, name)
        parts = PurePosixPath(name).parts
        if problem:
            report.add(PurePosixPath(name).name or name, source, "failed", problem)
        elif any(_hidden(part) for part in parts):
            continue
        elif PurePosixPath(name).suffix.lower() in ARCHIVE_SUFFIXES:
            report.add(PurePosixPath(name).name, source, "failed", "archives inside archives are not opened")
        else:
            found.append(InputFile(source, PurePosixPath(path.stem, *parts), None,
                                   _entry_reader(archive, entry, limits.max_file_bytes)))
    return found


def _unsafe(entry: zipfile.ZipInfo, name: str) -> str:
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return f"unsafe entry {entry.filename!r} in the archive: absolute path; not extracted"
    if ".." in PurePosixPath(name).parts:
        return f"unsafe entry {entry.filename!r} in the archive: '..' in its path; not extracted"
    if stat.S_ISLNK(entry.external_attr >> 16):
        return f"unsafe entry {entry.filename!r} in the archive: a symbolic link; not extracted"
    if entry.flag_bits & 0x1:
        return f"entry {entry.filename!r} is encrypted; not extracted"
    return ""


def _entry_reader(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, max_bytes: int) -> Callable[[], bytes]:
    def read() -> bytes:
        if entry.file_size > max_bytes:
            raise InputError(f"the entry is {entry.file_size:,} bytes uncompressed, more than the limit of "
                             f"{max_bytes:,}")
        try:
            with archive.open(entry) as f:
                return f.read(max_bytes + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise InputError(f"cannot read from the archive: {exc}") from None
    return read
