"""Where the store keeps files in the workspace, and writing them (always atomically, before rows).

Layout (paths relative to the workspace, as stored in the rows):

- ``images/<project_id>/<sha1[:2]>/<sha1>.<ext>`` - image files, named by the sha1 of the original
  file's bytes (the original bytes when they can be used as they are, else an upright RGB PNG);
  an image registered in place keeps its absolute path and is never written or deleted by us;
- ``masks/<project_id>/<kind>/<image sha1>.<mask sha1[:16]>.png`` - masks the store writes
  (ingested ground truth and reference masks, remapped masks), palette PNGs named by content, so
  a replaced mask never overwrites a file a committed row still points at;
- ``runs/<run_id>/`` - run folders (see DESIGN.md).

Because names are content hashes, writing is idempotent: re-running an interrupted import finds
the files it already wrote and reuses them.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from stpp.core.masks import atomic_save, palette_bytes

STORE_OWNED_DIRS = ("images", "masks")
"""Top-level workspace folders whose files belong to rows and are deleted with them."""


def review_cache_relpath(run_id: int) -> str:
    """Workspace-relative folder of a run's review thumbnails and class index (deleted with the run)."""
    return f"cache/review/{int(run_id)}"


def sha1_bytes(data: bytes) -> str:
    """The hex sha1 of ``data``."""
    return hashlib.sha1(data).hexdigest()


def image_relpath(project_id: int, sha1: str, suffix: str) -> str:
    """Workspace-relative path of a project's image file."""
    return f"images/{project_id}/{sha1[:2]}/{sha1}{suffix}"


def mask_relpath(project_id: int, kind: str, image_sha1: str, mask_sha1: str | None = None) -> str:
    """Workspace-relative path of a mask the store writes.

    Args:
        project_id: the project.
        kind: the mask kind (``ground_truth``, ``reference``, ``pseudo``, ``reviewed``).
        image_sha1: the image's content hash.
        mask_sha1: the mask file's content hash; None gives the legacy one-per-kind name.
    """
    if mask_sha1 is None:
        return f"masks/{project_id}/{kind}/{image_sha1}.png"
    return f"masks/{project_id}/{kind}/{image_sha1}.{mask_sha1[:16]}.png"


def write_bytes(workspace: Path, relpath: str, data: bytes) -> None:
    """Write ``data`` at ``workspace/relpath`` atomically, unless that file already holds it."""
    path = workspace / relpath
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    atomic_save(path, lambda tmp: Path(tmp).write_bytes(data))


def encode_palette_mask(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """A class-index mask as palette-PNG bytes (deterministic: same mask and palette, same bytes)."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(palette_bytes(palette))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def store_mask(workspace: Path, project_id: int, kind: str, image_sha1: str, mask: np.ndarray,
               palette: Sequence[Sequence[int]]) -> tuple[str, str]:
    """Write a mask as a content-named palette PNG; returns ``(relative path, sha1 of the file)``."""
    data = encode_palette_mask(mask, palette)
    digest = sha1_bytes(data)
    relpath = mask_relpath(project_id, kind, image_sha1, digest)
    write_bytes(workspace, relpath, data)
    return relpath, digest


def is_store_owned(workspace: Path, relpath: str) -> bool:
    """Whether ``relpath`` names a file under the workspace's ``images/`` or ``masks/`` (ours to delete)."""
    if not relpath or Path(relpath).is_absolute():
        return False
    parts = Path(relpath).parts
    if not parts or parts[0] not in STORE_OWNED_DIRS or ".." in parts:
        return False
    return (workspace / relpath).resolve().is_relative_to(workspace.resolve())
