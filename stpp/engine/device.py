"""Choosing the device and the precision; nothing else in the engine hard-codes CUDA."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Iterator

import numpy as np
import torch

from stpp.core.config import AMP_CHOICES


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for an ``optim.amp`` setting, or None for full precision.

    ``auto`` means bf16 on GPUs that support it, else fp16, and full precision on the CPU.
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    raise ValueError(f"unknown amp setting {amp!r}; use {', '.join(AMP_CHOICES)}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_cpu_threads() -> None:
    """Use this process's share of the cores it may run on for intra-op work.

    An explicit ``OMP_NUM_THREADS`` wins. Otherwise the cores of the CPU affinity mask are split
    between the processes ``torchrun`` started on this node (``LOCAL_WORLD_SIZE``), so two ranks on
    two cores do not each start two threads.
    """
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        torch.set_num_threads(int(explicit))
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    torch.set_num_threads(max(1, cores // local_processes))


def use_channels_last(cfg: Any, device: torch.device) -> bool:
    """Whether to run the model in ``channels_last`` memory format.

    Reads ``optim.channels_last`` (``auto``: on for CUDA, off on the CPU, where oneDNN gains little
    and mixed-size inference pays for layout conversions; ``on``; ``off``). Configs written before the
    switch existed mean ``auto``.
    """
    setting = cfg.optim.channels_last.lower()
    if setting in ("auto", ""):
        return device.type == "cuda"
    if setting in ("on", "true", "1", "yes"):
        return True
    if setting in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"unknown channels_last setting {setting!r}; use auto, on or off")


def configure_backends(device: torch.device) -> None:
    """Turn on cuDNN autotuning for training on CUDA (crops have one fixed size)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Set ``cudnn.benchmark`` for a block and restore it after.

    Inference on many different image sizes would autotune every new shape, so labelling and
    evaluation switch it on only when the images come in a few sizes.
    """
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on a CUDA device (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated by tensors since :func:`reset_peak_memory`, in MiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA out-of-memory error."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(error)
