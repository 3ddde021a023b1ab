"""Several processes, one run: the process group, sharding and the few collectives the engine needs.

``torchrun`` starts one process per GPU (or per CPU slot) and describes the job in environment
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...). :func:`init_distributed`
joins that group; every other helper here is a no-op in a single process, so the engine has one code
path. As in torchvision's reference scripts, the rank is read from :mod:`torch.distributed` rather
than passed around.

Rules the engine follows with these helpers: decisions taken from the file system (skip a stage,
which masks are missing) are taken on rank 0 and broadcast, so every rank takes the same branch;
only rank 0 writes run files and events; every rank writes the pseudo masks of its own shard.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from stpp.engine.device import resolve_device

T = TypeVar("T")

_TIMEOUT = timedelta(minutes=30)
"""How long a rank waits at a collective: rank 0 alone ranks the pool and writes checkpoints."""


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (``torchrun --nproc_per_node>1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str = "auto") -> torch.device:
    """Join the process group that ``torchrun`` describes, or resolve the device of a single process.

    Under ``torchrun`` the GPU is ``cuda:LOCAL_RANK`` (the index of a ``cuda:N`` setting is
    ignored) with the NCCL backend; on the CPU the backend is gloo.

    Args:
        device_name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the run's ``device`` setting).

    Returns:
        The device this process computes on.

    Raises:
        ValueError: an unknown device, or CUDA asked for where there is none.
    """
    if not launched_by_torchrun() or is_distributed():
        device = resolve_device(device_name)
        if is_distributed() and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=_TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=_TIMEOUT)
    return device


def shutdown_distributed() -> None:
    """Leave the process group (if this process joined one)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the only rank that writes run files and events."""
    return rank() == 0


def _collective_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (files one rank wrote are then visible to the others)."""
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if world_size() == 1:
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def run_on_main(fn: Callable[[], T]) -> T:
    """Call ``fn`` on rank 0 only and return its result on every rank; its exception is raised on all."""
    if world_size() == 1:
        return fn()
    outcome: tuple[str, Any] | None = None
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as error:  # every rank must learn of it, or the others would wait forever
            outcome = ("error", error)
    outcome = broadcast_from_main(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if world_size() == 1:
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (it may live on any device)."""
    if world_size() == 1:
        return tensor
    work = tensor.to(_collective_device())
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    tensor.copy_(work)
    return tensor


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop request)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def max_over_ranks(value: float | None) -> float | None:
    """The largest of the ranks' values (None where every rank had None)."""
    values = [v for v in gather_objects(value) if v is not None]
    return max(values) if values else None


def min_over_ranks(value: int) -> int:
    """The smallest of the ranks' values."""
    return min(gather_objects(value))


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th one from ``rank``.

    The shards are disjoint and together hold every item exactly once (no padding, unlike
    :class:`~torch.utils.data.DistributedSampler`), so nothing is labelled or counted twice.
    """
    return list(items[rank()::world_size()])


def record_shards(path: Path | None, name: str, local_ids: Sequence[str]) -> None:
    """Append which IDs each rank processed in one pass to ``path`` (a JSON line, written by rank 0).

    A collective: every rank calls it. Nothing is recorded in a single process or without a path.
    """
    if path is None or world_size() == 1:
        return
    per_rank = gather_objects([str(i) for i in local_ids])
    if is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"pass": name, "world_size": world_size(), "ranks": per_rank}) + "\n")
