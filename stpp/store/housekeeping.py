"""Deleting images and runs with their files, pruning checkpoints, disk usage per project, orphan files.

Rows are deleted first (one transaction), files after, and only files under the workspace's
``images/`` and ``masks/`` that no remaining row uses: images registered in place and run folders
are never touched here. A file written by an import that was killed before its rows were committed
is an *orphan*: nothing counts it, a re-run of the import reuses it, and :func:`remove_orphan_files`
deletes the ones old enough not to belong to an import still running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from stpp.store.db import Store, StoreError
from stpp.store.files import STORE_OWNED_DIRS, is_store_owned, review_cache_relpath
from stpp.store.projects import Project, get_project
from stpp.store.runs import get_run, relative_to_workspace

ORPHAN_MIN_AGE_S = 3600.0
"""Files younger than this may belong to an import that is still running; they are left alone."""


@dataclass(frozen=True)
class DiskUsage:
    """Bytes a project takes.

    Attributes:
        images: image files the store copied into the workspace.
        masks: mask files under the workspace's ``masks/``.
        runs: the project's run folders.
        in_place: image files registered in place (on disk elsewhere; not in the workspace).
        runs_by_id: bytes of each run folder, by run id.
    """

    images: int
    masks: int
    runs: int
    in_place: int
    runs_by_id: dict[int, int]

    @property
    def total(self) -> int:
        """What the project takes in the workspace (``in_place`` files excluded)."""
        return self.images + self.masks + self.runs


def disk_usage(store: Store, project: int | str | Project) -> DiskUsage:
    """Disk usage of a project: stored images, masks and run folders; a file used twice counts once.

    Only files that rows reference are counted (orphans from an interrupted import are not).
    """
    project = get_project(store, project)
    images = _sizes(store, "SELECT DISTINCT path FROM images WHERE project_id = ? AND in_place = 0", project.id)
    in_place = _sizes(store, "SELECT DISTINCT path FROM images WHERE project_id = ? AND in_place = 1", project.id)
    masks = _sizes(store, "SELECT DISTINCT masks.path FROM masks JOIN images ON images.id = masks.image_id "
                          "WHERE images.project_id = ? AND masks.path LIKE 'masks/%'", project.id)
    runs = {row["id"]: _folder_size(store, row["run_dir"]) for row in
            store.db.query("SELECT id, run_dir FROM runs WHERE project_id = ?", [project.id])}
    return DiskUsage(images, masks, sum(runs.values()), in_place, runs)


def _sizes(store: Store, sql: str, project_id: int) -> int:
    total = 0
    for row in store.db.execute(sql, [project_id]).fetchall():
        with contextlib.suppress(FileNotFoundError):
            total += store.path(row[0]).stat().st_size
    return total


def _folder_size(store: Store, run_dir: str | None) -> int:
    if not run_dir:
        return 0
    total = 0
    for directory, _, files in os.walk(store.path(run_dir)):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(directory) / name).stat().st_size
    return total


def delete_images(store: Store, project: int | str | Project, images: Iterable[int | str]) -> int:
    """Delete images (by id or name) with their masks, scores and reviews, then their files.

    Files another row still uses and files registered in place are kept; files in run folders
    belong to their run and are kept too.

    Returns:
        How many images were deleted.

    Raises:
        StoreError: no such project, or an id or name that is not one of its images (nothing is
            deleted then).
    """
    project = get_project(store, project)
    wanted = list(images)
    with store.transaction() as db:
        ids = []
        for key in wanted:
            column = "id" if isinstance(key, int) else "name"
            row = db.execute(f"SELECT id FROM images WHERE project_id = ? AND {column} = ?",
                             [project.id, key]).fetchone()
            if row is None:
                raise StoreError(f"project {project.name!r} has no image {key!r}")
            ids.append(row[0])
        marks = ",".join("?" * len(ids))
        paths = [r[0] for r in db.execute(f"SELECT path FROM images WHERE in_place = 0 AND id IN ({marks})", ids)]
        paths += [r[0] for r in db.execute(f"SELECT path FROM masks WHERE image_id IN ({marks})", ids)]
        db.execute(f"DELETE FROM images WHERE id IN ({marks})", ids)
    remove_unreferenced(store, paths)
    return len(set(ids))


def remove_unreferenced(store: Store, relpaths: Iterable[str]) -> int:
    """Delete the store-owned files among ``relpaths`` that no image or mask row uses; returns how many."""
    removed = 0
    for relpath in sorted(set(relpaths)):
        if not is_store_owned(store.workspace, relpath) or _referenced(store, relpath):
            continue
        try:
            store.path(relpath).unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _referenced(store: Store, relpath: str) -> bool:
    return store.db.execute("SELECT 1 FROM images WHERE path = ? UNION ALL SELECT 1 FROM masks WHERE path = ? "
                            "LIMIT 1", [relpath, relpath]).fetchone() is not None


def find_orphan_files(store: Store, min_age_s: float = 0.0) -> list[str]:
    """Files under ``images/`` and ``masks/`` that no row uses (and older than ``min_age_s``), relative paths.

    Temporary files left by an interrupted atomic write are included.
    """
    used = {r[0] for r in store.db.execute("SELECT path FROM images UNION SELECT path FROM masks")}
    cutoff = time.time() - min_age_s
    orphans = []
    for top in STORE_OWNED_DIRS:
        for directory, _, files in os.walk(store.path(top)):
            for name in files:
                path = Path(directory) / name
                relpath = path.relative_to(store.workspace).as_posix()
                if relpath in used:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime <= cutoff:
                        orphans.append(relpath)
    return sorted(orphans)


def remove_orphan_files(store: Store, min_age_s: float = ORPHAN_MIN_AGE_S) -> int:
    """Delete :func:`find_orphan_files`; returns how many were deleted."""
    removed = 0
    for relpath in find_orphan_files(store, min_age_s):
        with contextlib.suppress(FileNotFoundError):
            store.path(relpath).unlink()
            removed += 1
    return removed


ACTIVE_RUN_STATUSES = ("queued", "running")


def delete_run(store: Store, run_id: int) -> None:
    """Delete a run that is not queued or running: its rows (events, checkpoints, scores, pseudo
    masks cascade), then its run folder and review thumbnails. Reviews keep their decisions and
    reviewed masks.
    """
    run = get_run(store, run_id)
    if run.status in ACTIVE_RUN_STATUSES:
        raise StoreError(f"run {run_id} is {run.status}; cancel it before deleting it")
    with store.transaction() as db:
        db.execute("DELETE FROM runs WHERE id = ?", [run_id])
    if run.run_dir:
        shutil.rmtree(store.path(run.run_dir), ignore_errors=True)
        store.path(f"{run.run_dir}.log").unlink(missing_ok=True)
    shutil.rmtree(store.path(review_cache_relpath(run_id)), ignore_errors=True)


def prune_run_checkpoints(store: Store, run_id: int) -> int:
    """Free a finished run's intermediate checkpoints; returns the bytes freed.

    Kept: each stage's final model (the teacher's is its last checkpoint). Removed: the teacher's
    earlier checkpoints (their stability masks stay in the run folder, so the review's checkpoint
    views keep working) and any leftover ``last.pt``.
    """
    run = get_run(store, run_id)
    if run.status != "done":
        raise StoreError(f"run {run_id} is {run.status}: only a finished (done) run can be pruned")
    checkpoints = store.path(run.run_dir) / "checkpoints"
    teacher = sorted(checkpoints.glob("teacher_ckpt*.pt"), key=lambda p: int(p.stem.removeprefix("teacher_ckpt")))
    doomed = teacher[:-1] + [p for p in [checkpoints / "last.pt"] if p.exists()]
    relpaths = [relative_to_workspace(store, p) for p in doomed]
    with store.transaction() as db:
        for relpath in relpaths:
            db.execute("DELETE FROM checkpoints WHERE run_id = ? AND path = ?", [run_id, relpath])
    freed = 0
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            freed += path.stat().st_size
            path.unlink()
    return freed
