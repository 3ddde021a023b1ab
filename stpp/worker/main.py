"""The worker process: claims a project run, trains it through the headless pipeline and records
everything in the store (see :mod:`stpp.worker`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from stpp.core.classes import DataError
from stpp.core.config import ConfigError, StppConfig
from stpp.core.devices import DeviceSpec, parse_device_spec
from stpp.core.events import Event, EventSink
from stpp.core.layout import RunLayout, default_workspace
from stpp.core.method import stage_names
from stpp.core.runlock import RunFolderBusy, RunFolderLock
from stpp.engine.device import configure_cpu_threads
from stpp.engine.distributed import (
    broadcast_from_main,
    init_distributed,
    launched_by_torchrun,
    shutdown_distributed,
    world_size,
)
from stpp.engine.signals import StopFlag
from stpp.engine.train import StopRequested, snapshot_epochs
from stpp.headless import RunError, prepare_run_dir, run_headless
from stpp.jobs import JobRunner, worker_alive
from stpp.models import WeightsError
from stpp.selftrain.pipeline import PAUSED, RunData
from stpp.services.review import ReviewError, next_pause, record_pause
from stpp.store.db import Store, StoreError, open_store, utc_now
from stpp.store.images import mean_image_pixels
from stpp.store.projects import get_project
from stpp.store.runs import (
    Run,
    cancel_requested_at,
    claim_queued,
    end_running,
    get_run,
    read_run_device,
    record_checkpoint,
    record_event,
    record_scores,
    record_worker_start,
    run_layout,
    set_stage_metrics,
    update_run,
)
from stpp.worker.inputs import build_run_data, describe_project_inputs, with_reviews
from stpp.worker.progress import RunProgress
from stpp.worker.sink import StoreSink

log = logging.getLogger(__name__)
EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_CANCELLED = 130
HEARTBEAT_S = 5.0
"""Seconds between heartbeats (each also checks the store for a cancel request)."""

_EXPECTED_ERRORS = (ConfigError, DataError, ReviewError, RunError, StoreError, WeightsError)



class _StopOnFlag:
    """Forwards events, then raises :class:`StopRequested` on a labelling or evaluation tick once a
    stop was asked for: the training loop polls the flag itself (after saving ``last.pt``), those
    passes do not, and what they wrote so far is kept for the resume. Single-process workers only."""

    def __init__(self, sink: EventSink, flag: StopFlag):
        self.sink = sink
        self.flag = flag

    def emit(self, event: Event) -> None:
        self.sink.emit(event)
        if event.kind in ("labels", "eval_progress") and self.flag():
            raise StopRequested(event.stage)


class Heartbeat(threading.Thread):
    """Stamps the run's heartbeat every ``interval`` seconds and turns a cancel recorded in the store
    into a stop request (so a cancel from another machine or a lost SIGTERM still stops the run)."""

    def __init__(self, store: Store, run_id: int, flag: StopFlag, interval: float = HEARTBEAT_S):
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self.store = store
        self.run_id = run_id
        self.flag = flag
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                update_run(self.store, self.run_id, heartbeat=utc_now())
                if cancel_requested_at(self.store, self.run_id) is not None:
                    self.flag.requested = True
            except sqlite3.Error as error:
                log.warning("run %s: heartbeat not recorded: %s", self.run_id, error)

    def stop(self) -> None:
        """End the thread (waits for it)."""
        self._stopped.set()
        self.join(timeout=30)


def claim_run(store: Store, run_id: int, pid: int) -> Run:
    """Take a run for this worker process: a queued run, or a running one claimed for it by the runner.

    Raises:
        StoreError: no such run, a live worker has it, or it is finished (resume it first).
    """
    run = get_run(store, run_id)
    if run.status == "queued":
        if not claim_queued(store, run.id, pid=pid, started=run.started or utc_now(), error=None):
            raise StoreError(f"run {run.id} was taken by another worker")
    elif run.status == "running":
        if run.pid not in (None, pid) and worker_alive(run.pid, run.id):
            raise StoreError(f"run {run.id} is already running (worker pid {run.pid})")
        update_run(store, run.id, pid=pid, heartbeat=utc_now())
    else:
        hint = "resume it first" if run.can_resume else "there is nothing left to run"
        raise StoreError(f"run {run.id} is {run.status.replace('_', ' ')}; {hint}")
    return get_run(store, run.id)


def worker_main(run_id: int, workspace: str | Path | None = None) -> int:
    """Run one project run to its end; the entry point of ``python -m stpp worker RUN_ID``.

    Under ``torchrun`` every rank calls it: rank 0 claims the run (under torchrun's pid, which the
    job runner recorded), records its progress and ends it; the other ranks only read the run's
    device from the store, then train what rank 0 hands them.

    Args:
        run_id: the run (``queued``, or ``running`` as claimed for this process by the job runner).
        workspace: the workspace; None means ``$STPP_HOME`` or ``./workspace``.

    Returns:
        0 done, 1 failed, 2 refused (no such run, bad workspace, not runnable), 130 cancelled (0
        under torchrun).
    """
    configure_cpu_threads()
    workspace = Path(workspace or default_workspace())
    if not launched_by_torchrun():
        return _lead(run_id, workspace)
    if int(os.environ.get("RANK", "0")) > 0:
        code = _follow_main_rank(run_id, workspace)
    else:
        code = _lead(run_id, workspace)
    # torchrun takes any other exit for a failure and terminates the ranks still running, while
    # rank 0 may still be recording the outcome: a stop on request is a normal end there.
    return EXIT_DONE if code == EXIT_CANCELLED else code


def _lead(run_id: int, workspace: Path) -> int:
    """Claim, run and record the run: the single worker process, or rank 0 under torchrun."""
    try:
        store = open_store(workspace)
    except StoreError as error:
        print(f"stpp worker: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    with store:
        # Under torchrun its pid stands for the worker: the job runner recorded it, and it lives as
        # long as any rank does.
        pid = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else os.getpid()
        try:
            lock = RunFolderLock(run_layout(store, get_run(store, run_id)).root).acquire()
        except (StoreError, RunFolderBusy) as error:
            print(f"stpp worker: error: {error}", file=sys.stderr)
            return EXIT_REFUSED
        with lock:
            return _lead_locked(store, run_id, pid)


def _lead_locked(store: Store, run_id: int, pid: int) -> int:
    """The rest of :func:`_lead`, once this process owns the run folder."""
    try:
        run = claim_run(store, run_id, pid)
    except StoreError as error:
        print(f"stpp worker: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    flag = StopFlag()
    if cancel_requested_at(store, run.id) is not None:
        flag.requested = True
    record_worker_start(store, run.id, pid, run.progress)
    heartbeat = Heartbeat(store, run.id, flag)
    heartbeat.start()
    try:
        code = _execute(store, run, pid, flag)
    finally:
        heartbeat.stop()
        shutdown_distributed()
    try:
        JobRunner(store).tick()  # this run's slot is free: start the next queued run
    except (StoreError, sqlite3.Error) as error:
        print(f"stpp worker: warning: the queue was not advanced: {error}", file=sys.stderr)
    return code


@dataclass(frozen=True)
class RankJob:
    """What rank 0 hands the other ranks of a torchrun worker: everything they train from."""

    cfg: StppConfig
    data: RunData
    layout: RunLayout
    pause: str | None


def join_device(spec: DeviceSpec) -> torch.device:
    """This process's device; under ``torchrun`` after joining the process group (gloo or NCCL).

    Raises:
        RunError: a run over several processes started without torchrun.
        ValueError: a device this machine does not have.
    """
    if spec.distributed and not launched_by_torchrun():
        raise RunError(f"device {spec} trains in {spec.processes} processes: start the run through the job "
                       "runner, which launches it with torchrun")
    return init_distributed(spec.process_device)


def _follow_main_rank(run_id: int, workspace: Path) -> int:
    """A torchrun rank other than 0: train what rank 0 prepared; rank 0 records everything."""
    flag = StopFlag()
    try:
        device = join_device(parse_device_spec(read_run_device(workspace, run_id)))
    except (ConfigError, RunError, StoreError, ValueError) as error:
        print(f"stpp worker: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        job: RankJob | None = broadcast_from_main(None)
        if job is None:
            # Rank 0 did not start the run and recorded why; a failure exit here would make torchrun
            # terminate rank 0 while it finishes.
            return EXIT_DONE
        run_headless(job.cfg, job.data, job.layout, device, should_stop=flag, pause_after=job.pause)
        return EXIT_DONE
    except (StopRequested, KeyboardInterrupt):
        return EXIT_CANCELLED
    except Exception:  # noqa: BLE001 - rank 0 records the run's failure; this rank only logs its own
        traceback.print_exc()
        return EXIT_FAILED
    finally:
        shutdown_distributed()


def _execute(store: Store, run: Run, pid: int, flag: StopFlag) -> int:
    layout = run_layout(store, run)
    image_ids: dict[str, int] = {}
    cfg = None
    shared = False
    try:
        cfg = StppConfig.from_dict(run.config)
        device = join_device(parse_device_spec(cfg.device))
        if flag():
            raise StopRequested("start")
        project = get_project(store, run.project_id)
        frozen = json.loads(layout.inputs_path.read_text()) if layout.inputs_path.exists() else None
        data, image_ids = build_run_data(store, project, frozen)
        data = with_reviews(store, project, data)
        pause = next_pause(store, run.id)
        layout = prepare_run_dir(layout.root, cfg, describe_project_inputs(project, data),
                                 resume=layout.config_path.exists())
        sink = StoreSink(store, run.id, layout, image_ids, RunProgress(cfg, data, mean_image_pixels(store, project)),
                         start_progress=run.progress)
        shared = True
        broadcast_from_main(RankJob(cfg, data, layout, pause))
        # Under torchrun only the training loop stops, where every rank agrees on it: rank 0 leaving a
        # labelling pass alone would strand the other ranks in their next collective.
        events = sink if world_size() > 1 else _StopOnFlag(sink, flag)
        result = run_headless(cfg, data, layout, device, events, should_stop=flag, pause_after=pause)
        sync_run_outputs(store, run.id, layout, cfg, image_ids)
        if result.get(PAUSED):
            record_pause(store, run.id, result[PAUSED])
            # Not finished: the run keeps its project's one unfinished slot until it continues.
            end_running(store, run.id, "awaiting_review", pid, resumable=False, error=None, finished=None)
            return EXIT_DONE
        end_running(store, run.id, "done", pid, progress=1.0, resumable=False, error=None)
        return EXIT_DONE
    except (StopRequested, KeyboardInterrupt):
        _sync_quietly(store, run.id, layout, cfg, image_ids)
        record_event(store, run.id, Event("info", message="stopped on request; resume continues from here"))
        end_running(store, run.id, "cancelled", pid, resumable=True)
        return EXIT_CANCELLED
    except Exception as error:  # noqa: BLE001 - any failure must reach the store, not just the log
        traceback.print_exc()
        message = str(error) if isinstance(error, _EXPECTED_ERRORS) else f"{type(error).__name__}: {error}"
        _sync_quietly(store, run.id, layout, cfg, image_ids)
        record_event(store, run.id, Event("error", message=message))
        end_running(store, run.id, "failed", pid, resumable=True, error=message)
        return EXIT_FAILED
    finally:
        if not shared:
            broadcast_from_main(None)  # the other ranks of a torchrun worker wait for a job: there is none


def sync_run_outputs(store: Store, run_id: int, layout: RunLayout, cfg: StppConfig, image_ids: dict[str, int]) -> None:
    """Record what the run folder holds and the store may have missed (idempotent).

    Checkpoints (with the stage's validation metrics from ``metrics.json``), the scores and every
    pseudo mask: a resumed run skips finished stages without events, and a killed worker may have
    written a file without its row.
    """
    k = cfg.pseudo.num_checkpoints
    for index, epoch in enumerate(snapshot_epochs(cfg.optim.epochs, k), start=1):
        path = layout.teacher_checkpoint(index)
        if path.exists():
            record_checkpoint(store, run_id, "teacher", path, epoch)
    for stage in stage_names(cfg)[1:]:
        path = layout.model_path(stage, k)
        if path.exists():
            record_checkpoint(store, run_id, stage, path, cfg.student_epochs)
    if layout.metrics_path.exists():
        for stage, summary in json.loads(layout.metrics_path.read_text()).get("stages", {}).items():
            if summary:
                set_stage_metrics(store, run_id, stage, summary)
    if layout.scores_path.exists():
        record_scores(store, run_id, layout.scores_path, image_ids)
    StoreSink(store, run_id, layout, image_ids).record_all_pseudo_masks()


def _sync_quietly(store: Store, run_id: int, layout: RunLayout, cfg: StppConfig | None,
                  image_ids: dict[str, int]) -> None:
    if cfg is None or not layout.config_path.exists():
        return
    try:
        sync_run_outputs(store, run_id, layout, cfg, image_ids)
    except Exception:  # noqa: BLE001 - the run's own status matters more than a partial record
        traceback.print_exc()


# Questions for torch-free processes ---------------------------------------------------------------


def gpu_inventory() -> list[dict[str, Any]]:
    """The visible CUDA GPUs: ``[{"index", "name", "memory_bytes"}]`` (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [{"index": i, "name": torch.cuda.get_device_name(i),
             "memory_bytes": torch.cuda.get_device_properties(i).total_memory}
            for i in range(torch.cuda.device_count())]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stpp.worker", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", nargs="?", type=int, help="the run to execute")
    parser.add_argument("--workspace", type=Path, default=default_workspace(),
                        help="the workspace (default: $STPP_HOME or ./workspace)")
    parser.add_argument("--list-devices", action="store_true", help="print the visible GPUs as JSON and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_devices:
        print(json.dumps(gpu_inventory()))
        return 0
    if args.run_id is None:
        print("stpp worker: error: a RUN_ID is required", file=sys.stderr)
        return EXIT_REFUSED
    return worker_main(args.run_id, args.workspace)
