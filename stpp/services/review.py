"""Review between phases: a person's decisions on pseudo masks, and where a reviewed run pauses.

Decisions are per project (the ``reviews`` table; the latest per image wins, every earlier one
is kept as history) and record the run whose masks were shown and the user (``local`` without
sign-in):

- ``accepted``: the run's current pseudo mask of the image (its latest stage's) is copied into a
  ``reviewed`` mask file, so what was accepted is pinned even if the run labels the image again;
- ``corrected``: a mask the person edited, stored as a ``reviewed`` mask file;
- ``rejected``: no mask; the image leaves every later phase.

The worker turns the latest decisions into :class:`~stpp.selftrain.pipeline.RunData`'s
``reviewed`` (accepted and corrected: labelled from the next stage on, never re-labelled) and
``rejected`` (see :func:`reviewed_inputs`).

A run launched with "review between phases" (:meth:`stpp.jobs.JobRunner.launch` with
``review=True``) has a *review plan* in its row: the pause points (:func:`stpp.core.method.pause_points`)
where it stops with status ``awaiting_review``. Each pause reached is a store event, so
:func:`next_pause` tells a (re)started worker where to stop next, and :func:`continue_run` queues a
paused run again. Nothing here imports torch: the web app calls it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from stpp.core.config import StppConfig
from stpp.core.events import Event
from stpp.core.masks import atomic_save, read_mask
from stpp.core.method import num_reliable, stage_after_pause
from stpp.store import reviews
from stpp.store.db import Store, StoreError, utc_now
from stpp.store.files import store_mask
from stpp.store.images import count_labelled_with_masks, get_image, image_ids_by_name, image_paths_by_name
from stpp.store.migrations import DECISIONS
from stpp.store.projects import Project, get_project
from stpp.store.ranking import ranks_by_name
from stpp.store.reviews import Decision, insert_decision
from stpp.store.runs import (
    Run,
    current_pseudo_masks,
    get_run,
    list_events,
    record_event,
    record_scores,
    run_layout,
    set_review_plan,
    set_run_config,
    transition,
)

PAUSE_EVENT = "awaiting_review"
"""The event kind that records a pause reached (its stage: the pause point)."""

if TYPE_CHECKING:
    from stpp.jobs import JobRunner


class ReviewError(StoreError):
    """A decision or a phase change that cannot be made as asked (the message says why)."""


# Decisions -----------------------------------------------------------------------------------------


def record_decision(store: Store, run_id: int, image: int | str, decision: str, *,
                    mask: np.ndarray | None = None, user: str | None = None) -> Decision:
    """Record a person's decision on one unlabelled image of a run.

    Args:
        store: the open store.
        run_id: the run whose pseudo masks were shown.
        image: the image's row id or name.
        decision: ``accepted`` (the run's current pseudo mask is copied into a reviewed mask),
            ``rejected`` or ``corrected`` (``mask`` is stored as the reviewed mask).
        mask: the corrected class-index mask (H, W), only with ``corrected``.
        user: the signed-in user; None records :data:`stpp.store.reviews.LOCAL_USER`.

    Raises:
        ReviewError: an unknown decision, an image that is not unlabelled in the run's project,
            no pseudo mask to accept, or a corrected mask missing or of the wrong size or values.
    """
    if decision not in DECISIONS:
        raise ReviewError(f"unknown decision {decision!r}; choose one of: {', '.join(DECISIONS)}")
    run = get_run(store, run_id)
    project = get_project(store, run.project_id)
    row = _image_row(store, project, image)
    if row["role"] != "unlabelled":
        raise ReviewError(f"image {row['name']!r} is {row['role']}, not unlabelled: only pseudo masks are reviewed")
    if mask is not None and decision != "corrected":
        raise ReviewError(f"only a correction takes a mask; to keep an edited mask, record it as corrected, "
                          f"not {decision}")
    mask_row = None
    if decision == "accepted":
        shown = current_pseudo_masks(store, run.id, [row["id"]]).get(row["id"])
        if shown is None:
            raise ReviewError(f"run {run.id} has no pseudo mask of {row['name']!r} to accept")
        mask_row = _store_reviewed(store, project, row, read_mask(store.path(shown[1])), run.id, shown[0])
    elif decision == "corrected":
        if mask is None:
            raise ReviewError("a correction needs the corrected mask")
        mask_row = _store_reviewed(store, project, row, _checked_mask(project, row, mask), run.id, None)
    return insert_decision(store, project, row["id"], run.id, decision, mask_row, user)


def _image_row(store: Store, project: Project, image: int | str) -> dict[str, Any]:
    try:
        return get_image(store, project, image)
    except StoreError as error:
        raise ReviewError(str(error)) from None


def _checked_mask(project: Project, row: Mapping[str, Any], mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != (row["height"], row["width"]):
        raise ReviewError(f"the corrected mask is {mask.shape[1]}x{mask.shape[0]}, the image "
                          f"{row['name']!r} is {row['width']}x{row['height']}")
    classes = project.classes
    bad = (mask >= classes.num_classes) & (mask != classes.ignore_index)
    if mask.min(initial=0) < 0 or bad.any():
        raise ReviewError(f"the corrected mask holds values that are no class of {project.name!r}")
    return mask.astype(np.uint8)


def _store_reviewed(store: Store, project: Project, row: Mapping[str, Any], mask: np.ndarray, run_id: int,
                    stage: str | None) -> dict[str, Any]:
    """Write a reviewed mask file (content-named, atomic) and return its ``masks`` row, not yet inserted."""
    relpath, digest = store_mask(store.workspace, project.id, "reviewed", row["hash"], mask, project.classes.palette)
    return {"image_id": row["id"], "kind": "reviewed", "run_id": int(run_id), "stage": stage, "path": relpath,
            "hash": digest, "created": utc_now()}


def latest_decisions(store: Store, project: int | str | Project) -> dict[str, Decision]:
    """Image name -> its latest decision, for every reviewed image of the project."""
    return reviews.latest_decisions(store, get_project(store, project))


def decision_history(store: Store, project: int | str | Project, image: int | str | None = None,
                     limit: int | None = None) -> list[Decision]:
    """The project's decisions, newest first (only ``image``'s, by id or name, when given; the last ``limit``)."""
    project = get_project(store, project)
    image_id = None if image is None else _image_row(store, project, image)["id"]
    return reviews.decision_history(store, project, image_id, limit)


def reviewed_inputs(store: Store, project: int | str | Project,
                    names: Sequence[str] | None = None) -> tuple[list[tuple[str, Path, Path]], frozenset[str]]:
    """What the latest decisions give a run: ``(reviewed, rejected)``.

    Args:
        names: only these images (a run's unlabelled images).

    Returns:
        ``reviewed``: ``(name, image file, reviewed mask file)`` of accepted and corrected images,
        by name; ``rejected``: the names of rejected images.

    Raises:
        ReviewError: an accepted or corrected image whose reviewed mask row or file is gone.
    """
    project = get_project(store, project)
    keep = None if names is None else set(names)
    paths = image_paths_by_name(store, project)
    reviewed, rejected = [], set()
    for name, decision in sorted(latest_decisions(store, project).items()):
        if keep is not None and name not in keep:
            continue
        if decision.decision == "rejected":
            rejected.add(name)
            continue
        mask = store.path(decision.mask_path) if decision.mask_path else None
        if mask is None or not mask.is_file():
            raise ReviewError(f"image {name!r} was {decision.decision} but its reviewed mask is missing; "
                              "review it again")
        reviewed.append((name, store.path(paths[name]), mask))
    return reviewed, frozenset(rejected)


# Pauses --------------------------------------------------------------------------------------------


def pauses_reached(store: Store, run_id: int) -> tuple[str, ...]:
    """The pause points the run has stopped at so far, in order."""
    return tuple(dict.fromkeys(e.stage for e in list_events(store, run_id, kinds=[PAUSE_EVENT])))


def next_pause(store: Store, run_id: int) -> str | None:
    """Where the run stops next: the first planned pause point it has not reached yet, or None."""
    reached = set(pauses_reached(store, run_id))
    return next((p for p in get_run(store, run_id).review_plan if p not in reached), None)


def record_pause(store: Store, run_id: int, pause: str) -> None:
    """Record that the run stopped at ``pause`` for review (the worker calls it before its status changes)."""
    record_event(store, run_id, Event(PAUSE_EVENT, stage=pause, message=f"paused after {pause} for review"))


def continue_run(runner: JobRunner, run_id: int, *, reliable_ratio: float | None = None,
                 review_next: bool = True) -> Run:
    """Queue a run that awaits review again; its worker runs to the next pause point (or the end).

    Args:
        runner: the :class:`~stpp.jobs.JobRunner`.
        run_id: a run with status ``awaiting_review``.
        reliable_ratio: the reliable ratio R the person chose for the next phase (only at the
            ranking pause, before stage 1 trains): saved into the run's config.
        review_next: False drops the remaining pause points: the run goes to its end.

    Raises:
        ReviewError: the run is not awaiting review, or R cannot change any more.
    """
    store = runner.store
    run = get_run(store, run_id)
    if run.status != "awaiting_review":
        raise ReviewError(f"run {run.id} is {run.status.replace('_', ' ')}, not awaiting review")
    if reliable_ratio is not None:
        set_reliable_ratio(store, run.id, reliable_ratio)
    if not review_next:
        set_review_plan(store, run.id, [])
    transition(store, run.id, "queued", expect=["awaiting_review"], error=None, pid=None, job_id=None, finished=None)
    runner.tick()
    return get_run(store, run.id)


# The reliable ratio --------------------------------------------------------------------------------


def set_reliable_ratio(store: Store, run_id: int, ratio: float) -> StppConfig:
    """Save the reliable ratio R a person chose into a ranked run's config, before stage 1 trains.

    Rewrites the run row's config (and hash), the run folder's ``config.json`` and ``scores.csv``
    (``reliable`` = rank <= floor(N x R)) and the ``scores`` rows, so the resumed run trains on
    that split. A run whose stage 1 model exists keeps its R.

    Raises:
        ReviewError: R outside [0, 1], a queued or running run, a run that is not ranked, or stage 1
            already trained.
    """
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ReviewError(f"the reliable ratio must be within [0, 1], not {ratio}")
    run = get_run(store, run_id)
    cfg = StppConfig.from_dict(run.config)
    if cfg.selftrain.reliable_ratio == ratio:
        return cfg
    layout = run_layout(store, run)
    if run.status in ("queued", "running"):
        raise ReviewError(f"run {run.id} is {run.status}: its reliable ratio can change only while it waits for review")
    if run.method != "st++" or not layout.scores_path.is_file():
        raise ReviewError(f"run {run.id} has no stability ranking: its reliable ratio cannot change")
    if layout.model_path("stage1", cfg.pseudo.num_checkpoints).exists():
        raise ReviewError(f"run {run.id} already trained stage 1 with R = {cfg.selftrain.reliable_ratio}")
    cfg = replace(cfg, selftrain=replace(cfg.selftrain, reliable_ratio=ratio))
    with open(layout.scores_path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    cut = num_reliable(len(body), ratio)
    rank, reliable = header.index("rank"), header.index("reliable")
    for row in body:
        row[reliable] = "1" if int(row[rank]) <= cut else "0"
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header] + body)
    atomic_save(layout.scores_path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    if layout.config_path.exists():
        atomic_save(layout.config_path, lambda tmp: Path(tmp).write_text(cfg.to_json()))
    set_run_config(store, run.id, cfg)
    record_scores(store, run.id, layout.scores_path, image_ids_by_name(store, get_project(store, run.project_id)))
    record_event(store, run.id, Event("info", message=f"reliable ratio set to {ratio:g} for the next phase"))
    return cfg


# What the next phase trains on ---------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseSummary:
    """What the run's next phase will train on, as counts.

    Attributes:
        next_phase: the stage the run trains next (None when it is done).
        labelled: images with ground-truth masks.
        ranked: unlabelled images in the stability ranking.
        reliable / unreliable: ranked images not reviewed, split at floor(N x R).
        accepted / rejected / corrected: the project's unlabelled images by their latest decision.
        reliable_ratio: R.
        pause: where the run is paused (None when it is not awaiting review).
    """

    next_phase: str | None
    labelled: int
    ranked: int
    reliable: int
    unreliable: int
    accepted: int
    rejected: int
    corrected: int
    reliable_ratio: float
    pause: str | None


def phase_summary(store: Store, run_id: int, ratio: float | None = None) -> PhaseSummary:
    """Counts for the run's next phase; ``ratio`` previews another reliable ratio."""
    run = get_run(store, run_id)
    cfg = StppConfig.from_dict(run.config)
    ratio = cfg.selftrain.reliable_ratio if ratio is None else float(ratio)
    project = get_project(store, run.project_id)
    labelled = count_labelled_with_masks(store, project)
    decisions = {name: d.decision for name, d in latest_decisions(store, project).items()}
    ranked = ranks_by_name(store, run.id)
    cut = num_reliable(len(ranked), ratio)
    pool = [(name, rank) for name, rank in ranked.items() if name not in decisions]
    reliable = sum(rank <= cut for _, rank in pool)
    counts = {d: sum(v == d for v in decisions.values()) for d in DECISIONS}
    pauses = pauses_reached(store, run.id)
    pause = pauses[-1] if run.status == "awaiting_review" and pauses else None
    nxt = stage_after_pause(cfg, pause) if pause else None
    return PhaseSummary(nxt, labelled, len(ranked), reliable, len(pool) - reliable, counts["accepted"],
                        counts["rejected"], counts["corrected"], ratio, pause)
