"""The job runner: project runs as detached worker processes, a queue across projects, cancel,
resume and recovery after a restart.

A launched run is recorded ``queued``; :meth:`JobRunner.tick` starts queued runs while their device
has a free slot (one training per GPU and one on the CPU by default) by spawning
``python -m stpp worker RUN_ID --workspace W`` in a new session, so it outlives the web app. A run
over several GPUs (device ``cuda:0,1``) or several CPU processes (``cpu*2``) is spawned as
``python -m torch.distributed.run --standalone --nproc_per_node=N -m stpp.worker RUN_ID ...``, and
holds a slot on every GPU it uses. All
state lives in the store and every decision is taken inside a store transaction, so several app
processes (or a CLI next to the app) may call :meth:`~JobRunner.tick` at the same time. A worker
that ends calls ``tick`` itself, so the queue moves on even with no page open.

No Gradio here, and torch is never imported into the calling process (the GPU inventory and the
config check run in the worker's module or a child process).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import psutil

from stpp.core.config import PRESETS, ConfigError, StppConfig, get_preset
from stpp.core.devices import DeviceSpec, parse_device_spec
from stpp.core.masks import atomic_save
from stpp.core.method import METHOD_LABELS, pause_points
from stpp.core.resolve import resolve_config
from stpp.store.db import Store, StoreError, utc_now
from stpp.store.images import count_images, count_labelled_with_masks
from stpp.store.projects import Project, get_project
from stpp.store.runs import (
    Run,
    RunStateError,
    cancel_requested_at,
    claim_queued,
    create_run,
    end_running,
    get_run,
    list_runs,
    parse_time,
    refuse_unfinished,
    request_cancel,
    set_worker_pid,
    transition,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GRACE_S = 30.0
"""Seconds a cancelled worker gets to stop cleanly before it is killed."""
START_GRACE_S = 120.0
"""Seconds a claimed run may wait for its worker's pid before it counts as failed to start."""



class LaunchError(StoreError):
    """A run that cannot be launched as asked (the message says why)."""


@dataclass(frozen=True)
class Device:
    """A device choice a run can train on.

    Attributes:
        id: the config's ``device``: ``cpu``, ``cuda:N``, or ``cuda:0,1,...`` for one run over
            every GPU.
        label: what people see, e.g. ``GPU 0: NVIDIA H100 (79 GB)`` or ``all 4 GPUs (torchrun)``.
    """

    id: str
    label: str


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


def worker_alive(pid: int | None, run_id: int | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process of ours, and, given ``run_id``, a worker of that run.

    The command-line check guards against a pid reused by another program after the worker died.
    """
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        args = process.cmdline() if run_id is not None else []
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False  # gone, or another user's process: not our worker
    if run_id is None:
        return True
    return any("worker" in a for a in args) and str(run_id) in args


_TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "WORLD_SIZE",
                       "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                       "TORCH_NCCL_ASYNC_ERROR_HANDLING")
"""What ``torchrun`` sets for each rank (besides ``TORCHELASTIC_*``)."""
_LAUNCH_CHANGES = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
"""What :meth:`JobRunner._spawn` sets for the ranks of a run over several processes."""
_SAVED_ENV = "STPP_ENV_BEFORE_TORCHRUN"
"""Holds (JSON) the values of :data:`_LAUNCH_CHANGES` from before such a launch."""


def child_env() -> dict[str, str]:
    """The environment of a child process of the app (a worker, an export, a prediction)."""
    env = dict(os.environ)
    # The child imports stpp from this checkout even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    # Rank 0 of a torchrun worker starts the next queued run when it ends: that worker must not
    # believe it is a rank of the ended group, nor inherit the GPUs and threads chosen for it.
    for name in [n for n in env if n in _TORCHRUN_VARIABLES or n.startswith("TORCHELASTIC_")]:
        del env[name]
    saved = env.pop(_SAVED_ENV, None)
    if saved is not None:
        for name, value in json.loads(saved).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
    return env


def _torchrun_env(spec: DeviceSpec) -> dict[str, str]:
    """The environment of a run's ``torchrun``: its GPUs, and the CPU threads of each rank.

    ``CUDA_VISIBLE_DEVICES`` narrows the GPUs to the run's (each rank then takes
    ``cuda:LOCAL_RANK``); the run's indices count within the app's own ``CUDA_VISIBLE_DEVICES``
    when one is set. An unset ``OMP_NUM_THREADS`` becomes the cores divided among the ranks
    (torchrun would otherwise give each rank one thread).
    """
    env = child_env()
    env[_SAVED_ENV] = json.dumps({name: env.get(name) for name in _LAUNCH_CHANGES})
    if spec.kind == "cuda" and spec.gpus:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        names = [name.strip() for name in visible.split(",")] if visible is not None else None
        if names is not None and max(spec.gpus) >= len(names):
            raise LaunchError(f"device {spec} names a GPU beyond CUDA_VISIBLE_DEVICES={visible}")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(names[i] if names is not None else str(i) for i in spec.gpus)
    if not env.get("OMP_NUM_THREADS", "").strip():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // spec.processes))
    return env


def _ranks(pid: int, run_id: int) -> list[int]:
    """The ranks of a torchrun worker ``pid``: its children that run the worker of ``run_id`` in
    their own process groups (as torchrun starts them); empty for a single-process worker."""
    try:
        children = psutil.Process(pid).children()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    ranks = []
    for child in children:
        try:
            leads = os.getpgid(child.pid) == child.pid
        except ProcessLookupError:
            continue
        if leads and worker_alive(child.pid, run_id):
            ranks.append(child.pid)
    return ranks


def worker_log_path(store: Store, run_id: int) -> Path:
    """Where a run's worker writes its output: ``runs/<run_id>.log`` beside the run folder.

    Beside, not inside: a run folder holds only what the run writes, so a resume can check it.
    """
    return store.path("runs") / f"{int(run_id)}.log"


class JobRunner:
    """Starts, queues, cancels, resumes and recovers project runs.

    Args:
        store: the open store.
        slots_per_device: trainings at once on each device (the CPU counts as one device).
        grace_s: seconds between the clean-stop request of :meth:`cancel` and a kill.
        start_grace_s: seconds a claimed run may wait for its worker's pid.
        python: the interpreter that runs workers.
    """

    def __init__(self, store: Store, slots_per_device: int = 1, grace_s: float = DEFAULT_GRACE_S,
                 start_grace_s: float = START_GRACE_S, python: str = sys.executable):
        if slots_per_device < 1:
            raise ValueError("slots_per_device must be at least 1")
        self.store = store
        self.slots_per_device = slots_per_device
        self.grace_s = grace_s
        self.start_grace_s = start_grace_s
        self.python = python
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()  # the web app's handler threads share one runner

    # Launching ---------------------------------------------------------------------------------

    def launch(self, project: int | str | Project, method: str, preset: str,
               overrides: Mapping[str, Any] | Sequence[str] = (), device: str = "cpu", *,
               review: bool = False) -> Run:
        """Resolve the config, record a ``queued`` run and start it if its device is free.

        The one launch path of the app, the CLI and the API.

        Args:
            project: id, name or :class:`Project`.
            method: ``supervised``, ``st`` or ``st++``.
            preset: a preset name.
            overrides: ``{"optim.epochs": 3}`` or ``["optim.epochs=3"]``.
            device: ``cpu``, ``cuda:N``, ``cuda`` or ``auto`` (pinned to a device here), or one run
                in several processes: ``cuda:N,M,...`` (one per GPU) or ``cpu*N``; see
                :class:`DeviceSpec`.
            review: stop for a person's review at every pause point of the method (after the
                ranking and after each re-labelling) with status ``awaiting_review``; the plan is
                in the run row before the worker starts.

        Raises:
            RunConflict: the project already has an unfinished run.
            LaunchError: the project has no data the method can train on.
            ConfigError: a bad preset, method, override or value.
        """
        project = get_project(self.store, project)
        refuse_unfinished(self.store, project)  # before the slower config check
        check_trainable(self.store, project, method)
        cfg = resolve_run_config(project, method, preset, overrides, self._pin_device(device))
        return self.submit(project, cfg, pause_points(cfg) if review else ())

    def submit(self, project: int | str | Project, cfg: StppConfig, review_plan: Sequence[str] = ()) -> Run:
        """Record a ``queued`` run with an already resolved config and start it if its device is free.

        Raises:
            RunConflict: the project already has an unfinished run.
            ConfigError: a malformed ``device``.
        """
        parse_device_spec(cfg.device)
        run = create_run(self.store, project, cfg, review_plan)
        self.tick()
        return get_run(self.store, run.id)

    def _pin_device(self, device: str) -> str:
        """The canonical ``device`` of a new run, with ``auto`` and ``cuda`` pinned to one device.

        Raises:
            ConfigError: a malformed device, or a GPU this machine does not have.
        """
        spec = parse_device_spec(device)
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

    # The queue ---------------------------------------------------------------------------------

    def tick(self) -> list[int]:
        """Reap ended workers, kill overdue cancels, then start queued runs that have a free slot.

        Safe to call often and from several processes. Returns the ids of the runs started.
        """
        with self._lock:
            self._poll_children()
            self.reap()
            return [run_id for run_id in self._claim() if self._spawn(run_id)]

    def _claim(self) -> list[int]:
        queued = list_runs(self.store, statuses=["queued"])
        if not queued:
            return []
        # Slots are worked out before the write lock is taken ("auto" may ask a child process).
        slots = {run.id: self._slots(run.device) for run in queued + list_runs(self.store, statuses=["running"])}
        claimed = []
        with self.store.transaction():
            busy: dict[str, int] = {}
            for running in list_runs(self.store, statuses=["running"]):
                _occupy(busy, slots.get(running.id) or self._slots(running.device))
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

    def _spawn(self, run_id: int) -> bool:
        log_path = worker_log_path(self.store, run_id)
        spec = self._device_spec(run_id)
        try:
            env = _torchrun_env(spec) if spec.distributed else child_env()
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                process = subprocess.Popen(self.worker_command(run_id), stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env, start_new_session=True)
        except (OSError, LaunchError) as error:
            end_running(self.store, run_id, "failed", None, error=f"cannot start the worker: {error}", resumable=True)
            return False
        self._children[run_id] = process
        set_worker_pid(self.store, run_id, process.pid)
        return True

    def worker_command(self, run_id: int) -> list[str]:
        """The command line of a run's worker: ``torchrun`` (as a module of the same interpreter) with
        one process per GPU or per CPU process for a run over several, else one worker process."""
        workspace = ["--workspace", str(self.store.workspace)]
        spec = self._device_spec(run_id)
        if spec.distributed:
            return [self.python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.processes}",
                    "-m", "stpp.worker", str(int(run_id)), *workspace]
        return [self.python, "-m", "stpp", "worker", str(int(run_id)), *workspace]

    def _device_spec(self, run_id: int) -> DeviceSpec:
        try:
            return parse_device_spec(get_run(self.store, run_id).device)
        except ConfigError:
            return DeviceSpec("cpu")  # one worker process, which records the error as the run's

    def _worker_alive(self, run: Run) -> bool:
        process = self._children.get(run.id)
        if process is not None and process.pid == run.pid:
            # Started here: alive until it exits, even while still inside execve, when its command
            # line is not yet its own and worker_alive would take it for another program.
            return process.poll() is None
        return worker_alive(run.pid, run.id)

    def _poll_children(self) -> None:
        # Reaps this process's own ended workers, which would otherwise stay zombies and look alive.
        for run_id, process in list(self._children.items()):
            if process.poll() is not None:
                del self._children[run_id]

    # Ending ------------------------------------------------------------------------------------

    def reap(self) -> list[Run]:
        """Settle running runs whose worker is gone, and kill workers that ignored a cancel too long.

        A worker gone without reporting leaves its run ``failed`` and resumable (``cancelled`` when
        a cancel was asked for); a claimed run whose worker never recorded a pid fails after
        ``start_grace_s``. Returns the runs changed.
        """
        changed = []
        now = time.time()
        for run in list_runs(self.store, statuses=["running"]):
            if run.pid is None:
                claimed_at = parse_time(run.heartbeat) if run.heartbeat else 0.0
                if now - claimed_at > self.start_grace_s and end_running(
                        self.store, run.id, "failed", None, resumable=True,
                        error="the worker did not start; resume to try again"):
                    changed.append(get_run(self.store, run.id))
                continue
            asked = cancel_requested_at(self.store, run.id)
            if self._worker_alive(run):
                if asked is None or now - asked < self.grace_s:
                    continue
                _signal_group(run.pid, signal.SIGKILL, run.id)
                ended = end_running(self.store, run.id, "cancelled", run.pid, resumable=True,
                                    error=f"the worker did not stop within {self.grace_s:.0f} s and was killed")
            elif asked is not None:
                ended = end_running(self.store, run.id, "cancelled", run.pid, resumable=True)
            else:
                ended = end_running(self.store, run.id, "failed", run.pid, resumable=True,
                                    error=f"the worker (pid {run.pid}) ended without reporting (killed or crashed); "
                                          "resume continues from the last checkpoint")
            if ended:
                changed.append(get_run(self.store, run.id))
        return changed

    def recover(self) -> list[Run]:
        """At app start: mark runs whose worker is gone failed and resumable, keep live ones, start the queue.

        Returns the runs that were marked.
        """
        with self._lock:
            changed = self.reap()
        self.tick()
        return changed

    def cancel(self, run_id: int) -> Run:
        """Cancel a run: a queued or awaiting-review one at once, a running one by a clean stop.

        The running worker is asked to stop (a store event it polls, and SIGTERM, to every rank of a
        torchrun worker); it saves ``last.pt`` after its current step and reports ``cancelled``.
        :meth:`tick` kills it if it is still running ``grace_s`` later. Every cancelled run is resumable.

        Raises:
            RunStateError: the run is already done, failed or cancelled.
        """
        run = get_run(self.store, run_id)
        if run.status in ("queued", "awaiting_review"):
            try:
                return transition(self.store, run.id, "cancelled", expect=[run.status], resumable=True,
                                  finished=utc_now())
            except RunStateError:
                run = get_run(self.store, run_id)  # claimed meanwhile: stop it as a running run
        if run.status != "running":
            raise RunStateError(f"run {run.id} is {run.status.replace('_', ' ')}; there is nothing to cancel")
        request_cancel(self.store, run.id)
        if run.pid and self._worker_alive(run):
            # A torchrun worker's ranks are signalled, not torchrun: it would forward the signal to
            # each rank's whole process group, and the data-loader processes it killed would fail
            # the ranks' current step instead of letting them stop after it.
            for pid in _ranks(run.pid, run.id) or [run.pid]:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        return get_run(self.store, run.id)

    def resume(self, run_id: int) -> Run:
        """Queue a failed or cancelled run again; its worker continues from what the run folder holds.

        Raises:
            RunStateError: the run is not failed/cancelled, or not resumable.
            RunConflict: its project has another unfinished run.
        """
        transition(self.store, run_id, "queued", expect=["failed", "cancelled"], error=None, finished=None,
                   pid=None, resumable=False)
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


def _signal_group(pid: int, sig: int, run_id: int) -> None:
    """Signal the worker and its data-loader processes (its process group, when it leads one), and
    every rank of a torchrun worker with its own group (torchrun starts each in a new session)."""
    for target in [pid, *_ranks(pid, run_id)]:  # the ranks are looked up while their parent lives
        try:
            if os.getpgid(target) == target:
                os.killpg(target, sig)
            else:
                os.kill(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


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
