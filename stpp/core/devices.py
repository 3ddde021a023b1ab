"""A run's ``device`` setting: where it trains, and in how many processes."""

from __future__ import annotations

from dataclasses import dataclass

from stpp.core.config import ConfigError

DEVICE_FORMS = "auto, cpu, cpu*N (N processes), cuda, cuda:N or cuda:N,M,... (one process per GPU)"
"""The ``device`` values a project run accepts, for error messages."""


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


@dataclass(frozen=True)
class DeviceSpec:
    """A run's ``device`` setting: where it trains, and in how many processes.

    One process trains on ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. Several processes, started
    by ``torchrun``, train one run with DDP: ``cuda:N,M,...`` puts one process on each listed GPU
    (NCCL), ``cpu*N`` runs N processes on the CPU (gloo). The CPU takes a count rather than a
    list because its processes share one device (``cpu:N`` would read as torch's device index).

    Attributes:
        kind: ``auto``, ``cpu`` or ``cuda``.
        gpus: the GPU indices named (empty for ``auto``, ``cpu`` and a bare ``cuda``).
        processes: how many processes train the run.
    """

    kind: str
    gpus: tuple[int, ...] = ()
    processes: int = 1

    @property
    def distributed(self) -> bool:
        """True when the run trains in several processes (under ``torchrun``)."""
        return self.processes > 1

    @property
    def process_device(self) -> str:
        """The device each process resolves (``cuda:LOCAL_RANK`` replaces a bare ``cuda`` under torchrun)."""
        if self.kind == "cuda" and len(self.gpus) == 1:
            return f"cuda:{self.gpus[0]}"
        return self.kind

    @property
    def slots(self) -> tuple[str, ...]:
        """The queue slots the run holds while it trains: each of its GPUs, or the CPU."""
        if self.kind == "cuda":
            return tuple(f"cuda:{index}" for index in self.gpus) or ("cuda:0",)
        return (self.kind,)

    def __str__(self) -> str:
        if self.kind == "cuda" and self.gpus:
            return "cuda:" + ",".join(map(str, self.gpus))
        if self.kind == "cpu" and self.processes > 1:
            return f"cpu*{self.processes}"
        return self.kind


def parse_device_spec(device: str) -> DeviceSpec:
    """Read a run's ``device`` setting (see :class:`DeviceSpec` for the forms).

    Raises:
        ConfigError: an unknown form, a GPU listed twice, or a count or index that is not a whole
            number (at least 1 for a count).
    """
    text = str(device).strip()
    if text in ("auto", "cpu", "cuda"):
        return DeviceSpec(text)
    kind, star, count = text.partition("*")
    if star and kind == "cpu":
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"device {text!r}: the number of CPU processes must be a whole number of at "
                              f"least 1, e.g. cpu*2")
        return DeviceSpec("cpu", processes=int(count))
    kind, colon, indices = text.partition(":")
    if colon and kind == "cuda":
        items = [item.strip() for item in indices.split(",")]
        if not all(item.isdigit() for item in items):
            raise ConfigError(f"device {text!r}: GPUs are listed by index, e.g. cuda:0 or cuda:0,1")
        gpus = tuple(int(item) for item in items)
        repeated = sorted({index for index in gpus if gpus.count(index) > 1})
        if repeated:
            raise ConfigError(f"device {text!r} lists GPU {', '.join(map(str, repeated))} more than once")
        return DeviceSpec("cuda", gpus, len(gpus))
    raise ConfigError(f"unknown device {text!r}; use {DEVICE_FORMS}")
