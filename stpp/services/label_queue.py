"""The "label these next" queue: the images of a run a person should label by hand, as a CVAT task.

The queue is the run's ranked images that still wait for a person's label: still unlabelled (no
ground-truth mask) and neither accepted nor corrected in review (a rejected image stays in the queue:
its pseudo mask was judged wrong, so it is worth labelling). They come least stable first, or lowest
teacher confidence first once the run folder keeps the final teacher's signals (the orders:
:mod:`stpp.core.label_order`; computing the signals: :mod:`stpp.services.teacher_signals`).

:func:`export_label_task` writes the first N of them as a zip in CVAT's "Segmentation mask 1.1"
layout, with the images and the run's current pseudo masks as pre-annotations::

    labelmap.txt                          label:r,g,b:: per label, background first
    ImageSets/Segmentation/default.txt    the image names, in the queue's order
    JPEGImages/NAME.jpg                   the images (upright JPEGs)
    SegmentationClass/NAME.png            pre-annotations: palette PNGs, value = labelmap line,
                                          colours = the labelmap's
    manifest.json                         project, run, order, and each image's rank, stability,
                                          teacher confidence (where known) and mask stage

In CVAT: create a task from the ``JPEGImages/`` files with the labelmap's labels, then *Upload
annotations* with this zip as "Segmentation mask 1.1". CVAT has no ignore label: ignore pixels are
written as ``background``, a label the project lacks unless it has a class of that name (then ignore
pixels become that class). The labelled result (CVAT's *Export task dataset*, same format) comes
back as ground truth through :func:`stpp.store.voc.import_voc_labels` (``python -m stpp project
import-labels``), which maps labels by name and ``background`` to the ignore value; the images
become labelled for the next run.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stpp.core.classes import ClassInfo, make_classes
from stpp.core.label_order import LABEL_ORDERS, LEAST_STABLE, needs_teacher_signals
from stpp.core.masks import atomic_save, read_mask
from stpp.core.teacher_signals import read_teacher_signals
from stpp.store.db import Store, StoreError, utc_now
from stpp.store.export_formats import labelmap_text, palette_png, upright_jpeg
from stpp.store.images import images_with_masks
from stpp.store.projects import get_project
from stpp.store.ranking import ranked_images
from stpp.store.runs import current_pseudo_masks, get_run, run_layout

BACKGROUND = "background"
"""The label CVAT paints unlabelled pixels with; stpp's ignore pixels go there."""
TASK_FORMAT = "CVAT Segmentation mask 1.1"


@dataclass(frozen=True)
class QueuedImage:
    """One image of the queue.

    Attributes:
        image_id: the image row id.
        name: the image's name.
        path: its image file (workspace-relative, or absolute when registered in place).
        rank: its rank in the run's stability ranking (1 = most stable).
        stability: its stability score.
        decision: its latest review decision (None or ``rejected``).
        confidence: the final teacher's mean top softmax probability, where the run folder keeps it.
    """

    image_id: int
    name: str
    path: str
    rank: int
    stability: float
    decision: str | None
    confidence: float | None = None


@dataclass(frozen=True)
class LabelTask:
    """A written task zip.

    Attributes:
        path: the zip file.
        images: the queued images it holds, in the queue's order.
        labels: the task's labels (``labelmap.txt``): background first, unless the project has it.
        order: the queue's order (:data:`stpp.core.label_order.LABEL_ORDERS`).
    """

    path: Path
    images: tuple[QueuedImage, ...]
    labels: ClassInfo
    order: str = LEAST_STABLE


def label_queue(store: Store, run_id: int, count: int | None = None, order: str = LEAST_STABLE) -> list[QueuedImage]:
    """The run's ranked images still waiting for a person's label, in ``order`` (the first ``count``).

    Raises:
        StoreError: no such run, or the lowest-confidence order while the run folder lacks the
            teacher's signals of a queued image (compute them first:
            :func:`stpp.services.teacher_signals.compute_teacher_signals`).
        ValueError: an unknown order.
    """
    run = get_run(store, run_id)
    signals = read_teacher_signals(run_layout(store, run))
    waiting = {row.id for row in images_with_masks(store, get_project(store, run.project_id))
               if row.role == "unlabelled" and row.mask_path is None}
    queue = [QueuedImage(r.image_id, r.name, r.path, r.rank, r.stability, r.decision,
                         signals[r.name]["confidence"] if r.name in signals else None)
             for r in ranked_images(store, run.id, most_stable_first=False)
             if r.image_id in waiting and r.decision not in ("accepted", "corrected")]
    if needs_teacher_signals(order):
        lacking = [image.name for image in queue if image.confidence is None]
        if lacking:
            raise StoreError(f"run {run.id} lacks the final teacher's confidence of {len(lacking)} of its "
                             f"{len(queue)} queued images: compute it first (python -m stpp project "
                             f"teacher-signals {run.id})")
        queue.sort(key=lambda image: (image.confidence, -image.rank))
    return queue if count is None else queue[:count]


def task_labels(classes: ClassInfo) -> tuple[ClassInfo, np.ndarray]:
    """The task's labels and the lookup table from a project mask value to a task mask value.

    The project's classes keep their names and colours; a ``background`` label comes first when the
    project has no class of that name (black, or the first grey no class uses), and ignore pixels map
    to it.
    """
    lut = np.zeros(256, dtype=np.uint8)
    if BACKGROUND in classes.names:
        lut[:classes.num_classes] = np.arange(classes.num_classes)
        lut[classes.ignore_index] = classes.names.index(BACKGROUND)
        return classes, lut
    used = {tuple(colour) for colour in classes.palette}
    colour = next((v, v, v) for v in range(256) if (v, v, v) not in used)
    labels = make_classes([BACKGROUND, *classes.names], [colour, *classes.palette], source="the label task")
    lut[:classes.num_classes] = np.arange(1, classes.num_classes + 1)
    lut[classes.ignore_index] = 0
    return labels, lut


def export_label_task(store: Store, run_id: int, out_zip: str | Path, count: int, order: str = LEAST_STABLE,
                      progress: Callable[[int, int], None] | None = None) -> LabelTask:
    """Write the first ``count`` images of the run's queue as a CVAT task zip (see the module docstring).

    Args:
        store: the open store.
        run_id: the run whose ranking orders the queue and whose current pseudo masks pre-annotate it.
        out_zip: the zip to write (replaced atomically).
        count: how many images, at most.
        order: the queue's order (:data:`stpp.core.label_order.LABEL_ORDERS`).
        progress: called as ``progress(done, total)`` after each image.

    Raises:
        StoreError: no such run, ``count`` below 1, nothing left to label, a queued image without
            a pseudo mask in the run, or the lowest-confidence order without the teacher's signals.
        ValueError: an unknown order.
    """
    if count < 1:
        raise StoreError(f"a label task needs at least one image, not {count}")
    run = get_run(store, run_id)
    project = get_project(store, run.project_id)
    queue = label_queue(store, run.id, count, order)
    if not queue:
        raise StoreError(f"run {run.id} has no ranked image left to label: every one is labelled, "
                         "accepted or corrected")
    pseudo = current_pseudo_masks(store, run.id, [image.image_id for image in queue])
    missing = [image.name for image in queue if image.image_id not in pseudo]
    if missing:
        raise StoreError(f"run {run.id} has no pseudo mask of {', '.join(missing[:5])}")
    labels, lut = task_labels(project.classes)
    manifest = {
        "format": TASK_FORMAT, "created": utc_now(), "project": {"id": project.id, "name": project.name},
        "run": {"id": run.id, "method": run.method, "preset": run.preset, "config_hash": run.config_hash},
        "order": LABEL_ORDERS[order], "labels": list(labels.names),
        "ignore_label": labels.names[lut[project.classes.ignore_index]],
        "images": [{"name": image.name, "rank": image.rank, "stability": image.stability,
                    "confidence": image.confidence, "decision": image.decision,
                    "pre_annotation_stage": pseudo[image.image_id][0]} for image in queue],
        "import_back": f"python -m stpp project import-labels {project.name} --data LABELLED.zip",
    }

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("labelmap.txt", labelmap_text(labels))
            zf.writestr("ImageSets/Segmentation/default.txt", "".join(f"{image.name}\n" for image in queue))
            for done, image in enumerate(queue, 1):
                jpeg, size = upright_jpeg(store.path(image.path).read_bytes())
                mask = read_mask(store.path(pseudo[image.image_id][1]))
                if mask.shape != (size[1], size[0]):
                    raise StoreError(f"the pseudo mask of {image.name!r} is {mask.shape[1]}x{mask.shape[0]}, "
                                     f"its image {size[0]}x{size[1]}")
                zf.writestr(f"JPEGImages/{image.name}.jpg", jpeg, compress_type=zipfile.ZIP_STORED)
                zf.writestr(f"SegmentationClass/{image.name}.png", palette_png(lut[mask], labels),
                            compress_type=zipfile.ZIP_STORED)
                if progress is not None:
                    progress(done, len(queue))
            zf.writestr("manifest.json", json.dumps(manifest, indent=2))

    out_zip = Path(out_zip)
    atomic_save(out_zip, write)
    return LabelTask(out_zip, tuple(queue), labels, order)
