"""The quality report of a run's pseudo masks, where unlabelled images have ``reference`` masks.

:func:`dataset_quality` measures, the same way, the dataset an export of the run would write for its
unlabelled images: after review, accepted and corrected masks in place of the pseudo masks and
rejected images left out.

Measures what the paper's Fig. 3 shows: the mIoU of the teacher's pseudo masks on the reliable
part of the ranking against the unreliable part, and of the unreliable part again after a student
re-labelled it. Reference masks are read only here, never by training. Confusion matrices are
accumulated over each group's images (as for a validation set) with numpy; the mIoU averages the
IoU of the classes present in the references or the predictions of that group.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stpp.core.masks import read_mask
from stpp.core.method import stage_order
from stpp.core.metrics import class_iou, confusion_matrix, mean_iou, percent
from stpp.core.teacher_signals import read_teacher_signals
from stpp.selftrain.ranking_study import (
    DEFAULT_RANDOM_DRAWS,
    ImageEvidence,
    RankingStudy,
    image_evidence,
    ranking_study,
)
from stpp.store.db import Store
from stpp.store.export import ExportFilter, export_plan
from stpp.store.projects import get_project
from stpp.store.ranking import ranked_references
from stpp.store.runs import get_run, pseudo_masks_by_stage, run_layout


@dataclass(frozen=True)
class QualityRow:
    """One measured group.

    Attributes:
        group: ``reliable``, ``unreliable`` or ``all`` (the run's split).
        labels: the stage whose model made the pseudo masks (``teacher``, ``stage1``...).
        images: how many images were measured.
        miou: mIoU in percent (None when no pixel was measured).
        iou: per-class IoU in percent (None for a class absent from both sides).
    """

    group: str
    labels: str
    images: int
    miou: float | None
    iou: tuple[float | None, ...]


@dataclass(frozen=True)
class QualityReport:
    """The report of one run; ``rows`` is empty when no ranked image has a reference mask."""

    run_id: int
    classes: tuple[str, ...]
    with_reference: int
    ranked: int
    rows: tuple[QualityRow, ...]


def iou_from_confusion(matrix: np.ndarray) -> tuple[float | None, list[float | None]]:
    """(mIoU, per-class IoU) in percent; classes with an empty union are None and left out of the mean."""
    return percent(mean_iou(matrix)), [percent(v) for v in class_iou(matrix).tolist()]


def quality_report(store: Store, run_id: int) -> QualityReport:
    """Measure the run's pseudo masks against the reference masks of its ranked images.

    Rows: the teacher's labels on the reliable and on the unreliable images (the run's split), then,
    for each stage that re-labelled images, its labels on the images it re-labelled.
    """
    run = get_run(store, run_id)
    project = get_project(store, run.project_id)
    classes = project.classes
    ranked = ranked_references(store, run.id)
    references = {ref.image_id: ref.path for ref in ranked if ref.path}
    reliable = {ref.image_id for ref in ranked if ref.reliable}
    pseudo = {stage: {image_id: path for image_id, path in masks.items() if image_id in references}
              for stage, masks in pseudo_masks_by_stage(store, run.id).items()}
    pseudo = {stage: masks for stage, masks in pseudo.items() if masks}
    groups: list[tuple[str, str, list[int]]] = []
    teacher = pseudo.get("teacher", {})
    groups.append(("reliable", "teacher", sorted(i for i in teacher if i in reliable)))
    groups.append(("unreliable", "teacher", sorted(i for i in teacher if i not in reliable)))
    for stage in sorted((s for s in pseudo if s != "teacher"), key=stage_order):
        ids = sorted(pseudo[stage])
        group = "unreliable" if not set(ids) & reliable else "all"
        groups.append((group, stage, ids))
    rows = []
    for group, stage, ids in groups:
        if not ids:
            continue
        matrix = np.zeros((classes.num_classes, classes.num_classes), dtype=np.int64)
        for image_id in ids:
            matrix += confusion_matrix(read_mask(store.path(references[image_id])),
                                read_mask(store.path(pseudo[stage][image_id])), classes.num_classes,
                                classes.ignore_index)
        miou, iou = iou_from_confusion(matrix)
        rows.append(QualityRow(group, stage, len(ids), miou, tuple(iou)))
    return QualityReport(run.id, tuple(classes.names), len(references), len(ranked), tuple(rows))


@dataclass(frozen=True)
class DatasetQuality:
    """The unlabelled part of the dataset an export of a run writes, against the reference masks.

    Attributes:
        run_id: the run whose pseudo masks the export takes.
        images: the run's ranked images that have a reference mask (the ones measured).
        kept: how many of them the export keeps (rejected images, for one, are left out).
        sources: the kept images per mask source (``pseudo``, ``accepted``, ``corrected``...).
        miou: pooled mIoU in percent of the kept masks against their references (None when none is kept).
        iou: per-class IoU in percent (None for a class absent from both sides).
    """

    run_id: int
    images: int
    kept: int
    sources: dict[str, int]
    miou: float | None
    iou: tuple[float | None, ...]


def dataset_quality(store: Store, run_id: int, *, stage: str | None = None,
                    filter: ExportFilter | None = None) -> DatasetQuality:
    """Measure what :func:`~stpp.store.export.export_project` of the run would write for its ranked
    images with reference masks (the export's own choice of mask per image: the latest review's, else
    the run's pseudo mask), against those references; one confusion matrix over all kept images.

    Args:
        stage: the run's labels as they stood after this stage (None: the latest).
        filter: the export's filter (None: every image, as the Export tab's default).
    """
    run = get_run(store, run_id)
    classes = get_project(store, run.project_id).classes
    references = {ref.image_id: ref.path for ref in ranked_references(store, run.id) if ref.path}
    if not references:  # a project without reference masks: nothing to measure, no export to plan
        return DatasetQuality(run.id, 0, 0, {}, None, (None,) * classes.num_classes)
    items, _ = export_plan(store, run.project_id, run_id=run.id, stage=stage,
                           filter=filter or ExportFilter(), allow_unfinished=True)
    kept = [item for item in items if item.image_id in references]
    matrix = np.zeros((classes.num_classes, classes.num_classes), dtype=np.int64)
    sources: dict[str, int] = {}
    for item in kept:
        reference, mask = store.path(references[item.image_id]), Path(item.mask_path)
        matrix += _mask_confusion(str(reference), _stamp(reference), str(mask), _stamp(mask),
                                  classes.num_classes, classes.ignore_index)
        sources[item.source] = sources.get(item.source, 0) + 1
    miou, iou = iou_from_confusion(matrix)
    return DatasetQuality(run.id, len(references), len(kept), sources, miou, tuple(iou))


def run_ranking_study(store: Store, run_id: int, random_draws: int = DEFAULT_RANDOM_DRAWS) -> RankingStudy | None:
    """The ranking study (:mod:`stpp.selftrain.ranking_study`) of the run's ranked images that have a
    reference mask, a teacher pseudo mask and their K checkpoint masks in the run folder, at the run's
    reliable ratio; None when fewer than two images have all of them. The probability signals are
    studied when the run folder keeps them for every such image (:mod:`stpp.core.teacher_signals`)."""
    run = get_run(store, run_id)
    classes = get_project(store, run.project_id).classes
    teacher = pseudo_masks_by_stage(store, run.id).get("teacher", {})
    layout = run_layout(store, run)
    probability_signals = read_teacher_signals(layout)
    evidence = []
    for ref in ranked_references(store, run.id):
        if not ref.path or ref.image_id not in teacher:
            continue
        checkpoints = [layout.stability_dir(j) / f"{ref.name}.png"
                       for j in range(1, run.cfg.pseudo.num_checkpoints + 1)]
        if not all(path.exists() for path in checkpoints):
            continue
        files = (store.path(ref.path), store.path(teacher[ref.image_id]), *checkpoints)
        signals = tuple(probability_signals.get(ref.name, {}).items())
        evidence.append(_evidence(ref.name, tuple(map(str, files)), tuple(map(_stamp, files)), classes.num_classes,
                                  classes.ignore_index, signals))
    if len(evidence) < 2:
        return None
    return ranking_study(evidence, run.cfg.selftrain.reliable_ratio, random_draws, seed=run.cfg.seed)


@functools.lru_cache(maxsize=16384)
def _evidence(name: str, files: tuple[str, ...], stamps: tuple[tuple[int, int], ...], num_classes: int,
              ignore_index: int, probability_signals: tuple[tuple[str, float], ...]) -> ImageEvidence:
    """One image's evidence, kept while none of its files changes (the Phases tab redraws on every event)."""
    reference, pseudo, *checkpoints = (read_mask(Path(f)) for f in files)
    return image_evidence(name, reference, pseudo, checkpoints, num_classes, ignore_index, dict(probability_signals))


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8192)
def _mask_confusion(reference: str, reference_stamp: tuple[int, int], mask: str, mask_stamp: tuple[int, int],
                    num_classes: int, ignore_index: int) -> np.ndarray:
    """One image's confusion matrix, kept while neither file changes: the Review tab measures the whole
    dataset after each decision, and a decision changes one image."""
    matrix = confusion_matrix(read_mask(reference), read_mask(mask), num_classes, ignore_index)
    matrix.setflags(write=False)
    return matrix
