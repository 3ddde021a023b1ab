"""What leaves the app after review: dataset exports, labelling tasks, model exports and predictions
on new images.

Dataset exports call :func:`stpp.store.export.export_project` in this process (no torch). Model
exports, predictions and the teacher pass of the lowest-confidence label order need torch, so they run
as child processes (``python -m stpp.model_export``, ``python -m stpp predict`` and ``python -m stpp
project teacher-signals``), like training runs in a worker; the web process waits for a few
seconds of work and never imports torch. Their files go under ``WORKSPACE/cache/`` (git-ignored
with the workspace); every call writes into a fresh folder, and only the newest
:data:`KEEP_SCRATCH` folders of each kind are kept.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from stpp.backends.local import REPO_ROOT, child_env
from stpp.core.label_order import LEAST_STABLE, needs_teacher_signals
from stpp.core.layout import PREDICTION_MANIFEST
from stpp.core.masks import IMAGE_SUFFIXES, atomic_save, read_image, read_mask
from stpp.services.label_queue import LabelTask, export_label_task
from stpp.services.teacher_signals import missing_teacher_signals
from stpp.store.db import Store, StoreError
from stpp.store.export import ExportFilter, ExportReport, export_project
from stpp.store.projects import get_project
from stpp.store.runs import get_run, run_layout

CHILD_TIMEOUT_S = 900
TEACHER_PASS_TIMEOUT_S = 6 * 3600
"""The teacher pass's limit: it shows its progress, and on a CPU it takes about a second an image."""
_POLL_S = 0.5
_BAR = re.compile(r"\|\s*(\d+)/(\d+) \[")
"""A tqdm bar's counts, ``| 7/60 [``."""
KEEP_SCRATCH = 5
"""Folders kept per kind under ``WORKSPACE/cache/`` (the new one included): the app serves a file once,
from Gradio's own copy, so older ones are only disk."""


class OutputError(StoreError):
    """An export or prediction that failed (the message is the child's last line)."""


def scratch_dir(store: Store, kind: str) -> Path:
    """A new folder ``WORKSPACE/cache/<kind>/<random>`` for one export or prediction; the oldest
    folders of that kind beyond :data:`KEEP_SCRATCH` are deleted."""
    parent = store.path("cache") / kind
    if parent.is_dir():
        older = sorted((p for p in parent.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for stale in older[KEEP_SCRATCH - 1:]:
            shutil.rmtree(stale, ignore_errors=True)
    path = parent / uuid.uuid4().hex[:12]
    path.mkdir(parents=True)
    return path


def export_dataset(store: Store, project: int | str, fmt: str, *, run_id: int | None = None,
                   stage: str | None = None, filter: ExportFilter = ExportFilter(),
                   include_reference: bool = False, allow_unfinished: bool = False) -> ExportReport:
    """Export a project's dataset as ``<project>-<fmt>.zip`` in a fresh cache folder (see :func:`export_project`)."""
    name = str(project).replace("/", "_")
    target = scratch_dir(store, "exports") / f"{name}-{fmt}{f'-run{run_id}' if run_id else ''}.zip"
    return export_project(store, project, target, fmt, run_id=run_id, stage=stage, filter=filter,
                          include_reference=include_reference, allow_unfinished=allow_unfinished)


def label_task_zip(store: Store, run_id: int, count: int, order: str = LEAST_STABLE, device: str = "auto",
                   on_progress: Callable[[int, int], None] | None = None) -> LabelTask:
    """The run's first ``count`` images still to label, in ``order``, as a CVAT task,
    ``run<ID>-label-next.zip`` in a fresh cache folder (see :func:`stpp.services.label_queue.export_label_task`).
    An order that reads the final teacher's signals first has :func:`teacher_signals_in_child` compute
    those the run folder lacks (``on_progress`` follows it).

    Raises:
        StoreError: what :func:`~stpp.services.label_queue.export_label_task` raises.
        OutputError: the teacher pass failed (the child's message).
    """
    if needs_teacher_signals(order):
        teacher_signals_in_child(store, run_id, device, on_progress)
    target = scratch_dir(store, "label-tasks") / f"run{int(run_id)}-label-next.zip"
    return export_label_task(store, run_id, target, count, order)


def teacher_signals_in_child(store: Store, run_id: int, device: str = "auto",
                             on_progress: Callable[[int, int], None] | None = None) -> int:
    """Have a child ``python -m stpp project teacher-signals`` compute the final teacher's signals of the
    run's ranked images its run folder lacks (one pass of the teacher: minutes on a CPU for hundreds of
    images); returns how many it computed. ``on_progress(done, total)`` follows the pass.

    Raises:
        StoreError: no such run.
        OutputError: the pass failed (the child's message, e.g. no final teacher checkpoint) or ran past
            :data:`TEACHER_PASS_TIMEOUT_S`; what it computed before stopping is kept, so a second call goes on.
    """
    missing = missing_teacher_signals(store, run_id)
    if missing:
        _child([sys.executable, "-m", "stpp", "project", "teacher-signals", str(int(run_id)),
                "--workspace", str(store.workspace), "--device", device], TEACHER_PASS_TIMEOUT_S, on_progress)
    return len(missing)


def _child(command: Sequence[str], timeout_s: float = CHILD_TIMEOUT_S,
           on_progress: Callable[[int, int], None] | None = None) -> None:
    """Run a child process of the app; a failure raises :class:`OutputError` with its last line.

    Args:
        timeout_s: the child is stopped after this long.
        on_progress: called with (done, total) as the child's tqdm bar on stderr moves (polled twice a
            second from its log file).
    """
    with tempfile.TemporaryDirectory(prefix="stpp-child-") as folder:
        log = Path(folder) / "output.log"
        with log.open("w") as sink:
            child = subprocess.Popen(list(command), stdout=sink, stderr=sink, text=True, cwd=REPO_ROOT,
                                     env=child_env())
        deadline, shown = time.monotonic() + timeout_s, None

        def report() -> None:
            nonlocal shown
            counts = _BAR.findall(log.read_text(errors="replace")) if on_progress is not None else None
            if counts and counts[-1] != shown:
                shown = counts[-1]
                on_progress(int(shown[0]), int(shown[1]))

        try:
            while child.poll() is None:
                if time.monotonic() > deadline:
                    raise OutputError(f"stopped after {timeout_s:g} s: python -m {' '.join(map(str, command[2:]))}")
                time.sleep(_POLL_S)
                report()
            report()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        output = log.read_text(errors="replace")
    if child.returncode != 0:
        lines = output.strip().splitlines()
        raise OutputError(lines[-1].removeprefix("error: ") if lines else f"{command[2]} failed")


def export_model_zip(store: Store, run_id: int, stage: str | None = None) -> Path:
    """A run stage's checkpoint, config and TorchScript model as one zip, made by a child
    ``python -m stpp.model_export`` (see :mod:`stpp.model_export`).

    Raises:
        OutputError: the run has no such stage or model (the child's message).
    """
    out = scratch_dir(store, "models")
    target = out / f"run{int(run_id)}-{stage or 'last'}-model.zip"
    run_dir = run_layout(store, get_run(store, run_id)).root
    command = [sys.executable, "-m", "stpp.model_export", str(run_dir), "--out", str(out / "files"),
               "--zip", str(target)] + (["--stage", stage] if stage else [])
    _child(command)
    return target


@dataclass(frozen=True)
class Prediction:
    """The masks a run's model predicted for uploaded images.

    Attributes:
        names: the uploaded files' names, in upload order.
        images: the copied input images, in the same order.
        masks: the palette-PNG masks, one per image.
        archive: the zip: ``masks/NAME.png`` named like the uploads (``NAME-2.png`` for a second
            upload of the same name) and ``manifest.json`` (project, run, stage, model, TTA, and which
            upload each mask is of).
    """

    names: list[str]
    images: list[Path]
    masks: list[Path]
    archive: Path


def predict_images(store: Store, run_id: int, files: Sequence[str | Path], stage: str | None = None,
                   device: str = "auto") -> Prediction:
    """Predict masks for image files with a run's model, in a child ``python -m stpp predict``.

    Raises:
        OutputError: no images, or the child failed (its message).
    """
    files = [Path(f) for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise OutputError(f"no images to predict ({', '.join(IMAGE_SUFFIXES)})")
    run = get_run(store, run_id)
    work = scratch_dir(store, "predict")
    images_dir, masks_dir = work / "images", work / "masks"
    copies = []
    for index, path in enumerate(files):
        # A folder per upload, so two uploads with the same name do not overwrite each other.
        target = images_dir / f"{index:04d}" / path.name
        target.parent.mkdir(parents=True)
        shutil.copyfile(path, target)
        copies.append(target)
    command = [sys.executable, "-m", "stpp", "predict", str(run_layout(store, run).root), "--images", str(images_dir),
               "--out", str(masks_dir), "--device", device] + (["--stage", stage] if stage else [])
    _child(command)
    masks = [masks_dir / p.relative_to(images_dir).with_suffix(".png") for p in copies]
    entries = _unique_names([p.stem for p in files])
    manifest = json.loads((masks_dir / PREDICTION_MANIFEST).read_text())
    manifest.pop("masks")
    manifest.update(project=get_project(store, run.project_id).name, run_id=run.id,
                    masks={f"masks/{entry}.png": path.name for entry, path in zip(entries, files)})
    archive = work / "masks.zip"

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for entry, mask in zip(entries, masks):
                zf.write(mask, f"masks/{entry}.png")
            zf.writestr(PREDICTION_MANIFEST, json.dumps(manifest, indent=2))

    atomic_save(archive, write)
    return Prediction([p.name for p in files], copies, masks, archive)


def _unique_names(stems: Sequence[str]) -> list[str]:
    """``stems`` with a ``-2``, ``-3``... on the second and later uses of one stem."""
    seen: dict[str, int] = {}
    names = []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def read_prediction(prediction: Prediction) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(image, mask, name) of every predicted image."""
    return [(np.asarray(read_image(i)), read_mask(m), name)
            for name, i, m in zip(prediction.names, prediction.images, prediction.masks)]
