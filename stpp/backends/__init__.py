"""Where a project run's worker runs: :class:`LocalBackend` (a process here) or :class:`SlurmBackend`.

A backend starts a worker on a run folder that already holds its ``job.json``, tells whether it
still runs, asks it to stop and kills it. Everything else, the queue and the import of results
into the store, is the job runner's (:mod:`stpp.jobs`), the same for every backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol

from stpp.backends.local import LocalBackend, StartError
from stpp.backends.slurm import SlurmBackend
from stpp.core.cluster import SlurmOptions, load_slurm_options, parse_backend
from stpp.core.devices import DeviceSpec

__all__ = ["Backend", "LocalBackend", "SlurmBackend", "StartError", "make_backend"]


class Backend(Protocol):
    """What the job runner needs of a backend."""

    name: str
    queues_itself: bool
    """True: every queued run is handed over at once and the backend's scheduler starts it; False:
    the job runner's device slots decide."""

    def run_settings(self) -> dict[str, Any]:
        """The settings a run may set for itself, as a new run gets them (empty: none)."""

    def with_settings(self, settings: Mapping[str, Any]) -> Backend:
        """This backend with a run's own settings (:attr:`stpp.store.runs.Run.backend_options`) over its own."""

    def start(self, run_id: int, run_dir: Path, spec: DeviceSpec, log_path: Path) -> tuple[int | None, str | None]:
        """Start (or submit) the worker; returns its pid and/or the backend's job id."""

    def alive(self, run_id: int, pid: int | None, job_id: str | None) -> bool:
        """Whether the worker runs, or will."""

    def pending(self, run_id: int, job_id: str | None) -> bool:
        """Whether the worker waits for the backend to start it."""

    def stop(self, run_id: int, pid: int | None, job_id: str | None) -> None:
        """Ask the worker to stop soon (beside the stop file every worker polls)."""

    def kill(self, run_id: int, pid: int | None, job_id: str | None) -> None:
        """End the worker now."""


def make_backend(name: str, workspace: str | Path, slurm: SlurmOptions | None = None) -> Backend:
    """The backend called ``name``; Slurm's settings are ``slurm``, else the workspace's ``slurm.json``.

    Raises:
        ConfigError: an unknown backend name, or a bad ``slurm.json``.
    """
    if parse_backend(name) == "slurm":
        return SlurmBackend(slurm or load_slurm_options(workspace))
    return LocalBackend()
