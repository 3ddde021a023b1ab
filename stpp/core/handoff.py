"""What the app and a worker hand each other through the run folder, the worker's only output.

A project run's worker (a local process, or a Slurm job on another machine) never opens the
store: SQLite over a network file system is not safe. The app writes the run's order into the
folder; the worker writes everything it produces there (``events.jsonl``, checkpoints, masks,
scores) and reports its state in a small status file; the app imports all of it into the store
(:mod:`stpp.services.run_import`). Three files, all in ``RUN_DIR``:

- ``job.json`` (:class:`WorkerJob`, written by the app before each start): the resolved config,
  the images per role with their files, the review decisions, where to pause, and an *attempt*
  number that tells this start's status from an earlier one's;
- ``status.json`` (:class:`WorkerStatus`, written by the worker, atomically): running (with a
  heartbeat and the progress), then done, failed, cancelled or paused;
- ``stop`` (made by the app): asks the worker to stop cleanly after its current step.

Torch-free and store-free: both sides import it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from stpp.core.events import Event
from stpp.core.masks import atomic_save

JOB_NAME = "job.json"
STATUS_NAME = "status.json"
STOP_NAME = "stop"
HANDOFF_NAMES = frozenset({JOB_NAME, STATUS_NAME, STOP_NAME})
"""The hand-off files: a run folder that holds only these (and its lock) is a run not started yet."""

WORKER_STATES = ("running", "done", "failed", "cancelled", "paused")
"""What a worker reports: ``running`` while it works, then how it ended (``paused``: stopped at a
pause point for review)."""
ENDED = frozenset(WORKER_STATES) - {"running"}
PROGRESS_SCALE = 10_000
"""A ``worker_start`` event carries the run's progress at that moment as ``step / PROGRESS_SCALE``."""


class HandoffError(ValueError):
    """A hand-off file that is missing or unreadable (the message names it)."""


@dataclass(frozen=True)
class JobImage:
    """One image of a run: its name (the run's sample id), its file, and its mask file (or None)."""

    name: str
    image: str
    mask: str | None = None


@dataclass(frozen=True)
class WorkerJob:
    """A project run's order to its worker (``job.json``).

    Attributes:
        run_id: the run's id in the app's store (for messages and logs).
        attempt: counts the starts of this run; a status of an older attempt is stale.
        config: the full resolved config (as in ``config.json``).
        labeled, unlabeled, val: the run's images per role; unlabelled ones never carry a mask.
        reviewed: accepted and corrected unlabelled images with their reviewed masks.
        rejected: names of rejected unlabelled images.
        inputs: what the run records as ``inputs.json`` (the project and the image names per role).
        pause: the pause point where the run stops for review next, or None.
        start_progress: the run's progress when this start was ordered (a continued run goes on from there).
        pixels_per_image: the mean image size, which weighs labelling and evaluation in the progress.
    """

    run_id: int
    attempt: int
    config: dict[str, Any]
    labeled: tuple[JobImage, ...]
    unlabeled: tuple[JobImage, ...]
    val: tuple[JobImage, ...] = ()
    reviewed: tuple[JobImage, ...] = ()
    rejected: tuple[str, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)
    pause: str | None = None
    start_progress: float = 0.0
    pixels_per_image: float = 0.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WorkerJob:
        images = ("labeled", "unlabeled", "val", "reviewed")
        values = {**values, **{key: tuple(JobImage(**item) for item in values.get(key, ())) for key in images}}
        values["rejected"] = tuple(values.get("rejected", ()))
        return cls(**values)


@dataclass(frozen=True)
class WorkerStatus:
    """What a worker reports about itself (``status.json``).

    Attributes:
        state: one of :data:`WORKER_STATES`.
        attempt: the :attr:`WorkerJob.attempt` this worker runs.
        progress: 0..1 over the whole run, as far as this worker got.
        heartbeat: when the worker last wrote the file (seconds since the epoch).
        host, pid: where it runs (the pid is rank 0's process; under torchrun, torchrun's).
        root: the run folder as the worker saw it (another machine may mount it elsewhere).
        error: why it failed.
        pause: the pause point it stopped at (state ``paused``).
    """

    state: str
    attempt: int
    progress: float = 0.0
    heartbeat: float = 0.0
    host: str = ""
    pid: int = 0
    root: str = ""
    error: str | None = None
    pause: str | None = None

    @property
    def ended(self) -> bool:
        """Done, failed, cancelled or paused: the worker is gone or going."""
        return self.state in ENDED


def job_path(root: str | Path) -> Path:
    return Path(root) / JOB_NAME


def status_path(root: str | Path) -> Path:
    return Path(root) / STATUS_NAME


def stop_path(root: str | Path) -> Path:
    return Path(root) / STOP_NAME


def write_job(root: str | Path, job: WorkerJob) -> None:
    """Write ``job.json`` for the next start of the run, clearing a stop request and an old status."""
    stop_path(root).unlink(missing_ok=True)
    _write_json(job_path(root), asdict(job))


def read_job(root: str | Path) -> WorkerJob:
    """The run's ``job.json``.

    Raises:
        HandoffError: missing or malformed.
    """
    values = _read_json(job_path(root))
    if values is None:
        raise HandoffError(f"{job_path(root)} is missing: the app writes it before it starts the worker")
    try:
        return WorkerJob.from_dict(values)
    except (TypeError, KeyError) as error:
        raise HandoffError(f"{job_path(root)} is not a job file of this stpp: {error}") from None


def write_status(root: str | Path, status: WorkerStatus) -> None:
    """Write ``status.json`` atomically (a reader sees the old or the new file, never half of one)."""
    if status.state not in WORKER_STATES:
        raise ValueError(f"unknown worker state {status.state!r}; states: {', '.join(WORKER_STATES)}")
    _write_json(status_path(root), asdict(status))


def read_status(root: str | Path) -> WorkerStatus | None:
    """The worker's ``status.json``, or None when there is none (not started yet) or it is unreadable."""
    try:
        values = _read_json(status_path(root))
        return None if values is None else WorkerStatus(**values)
    except (HandoffError, TypeError):
        return None


def new_status(job: WorkerJob, root: str | Path, state: str = "running", **fields: Any) -> WorkerStatus:
    """A status of this process (or ``pid``) for ``job``, stamped now."""
    values = {"progress": job.start_progress, "host": socket.gethostname(), "pid": os.getpid(),
              "root": str(Path(root).absolute()), **fields}
    return WorkerStatus(state=state, attempt=job.attempt, heartbeat=time.time(), **values)


def stamped(status: WorkerStatus, **fields: Any) -> WorkerStatus:
    """``status`` with ``fields`` changed and the heartbeat set to now."""
    return replace(status, heartbeat=time.time(), **fields)


def worker_start_event(progress: float, pid: int) -> Event:
    """The event that opens a worker session; it keeps the progress at the start, for the ETA."""
    return Event("worker_start", step=int(round(progress * PROGRESS_SCALE)), total=PROGRESS_SCALE,
                 message=f"worker started (pid {pid} on {socket.gethostname()})")


def request_stop(root: str | Path) -> None:
    """Ask the run's worker to stop after its current step (it polls for the file)."""
    path = stop_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def stop_requested(root: str | Path) -> bool:
    """Whether the app asked the run's worker to stop."""
    return stop_path(root).exists()


def only_handoff(names: Sequence[str]) -> bool:
    """Whether a folder with these entries holds nothing a run wrote (only hand-off files and hidden ones)."""
    return all(name in HANDOFF_NAMES or name.startswith(".") for name in names)


def _write_json(path: Path, values: dict[str, Any]) -> None:
    atomic_save(path, lambda tmp: Path(tmp).write_text(json.dumps(values, indent=1)))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise HandoffError(f"{path} cannot be read: {error}") from None
