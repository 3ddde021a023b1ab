"""The one way a run's results reach the store: imported from its run folder.

A worker (local or on a cluster node) writes only its run folder (see :mod:`stpp.core.handoff`).
:func:`import_run_folder` reads what is new there, from where it last stopped (the run row's
``events_read`` byte offset into ``events.jsonl``), and records it: the events, the run's stage,
progress and heartbeat, its checkpoints with their validation mIoU, the stability scores and
every pseudo mask; once the worker reports its end, the run's status. Importing again changes
nothing: every step is idempotent, and the events of one import go in with their offset in one
transaction, so an app killed mid-import continues where it stopped.

No torch here: the web app calls it on every tick of the job runner.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from stpp.core.config import StppConfig
from stpp.core.events import Event
from stpp.core.handoff import WorkerStatus, read_status
from stpp.core.layout import RunLayout
from stpp.core.method import RANKING, snapshot_epochs, stage_names
from stpp.services.review import record_pause
from stpp.store.db import Store, utc_now
from stpp.store.images import images_with_masks
from stpp.store.projects import Project, get_project
from stpp.store.runs import (
    Run,
    RunStateError,
    end_running,
    get_run,
    list_events,
    parse_time,
    record_checkpoint,
    record_event,
    record_pseudo_masks,
    record_scores,
    run_layout,
    set_stage_metrics,
    transition,
    update_run,
)

log = logging.getLogger(__name__)

STEP_EVENT_INTERVAL_S = 1.0
"""Step events closer together than this (by their own time) are not recorded; a stage's last step always is."""
MOVED_PATH_DEPTH = 3
"""The most trailing parts of a file's path that are looked up in a moved run folder (``pseudo/stage1/x.png``)."""
ENDED_AS = {"done": "done", "failed": "failed", "cancelled": "cancelled", "paused": "awaiting_review"}
"""The run status a worker's final state gives."""


class EventRecorder:
    """Records a project run's events in the store, with what each one implies.

    Every event becomes an ``events`` row, except step events closer than
    :data:`STEP_EVENT_INTERVAL_S` to the last recorded one. ``checkpoint`` events add
    ``checkpoints`` rows, ``eval`` events attach the mIoU to the stage's final checkpoint, the end
    of the ranking stores ``scores.csv``, and pseudo masks get ``masks`` rows as each labelling
    pass reports them. The run's stage follows the events (a finished stage passed again on a
    resume is not where the run is).

    Args:
        store: the open store.
        run_id: the run.
        layout: the run folder as this machine sees it.
        image_ids: image name (the run's sample ids) to image row id.
        worker_root: the run folder as the worker saw it, when another machine mounts it elsewhere:
            file paths in its events are read under ``layout`` instead.
    """

    def __init__(self, store: Store, run_id: int, layout: RunLayout, image_ids: Mapping[str, int],
                 worker_root: str | None = None):
        self.store = store
        self.run_id = int(run_id)
        self.layout = layout
        self.image_ids = dict(image_ids)
        self.worker_root = Path(worker_root) if worker_root else None
        last = list_events(store, self.run_id, limit=1, kinds=["step"])
        self._last_step_at = parse_time(last[0].time) if last else None
        self._last_step_stage = last[0].stage if last else ""

    def emit(self, event: Event) -> None:
        if self._keep(event):
            self._record(event)

    def _keep(self, event: Event) -> bool:
        if event.kind != "step":
            return True
        last_of_stage = event.total is not None and event.step == event.total
        if (last_of_stage or self._last_step_at is None or event.stage != self._last_step_stage
                or event.time - self._last_step_at >= STEP_EVENT_INTERVAL_S):
            self._last_step_at, self._last_step_stage = event.time, event.stage
            return True
        return False

    def _record(self, event: Event) -> None:
        record_event(self.store, self.run_id, event)
        if event.stage and event.kind not in ("stage_skipped", "paused"):
            update_run(self.store, self.run_id, stage=event.stage)
        if event.kind == "checkpoint" and event.data.get("path"):
            record_checkpoint(self.store, self.run_id, event.stage, self.local_path(event.data["path"]),
                              event.data.get("epoch"))
        elif event.kind == "eval" and event.miou is not None:
            set_stage_metrics(self.store, self.run_id, event.stage, {"miou": event.miou})
        elif event.kind == "ranking" or (event.kind == "stage_skipped" and event.stage == RANKING):
            if self.layout.scores_path.exists():
                record_scores(self.store, self.run_id, self.layout.scores_path, self.image_ids)
        elif event.kind == "labels" and event.activity is not None and event.activity.labelled_stage:
            stage = event.activity.labelled_stage
            record_pseudo_masks(self.store, self.run_id, stage, self.layout.pseudo_dir(stage), self.image_ids)
        elif event.kind in ("stage_start", "run_end"):
            self.record_all_pseudo_masks()

    def local_path(self, path: str) -> Path:
        """A file the worker named, as this machine sees it (under :attr:`layout`).

        A folder copied from elsewhere (its worker's root unknown) names files under another path:
        the file is then the one under :attr:`layout` with the same last parts
        (``checkpoints/teacher_ckpt1.pt``), when there is one.
        """
        path = Path(path)
        root = self.layout.root
        if path.is_relative_to(root):
            return path
        if self.worker_root is not None and path.is_relative_to(self.worker_root):
            return root / path.relative_to(self.worker_root)
        for depth in range(1, min(len(path.parts), MOVED_PATH_DEPTH) + 1):
            moved = root.joinpath(*path.parts[-depth:])
            if moved.exists():
                return moved
        return path

    def record_all_pseudo_masks(self) -> int:
        """Record every pseudo mask in the run folder that has no row yet (masks copied, not predicted)."""
        root = self.layout.root / "pseudo"
        if not root.is_dir():
            return 0
        return sum(record_pseudo_masks(self.store, self.run_id, folder.name, folder, self.image_ids)
                   for folder in sorted(root.iterdir()) if folder.is_dir())


def project_image_ids(store: Store, project: int | Project) -> dict[str, int]:
    """Image name to image row id in a project (a run's sample ids are its project's image names)."""
    return {row.name: row.id for row in images_with_masks(store, get_project(store, project))}


def import_events(store: Store, run: Run, worker_root: str | None = None) -> int:
    """Record the events the run folder's ``events.jsonl`` holds beyond what the store has; returns how many.

    Only whole lines count: a line the worker is still writing is read next time.
    """
    layout = run_layout(store, run)
    try:
        with open(layout.events_path, "rb") as handle:
            handle.seek(run.events_read)
            chunk = handle.read()
    except FileNotFoundError:
        return 0
    complete = chunk[:chunk.rfind(b"\n") + 1]
    if not complete:
        return 0
    recorder = EventRecorder(store, run.id, layout, project_image_ids(store, run.project_id), worker_root)
    count = 0
    with store.transaction():
        for line in complete.decode("utf-8", errors="replace").splitlines():
            event = _parse_event(line)
            if event is not None:
                recorder.emit(event)
                count += 1
        update_run(store, run.id, events_read=run.events_read + len(complete))
    return count


def _parse_event(line: str) -> Event | None:
    try:
        return Event(**json.loads(line))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        log.warning("skipped an event line that is not an event (%s): %.120s", error, line)
        return None


def sync_run_outputs(store: Store, run: Run) -> None:
    """Record what the run folder holds and the store may lack (idempotent).

    Checkpoints (with the stage's validation metrics from ``metrics.json``), the scores and every
    pseudo mask: a resumed run skips finished stages without events, and a run folder imported from
    elsewhere may hold files its events name under another path.
    """
    layout = run_layout(store, run)
    if not layout.config_path.exists():
        return
    cfg = StppConfig.from_dict(json.loads(layout.config_path.read_text()))
    k = cfg.pseudo.num_checkpoints
    for index, epoch in enumerate(snapshot_epochs(cfg.optim.epochs, k), start=1):
        path = layout.teacher_checkpoint(index)
        if path.exists():
            record_checkpoint(store, run.id, "teacher", path, epoch)
    for stage in stage_names(cfg)[1:]:
        path = layout.model_path(stage, k)
        if path.exists():
            record_checkpoint(store, run.id, stage, path, cfg.student_epochs)
    if layout.metrics_path.exists():
        for stage, summary in json.loads(layout.metrics_path.read_text()).get("stages", {}).items():
            if summary:
                set_stage_metrics(store, run.id, stage, summary)
    image_ids = project_image_ids(store, run.project_id)
    if layout.scores_path.exists():
        record_scores(store, run.id, layout.scores_path, image_ids)
    EventRecorder(store, run.id, layout, image_ids).record_all_pseudo_masks()


def import_run_folder(store: Store, run: Run, requeued: Callable[[Run], bool | None] | None = None) -> Run:
    """Bring the store up to date with the run folder; returns the run as it is then.

    A queued run whose worker reports it started becomes ``running``; a running run takes the
    worker's progress and heartbeat; once the worker reports its end (for this start of the run:
    the status's ``attempt``), the run gets the matching status (``paused`` becomes
    ``awaiting_review`` with the pause recorded; a failure's error and a stop on request get an event).
    A status of an earlier start is ignored.

    Args:
        requeued: for a worker that reports it stopped or failed, whether its scheduler will start it
            again (Slurm's requeue after a preemption or a node failure): True keeps the run running
            with a ``requeued`` event, None (not known yet: the job is still ending) waits for the
            next import, False or no callable ends the run.
    """
    layout = run_layout(store, run)
    # The status first: every event the worker wrote before it is in events.jsonl by then.
    status = read_status(layout.root)
    current = status if status is not None and status.attempt == run.attempt else None
    if current is not None and run.status == "queued" and run.job_id:
        run = _mark_started(store, run, current)
    if run.status not in ("running", "queued"):
        return run
    import_events(store, run, current.root if current is not None else None)
    if current is None or run.status != "running":
        return get_run(store, run.id)
    update_run(store, run.id, progress=max(run.progress, current.progress), heartbeat=utc_now(current.heartbeat))
    if current.ended:
        run = get_run(store, run.id)
        again = requeued(run) if requeued is not None and current.state in ("cancelled", "failed") else False
        if again:
            _note_requeue(store, run)
        elif again is False:
            _settle(store, run, current)
    return get_run(store, run.id)


def _note_requeue(store: Store, run: Run) -> None:
    """Say once per stop that the scheduler queued the run's job again."""
    latest = list_events(store, run.id, limit=1, kinds=["worker_start", "requeued"])
    if not latest or latest[-1].kind != "requeued":
        record_event(store, run.id, Event("requeued", message=(
            f"Slurm queued job {run.job_id} again (preempted, or its node failed); its worker continues "
            "from the run folder's last checkpoint when the job starts")))


def _mark_started(store: Store, run: Run, status: WorkerStatus) -> Run:
    try:
        return transition(store, run.id, "running", expect=["queued"], pid=status.pid or None,
                          started=run.started or utc_now(status.heartbeat), heartbeat=utc_now(status.heartbeat))
    except RunStateError:  # cancelled meanwhile: the run keeps the status it has
        return get_run(store, run.id)


def _settle(store: Store, run: Run, status: WorkerStatus) -> None:
    """End a running run as its worker reported."""
    sync_run_outputs(store, run)
    fields: dict[str, Any] = {}
    if status.state == "paused":
        record_pause(store, run.id, status.pause or "")
        # The run stands at its pause point (its last event names the pass that got there).
        fields = {"resumable": False, "error": None, "finished": None, "stage": status.pause}
    elif status.state == "done":
        fields = {"resumable": False, "error": None, "progress": 1.0}
    elif status.state == "cancelled":
        record_event(store, run.id, Event("info", message="stopped on request; resume continues from here"))
        fields = {"resumable": True}
    else:
        message = status.error or "the worker failed without a message; see its log"
        record_event(store, run.id, Event("error", message=message))
        fields = {"resumable": True, "error": message}
    end_running(store, run.id, ENDED_AS[status.state], run.pid, **fields)
