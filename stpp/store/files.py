"""Where the store keeps files in the workspace, and writing them (always atomically, before rows).

Layout (paths relative to the workspace, as stored in the rows):

- ``images/<project_id>/<sha1[:2]>/<sha1>.<ext>`` - image files, named by the sha1 of the original
  file's bytes (the original bytes when they can be used as they are, else an upright RGB PNG);
- ``masks/<project_id>/<kind>/<image sha1>.png`` - ground-truth and reference masks, palette PNGs;
- ``runs/<run_id>/`` - run folders (see DESIGN.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from stpp.data.masks import atomic_save, write_mask


def sha1_bytes(data: bytes) -> str:
    """The hex sha1 of ``data``."""
    return hashlib.sha1(data).hexdigest()


def image_relpath(project_id: int, sha1: str, suffix: str) -> str:
    """Workspace-relative path of a project's image file."""
    return f"images/{project_id}/{sha1[:2]}/{sha1}{suffix}"


def mask_relpath(project_id: int, kind: str, image_sha1: str) -> str:
    """Workspace-relative path of an image's ground-truth or reference mask."""
    return f"masks/{project_id}/{kind}/{image_sha1}.png"


def write_bytes(workspace: Path, relpath: str, data: bytes) -> None:
    """Write ``data`` at ``workspace/relpath`` atomically, unless that file already holds it."""
    path = workspace / relpath
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    atomic_save(path, lambda tmp: Path(tmp).write_bytes(data))


def write_palette_mask(workspace: Path, relpath: str, mask: np.ndarray, palette) -> str:
    """Write a class-index mask as a palette PNG atomically; returns the sha1 of the file."""
    path = workspace / relpath
    write_mask(path, mask, palette)
    return sha1_bytes(path.read_bytes())
