"""The job runner: project runs handed to a backend, a queue across projects, cancel, resume,
recovery after a restart, and the import of every run's results into the store.

A launched run is recorded ``queued``. On the ``local`` backend :meth:`JobRunner.tick` starts
queued runs while their device has a free slot (one training per GPU and one on the CPU by
default): the run becomes ``running`` and its worker a detached process (:mod:`stpp.backends.local`).
On the ``slurm`` backend every queued run is submitted at once and stays ``queued`` until Slurm
starts it (:mod:`stpp.backends.slurm`). Before each start the runner writes the run's order into
its folder (``job.json``); the worker writes only that folder, and each tick imports what is new
there into the store (:func:`stpp.services.run_import.import_run_folder`), the same way for every
backend. All state lives in the store and every decision is taken inside a store transaction, so
several app processes (or a CLI next to the app) may tick at the same time; the app ticks in the
background, so runs move on with no page open.

No Gradio here, and torch is never imported into the calling process (the GPU inventory runs in
the worker's module in a child process).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from stpp.backends import Backend, LocalBackend, StartError, make_backend
from stpp.backends.local import REPO_ROOT, child_env
from stpp.core.cluster import parse_run_settings
from stpp.core.config import PRESETS, ConfigError, StppConfig, get_preset
from stpp.core.devices import Device, DeviceSpec, parse_device_spec
from stpp.core.handoff import HandoffError, request_stop, write_job
from stpp.core.masks import atomic_save
from stpp.core.method import METHOD_LABELS, pause_points
from stpp.core.resolve import resolve_config
from stpp.services.run_import import import_run_folder
from stpp.services.worker_job import compose_job
from stpp.store.db import Store, StoreError, utc_now
from stpp.store.images import count_images, count_labelled_with_masks
from stpp.store.projects import Project, get_project
from stpp.store.runs import (
    Run,
    RunStateError,
    cancel_requested_at,
    claim_queued,
    claim_submission,
    create_run,
    end_running,
    get_run,
    list_runs,
    parse_time,
    refuse_unfinished,
    request_cancel,
    run_layout,
    set_worker_pid,
    transition,
    update_run,
)

log = logging.getLogger(__name__)
DEFAULT_GRACE_S = 30.0
"""Seconds a cancelled worker gets to stop cleanly before it is killed."""
START_GRACE_S = 120.0
"""Seconds a claimed run may wait for its worker's pid before it counts as failed to start."""



class LaunchError(StoreError):
    """A run that cannot be launched as asked (the message says why)."""


@functools.lru_cache(maxsize=1)
def detect_devices() -> tuple[Device, ...]:
    """The CPU, then every visible CUDA GPU with its name and memory, then (with several GPUs)
    one run over all of them.

    The GPUs are listed by a child process (``python -m stpp.worker --list-devices``), so the
    caller never imports torch or opens a CUDA context. Cached for the life of the process.
    """
    devices = [Device("cpu", "CPU")]
    try:
        result = _run_worker_module(["--list-devices"], timeout=120)
        gpus = json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else []
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        gpus = []
    for gpu in gpus:
        devices.append(Device(f"cuda:{gpu['index']}", f"GPU {gpu['index']}: {gpu['name']} "
                                                      f"({gpu['memory_bytes'] / 2**30:.0f} GB)"))
    if len(gpus) > 1:
        devices.append(Device(str(DeviceSpec("cuda", tuple(gpu["index"] for gpu in gpus), len(gpus))),
                              f"all {len(gpus)} GPUs (torchrun)"))
    return tuple(devices)


def _run_worker_module(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stpp.worker", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, env=child_env())


FORM_FIELDS = ("backbone", "pretrained", "epochs", "student_epochs", "batch_size", "crop_size", "reliable_ratio",
               "tta", "amp", "stage3")
"""The run settings the Train form offers, in the order of :func:`form_overrides`' arguments."""


def form_defaults(preset: str) -> dict[str, Any]:
    """The preset's values of :data:`FORM_FIELDS`."""
    cfg = get_preset(preset)
    return {
        "backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained, "epochs": cfg.optim.epochs,
        "student_epochs": cfg.student_epochs, "batch_size": cfg.optim.batch_size,
        "crop_size": cfg.augment.crop_size, "reliable_ratio": cfg.selftrain.reliable_ratio, "tta": cfg.pseudo.tta,
        "amp": cfg.optim.amp, "stage3": cfg.selftrain.stage3,
    }


def form_overrides(backbone: str, pretrained: str, epochs: Any, student_epochs: Any, batch_size: Any,
                   crop_size: Any, reliable_ratio: Any, tta: bool, amp: str, stage3: bool, *,
                   weights_dir: Path) -> dict[str, Any]:
    """The ``key=value`` overrides for the Train form's values (see :data:`FORM_FIELDS`).

    Args:
        weights_dir: the workspace's weights folder, the only place the form takes a file from
            (see :func:`form_weights`).

    Raises:
        ConfigError: a count that is missing or not a whole number of at least 1, or weights that
            are not ``imagenet``, ``none`` or a readable file in ``weights_dir``.
    """
    return {
        "model.backbone": backbone, "model.pretrained": form_weights(weights_dir, pretrained),
        "optim.epochs": _count("teacher epochs", epochs),
        "optim.student_epochs": _count("student epochs", student_epochs),
        "optim.batch_size": _count("batch size", batch_size), "augment.crop_size": _count("crop size", crop_size),
        "selftrain.reliable_ratio": float(reliable_ratio), "pseudo.tta": bool(tta), "optim.amp": amp,
        "selftrain.stage3": bool(stage3),
    }


WEIGHTS_DIR = "weights"
"""The workspace folder the app takes weights files from: filled by the Train tab's upload, or by the operator."""
WEIGHTS_SUFFIXES = (".pth", ".pt")


def form_weights(weights_dir: Path, value: str | None) -> str:
    """The ``model.pretrained`` value for what a person typed into the app's weights field.

    ``imagenet`` and ``none`` pass; anything else must name a readable file directly in
    ``weights_dir`` (by its name, or by its full path there). Every other value, a path elsewhere,
    a missing file and an unreadable one, gets the same message, so the field tells nothing about
    the server's files. The headless CLI (``--set model.pretrained=PATH``) has no such limit: it
    runs as the operator.

    Raises:
        ConfigError: the value is none of those.
    """
    text = (value or "imagenet").strip()
    if text in ("imagenet", "none"):
        return text
    name = Path(text).name
    path = weights_dir / name
    named_here = text == name or Path(text) == path
    if not (named_here and not name.startswith(".") and path.is_file() and os.access(path, os.R_OK)):
        raise ConfigError(f"weights must be imagenet, none, or the name of a .pth file in the workspace's "
                          f"{WEIGHTS_DIR}/ folder (upload it there); {text!r} is none of those")
    return str(path)


def add_weights_file(weights_dir: Path, source: str | Path) -> str:
    """Copy an uploaded weights file into ``weights_dir`` (atomically) under its own name; returns the name.

    Raises:
        ConfigError: not a ``.pth`` / ``.pt`` file name, or another file of that name is there already
            (an upload never replaces a file the operator put there).
    """
    name = Path(source).name
    if name.startswith(".") or Path(name).suffix.lower() not in WEIGHTS_SUFFIXES:
        raise ConfigError(f"a weights file must be named *.pth or *.pt, not {name!r}")
    data = Path(source).read_bytes()
    target = weights_dir / name
    if target.exists() and target.read_bytes() != data:
        raise ConfigError(f"{WEIGHTS_DIR}/{name} already holds another file; rename the upload")
    atomic_save(target, lambda tmp: Path(tmp).write_bytes(data))
    return name


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def preset_names() -> list[str]:
    """Every preset name."""
    return list(PRESETS)


def worker_log_path(store: Store, run_id: int) -> Path:
    """Where a run's worker writes its output: ``runs/<run_id>.log`` beside the run folder.

    Beside, not inside: a run folder holds only what the run writes, so a resume can check it.
    """
    return store.path("runs") / f"{int(run_id)}.log"


class JobRunner:
    """Starts, queues, cancels, resumes and recovers project runs, and imports their results.

    Args:
        store: the open store.
        slots_per_device: trainings at once on each device of the local backend (the CPU counts as one device).
        grace_s: seconds between the clean-stop request of :meth:`cancel` and a kill.
        start_grace_s: seconds a claimed local run may wait for its worker's pid.
        python: the interpreter that runs local workers.
        backend: where new runs go (default: a :class:`~stpp.backends.LocalBackend`); a run keeps
            the backend it was launched on, and local runs always work.
    """

    def __init__(self, store: Store, slots_per_device: int = 1, grace_s: float = DEFAULT_GRACE_S,
                 start_grace_s: float = START_GRACE_S, python: str = sys.executable,
                 backend: Backend | None = None):
        if slots_per_device < 1:
            raise ValueError("slots_per_device must be at least 1")
        self.store = store
        self.slots_per_device = slots_per_device
        self.grace_s = grace_s
        self.start_grace_s = start_grace_s
        self.python = python
        local = LocalBackend(python)
        self.backend: Backend = backend or local
        self.backends: dict[str, Backend] = {"local": local, self.backend.name: self.backend}
        self._lock = threading.RLock()  # the web app's handler threads share one runner

    # Launching ---------------------------------------------------------------------------------

    def launch(self, project: int | str | Project, method: str, preset: str,
               overrides: Mapping[str, Any] | Sequence[str] = (), device: str = "cpu", *,
               review: bool = False, backend_options: Mapping[str, Any] | None = None) -> Run:
        """Resolve the config, record a ``queued`` run on this runner's backend and start it if it can.

        The one launch path of the app, the CLI and the API.

        Args:
            project: id, name or :class:`Project`.
            method: ``supervised``, ``st`` or ``st++``.
            preset: a preset name.
            overrides: ``{"optim.epochs": 3}`` or ``["optim.epochs=3"]``.
            device: ``cpu``, ``cuda:N``, ``cuda`` or ``auto`` (pinned to a device here), or one run
                in several processes: ``cuda:N,M,...`` (one per GPU) or ``cpu*N``; see
                :class:`DeviceSpec`. On Slurm the GPUs are those the job gets on each node.
            review: stop for a person's review at every pause point of the method (after the
                ranking and after each re-labelling) with status ``awaiting_review``; the plan is
                in the run row before the worker starts.
            backend_options: the run's own Slurm settings over the workspace's (keys of
                :data:`~stpp.core.cluster.RUN_SLURM_SETTINGS`; blank values are left out).

        Raises:
            RunConflict: the project already has an unfinished run.
            LaunchError: the project has no data the method can train on.
            ConfigError: a bad preset, method, override, value or Slurm setting.
        """
        project = get_project(self.store, project)
        refuse_unfinished(self.store, project)  # before the slower config check
        check_trainable(self.store, project, method)
        cfg = resolve_run_config(project, method, preset, overrides, self._pin_device(device))
        return self.submit(project, cfg, pause_points(cfg) if review else (), backend_options)

    def submit(self, project: int | str | Project, cfg: StppConfig, review_plan: Sequence[str] = (),
               backend_options: Mapping[str, Any] | None = None) -> Run:
        """Record a ``queued`` run with an already resolved config and start it if it can.

        Raises:
            RunConflict: the project already has an unfinished run.
            ConfigError: a malformed ``device``, or Slurm settings for a run that is not submitted to Slurm.
        """
        parse_device_spec(cfg.device)
        settings = parse_run_settings(backend_options or {})
        if settings and not self.backend.queues_itself:
            raise ConfigError(f"{', '.join(settings)}: Slurm settings, but runs train on the {self.backend.name} "
                              "backend (start the app with --backend slurm)")
        run = create_run(self.store, project, cfg, review_plan, backend=self.backend.name, backend_options=settings)
        self.tick()
        return get_run(self.store, run.id)

    def devices(self) -> tuple[Device, ...]:
        """The device choices of a new run on this runner's backend."""
        if self.backend.queues_itself:
            return SCHEDULER_DEVICES
        return detect_devices()

    def _pin_device(self, device: str) -> str:
        """The canonical ``device`` of a new run, with ``auto`` and ``cuda`` pinned to one device.

        On a scheduler's backend (Slurm) the GPUs are the job's, on a node this machine cannot see:
        ``auto`` means the CPU and ``cuda`` one GPU.

        Raises:
            ConfigError: a malformed device, or a GPU this machine does not have.
        """
        spec = parse_device_spec(device)
        if self.backend.queues_itself:
            return "cpu" if spec.kind == "auto" else "cuda:0" if spec.kind == "cuda" and not spec.gpus else str(spec)
        if spec.kind == "auto":
            return self._first_device()
        if spec.kind == "cuda":
            present = sorted({index for d in detect_devices() for index in parse_device_spec(d.id).gpus})
            missing = [index for index in spec.gpus or (0,) if index not in present]
            if missing:
                have = f"GPU {', '.join(map(str, present))}" if present else "no CUDA GPU"
                raise ConfigError(f"device {spec}: GPU {', '.join(map(str, missing))} is not here "
                                  f"(this machine shows {have})")
            return str(spec) if spec.gpus else "cuda:0"
        return str(spec)

    def _first_device(self) -> str:
        gpus = [d.id for d in detect_devices() if d.id != "cpu"]
        return gpus[0] if gpus else "cpu"

    def _slots(self, device: str) -> tuple[str, ...]:
        """The queue slots of a recorded run's device (``auto`` is pinned as a launch would pin it)."""
        try:
            spec = parse_device_spec(device)
        except ConfigError:
            return (device,)  # its worker reports the error; the run holds no real device meanwhile
        return (self._first_device(),) if spec.kind == "auto" else spec.slots

    def _backend_of(self, run: Run) -> Backend:
        """The backend a run was launched on (made from the workspace's settings when this runner sends new
        runs elsewhere)."""
        if run.backend not in self.backends:
            self.backends[run.backend] = make_backend(run.backend, self.store.workspace)
        return self.backends[run.backend]

    def _queues_itself(self, run: Run) -> bool:
        return self._backend_of(run).queues_itself

    # The queue ---------------------------------------------------------------------------------

    def tick(self) -> list[int]:
        """Import every active run's folder, settle ended workers, kill overdue cancels, then start
        (or submit) queued runs.

        Safe to call often and from several processes. Returns the ids of the runs started.
        """
        with self._lock:
            self.import_results()
            self.reap()
            started = [run_id for run_id in self._claim() if self._spawn(run_id)]
            return started + self._submit_to_schedulers()

    def import_results(self) -> None:
        """Bring the store up to date with the folder of every running run and every submitted queued run."""
        with self._lock:
            for run in list_runs(self.store, statuses=["running", "queued"]):
                if run.status == "running" or run.job_id:
                    self._import(run)

    def _import(self, run: Run) -> Run:
        try:
            return import_run_folder(self.store, run, requeued=self._requeued)
        except (OSError, StoreError, HandoffError, ValueError) as error:
            log.warning("run %s: its folder was not imported: %s", run.id, error)
            return get_run(self.store, run.id)

    def _requeued(self, run: Run) -> bool | None:
        """Whether the scheduler queued again the job of a run whose worker stopped without being asked to
        (Slurm's requeue); None while the job is still ending."""
        if not run.job_id or run.job_id == SUBMITTING or cancel_requested_at(self.store, run.id) is not None:
            return False
        backend = self._backend_of(run)
        if backend.pending(run.id, run.job_id):
            return True
        return None if backend.alive(run.id, run.pid, run.job_id) else False

    def _claim(self) -> list[int]:
        """Claim the queued runs of the local backend that have a free device slot."""
        queued = [run for run in list_runs(self.store, statuses=["queued"]) if not self._queues_itself(run)]
        if not queued:
            return []
        # Slots are worked out before the write lock is taken ("auto" may ask a child process).
        slots = {run.id: self._slots(run.device) for run in queued + list_runs(self.store, statuses=["running"])}
        claimed = []
        with self.store.transaction():
            busy: dict[str, int] = {}
            # Read again under the lock: another process may have claimed a run since.
            for run in list_runs(self.store, statuses=["running"]):
                if not self._queues_itself(run):
                    _occupy(busy, slots.get(run.id) or self._slots(run.device))
            for run in sorted(queued, key=lambda r: r.id):
                if any(busy.get(slot, 0) >= self.slots_per_device for slot in slots[run.id]):
                    # First come, first served on every device: a run waiting for several GPUs keeps
                    # those free from later runs, which would otherwise hold it back for ever.
                    for slot in slots[run.id]:
                        busy[slot] = max(busy.get(slot, 0), self.slots_per_device)
                    continue
                # A savepoint inside the one transaction that counted the busy slots.
                if claim_queued(self.store, run.id, pid=None, started=run.started or utc_now(), error=None):
                    _occupy(busy, slots[run.id])
                    claimed.append(run.id)
        return claimed

    def _order(self, run: Run) -> Path:
        """Write the run's ``job.json`` for the start just claimed (the claim counted its ``attempt``); returns
        the run folder.

        Raises:
            JobInputError, ReviewError: the run cannot be handed over as it stands.
        """
        job = compose_job(self.store, run, run.attempt)
        root = run_layout(self.store, run).root.absolute()
        root.mkdir(parents=True, exist_ok=True)
        write_job(root, job)
        return root

    def _spawn(self, run_id: int) -> bool:
        """Start the worker of a claimed local run."""
        run = get_run(self.store, run_id)
        try:
            root = self._order(run)
            pid, _ = self.backends["local"].start(run.id, root, self._device_spec(run),
                                                  worker_log_path(self.store, run.id))
        except (OSError, StartError, StoreError) as error:
            end_running(self.store, run_id, "failed", None, error=f"cannot start the worker: {error}", resumable=True)
            return False
        set_worker_pid(self.store, run_id, pid)
        return True

    def _submit_to_schedulers(self) -> list[int]:
        """Hand every queued run of a scheduler's backend (Slurm) that has no job yet to its scheduler."""
        submitted = []
        for run in list_runs(self.store, statuses=["queued"]):
            if run.job_id or not self._queues_itself(run) or not claim_submission(self.store, run.id, SUBMITTING):
                continue
            try:
                root = self._order(get_run(self.store, run.id))
                backend = self._backend_of(run).with_settings(run.backend_options)
                _, job_id = backend.start(run.id, root, self._device_spec(run), worker_log_path(self.store, run.id))
            except (OSError, StartError, StoreError) as error:
                _fail_queued(self.store, run.id, f"cannot submit the run: {error}")
                continue
            update_run(self.store, run.id, job_id=job_id)
            submitted.append(run.id)
        return submitted

    def worker_command(self, run_id: int) -> list[str]:
        """The command line of a local run's worker (see :func:`stpp.backends.local.worker_command`)."""
        run = get_run(self.store, run_id)
        return self.backends["local"].command(run_layout(self.store, run).root.absolute(), self._device_spec(run))

    def _device_spec(self, run: Run) -> DeviceSpec:
        try:
            return parse_device_spec(run.device)
        except ConfigError:
            return DeviceSpec("cpu")  # one worker process, which reports the error as the run's

    # Ending ------------------------------------------------------------------------------------

    def reap(self) -> list[Run]:
        """Settle runs whose worker is gone, and kill workers that ignored a cancel too long.

        A worker gone without reporting its end leaves its run ``failed`` and resumable
        (``cancelled`` when a cancel was asked for); a claimed local run whose worker never got
        a pid fails after ``start_grace_s``; a submitted run whose job ended before its worker
        started fails. Returns the runs changed.
        """
        changed = []
        now = time.time()
        with self._lock:
            for run in list_runs(self.store, statuses=["running", "queued"]):
                if run.status == "queued":
                    if run.job_id and run.job_id != SUBMITTING and not self._alive(run):
                        run = self._import(run)  # it may have started and ended between two ticks
                        if run.status == "queued" and _fail_queued(
                                self.store, run.id, f"{self._describe(run)} ended before its worker started; "
                                                    f"see runs/{run.id}.log"):
                            changed.append(get_run(self.store, run.id))
                    continue
                if run.pid is None and run.job_id is None:
                    claimed_at = parse_time(run.heartbeat) if run.heartbeat else 0.0
                    if now - claimed_at > self.start_grace_s and end_running(
                            self.store, run.id, "failed", None, resumable=True,
                            error="the worker did not start; resume to try again"):
                        changed.append(get_run(self.store, run.id))
                    continue
                ended = self._reap_running(run, now)
                if ended is not None:
                    changed.append(ended)
        return changed

    def _reap_running(self, run: Run, now: float) -> Run | None:
        """Settle one running run if its worker is gone or overdue; returns it when it changed."""
        asked = cancel_requested_at(self.store, run.id)
        if self._alive(run):
            if asked is None or now - asked < self.grace_s:
                return None
            self._backend_of(run).kill(run.id, run.pid, run.job_id)
            ended = end_running(self.store, run.id, "cancelled", run.pid, resumable=True,
                                error=f"the worker did not stop within {self.grace_s:.0f} s and was killed")
            return get_run(self.store, run.id) if ended else None
        run = self._import(run)  # its last words may have come after this tick's import
        if run.status != "running":
            return run
        if asked is not None:
            ended = end_running(self.store, run.id, "cancelled", run.pid, resumable=True)
        else:
            ended = end_running(self.store, run.id, "failed", run.pid, resumable=True,
                                error=f"the worker ({self._describe(run)}) ended without reporting (killed or "
                                      "crashed); resume continues from the last checkpoint")
        return get_run(self.store, run.id) if ended else None

    def _alive(self, run: Run) -> bool:
        return self._backend_of(run).alive(run.id, run.pid, run.job_id)

    def _describe(self, run: Run) -> str:
        return f"Slurm job {run.job_id}" if run.job_id else f"pid {run.pid}"

    def recover(self) -> list[Run]:
        """At app start: import what runs wrote while the app was down, mark runs whose worker is gone
        failed and resumable, keep live ones, start the queue. Returns the runs that were marked."""
        with self._lock:
            self.import_results()
            changed = self.reap()
        self.tick()
        return changed

    def cancel(self, run_id: int) -> Run:
        """Cancel a run: a queued or awaiting-review one at once, a running one by a clean stop.

        The running worker is asked to stop (a stop file in its run folder, which it polls, and,
        on this machine, SIGTERM to every rank of a torchrun worker); it saves ``last.pt`` after
        its current step and reports ``cancelled``. :meth:`tick` kills it if it is still running
        ``grace_s`` later. Every cancelled run is resumable.

        Raises:
            RunStateError: the run is already done, failed or cancelled.
        """
        run = get_run(self.store, run_id)
        if run.status in ("queued", "awaiting_review"):
            try:
                cancelled = transition(self.store, run.id, "cancelled", expect=[run.status], resumable=True,
                                       finished=utc_now())
            except RunStateError:
                run = get_run(self.store, run_id)  # claimed meanwhile: stop it as a running run
            else:
                if run.job_id and run.job_id != SUBMITTING:
                    self._backend_of(run).kill(run.id, run.pid, run.job_id)
                return cancelled
        if run.status != "running":
            raise RunStateError(f"run {run.id} is {run.status.replace('_', ' ')}; there is nothing to cancel")
        request_cancel(self.store, run.id)
        request_stop(run_layout(self.store, run).root)
        self._backend_of(run).stop(run.id, run.pid, run.job_id)
        return get_run(self.store, run.id)

    def resume(self, run_id: int) -> Run:
        """Queue a failed or cancelled run again; its worker continues from what the run folder holds.

        Raises:
            RunStateError: the run is not failed/cancelled, or not resumable.
            RunConflict: its project has another unfinished run.
        """
        transition(self.store, run_id, "queued", expect=["failed", "cancelled"], error=None, finished=None,
                   pid=None, job_id=None, resumable=False)
        self.tick()
        return get_run(self.store, run_id)

    def wait(self, run_id: int, timeout: float | None, statuses: Sequence[str] = ("done", "failed", "cancelled"),
             poll_s: float = 0.5, on_poll: Callable[[Run], None] | None = None) -> Run:
        """Tick until the run reaches one of ``statuses`` (for the CLI and tests); returns it.

        Args:
            timeout: seconds to wait at most; None waits as long as it takes.
            on_poll: called with the run as it is after each tick (the CLI shows its progress).

        Raises:
            TimeoutError: not reached within ``timeout`` seconds.
            StoreError: no such run.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.tick()
            run = get_run(self.store, run_id)
            if on_poll is not None:
                on_poll(run)
            if run.status in statuses:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout:.0f} s")
            time.sleep(poll_s)

    def follow(self, interval_s: float = 2.0) -> threading.Thread:
        """Tick every ``interval_s`` seconds in a background thread for the life of the process; returns it.

        The app calls it, so results are imported and the queue moves on with no page open.
        """
        def loop() -> None:
            while True:
                try:
                    self.tick()
                except Exception:  # noqa: BLE001 - one failed tick must not end the app's follower
                    log.exception("the job runner's tick failed")
                time.sleep(interval_s)

        thread = threading.Thread(target=loop, name="stpp-job-runner", daemon=True)
        thread.start()
        return thread


SUBMITTING = "submitting"
"""The ``job_id`` of a run while one process submits it (so that no other process submits it too)."""
SCHEDULER_DEVICES = (Device("cpu", "CPU (one process)"), Device("cpu*2", "CPU, 2 processes (torchrun)"),
                     Device("cuda:0", "1 GPU per node"), Device("cuda:0,1", "2 GPUs per node (torchrun)"),
                     Device("cuda:0,1,2,3", "4 GPUs per node (torchrun)"),
                     Device("cuda:0,1,2,3,4,5,6,7", "8 GPUs per node (torchrun)"))
"""The device choices of a run on Slurm: the GPUs each node of the job gets."""


def _fail_queued(store: Store, run_id: int, error: str) -> bool:
    """End a queued run that could not start as failed and resumable; False when it was no longer queued."""
    try:
        transition(store, run_id, "failed", expect=["queued"], resumable=True, job_id=None, finished=utc_now(),
                   error=error)
    except RunStateError:
        return False
    return True


def _occupy(busy: dict[str, int], slots: Iterable[str]) -> None:
    for slot in slots:
        busy[slot] = busy.get(slot, 0) + 1


def check_trainable(store: Store, project: int | str | Project, method: str) -> None:
    """Refuse a project without labelled images (or, for ST / ST++, without unlabelled ones).

    Raises:
        LaunchError: what is missing and what to add.
    """
    project = get_project(store, project)
    if not count_labelled_with_masks(store, project):
        raise LaunchError(f"project {project.name!r} has no labelled images with masks; add some before training")
    if method != "supervised":
        if not count_images(store, project, "unlabelled"):
            raise LaunchError(f"project {project.name!r} has no unlabelled images; {METHOD_LABELS.get(method, method)} "
                              "needs some (or choose SupOnly)")


def resolve_run_config(project: Project, method: str, preset: str, overrides: Mapping[str, Any] | Sequence[str],
                       device: str) -> StppConfig:
    """The full config of a project run: preset, method, overrides, device and the project's classes.

    Resolved and checked as a headless run's (:func:`stpp.core.resolve.resolve_config`), in this
    process and without torch; the worker builds the model when the run starts, so a weights file
    that does not fit its backbone fails the run with that message.

    Raises:
        ConfigError: a bad preset, method, override key or value.
    """
    if isinstance(overrides, Mapping):
        overrides = [f"{key}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                     for key, v in overrides.items()]
    return resolve_config(preset, method, list(overrides), device, project.classes)
