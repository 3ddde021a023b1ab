"""``--auto-batch``: the largest batch, down from the preset's, whose training step fits on the GPU.

A few training steps at the crop size are tried before the run starts; on CUDA out-of-memory the
batch is halved and tried again. The learning rate follows (it is ``base_lr x batch / 16``), and
the decision is reported as an event and kept in ``config.json``, so ``--resume`` trains on.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F

from stpp.core.config import StppConfig
from stpp.core.events import Event
from stpp.core.method import scaled_lr
from stpp.engine.device import autocast_dtype, configure_backends, is_out_of_memory, use_channels_last
from stpp.engine.distributed import min_over_ranks, world_size
from stpp.engine.train import make_optimizer, prepare_model, process_batch_size


class BatchTooLarge(RuntimeError):
    """Not even one image per step fits in GPU memory."""


def halve_until_fits(batch: int, try_batch: Callable[[int], None]) -> tuple[int, list[int]]:
    """The first of ``batch``, ``batch // 2``, ... for which ``try_batch`` runs without CUDA out-of-memory.

    Args:
        batch: the batch to start from.
        try_batch: runs a step at a batch size; raises CUDA out-of-memory when it does not fit.

    Returns:
        The batch that fits and the sizes that did not.

    Raises:
        BatchTooLarge: a batch of one does not fit.
    """
    failed: list[int] = []
    while True:
        fits = True
        try:
            try_batch(batch)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            fits = False
        if fits:
            return batch, failed
        failed.append(batch)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if batch == 1:
            raise BatchTooLarge("not even one image per step fits in GPU memory; lower augment.crop_size "
                                "or choose a smaller model")
        batch //= 2


def training_step_probe(cfg: StppConfig, device: torch.device, num_classes: int) -> Callable[[int], None]:
    """A function running two training steps of the run's model on random crops at a given batch."""
    from stpp.models import build_model

    # Plain BatchNorm even under SyncBN: a rank that runs out of memory must not leave the others
    # waiting in a BatchNorm collective; the two take the same memory.
    probe_cfg = replace(cfg, model=replace(cfg.model, pretrained="none", sync_bn=False))
    model = prepare_model(build_model(probe_cfg.model, num_classes), probe_cfg, device).train()
    optimizer, _ = make_optimizer(model, cfg)
    dtype = autocast_dtype(cfg.optim.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    memory_format = torch.channels_last if use_channels_last(cfg, device) else torch.contiguous_format
    crop = cfg.augment.crop_size

    def step(batch: int) -> None:
        images = masks = logits = loss = None
        try:
            for _ in range(2):
                images = torch.randn(batch, 3, crop, crop, device=device).contiguous(memory_format=memory_format)
                masks = torch.randint(0, num_classes, (batch, crop, crop), device=device)
                autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
                with autocast:
                    logits = model(images)["out"]
                loss = F.cross_entropy(logits.float(), masks)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        finally:
            del images, masks, logits, loss
            optimizer.zero_grad(set_to_none=True)

    return step


def auto_batch_size(cfg: StppConfig, device: torch.device, num_classes: int,
                    probe: Callable[[int], None] | None = None) -> tuple[StppConfig, Event]:
    """The config with the largest global batch (the preset's, halved as needed) that fits.

    Under DDP every rank probes its own GPU and the smallest per-process batch wins. On the CPU
    nothing is probed.

    Args:
        cfg: the resolved config.
        device: the training device.
        num_classes: the model's classes.
        probe: runs training steps at a per-process batch (tests inject a fake); default: the real
            model on random crops.

    Returns:
        The config (``optim.batch_size`` possibly smaller) and an event saying what was decided.
    """
    original = cfg.optim.batch_size
    if device.type != "cuda" and probe is None:
        return cfg, Event("info", message=f"--auto-batch applies to CUDA devices; keeping batch {original} on {device}")
    configure_backends(device)
    per_process = process_batch_size(cfg)
    step = probe or training_step_probe(cfg, device, num_classes)
    fitted, failed = halve_until_fits(per_process, step)
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    fitted = min_over_ranks(fitted)
    batch = fitted * world_size()
    lr = scaled_lr(cfg.optim.base_lr, batch)
    data = {"auto_batch": True, "preset_batch": original, "batch_size": batch, "batch_per_process": fitted,
            "lr": lr, "out_of_memory_at": [b * world_size() for b in failed]}
    if batch == original:
        return cfg, Event("info", message=f"--auto-batch: batch {original} fits on {device}", data=data)
    cfg = replace(cfg, optim=replace(cfg.optim, batch_size=batch))
    message = (f"--auto-batch: batch {original} does not fit on {device} (out of memory); training with batch "
               f"{batch}, learning rate scaled to {lr:g} (base_lr x {batch}/16)")
    return cfg, Event("warning", message=message, data=data)
