"""Training runs in the store: their rows and status, and what a running job records there.

A run row holds the resolved config, the status (``queued``, ``running``, ``awaiting_review``,
``done``, ``failed``, ``cancelled`` plus a ``resumable`` flag), the current stage, the progress over
the whole run (0..1), the worker's pid and heartbeat (or its Slurm job), the error of a failed run
and its times. The run's files live in ``WORKSPACE/runs/<run_id>/`` (the headless run-folder
layout); the worker writes only there, and :mod:`stpp.services.run_import` records what it wrote
(the events, the checkpoints, the stability scores and the pseudo masks) through the functions
here, so the app reads everything from the store.

A project has at most one unfinished run (queued, running or awaiting review) at a time. A run's
review plan (the pause points where it stops for review) is a column of its row.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from stpp.core.config import StppConfig
from stpp.core.events import Event
from stpp.core.handoff import PROGRESS_SCALE
from stpp.core.layout import RunLayout
from stpp.core.method import pause_points, stage_order
from stpp.store.db import Store, StoreError, utc_now
from stpp.store.files import sha1_bytes
from stpp.store.projects import Project, get_project

log = logging.getLogger(__name__)

UNFINISHED = ("queued", "running", "awaiting_review")
"""Statuses that hold the project's one unfinished-run slot."""

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"awaiting_review", "done", "failed", "cancelled"}),
    "awaiting_review": frozenset({"queued", "running", "done", "cancelled"}),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
    "done": frozenset(),
}
"""Allowed status changes: ``failed``/``cancelled`` go back to ``queued`` only when resumable."""

WORK_EVENTS = ("step", "labels", "eval_progress")
"""The events of a worker doing the run's work (training, labelling, evaluating), not starting up."""

_RUN_FIELDS = ("status", "resumable", "stage", "progress", "pid", "heartbeat", "error", "started", "finished",
               "events_read", "attempt", "backend", "job_id")


class RunConflict(StoreError):
    """A launch or resume refused because the project already has an unfinished run."""


class RunStateError(StoreError):
    """A status change that the run's current status does not allow."""


@dataclass(frozen=True)
class Run:
    """One run row.

    Attributes:
        config: the full resolved config (a dict, as saved in ``config.json``).
        progress: 0..1 over the whole run.
        run_dir: the run folder, relative to the workspace.
        review_plan: the pause points where the run stops for review, in run order (empty: none).
        events_read: how many bytes of the run folder's ``events.jsonl`` the store holds.
        attempt: the starts ordered so far (the ``attempt`` of the latest ``job.json``).
        backend: where its worker runs: ``local`` or ``slurm``.
        job_id: the backend's handle of the current start (a Slurm job id; None for a local process).
        backend_options: the backend settings this run was launched with, over the backend's own
            (``{"partition": "gpu", "time_limit": "8:00:00"}``; see :data:`stpp.core.cluster.RUN_SLURM_SETTINGS`).
    """

    id: int
    project_id: int
    method: str
    preset: str | None
    config: dict[str, Any]
    config_hash: str | None
    status: str
    resumable: bool
    stage: str | None
    progress: float
    pid: int | None
    heartbeat: str | None
    error: str | None
    run_dir: str | None
    created: str
    started: str | None
    finished: str | None
    review_plan: tuple[str, ...] = ()
    events_read: int = 0
    attempt: int = 0
    backend: str = "local"
    job_id: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)

    @property
    def unfinished(self) -> bool:
        """Queued, running or awaiting review: the project's one unfinished run."""
        return self.status in UNFINISHED

    @property
    def cfg(self) -> StppConfig:
        """The config as the typed :class:`~stpp.core.config.StppConfig`."""
        return StppConfig.from_dict(self.config)

    @property
    def can_resume(self) -> bool:
        """Failed or cancelled, and marked resumable."""
        return self.status in ("failed", "cancelled") and self.resumable

    @property
    def device(self) -> str:
        """The device the config asks for (``cpu``, ``cuda:N``, ``cuda`` or ``auto``; ``cuda:N,M,...`` or
        ``cpu*N`` for one run in several processes, see :class:`stpp.core.devices.DeviceSpec`)."""
        return str(self.config.get("device", "auto"))


@dataclass(frozen=True)
class RunEvent:
    """One recorded event (see :class:`stpp.core.events.Event`)."""

    id: int
    time: str
    kind: str
    stage: str
    step: int | None
    total: int | None
    loss: float | None
    miou: float | None
    message: str
    data: dict[str, Any] = field(default_factory=dict)


def _run(row: Mapping[str, Any]) -> Run:
    values = dict(row)
    values["config"] = json.loads(values["config"])
    values["resumable"] = bool(values["resumable"])
    values["review_plan"] = tuple(json.loads(values["review_plan"])) if values["review_plan"] else ()
    values["backend_options"] = json.loads(values["backend_options"]) if values["backend_options"] else {}
    return Run(**values)


def parse_time(value: str) -> float:
    """A store timestamp (ISO 8601 UTC) as seconds since the epoch."""
    return datetime.fromisoformat(value).timestamp()


# Rows and status -----------------------------------------------------------------------------------


def create_run(store: Store, project: int | str | Project, config: StppConfig,
               review_plan: Sequence[str] = (), backend: str = "local",
               backend_options: Mapping[str, Any] | None = None) -> Run:
    """Record a new ``queued`` run of ``project`` with a resolved config.

    Args:
        store: the open store.
        project: id, name or :class:`Project`.
        config: the resolved config (``data`` filled in).
        review_plan: the pause points where the run stops for review (see :func:`set_review_plan`).
        backend: where its worker runs (``local`` or ``slurm``).
        backend_options: its own settings for that backend (see :attr:`Run.backend_options`).

    Raises:
        RunConflict: the project already has a queued, running or awaiting-review run.
        RunStateError: a pause point the method does not pass.
    """
    project = get_project(store, project)
    plan = _checked_plan(config, review_plan)
    with store.transaction() as db:
        _refuse_unfinished(db, project)
        run_id = _insert_run(db, project, config, status="queued", backend=backend,
                             review_plan=json.dumps(plan) if plan else None,
                             backend_options=json.dumps(dict(backend_options)) if backend_options else None)
    return get_run(store, run_id)


IMPORTED_STATUSES = ("done", "failed", "cancelled")
"""The statuses a run trained elsewhere is imported with (it never runs here)."""


def record_imported_run(store: Store, project: int | str | Project, config: StppConfig, status: str, *,
                        error: str | None = None) -> Run:
    """Record a run trained elsewhere, already ended, whose folder the caller copies to its ``run_dir``.

    It takes no unfinished slot of its project and is not resumable.

    Raises:
        RunStateError: a status other than :data:`IMPORTED_STATUSES`.
    """
    if status not in IMPORTED_STATUSES:
        raise RunStateError(f"an imported run is {', '.join(IMPORTED_STATUSES)}, not {status}")
    project = get_project(store, project)
    now = utc_now()
    with store.transaction() as db:
        run_id = _insert_run(db, project, config, status=status, error=error, started=now, finished=now,
                             progress=1.0 if status == "done" else 0.0)
    return get_run(store, run_id)


def _insert_run(db, project: Project, config: StppConfig, **fields: Any) -> int:
    row = {"project_id": project.id, "method": config.method, "preset": config.preset,
           "config": json.dumps(config.to_dict(), sort_keys=True), "config_hash": config.config_hash(),
           "resumable": 0, "progress": 0.0, "created": utc_now(), **fields}
    run_id = db["runs"].insert(row).last_pk
    db.execute("UPDATE runs SET run_dir = ? WHERE id = ?", [_default_run_dir(run_id), run_id])
    return run_id


def _default_run_dir(run_id: int) -> str:
    return f"runs/{run_id}"


def run_layout(store: Store, run: Run) -> RunLayout:
    """The run folder of a project run, in the workspace."""
    return RunLayout(store.path(run.run_dir or _default_run_dir(run.id)))


def set_review_plan(store: Store, run_id: int, pauses: Sequence[str]) -> tuple[str, ...]:
    """Set where a run stops for review from now on; returns the plan kept, in run order.

    Raises:
        RunStateError: a pause point the run's method does not pass.
    """
    run = get_run(store, run_id)
    plan = _checked_plan(run.cfg, pauses)
    with store.transaction() as db:
        db.execute("UPDATE runs SET review_plan = ? WHERE id = ?", [json.dumps(plan) if plan else None, run.id])
    return plan


def _checked_plan(cfg: StppConfig, pauses: Sequence[str]) -> tuple[str, ...]:
    valid = pause_points(cfg)
    unknown = [p for p in pauses if p not in valid]
    if unknown:
        raise RunStateError(f"a {cfg.method} run cannot pause after {', '.join(unknown)}; "
                            f"its pause points: {', '.join(valid) or 'none'}")
    return tuple(p for p in valid if p in pauses)


def refuse_unfinished(store: Store, project: int | str | Project) -> None:
    """Raise :class:`RunConflict` when the project has a queued, running or awaiting-review run."""
    _refuse_unfinished(store.db, get_project(store, project))


def _refuse_unfinished(db, project: Project, except_run: int | None = None) -> None:
    marks = ", ".join("?" * len(UNFINISHED))
    row = db.execute(f"SELECT id, status FROM runs WHERE project_id = ? AND status IN ({marks}) AND id != ? "
                     "ORDER BY id LIMIT 1", [project.id, *UNFINISHED, except_run or -1]).fetchone()
    if row is not None:
        status = row[1].replace("_", " ")
        raise RunConflict(f"project {project.name!r} already has an unfinished run: run {row[0]} is {status}; "
                          "cancel it (or wait for it to finish) before starting another")


def find_run(store: Store, run_id: int) -> Run | None:
    """The run with this id, or None."""
    rows = list(store.db.query("SELECT * FROM runs WHERE id = ?", [int(run_id)]))
    return _run(rows[0]) if rows else None


def get_run(store: Store, run_id: int) -> Run:
    """The run with this id.

    Raises:
        StoreError: no such run.
    """
    run = find_run(store, run_id)
    if run is None:
        raise StoreError(f"no run {run_id}")
    return run


def list_runs(store: Store, project: int | str | Project | None = None,
              statuses: Iterable[str] | None = None) -> list[Run]:
    """Runs, newest first; only ``project``'s and only those in ``statuses`` when given."""
    where, params = [], []
    if project is not None:
        where.append("project_id = ?")
        params.append(get_project(store, project).id)
    if statuses is not None:
        statuses = tuple(statuses)
        where.append(f"status IN ({', '.join('?' * len(statuses))})")
        params.extend(statuses)
    sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
    return [_run(row) for row in store.db.query(sql, params)]


def transition(store: Store, run_id: int, status: str, *, expect: Iterable[str] | None = None,
               **fields: Any) -> Run:
    """Change a run's status (and other columns) in one transaction, if the change is allowed.

    Args:
        store: the open store.
        run_id: the run.
        status: the new status.
        expect: when given, the current status must be one of these.
        **fields: other columns to set (``resumable``, ``stage``, ``progress``, ``pid``, ``heartbeat``,
            ``error``, ``started``, ``finished``).

    Raises:
        RunStateError: the current status does not allow the change; ``queued`` from ``failed`` or
            ``cancelled`` also needs ``resumable``.
        RunConflict: going back to ``queued`` while the project has another unfinished run.
    """
    unknown = set(fields) - set(_RUN_FIELDS)
    if unknown:
        raise ValueError(f"unknown run columns: {', '.join(sorted(unknown))}")
    with store.transaction() as db:
        row = db.execute("SELECT status, resumable, project_id FROM runs WHERE id = ?", [int(run_id)]).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id}")
        current, resumable, project_id = row
        if expect is not None and current not in tuple(expect):
            raise RunStateError(f"run {run_id} is {current.replace('_', ' ')}, not {' or '.join(expect)}")
        if status not in TRANSITIONS.get(current, ()):
            raise RunStateError(f"run {run_id} is {current.replace('_', ' ')}; it cannot become {status}")
        if status == "queued" and current in ("failed", "cancelled") and not resumable:
            raise RunStateError(f"run {run_id} is {current} and cannot be resumed")
        if status in UNFINISHED and current not in UNFINISHED:
            _refuse_unfinished(db, get_project(store, project_id), except_run=int(run_id))
        values = {"status": status, **fields}
        if "resumable" in values:
            values["resumable"] = int(bool(values["resumable"]))
        assignments = ", ".join(f"{key} = ?" for key in values)
        db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*values.values(), int(run_id)])
        if status == "queued":
            # Marks where a stop asked of an earlier worker ends (see cancel_requested_at): the next
            # worker must not stop on it, nor be killed for ignoring it.
            record_event(store, run_id, Event("requeued", message=f"queued again (was {current.replace('_', ' ')})"))
    return get_run(store, run_id)


def update_run(store: Store, run_id: int, **fields: Any) -> None:
    """Set columns of a run without changing its status (``stage``, ``progress``, ``pid``, ``heartbeat``...)."""
    if not fields:
        return
    unknown = set(fields) - set(_RUN_FIELDS) or ({"status"} & set(fields))
    if unknown:
        raise ValueError(f"cannot set {', '.join(sorted(unknown))} with update_run")
    assignments = ", ".join(f"{key} = ?" for key in fields)
    with store.transaction() as db:
        db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*fields.values(), int(run_id)])


def claim_queued(store: Store, run_id: int, **fields: Any) -> bool:
    """Atomically move a run from ``queued`` to ``running`` as its next start (``attempt`` + 1); False when it
    was not queued any more.

    The attempt is counted in the same update: from then on the status file of the run's earlier start
    (a pause, say) no longer counts as this start's, whichever process imports the folder next.
    """
    values = {"status": "running", "heartbeat": utc_now(), **fields}
    assignments = ", ".join(f"{key} = ?" for key in values)
    with store.transaction() as db:
        cursor = db.execute(f"UPDATE runs SET {assignments}, attempt = attempt + 1 "
                            "WHERE id = ? AND status = 'queued'", [*values.values(), int(run_id)])
        return cursor.rowcount == 1


def claim_submission(store: Store, run_id: int, marker: str) -> bool:
    """Mark a queued run that has no backend job yet with ``marker`` as its ``job_id``, as its next start
    (``attempt`` + 1, as :func:`claim_queued` counts it); False when it was not so any more (another process
    is submitting it)."""
    with store.transaction() as db:
        cursor = db.execute("UPDATE runs SET job_id = ?, attempt = attempt + 1 "
                            "WHERE id = ? AND status = 'queued' AND job_id IS NULL", [marker, int(run_id)])
        return cursor.rowcount == 1


def end_running(store: Store, run_id: int, status: str, pid: int | None, **fields: Any) -> bool:
    """Move a ``running`` run owned by ``pid`` to a final status; False when it was no longer so.

    The condition makes the change safe against a worker that reported its own end in the meantime.
    """
    if status not in TRANSITIONS["running"]:
        raise RunStateError(f"a running run cannot become {status}")
    values = {"status": status, "finished": utc_now(), **fields}
    if "resumable" in values:
        values["resumable"] = int(bool(values["resumable"]))
    assignments = ", ".join(f"{key} = ?" for key in values)
    owner = "pid IS NULL" if pid is None else "pid = ?"
    with store.transaction() as db:
        cursor = db.execute(f"UPDATE runs SET {assignments} WHERE id = ? AND status = 'running' AND {owner}",
                            [*values.values(), int(run_id), *([] if pid is None else [pid])])
        return cursor.rowcount == 1


# Events --------------------------------------------------------------------------------------------


def record_event(store: Store, run_id: int, event: Event) -> int:
    """Store one event; returns its row id."""
    with store.transaction() as db:
        return db["events"].insert({
            "run_id": int(run_id), "time": utc_now(event.time), "kind": event.kind, "stage": event.stage or None,
            "step": event.step, "total": event.total, "loss": event.loss, "miou": event.miou,
            "message": event.message or "", "data": json.dumps(event.data) if event.data else None,
        }).last_pk


def list_events(store: Store, run_id: int, limit: int | None = None, kinds: Iterable[str] | None = None,
                after_id: int = 0, first: int | None = None) -> list[RunEvent]:
    """A run's events in the order they happened.

    Args:
        limit: only the last ``limit`` of them.
        kinds: only these kinds (``step``, ``epoch``, ``eval``...).
        after_id: only events recorded after this row id.
        first: only the first ``first`` of them (instead of ``limit``).
    """
    sql, params = "SELECT * FROM events WHERE run_id = ? AND id > ?", [int(run_id), after_id]
    if kinds is not None:
        kinds = tuple(kinds)
        sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
        params += list(kinds)
    if first:
        sql += f" ORDER BY id LIMIT {int(first)}"
    else:
        sql += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
    events = [RunEvent(row["id"], row["time"], row["kind"], row["stage"] or "", row["step"], row["total"],
                       row["loss"], row["miou"], row["message"] or "", json.loads(row["data"]) if row["data"] else {})
              for row in store.db.query(sql, params)]
    return events if first else events[::-1]


def last_event_id(store: Store, run_id: int) -> int:
    """The row id of the run's latest event (0 when none)."""
    row = store.db.execute("SELECT max(id) FROM events WHERE run_id = ?", [int(run_id)]).fetchone()
    return int(row[0] or 0)


def loss_points(store: Store, run_id: int) -> list[tuple[str, int, float]]:
    """The training-loss curve as ``(stage, step, loss)``, in order.

    A stage's recorded step events; a stage with fewer than three of them (short stages log few
    steps) also gets its per-epoch mean losses, which win where both fall on the same step.
    """
    by_stage: dict[str, dict[str, list[tuple[str, int, float]]]] = {}
    for event in list_events(store, run_id, kinds=["step", "epoch"]):
        if event.loss is not None and event.step is not None:
            by_stage.setdefault(event.stage, {"step": [], "epoch": []})[event.kind].append(
                (event.stage, event.step, event.loss))
    points = []
    for series in by_stage.values():
        if len(series["step"]) >= 3:
            points += series["step"]
        else:
            merged = {step: (stage, step, loss) for stage, step, loss in series["step"] + series["epoch"]}
            points += [merged[step] for step in sorted(merged)]
    return points


def request_cancel(store: Store, run_id: int) -> None:
    """Record that someone asked the running worker to stop (the worker polls for it)."""
    record_event(store, run_id, Event("cancel_requested", message="cancel requested; stopping after the current step"))


def cancel_requested_at(store: Store, run_id: int) -> float | None:
    """When a stop was requested since the run's worker last started or the run was queued again
    (seconds since the epoch), or None."""
    latest = list_events(store, run_id, limit=1, kinds=["worker_start", "requeued", "cancel_requested"])
    if latest and latest[-1].kind == "cancel_requested":
        return parse_time(latest[-1].time)
    return None


def estimate_eta(store: Store, run: Run, now: float | None = None) -> float | None:
    """Seconds left for a running run, from the progress made since its worker began working; None if unknown.

    The clock starts at the worker's first step, labelling or evaluation event, not at its start: the
    seconds a worker spends importing torch and building its model would otherwise read, early in a
    short run, as the pace of the whole run.
    """
    if run.status != "running" or run.progress >= 1:
        return None
    starts = list_events(store, run.id, limit=1, kinds=["worker_start"])
    if not starts:
        return None
    start = starts[-1]
    done_at_start = (start.step or 0) / PROGRESS_SCALE
    first_work = list_events(store, run.id, kinds=WORK_EVENTS, after_id=start.id, first=1)
    began = parse_time((first_work or [start])[0].time)
    gained = run.progress - done_at_start
    elapsed = (time.time() if now is None else now) - began
    if gained < 0.005 or elapsed <= 0:
        return None
    return elapsed * (1 - run.progress) / gained


# Checkpoints, metrics, scores, pseudo masks --------------------------------------------------------


def relative_to_workspace(store: Store, path: str | Path) -> str:
    """``path`` relative to the workspace when it lies inside it, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(store.workspace))
    except ValueError:
        try:
            return str(path.resolve().relative_to(store.workspace.resolve()))
        except ValueError:
            return str(path)


def record_checkpoint(store: Store, run_id: int, stage: str, path: str | Path, epoch: int | None = None,
                      metrics: Mapping[str, Any] | None = None) -> int:
    """Record (or update) the row of a checkpoint file; returns its row id."""
    rel = relative_to_workspace(store, path)
    with store.transaction() as db:
        row = db.execute("SELECT id FROM checkpoints WHERE run_id = ? AND path = ?", [int(run_id), rel]).fetchone()
        values = {"stage": stage, "epoch": epoch}
        if metrics is not None:
            values["metrics"] = json.dumps(dict(metrics))
        if row is not None:
            assignments = ", ".join(f"{key} = ?" for key in values)
            db.execute(f"UPDATE checkpoints SET {assignments} WHERE id = ?", [*values.values(), row[0]])
            return int(row[0])
        return db["checkpoints"].insert({"run_id": int(run_id), "path": rel, "created": utc_now(), **values}).last_pk


def set_stage_metrics(store: Store, run_id: int, stage: str, metrics: Mapping[str, Any]) -> bool:
    """Attach validation metrics to the final checkpoint of ``stage``; False when it has no checkpoint row."""
    with store.transaction() as db:
        row = db.execute("SELECT id FROM checkpoints WHERE run_id = ? AND stage = ? ORDER BY epoch DESC, id DESC "
                         "LIMIT 1", [int(run_id), stage]).fetchone()
        if row is None:
            return False
        db.execute("UPDATE checkpoints SET metrics = ? WHERE id = ?", [json.dumps(dict(metrics)), row[0]])
        return True


@dataclass(frozen=True)
class CheckpointRow:
    """One recorded checkpoint; ``path`` is relative to the workspace."""

    id: int
    stage: str
    epoch: int | None
    path: str
    metrics: dict[str, Any] | None


def list_checkpoints(store: Store, run_id: int) -> list[CheckpointRow]:
    """A run's checkpoints in the order they were recorded."""
    return [CheckpointRow(r["id"], r["stage"], r["epoch"], r["path"],
                          json.loads(r["metrics"]) if r["metrics"] else None)
            for r in store.db.query("SELECT * FROM checkpoints WHERE run_id = ? ORDER BY id", [int(run_id)])]


def run_metrics(store: Store, run_id: int) -> dict[str, float | None]:
    """Validation mIoU (percent) per evaluated stage, in stage order; from the checkpoints, else the events."""
    found: dict[str, float | None] = {}
    for row in list_checkpoints(store, run_id):
        if row.metrics and "miou" in row.metrics:
            found[row.stage] = row.metrics["miou"]
    for event in list_events(store, run_id, kinds=["eval"]):
        found.setdefault(event.stage, event.miou)
    return found


def record_scores(store: Store, run_id: int, scores_csv: str | Path, image_ids: Mapping[str, int]) -> int:
    """Store the rows of a run's ``scores.csv`` (``id,stability,reliable,rank,ckpt<j>_miou...``).

    Args:
        image_ids: image name (the run's sample id) to image row id.

    Returns:
        The number of score rows written (existing rows of the run are replaced).
    """
    with open(scores_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = []
    for row in rows:
        if row["id"] not in image_ids:
            raise StoreError(f"{scores_csv}: image {row['id']!r} is not in the run's project")
        per_ckpt = [float(row[k]) if row[k] else None for k in row if k.endswith("_miou")]
        records.append({"run_id": int(run_id), "image_id": image_ids[row["id"]], "stability": float(row["stability"]),
                        "reliable": int(row["reliable"]), "rank": int(row["rank"]),
                        "checkpoint_miou": json.dumps(per_ckpt)})
    with store.transaction() as db:
        db.execute("DELETE FROM scores WHERE run_id = ?", [int(run_id)])
        if records:
            db["scores"].insert_all(records)
    return len(records)


def record_pseudo_masks(store: Store, run_id: int, stage: str, folder: str | Path,
                        image_ids: Mapping[str, int]) -> int:
    """Add a ``pseudo`` mask row (run, stage) for every ``ID.png`` in ``folder`` not yet recorded.

    Args:
        stage: the stage whose model labelled the masks (``teacher``, ``stage1``...).
        folder: the run's ``pseudo/<stage>`` folder.
        image_ids: image name to image row id; files of other names are left out.

    Returns:
        The number of rows added.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    known = {row[0] for row in store.db.execute(
        "SELECT image_id FROM masks WHERE run_id = ? AND kind = 'pseudo' AND stage = ?", [int(run_id), stage])}
    records = []
    for path in sorted(folder.glob("*.png")):
        image_id = image_ids.get(path.stem)
        if image_id is None or image_id in known:
            continue
        records.append({"image_id": image_id, "kind": "pseudo", "run_id": int(run_id), "stage": stage,
                        "path": relative_to_workspace(store, path), "hash": sha1_bytes(path.read_bytes()),
                        "created": utc_now()})
    if records:
        with store.transaction() as db:
            db["masks"].insert_all(records, ignore=True)
    return len(records)


def count_rows(store: Store, table: str, run_id: int, **where: Any) -> int:
    """How many rows of ``table`` (``events``, ``checkpoints``, ``scores``, ``masks``) belong to the run."""
    if table not in ("events", "checkpoints", "scores", "masks"):
        raise ValueError(f"not a per-run table: {table}")
    sql = f"SELECT count(*) FROM {table} WHERE run_id = ?" + "".join(f" AND {key} = ?" for key in where)
    return int(store.db.execute(sql, [int(run_id), *where.values()]).fetchone()[0])


def set_worker_pid(store: Store, run_id: int, pid: int) -> bool:
    """Record the pid of the worker spawned for a claimed run; False when the run was not waiting for one."""
    with store.transaction() as db:
        cursor = db.execute("UPDATE runs SET pid = ? WHERE id = ? AND status = 'running' AND pid IS NULL",
                            [int(pid), int(run_id)])
        return cursor.rowcount == 1


def set_run_config(store: Store, run_id: int, cfg: StppConfig) -> None:
    """Replace a run's config (and its hash), e.g. a reliable ratio chosen at a review pause."""
    with store.transaction() as db:
        db.execute("UPDATE runs SET config = ?, config_hash = ? WHERE id = ?",
                   [json.dumps(cfg.to_dict(), sort_keys=True), cfg.config_hash(), int(run_id)])


def current_pseudo_masks(store: Store, run_id: int,
                         image_ids: Sequence[int] | None = None) -> dict[int, tuple[str, str]]:
    """image id -> (stage, workspace-relative path) of the run's latest-stage pseudo mask.

    Args:
        image_ids: only these images (all of the run's otherwise).
    """
    sql, params = "SELECT image_id, stage, path FROM masks WHERE kind = 'pseudo' AND run_id = ?", [int(run_id)]
    if image_ids is not None:
        if not image_ids:
            return {}
        sql += f" AND image_id IN ({', '.join('?' * len(image_ids))})"
        params += [int(i) for i in image_ids]
    best: dict[int, tuple[str, str]] = {}
    for image_id, stage, path in store.db.execute(sql, params):
        if image_id not in best or stage_order(stage) > stage_order(best[image_id][0]):
            best[image_id] = (stage, path)
    return best


def pseudo_masks_by_stage(store: Store, run_id: int) -> dict[str, dict[int, str]]:
    """stage -> image id -> workspace-relative path, for every pseudo mask of the run."""
    found: dict[str, dict[int, str]] = {}
    for image_id, stage, path in store.db.execute(
            "SELECT image_id, stage, path FROM masks WHERE run_id = ? AND kind = 'pseudo'", [int(run_id)]):
        found.setdefault(stage, {})[image_id] = path
    return found


def run_stages(store: Store, run_id: int, models_only: bool = False) -> list[str]:
    """The stages of a run that have pseudo masks or a trained model (only a model: ``models_only``), in order."""
    sql = "SELECT DISTINCT stage FROM checkpoints WHERE run_id = ?"
    if not models_only:
        sql += " UNION SELECT DISTINCT stage FROM masks WHERE run_id = ? AND kind = 'pseudo' AND stage IS NOT NULL"
    rows = store.db.execute(sql, [int(run_id)] * (1 if models_only else 2)).fetchall()
    return sorted({r[0] for r in rows}, key=stage_order)


def ranked_run_ids(store: Store, project: int | str | Project) -> list[int]:
    """Ids of the project's runs that have a stability ranking (or teacher labels), newest first."""
    project = get_project(store, project)
    rows = store.db.execute(
        "SELECT id FROM runs WHERE project_id = ? AND (EXISTS (SELECT 1 FROM scores WHERE run_id = runs.id) "
        "OR EXISTS (SELECT 1 FROM masks WHERE run_id = runs.id AND kind = 'pseudo')) ORDER BY id DESC",
        [project.id]).fetchall()
    return [r[0] for r in rows]
