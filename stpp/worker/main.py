"""The worker process: runs one project run from its folder's ``job.json`` through the headless
pipeline, and reports in ``status.json`` (see :mod:`stpp.worker` and :mod:`stpp.core.handoff`).
It never opens the store."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from stpp.core.classes import ClassInfo, DataError
from stpp.core.config import ConfigError, StppConfig
from stpp.core.devices import DeviceSpec, parse_device_spec
from stpp.core.events import Event, EventSink
from stpp.core.handoff import (
    HandoffError,
    WorkerJob,
    WorkerStatus,
    new_status,
    read_job,
    stamped,
    stop_requested,
    worker_start_event,
    write_status,
)
from stpp.core.layout import RunLayout
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
from stpp.engine.train import StopRequested
from stpp.headless import RunError, prepare_run_dir, run_headless
from stpp.models import WeightsError
from stpp.selftrain.pipeline import PAUSED, RunData, Sample
from stpp.worker.progress import ProgressTracker, RunProgress

log = logging.getLogger(__name__)
EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_CANCELLED = 130
HEARTBEAT_S = 2.0
"""Seconds between heartbeats (each also looks for a stop request)."""

_EXPECTED_ERRORS = (ConfigError, DataError, HandoffError, RunError, WeightsError)


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
    """Rewrites the status file every ``interval`` seconds with the progress so far, and turns a stop
    request file into a stop (so a cancel from another machine or a lost SIGTERM still stops the run)."""

    def __init__(self, root: Path, status: WorkerStatus, tracker: ProgressTracker, flag: StopFlag,
                 interval: float = HEARTBEAT_S):
        super().__init__(name=f"heartbeat-{root.name}", daemon=True)
        self.root = root
        self.status = status
        self.tracker = tracker
        self.flag = flag
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """Write the status now; look for a stop request."""
        try:
            write_status(self.root, stamped(self.status, progress=self.tracker.progress))
        except OSError as error:
            log.warning("%s: heartbeat not written: %s", self.root, error)
        if stop_requested(self.root):
            self.flag.requested = True

    def stop(self) -> None:
        """End the thread (waits for it)."""
        self._stopped.set()
        self.join(timeout=30)


def worker_main(run_dir: str | Path) -> int:
    """Run one project run to its end; the entry point of ``python -m stpp worker RUN_DIR``.

    Under ``torchrun`` every rank calls it: rank 0 takes the folder and reports; the other ranks
    read the same ``job.json`` and train what rank 0 starts.

    Returns:
        0 done or paused, 1 failed, 2 refused (no job file, another worker holds the folder),
        130 cancelled (0 under torchrun).
    """
    configure_cpu_threads()
    root = Path(run_dir).absolute()
    if not launched_by_torchrun():
        return _lead(root)
    code = _follow_main_rank(root) if int(os.environ.get("RANK", "0")) > 0 else _lead(root)
    # torchrun takes any other exit for a failure and terminates the ranks still running, while
    # rank 0 may still be writing the outcome: a stop on request is a normal end there.
    return EXIT_DONE if code == EXIT_CANCELLED else code


def _lead(root: Path) -> int:
    """Take the folder, run the job and report: the single worker process, or rank 0 under torchrun."""
    try:
        job = read_job(root)
        lock = RunFolderLock(root).acquire()
    except (HandoffError, RunFolderBusy) as error:
        print(f"stpp worker: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    with lock:
        # Under torchrun its pid stands for the worker: it lives as long as any rank does.
        pid = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else os.getpid()
        status = new_status(job, root, pid=pid)
        write_status(root, status)
        flag = StopFlag()
        tracker = ProgressTracker(lambda event: None, job.start_progress)
        heartbeat = Heartbeat(root, status, tracker, flag)
        heartbeat.beat()
        heartbeat.start()
        try:
            state, fields = _execute(root, job, tracker, flag, pid)
        finally:
            heartbeat.stop()
            shutdown_distributed()
        write_status(root, stamped(status, state=state, progress=tracker.progress, **fields))
        return {"done": EXIT_DONE, "paused": EXIT_DONE, "cancelled": EXIT_CANCELLED}.get(state, EXIT_FAILED)


def run_data(job: WorkerJob, cfg: StppConfig) -> RunData:
    """The job's images as the pipeline's :class:`RunData` (classes from the resolved config)."""
    def samples(images) -> tuple[Sample, ...]:
        return tuple(Sample(i.name, Path(i.image), Path(i.mask) if i.mask else None) for i in images)

    classes = ClassInfo(tuple(cfg.data.class_names), tuple(tuple(c) for c in cfg.data.palette), cfg.data.ignore_index)
    return RunData(classes=classes, labeled=samples(job.labeled), unlabeled=samples(job.unlabeled),
                   val=samples(job.val), reviewed=samples(job.reviewed), rejected=frozenset(job.rejected))


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


def _follow_main_rank(root: Path) -> int:
    """A torchrun rank other than 0: train what rank 0 prepared; rank 0 reports everything."""
    flag = StopFlag()
    try:
        job = read_job(root)
        cfg = StppConfig.from_dict(job.config)
        device = join_device(parse_device_spec(cfg.device))
    except (ConfigError, HandoffError, RunError, ValueError) as error:
        print(f"stpp worker: error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        if not broadcast_from_main(None):
            # Rank 0 did not start the run and reported why; a failure exit here would make torchrun
            # terminate rank 0 while it finishes.
            return EXIT_DONE
        run_headless(cfg, run_data(job, cfg), RunLayout(root), device, should_stop=flag, pause_after=job.pause)
        return EXIT_DONE
    except (StopRequested, KeyboardInterrupt):
        return EXIT_CANCELLED
    except Exception:  # noqa: BLE001 - rank 0 reports the run's failure; this rank only logs its own
        traceback.print_exc()
        return EXIT_FAILED
    finally:
        shutdown_distributed()


def _execute(root: Path, job: WorkerJob, tracker: ProgressTracker, flag: StopFlag,
             pid: int) -> tuple[str, dict[str, Any]]:
    """Run the job; returns the worker state it ended in and the status fields that go with it."""
    started = False
    try:
        cfg = StppConfig.from_dict(job.config)
        device = join_device(parse_device_spec(cfg.device))
        if flag():
            raise StopRequested("start")
        data = run_data(job, cfg)
        tracker.progress_of = RunProgress(cfg, data, job.pixels_per_image)
        layout = prepare_run_dir(root, cfg, job.inputs, resume=RunLayout(root).config_path.exists())
        started = True
        broadcast_from_main(True)
        # Under torchrun only the training loop stops, where every rank agrees on it: rank 0 leaving a
        # labelling pass alone would strand the other ranks in their next collective.
        events = tracker if world_size() > 1 else _StopOnFlag(tracker, flag)
        result = run_headless(cfg, data, layout, device, events, should_stop=flag, pause_after=job.pause,
                              notes=[worker_start_event(job.start_progress, pid)])
        if result.get(PAUSED):
            return "paused", {"pause": result[PAUSED]}
        tracker.progress = 1.0
        return "done", {}
    except (StopRequested, KeyboardInterrupt):
        return "cancelled", {}
    except Exception as error:  # noqa: BLE001 - any failure must reach the status file, not just the log
        traceback.print_exc()
        message = str(error) if isinstance(error, _EXPECTED_ERRORS) else f"{type(error).__name__}: {error}"
        return "failed", {"error": message}
    finally:
        if not started:
            broadcast_from_main(None)


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
    parser.add_argument("run_dir", nargs="?", type=Path, help="the run folder (its job.json says what to run)")
    parser.add_argument("--list-devices", action="store_true", help="print the visible GPUs as JSON and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_devices:
        print(json.dumps(gpu_inventory()))
        return 0
    if args.run_dir is None:
        print("stpp worker: error: a RUN_DIR is required", file=sys.stderr)
        return EXIT_REFUSED
    return worker_main(args.run_dir)
