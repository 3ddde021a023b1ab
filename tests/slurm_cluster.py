"""A real one-node Slurm cluster in a folder: ``munged``, ``slurmctld`` and ``slurmd`` started for the tests.

Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` packages are all it needs; everything it
writes (key, sockets, state, logs) stays in its folder, and its ports are free ones, so it runs beside
any Slurm the machine may have. The node is this machine, CPU only, without cgroups.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "mungekey")
START_TIMEOUT_S = 60


class ClusterUnavailable(RuntimeError):
    """Slurm cannot start here (what is missing, or what its logs say)."""


def _program(name: str) -> str:
    """The program's path: on PATH, else in /usr/sbin (the daemons' folder, off a normal user's PATH)."""
    return shutil.which(name) or str(Path("/usr/sbin", name))


def missing_programs() -> list[str]:
    """The Slurm and munge programs this machine lacks."""
    return [name for name in (*DAEMONS, *CLIENTS) if not Path(_program(name)).exists()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class SlurmCluster:
    """A one-node cluster whose files live under ``root``; :meth:`start` it, :meth:`stop` it."""

    root: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a Slurm client command needs in its environment to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> SlurmCluster:
        """Start munge and both Slurm daemons and wait until the node takes jobs.

        Raises:
            ClusterUnavailable: a daemon did not start, or the node did not come up (with its logs).
        """
        missing = missing_programs()
        if missing:
            raise ClusterUnavailable(f"not installed: {', '.join(missing)}")
        for folder in ("munge", "state", "spool", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True, mode=0o700)
        key, munge_socket = self.root / "munge" / "munge.key", self.root / "munge" / "munge.socket"
        subprocess.run([_program("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o400)
        self._spawn([_program("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
                     f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
                     f"--seed-file={self.root / 'munge' / 'munged.seed'}"], "munged")
        self._wait(munge_socket.exists, "munged to open its socket")
        self.conf.write_text(self._conf_text(munge_socket))
        self._spawn([_program("slurmctld"), "-D", "-f", str(self.conf)], "slurmctld")
        self._spawn([_program("slurmd"), "-D", "-f", str(self.conf), "-N", self.node], "slurmd")
        self._wait(self._node_idle, f"node {self.node} to come up idle")
        return self

    def stop(self) -> None:
        """Cancel every job, let the jobs end, stop the daemons, then end any job step left behind."""
        if self.processes:
            self.client(["scancel", "--full", f"--user={os.getuid()}"], check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self._jobs_listed():
                time.sleep(0.5)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()
        for step in self._leftover_steps():
            step.kill()

    def _jobs_listed(self) -> bool:
        result = self.client(["squeue", "--noheader", "--format=%i"], check=False)
        return result.returncode == 0 and bool(result.stdout.split())

    def _leftover_steps(self) -> list[psutil.Process]:
        """``slurmstepd`` processes of this cluster (they keep its slurmd log open) still waiting for a slurmd."""
        steps = []
        for process in psutil.process_iter(["name"]):
            if process.info["name"] != "slurmstepd":
                continue
            try:
                if any(Path(f.path).is_relative_to(self.root) for f in process.open_files()):
                    steps.append(process)
            except psutil.Error:
                continue
        return steps

    def client(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=check,
                              env={**os.environ, **self.env})

    def job_state(self, job_id: str) -> str | None:
        """The job's state as ``squeue`` lists it, or None."""
        result = self.client(["squeue", "--noheader", f"--jobs={job_id}", "--states=all", "--format=%T"], check=False)
        return (result.stdout.split() or [None])[0]

    def logs(self) -> str:
        """The tail of every daemon's log (for failure messages)."""
        parts = []
        for path in sorted((self.root / "log").iterdir()):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def _conf_text(self, munge_socket: Path) -> str:
        root, node = self.root, self.node
        return "\n".join([
            "ClusterName=stpp-tests",
            f"SlurmctldHost={node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "ReturnToService=2",
            "MailProg=/bin/true",
            "SchedulerParameters=sched_interval=2",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'state' / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'spool' / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1000 State=UNKNOWN",
            f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n"

    def _spawn(self, command: list[str], name: str) -> None:
        log = (self.root / "log" / f"{name}.out").open("ab")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               env={**os.environ, **self.env}, start_new_session=True))

    def _node_idle(self) -> bool:
        result = self.client(["sinfo", "--noheader", "--Node", "--format=%T"], check=False)
        return result.returncode == 0 and result.stdout.split()[:1] == ["idle"]

    def _wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if condition():
                return
            for process in self.processes:
                if process.poll() is not None:
                    self.stop()
                    raise ClusterUnavailable(f"{process.args[0]} exited with {process.returncode}:\n{self.logs()}")
            time.sleep(0.5)
        self.stop()
        raise ClusterUnavailable(f"timed out waiting for {what}:\n{self.logs()}")
