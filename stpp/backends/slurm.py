"""The ``slurm`` backend: a run's worker as a Slurm batch job.

Each start of a run is one ``sbatch`` of a job script written beside the run folder
(``runs/<id>.sbatch``; its output goes to ``runs/<id>.log``). A run on one process runs
``python -m stpp worker RUN_DIR``; a run over several GPUs or nodes runs ``srun`` with one
``torchrun`` per node and a rendezvous on the first node. Slurm decides when the job starts, so a
submitted run stays ``queued`` until its worker reports that it runs. The job is submitted with
``--requeue``: when Slurm requeues it (preemption, node failure), the worker continues from the
run folder (``last.pt``). The worker, on the nodes, writes only the run folder: the workspace must
be on a file system the nodes share, at the same path.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from stpp.backends.local import REPO_ROOT, StartError, child_env
from stpp.core.cluster import RUN_SLURM_SETTINGS, SlurmOptions
from stpp.core.devices import DeviceSpec

LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                         "REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD"})
"""Job states (``squeue -o %T``) of a job that is not over: it runs, or will."""
WAITING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
"""Job states of a job waiting to (re)start."""
UNKNOWN = "UNKNOWN"
"""What :meth:`SlurmBackend.state` says when Slurm cannot be asked (the job counts as alive until it can)."""
COMMAND_TIMEOUT_S = 60


class SlurmBackend:
    """Submits, watches and cancels runs as Slurm jobs.

    Args:
        options: the cluster settings.
        env: variables added to the environment of ``sbatch``, ``squeue`` and ``scancel`` (e.g.
            ``SLURM_CONF``); the job inherits them.
    """

    name = "slurm"
    queues_itself = True
    """Slurm's scheduler decides when a run starts: every queued run is submitted at once."""

    def __init__(self, options: SlurmOptions | None = None, env: Mapping[str, str] | None = None):
        self.options = options or SlurmOptions()
        self.env = dict(env or {})

    def run_settings(self) -> dict[str, Any]:
        """The partition, account, time limit and nodes a new run gets unless it sets its own."""
        return {key: getattr(self.options, key) for key in RUN_SLURM_SETTINGS}

    def with_settings(self, settings: Mapping[str, Any]) -> SlurmBackend:
        """This backend with a run's own Slurm settings (partition, account, time limit, nodes) over its own."""
        return SlurmBackend(self.options.updated(**settings), self.env) if settings else self

    # The job ------------------------------------------------------------------------------------

    def gpus_per_node(self, spec: DeviceSpec) -> int:
        """The GPUs a run asks of each node: one per listed GPU (``cuda:0,1``: 2), none on the CPU."""
        return (len(spec.gpus) or 1) if spec.kind == "cuda" else 0

    def job_script(self, run_id: int, run_dir: Path, spec: DeviceSpec) -> str:
        """The batch script of one start of the run."""
        python = shlex.quote(self.options.python or sys.executable)
        folder = shlex.quote(str(run_dir))
        lines = ["#!/bin/bash", f"# stpp run {int(run_id)}: written by the app for each start; Slurm runs it.",
                 "set -eo pipefail", f"cd {shlex.quote(str(REPO_ROOT))}",
                 f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
                 *self.options.setup]
        if self.options.nodes > 1 or spec.distributed:
            lines += [
                'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                # One torchrun per node; the ranks meet at the first node.
                f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 {python} -m torch.distributed.run "
                f"--nnodes={self.options.nodes} --nproc_per_node={spec.processes} "
                f"--rdzv_backend=c10d --rdzv_endpoint=$head:{self.options.rendezvous_port} "
                f"--rdzv_id=$SLURM_JOB_ID -m stpp.worker {folder}"]
        else:
            # exec: scancel's SIGTERM reaches the worker itself, which stops after its current step.
            lines.append(f"exec {python} -m stpp worker {folder}")
        return "\n".join(lines) + "\n"

    def sbatch_command(self, run_id: int, spec: DeviceSpec, script: Path, log_path: Path) -> list[str]:
        """The ``sbatch`` command line of one start of the run."""
        options = self.options
        command = ["sbatch", "--parsable", f"--job-name=stpp-run-{int(run_id)}", f"--output={log_path}",
                   "--open-mode=append", "--requeue", f"--nodes={options.nodes}", "--ntasks-per-node=1"]
        if options.partition:
            command.append(f"--partition={options.partition}")
        if options.account:
            command.append(f"--account={options.account}")
        if options.time_limit:
            command.append(f"--time={options.time_limit}")
        if options.cpus_per_task:
            command.append(f"--cpus-per-task={options.cpus_per_task}")
        gpus = self.gpus_per_node(spec)
        if gpus:
            command.append(f"--gpus-per-node={gpus}")
        return [*command, *options.sbatch_args, str(script)]

    # The backend --------------------------------------------------------------------------------

    def start(self, run_id: int, run_dir: Path, spec: DeviceSpec, log_path: Path) -> tuple[int | None, str]:
        """Submit the run; returns no pid (the worker's is in its status file) and the Slurm job id.

        Raises:
            StartError: ``sbatch`` is missing or refused the job (its message).
        """
        script = log_path.with_suffix(".sbatch")
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(self.job_script(run_id, run_dir, spec))
        script.chmod(0o755)
        result = self._slurm(self.sbatch_command(run_id, spec, script, log_path))
        if result.returncode != 0:
            raise StartError(f"sbatch refused the job: {(result.stderr or result.stdout).strip()}")
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise StartError(f"sbatch answered {result.stdout.strip()!r}, not a job id")
        return None, job_id

    def state(self, job_id: str | None) -> str | None:
        """The job's state as ``squeue`` reports it (``PENDING``, ``RUNNING``, ``COMPLETED``...); None when
        Slurm no longer lists it (it ended a while ago, or never was); :data:`UNKNOWN` when Slurm did not answer."""
        if not job_id:
            return None
        try:
            result = self._slurm(["squeue", "--noheader", f"--jobs={job_id}", "--states=all", "--format=%T"])
        except StartError:
            return UNKNOWN
        if result.returncode != 0:
            return None if "invalid job id" in (result.stderr or "").lower() else UNKNOWN
        states = result.stdout.split()
        return states[0] if states else None

    def alive(self, run_id: int, pid: int | None, job_id: str | None) -> bool:
        """Whether the run's job runs or will (pending, requeued...)."""
        return self.state(job_id) in LIVE_STATES | {UNKNOWN}

    def pending(self, run_id: int, job_id: str | None) -> bool:
        """Whether the run's job waits for Slurm to start it."""
        return self.state(job_id) in WAITING_STATES

    def stop(self, run_id: int, pid: int | None, job_id: str | None) -> None:
        """A job that has not started is cancelled at once; a running worker stops on its run folder's stop file."""
        if job_id and self.pending(run_id, job_id):
            self.kill(run_id, pid, job_id)

    def kill(self, run_id: int, pid: int | None, job_id: str | None) -> None:
        """Cancel the job (``scancel``)."""
        if job_id:
            self._slurm(["scancel", str(job_id)])

    def _slurm(self, command: list[str]) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                                  env={**child_env(), **self.env}, cwd=REPO_ROOT)
        except FileNotFoundError:
            raise StartError(f"{command[0]} is not installed here: the slurm backend needs Slurm's client "
                             "commands on the app's machine") from None
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, 1, "", f"{command[0]} did not answer within "
                                                               f"{COMMAND_TIMEOUT_S} s")

