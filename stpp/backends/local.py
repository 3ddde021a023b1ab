"""The ``local`` backend: a run's worker as a detached process of this machine (or ``torchrun`` here).

The worker is ``python -m stpp worker RUN_DIR`` in a new session, so it outlives the web app; a
run over several GPUs (device ``cuda:0,1``) or several CPU processes (``cpu*2``) runs as
``python -m torch.distributed.run --standalone --nproc_per_node=N -m stpp.worker RUN_DIR``.
Torch is never imported here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import psutil

from stpp.core.devices import DeviceSpec

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class StartError(RuntimeError):
    """A worker that cannot be started (the message says why)."""


def child_env() -> dict[str, str]:
    """The environment of a child process of the app (a worker, an export, a prediction)."""
    env = dict(os.environ)
    # The child imports stpp from this checkout even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def torchrun_env(spec: DeviceSpec) -> dict[str, str]:
    """The environment of a run's ``torchrun``: its GPUs, and the CPU threads of each rank.

    ``CUDA_VISIBLE_DEVICES`` narrows the GPUs to the run's (each rank then takes
    ``cuda:LOCAL_RANK``); the run's indices count within the app's own ``CUDA_VISIBLE_DEVICES``
    when one is set. An unset ``OMP_NUM_THREADS`` becomes the cores divided among the ranks
    (torchrun would otherwise give each rank one thread).

    Raises:
        StartError: a GPU beyond the app's ``CUDA_VISIBLE_DEVICES``.
    """
    env = child_env()
    if spec.kind == "cuda" and spec.gpus:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        names = [name.strip() for name in visible.split(",")] if visible is not None else None
        if names is not None and max(spec.gpus) >= len(names):
            raise StartError(f"device {spec} names a GPU beyond CUDA_VISIBLE_DEVICES={visible}")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(names[i] if names is not None else str(i) for i in spec.gpus)
    if not env.get("OMP_NUM_THREADS", "").strip():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // spec.processes))
    return env


def worker_command(run_dir: Path, spec: DeviceSpec, python: str = sys.executable) -> list[str]:
    """The command line of a run's worker: ``torchrun`` (as a module of the same interpreter) with one
    process per GPU or per CPU process for a run over several, else one worker process."""
    if spec.distributed:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.processes}",
                "-m", "stpp.worker", str(run_dir)]
    return [python, "-m", "stpp", "worker", str(run_dir)]


def worker_alive(pid: int | None, run_id: int | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process of ours, and, given ``run_id``, a worker of that run
    (one of its arguments is the run's folder, which is named after the run).

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
    return any("worker" in a for a in args) and any(Path(a).name == str(run_id) for a in args[1:])


def ranks(pid: int, run_id: int) -> list[int]:
    """The ranks of a torchrun worker ``pid``: its children that run the worker of ``run_id`` in
    their own process groups (as torchrun starts them); empty for a single-process worker."""
    try:
        children = psutil.Process(pid).children()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    found = []
    for child in children:
        try:
            leads = os.getpgid(child.pid) == child.pid
        except ProcessLookupError:
            continue
        if leads and worker_alive(child.pid, run_id):
            found.append(child.pid)
    return found


def signal_group(pid: int, sig: int, run_id: int) -> None:
    """Signal the worker and its data-loader processes (its process group, when it leads one), and
    every rank of a torchrun worker with its own group (torchrun starts each in a new session)."""
    for target in [pid, *ranks(pid, run_id)]:  # the ranks are looked up while their parent lives
        try:
            if os.getpgid(target) == target:
                os.killpg(target, sig)
            else:
                os.kill(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


class LocalBackend:
    """Starts, watches and stops worker processes on this machine.

    Args:
        python: the interpreter that runs workers.
    """

    name = "local"
    queues_itself = False
    """The job runner's slots decide when a local run starts (one training per device)."""

    def __init__(self, python: str = sys.executable):
        self.python = python
        self._children: dict[int, subprocess.Popen] = {}

    def run_settings(self) -> dict[str, Any]:
        """Empty: a local run has no settings of its own."""
        return {}

    def with_settings(self, settings: Mapping[str, Any]) -> LocalBackend:
        """A local worker has no settings of its own (a run's are for a scheduler)."""
        return self

    def command(self, run_dir: Path, spec: DeviceSpec) -> list[str]:
        """The worker's command line (see :func:`worker_command`)."""
        return worker_command(run_dir, spec, self.python)

    def start(self, run_id: int, run_dir: Path, spec: DeviceSpec, log_path: Path) -> tuple[int, str | None]:
        """Spawn the worker; returns its pid and no job id.

        Raises:
            StartError: it could not be started.
        """
        try:
            env = torchrun_env(spec) if spec.distributed else child_env()
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                process = subprocess.Popen(self.command(run_dir, spec), stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                           start_new_session=True)
        except OSError as error:
            raise StartError(str(error)) from None
        self._children[run_id] = process
        return process.pid, None

    def alive(self, run_id: int, pid: int | None, job_id: str | None) -> bool:
        """Whether the run's worker process still runs."""
        self._poll_children()
        process = self._children.get(run_id)
        if process is not None and process.pid == pid:
            # Started here: alive until it exits, even while still inside execve, when its command
            # line is not yet its own and worker_alive would take it for another program.
            return process.poll() is None
        return worker_alive(pid, run_id)

    def pending(self, run_id: int, job_id: str | None) -> bool:
        """A local worker is never waiting for resources once started."""
        return False

    def stop(self, run_id: int, pid: int | None, job_id: str | None) -> None:
        """Ask the worker to stop after its current step (SIGTERM, to every rank of a torchrun worker)."""
        if not pid or not self.alive(run_id, pid, job_id):
            return
        # A torchrun worker's ranks are signalled, not torchrun: it would forward the signal to
        # each rank's whole process group, and the data-loader processes it killed would fail
        # the ranks' current step instead of letting them stop after it.
        for target in ranks(pid, run_id) or [pid]:
            try:
                os.kill(target, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self, run_id: int, pid: int | None, job_id: str | None) -> None:
        """End the worker now, with its data loaders and ranks."""
        if pid:
            signal_group(pid, signal.SIGKILL, run_id)

    def _poll_children(self) -> None:
        # Reaps this process's own ended workers, which would otherwise stay zombies and look alive.
        for run_id, process in list(self._children.items()):
            if process.poll() is not None:
                del self._children[run_id]
