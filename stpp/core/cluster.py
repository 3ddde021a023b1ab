"""Where a project run's worker runs (the *backend*), and the settings of a Slurm cluster.

Both the app (``python app.py --backend slurm``) and the CLI (``python -m stpp project launch
--backend slurm``) read these words here. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from stpp.core.config import ConfigError

BACKENDS = ("local", "slurm")
"""``local``: a process of the app's machine (the default); ``slurm``: a job submitted with ``sbatch``."""
SLURM_SETTINGS_NAME = "slurm.json"
"""The workspace file with the cluster's settings (keys of :class:`SlurmOptions`)."""


def parse_backend(name: str | None) -> str:
    """A backend name, checked (None means ``local``).

    Raises:
        ConfigError: not one of :data:`BACKENDS`.
    """
    text = (name or "local").strip()
    if text not in BACKENDS:
        raise ConfigError(f"unknown backend {text!r}; choose one of: {', '.join(BACKENDS)}")
    return text


@dataclass(frozen=True)
class SlurmOptions:
    """How runs are submitted to Slurm.

    Attributes:
        partition: ``--partition`` (None: the cluster's default).
        account: ``--account`` (None: the user's default).
        time_limit: ``--time`` in Slurm's format (``1-00:00:00``, ``8:00:00``); None: the partition's.
        nodes: nodes per run; more than one trains over all of them with ``srun`` + ``torchrun``.
        cpus_per_task: ``--cpus-per-task`` (None: Slurm's default).
        python: the interpreter on the nodes (None: the app's own, which the nodes must see at the same path).
        setup: shell lines the job script runs before the worker (``module load ...``, ``source venv/bin/activate``).
        sbatch_args: more ``sbatch`` options, as they are typed (``--qos=high``, ``--constraint=a100``).
        rendezvous_port: the TCP port of torchrun's rendezvous on a run's first node.
    """

    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None
    nodes: int = 1
    cpus_per_task: int | None = None
    python: str | None = None
    setup: tuple[str, ...] = ()
    sbatch_args: tuple[str, ...] = ()
    rendezvous_port: int = 29400

    def __post_init__(self) -> None:
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes < 1:
            raise ConfigError(f"slurm nodes must be a whole number of at least 1, not {self.nodes!r}")
        if self.cpus_per_task is not None and (not isinstance(self.cpus_per_task, int) or self.cpus_per_task < 1):
            raise ConfigError(f"slurm cpus_per_task must be a whole number of at least 1, not {self.cpus_per_task!r}")
        object.__setattr__(self, "setup", tuple(self.setup))
        object.__setattr__(self, "sbatch_args", tuple(self.sbatch_args))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SlurmOptions:
        """Options from a mapping of their names (unknown keys are refused).

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown slurm setting(s) {', '.join(unknown)}; settings: {', '.join(sorted(known))}")
        try:
            return cls(**dict(values))
        except TypeError as error:
            raise ConfigError(f"slurm settings: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **changes: Any) -> SlurmOptions:
        """These options with the given ones replaced (None values are left as they are)."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})


RUN_SLURM_SETTINGS = ("partition", "account", "time_limit", "nodes")
"""The Slurm settings one run may set for itself (the Train form's, over the workspace's ``slurm.json``)."""


def parse_run_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """A run's own Slurm settings: keys of :data:`RUN_SLURM_SETTINGS`, blank values left out, text stripped.

    Raises:
        ConfigError: another key, or a value :class:`SlurmOptions` refuses.
    """
    unknown = sorted(set(values) - set(RUN_SLURM_SETTINGS))
    if unknown:
        raise ConfigError(f"a run cannot set slurm {', '.join(unknown)}; it may set: {', '.join(RUN_SLURM_SETTINGS)}")
    settings: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            continue
        if key == "nodes" and isinstance(value, float) and value == int(value):
            value = int(value)  # a form's number field
        settings[key] = value
    SlurmOptions.from_dict(settings)
    return settings


def load_slurm_options(workspace: str | Path) -> SlurmOptions:
    """The workspace's Slurm settings (``WORKSPACE/slurm.json``), or the defaults when it has none.

    Raises:
        ConfigError: the file is not a JSON object of :class:`SlurmOptions` keys.
    """
    path = Path(workspace) / SLURM_SETTINGS_NAME
    if not path.is_file():
        return SlurmOptions()
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a JSON object of slurm settings")
    return SlurmOptions.from_dict(values)
