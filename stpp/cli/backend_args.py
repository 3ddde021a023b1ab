"""The ``--backend`` and ``--slurm-*`` options, shared by ``python app.py`` and ``python -m stpp project launch``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stpp.core.cluster import BACKENDS, SLURM_SETTINGS_NAME, load_slurm_options, parse_backend

if TYPE_CHECKING:
    from stpp.backends import Backend


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the backend options to ``parser``."""
    group = parser.add_argument_group("where runs train", f"Slurm settings default to WORKSPACE/{SLURM_SETTINGS_NAME}")
    group.add_argument("--backend", choices=BACKENDS, default=None,
                       help="local: a process on this machine (default); slurm: a job submitted with sbatch")
    group.add_argument("--slurm-partition", metavar="NAME", help="sbatch --partition")
    group.add_argument("--slurm-account", metavar="NAME", help="sbatch --account")
    group.add_argument("--slurm-time", metavar="LIMIT", help="sbatch --time, e.g. 8:00:00 or 1-00:00:00")
    group.add_argument("--slurm-nodes", type=int, metavar="N", help="nodes per run (several: srun + torchrun)")
    group.add_argument("--slurm-setup", action="append", metavar="LINE",
                       help="a shell line the job runs before the worker, e.g. 'source venv/bin/activate' "
                            "(repeatable)")


def backend_from_args(args: argparse.Namespace, workspace: str | Path) -> Backend:
    """The backend the options name, with the workspace's Slurm settings updated by the ``--slurm-*`` flags.

    Raises:
        ConfigError: a bad backend name or Slurm setting.
    """
    from stpp.backends import SlurmBackend, make_backend  # not at import: --help needs neither psutil nor Slurm

    if parse_backend(args.backend) != "slurm":
        return make_backend("local", workspace)
    options = load_slurm_options(workspace).updated(
        **run_settings_from_args(args), setup=tuple(args.slurm_setup) if args.slurm_setup else None)
    return SlurmBackend(options)


def run_settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--slurm-*`` flags a run keeps as its own settings (see :data:`~stpp.core.cluster.RUN_SLURM_SETTINGS`)."""
    given = {"partition": args.slurm_partition, "account": args.slurm_account, "time_limit": args.slurm_time,
             "nodes": args.slurm_nodes}
    return {key: value for key, value in given.items() if value is not None}
