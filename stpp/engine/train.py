"""The one training loop used by every phase (teacher, ST student, ST++ stages), and evaluation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stpp.config import StppConfig
from stpp.engine.checkpoint import load_checkpoint, save_checkpoint
from stpp.engine.device import autocast_dtype
from stpp.engine.events import Event, EventSink
from stpp.engine.inference import forward_logits
from stpp.engine.metrics import ConfusionMatrix


class StopRequested(Exception):
    """Raised by :func:`fit` after it saved ``last.pt`` because ``should_stop()`` said so."""


@dataclass(frozen=True)
class FitPlan:
    """Where one stage's training writes and when.

    Attributes:
        stage: the stage name, recorded in every checkpoint and event.
        epochs: passes over the training set.
        snapshots: ``{epoch: path}``; the model after that epoch is saved there (the teacher's K
            checkpoints; a student's final model).
        last_path: the mid-stage resume file, rewritten every epoch and removed when the stage ends.
        log_every: steps between step events (the loss is only read from the device then).
    """

    stage: str
    epochs: int
    snapshots: dict[int, Path]
    last_path: Path
    log_every: int = 10


def snapshot_epochs(epochs: int, k: int) -> list[int]:
    """The epochs after which the K teacher checkpoints are taken: E//K·j (the paper: E//3, 2E//3, E)."""
    if epochs < 1 or k < 1:
        raise ValueError("epochs and the number of checkpoints must be at least 1")
    return [max(1, epochs * j // k) for j in range(1, k + 1)]


def make_optimizer(model: nn.Module, cfg: StppConfig) -> tuple[torch.optim.SGD, float]:
    """SGD with the backbone at ``lr`` and the head at ``head_lr_mult x lr``; lr scaled by batch / 16.

    Returns:
        The optimizer and the backbone learning rate.
    """
    lr = cfg.optim.base_lr * cfg.optim.batch_size / 16
    # DeepLabv2's head trains at the backbone's rate (the paper's code); the others at 10x.
    head_lr = lr * (model.head_lr_mult or cfg.optim.head_lr_mult)
    groups = [
        {"params": list(model.backbone_parameters()), "lr": lr, "initial_lr": lr},
        {"params": list(model.head_parameters()), "lr": head_lr, "initial_lr": head_lr},
    ]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    return optimizer, lr


def make_train_loader(dataset: Dataset, cfg: StppConfig, device: torch.device, seed: int) -> DataLoader:
    """A shuffling loader; the last partial batch is dropped once there is more than one batch."""
    generator = torch.Generator().manual_seed(seed)
    workers = cfg.optim.num_workers
    return DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        drop_last=len(dataset) > cfg.optim.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=generator,
        worker_init_fn=_limit_worker_threads,
    )


def _limit_worker_threads(_: int) -> None:
    # Workers only decode and augment; one intra-op thread each keeps them off the trainer's cores.
    torch.set_num_threads(1)


def fit(
    model: nn.Module,
    dataset: Dataset,
    cfg: StppConfig,
    plan: FitPlan,
    device: torch.device,
    sink: EventSink,
    seed: int,
    should_stop: Callable[[], bool] | None = None,
) -> nn.Module:
    """Train ``model`` on ``dataset`` with SGD + poly decay, resuming from ``plan.last_path`` if it exists.

    Args:
        model: a freshly built model (its weights are replaced when resuming).
        dataset: yields ``(image [3,c,c], mask [c,c])``.
        cfg: the run's config (optimisation settings, saved in every checkpoint).
        plan: stage name, epochs, snapshot paths, resume file.
        device: where to train.
        sink: receives step, epoch and checkpoint events.
        seed: seeds the shuffling.
        should_stop: polled after every step; when true, ``last.pt`` is written and
            :class:`StopRequested` raised.
    """
    model.to(device)
    loader = make_train_loader(dataset, cfg, device, seed)
    optimizer, _ = make_optimizer(model, cfg)
    steps_per_epoch = len(loader)
    total_steps = plan.epochs * steps_per_epoch
    if steps_per_epoch == 0:
        raise ValueError(f"stage {plan.stage}: the training set is empty")
    dtype = autocast_dtype(cfg.optim.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    start_epoch, step = _resume(plan, model, optimizer, scaler, sink)

    for epoch in range(start_epoch, plan.epochs):
        model.train()
        running = torch.zeros((), device=device)
        for images, masks in loader:
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            _set_poly_lr(optimizer, step, total_steps, cfg.optim.poly_power)
            autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with autocast:
                logits = model(images)["out"]
            loss = F.cross_entropy(logits.float(), masks, ignore_index=cfg.data.ignore_index)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running += loss.detach()
            step += 1
            if step % plan.log_every == 0 or step == total_steps:
                sink.emit(Event("step", plan.stage, step=step, total=total_steps, loss=float(loss.detach()),
                                data={"lr": optimizer.param_groups[0]["lr"], "epoch": epoch + 1}))
            if should_stop is not None and should_stop():
                _save_last(plan, model, optimizer, scaler, cfg, epoch, epoch * steps_per_epoch)
                sink.emit(Event("info", plan.stage, step=step, total=total_steps,
                                message=f"stopped at step {step}; resume continues from {plan.last_path.name}"))
                raise StopRequested(plan.stage)
        mean_loss = float(running) / steps_per_epoch
        sink.emit(Event("epoch", plan.stage, step=step, total=total_steps, loss=mean_loss,
                        data={"epoch": epoch + 1, "epochs": plan.epochs}))
        if epoch + 1 in plan.snapshots:
            path = save_checkpoint(plan.snapshots[epoch + 1], model=model.state_dict(), epoch=epoch + 1,
                                   step=step, stage=plan.stage, config=cfg.to_dict())
            sink.emit(Event("checkpoint", plan.stage, step=step, total=total_steps, message=str(path),
                            data={"epoch": epoch + 1, "path": str(path)}))
        if epoch + 1 < plan.epochs:
            _save_last(plan, model, optimizer, scaler, cfg, epoch + 1, step)
    plan.last_path.unlink(missing_ok=True)
    return model


def _set_poly_lr(optimizer: torch.optim.Optimizer, step: int, total: int, power: float) -> None:
    factor = (1 - step / total) ** power
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def _save_last(plan: FitPlan, model, optimizer, scaler, cfg: StppConfig, epoch: int, step: int) -> None:
    # A stop in the middle of an epoch keeps the weights but replays that epoch from its first
    # step (``step`` is the epoch's starting step), so the schedule ends exactly at its total.
    save_checkpoint(
        plan.last_path, model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
        epoch=epoch, step=step, stage=plan.stage, config=cfg.to_dict(), rng=torch.get_rng_state(),
    )


def _resume(plan: FitPlan, model, optimizer, scaler, sink: EventSink) -> tuple[int, int]:
    if not plan.last_path.exists():
        return 0, 0
    state = load_checkpoint(plan.last_path)
    if state.get("stage") != plan.stage:
        return 0, 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    sink.emit(Event("info", plan.stage, step=state["step"],
                    message=f"resumed {plan.stage} at epoch {state['epoch'] + 1} (step {state['step']})",
                    data={"resumed_epoch": state["epoch"], "resumed_step": state["step"]}))
    return int(state["epoch"]), int(state["step"])


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    device: torch.device,
    cfg: StppConfig,
    sink: EventSink | None = None,
    stage: str = "",
) -> ConfusionMatrix:
    """Accumulate a confusion matrix over a whole set at original resolution (batch size 1)."""
    model.to(device).eval()
    matrix = ConfusionMatrix(num_classes, cfg.data.ignore_index)
    total = len(dataset)
    for index in range(total):
        item = dataset[index]
        image = item["image"].unsqueeze(0).to(device)
        prediction = forward_logits(model, image, cfg.eval).argmax(dim=1)[0]
        matrix.update(item["mask"], prediction)
        if sink is not None and ((index + 1) % 25 == 0 or index + 1 == total):
            sink.emit(Event("eval_progress", stage, step=index + 1, total=total))
    return matrix

