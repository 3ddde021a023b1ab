"""The one training loop used by every phase (teacher, ST student, ST++ stages), and evaluation."""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from stpp.core.config import StppConfig
from stpp.core.events import Event, EventSink, NullSink
from stpp.core.method import scaled_lr
from stpp.data.transforms import normalize
from stpp.engine.checkpoint import load_checkpoint, save_checkpoint
from stpp.engine.device import autocast_dtype, configure_backends, cudnn_benchmark, seed_everything, use_channels_last
from stpp.engine.distributed import (
    all_reduce_sum_,
    any_rank,
    barrier,
    broadcast_from_main,
    gather_objects,
    is_main,
    rank,
    record_shards,
    shard,
    world_size,
)
from stpp.engine.inference import Predictor
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
        last_path: the mid-stage resume file, rewritten every ``last_every`` epochs and removed when
            the stage ends.
        log_every: steps between step events (the loss is only read from the device then).
        last_every: epochs between ``last.pt`` writes (a resume replays at most that many epochs).
        shards_path: under DDP, where the IDs each rank trained on in its first epoch are recorded
            (see :func:`stpp.engine.distributed.record_shards`); None records nothing.
    """

    stage: str
    epochs: int
    snapshots: dict[int, Path]
    last_path: Path
    log_every: int = 10
    shards_path: Path | None = None
    last_every: int = 1


def process_batch_size(cfg: StppConfig) -> int:
    """Images per step in this process: ``optim.batch_size`` is the global batch, split over the ranks.

    A global batch that does not divide evenly is rounded down to a multiple of the process count
    (the learning rate follows the batch actually used).

    Raises:
        ValueError: fewer images than processes.
    """
    per_process = cfg.optim.batch_size // world_size()
    if per_process < 1:
        raise ValueError(f"optim.batch_size {cfg.optim.batch_size} is smaller than the {world_size()} processes; "
                         "every process needs at least one image per step")
    return per_process


def global_batch_size(cfg: StppConfig) -> int:
    """The batch of one optimisation step over all processes."""
    return process_batch_size(cfg) * world_size()


def make_optimizer(model: nn.Module, cfg: StppConfig) -> tuple[torch.optim.SGD, float]:
    """SGD with the backbone at ``lr`` and the head at ``head_lr_mult x lr``; lr scaled by global batch / 16.

    Returns:
        The optimizer and the backbone learning rate.
    """
    lr = scaled_lr(cfg.optim.base_lr, global_batch_size(cfg))
    # DeepLabv2's head trains at the backbone's rate (the paper's code); the others at 10x.
    head_lr = lr * (model.head_lr_mult or cfg.optim.head_lr_mult)
    groups = [
        {"params": list(model.backbone_parameters()), "lr": lr, "initial_lr": lr},
        {"params": list(model.head_parameters()), "lr": head_lr, "initial_lr": head_lr},
    ]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    return optimizer, lr


class EpochBatches(Sampler[list[int]]):
    """The batches of every remaining epoch of a stage, for one DataLoader iterator per stage.

    Epoch ``e`` is the permutation drawn from ``seed + e`` (so a resumed stage sees the same order
    as an uninterrupted one); under DDP it is padded to a multiple of the process count by repeating
    its first indices and each rank takes every ``world``-th one, as
    :class:`~torch.utils.data.DistributedSampler` does. The last partial batch of an epoch is dropped
    once an epoch has more than one batch. Iterating the whole stage at once keeps the loader's
    workers busy across epoch boundaries: a fresh iterator per epoch would wait for its first batch
    every epoch, which dominates stages of two-step epochs (46 labelled images in batches of 16).
    """

    def __init__(self, length: int, batch_size: int, epochs: range, seed: int, rank: int = 0, world: int = 1):
        if length < 1:
            raise ValueError("the training set is empty")
        self.length, self.batch_size, self.epochs, self.seed = length, batch_size, epochs, seed
        self.rank, self.world = rank, world
        self.per_rank = -(-length // world)
        # A shard that fits in one batch trains as that one (short) batch.
        self.batches_per_epoch = self.per_rank // batch_size if self.per_rank > batch_size else 1

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch`` in training order (before batching)."""
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        padded = (order * -(-self.per_rank * self.world // self.length))[: self.per_rank * self.world]
        return padded[self.rank::self.world]

    def __iter__(self) -> Iterator[list[int]]:
        for epoch in self.epochs:
            indices = self.epoch_indices(epoch)
            for start in range(0, self.batches_per_epoch * self.batch_size, self.batch_size):
                yield indices[start:start + self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch * len(self.epochs)


def make_train_loader(dataset: Dataset, cfg: StppConfig, device: torch.device, seed: int,
                      epochs: range) -> DataLoader:
    """One loader over this process's share of the data for ``epochs`` (see :class:`EpochBatches`)."""
    batches = EpochBatches(len(dataset), process_batch_size(cfg), epochs, seed, rank(), world_size())
    # Each rank's workers draw their own augmentation randomness.
    generator = torch.Generator().manual_seed(seed + rank())
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=cfg.optim.num_workers,
        pin_memory=device.type == "cuda",
        generator=generator,
        worker_init_fn=init_loader_worker,
    )


def init_loader_worker(_: int) -> None:
    """``worker_init_fn`` of every DataLoader of the engine: one thread, and SIGTERM left to the parent.

    Workers only decode and augment; one intra-op thread each keeps them off the trainer's cores.
    torchrun forwards SIGTERM to each rank's whole process group: a worker that died of it would fail
    the rank's next batch instead of letting the rank finish its step and write ``last.pt``. The
    workers still end with their parent (PyTorch's workers watch it) or when the loader shuts down.
    """
    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def prepare_model(model: nn.Module, cfg: StppConfig, device: torch.device) -> nn.Module:
    """Move a model to ``device`` in the configured memory format, with SyncBatchNorm under multi-GPU DDP.

    Returns the same module (converted in place), ready to be wrapped by :func:`wrap_ddp`.
    """
    model.to(device)
    if use_channels_last(cfg, device):
        model.to(memory_format=torch.channels_last)
    if cfg.model.sync_bn and world_size() > 1 and device.type == "cuda":
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert converted is model  # the top module is not a BatchNorm, so children were swapped in place
    return model


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over ``model`` under torchrun; the model itself in one process."""
    if world_size() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


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

    Under ``torchrun`` every rank calls it: the model is wrapped in DistributedDataParallel, each rank
    trains on its shard, and only rank 0 writes checkpoints and events.

    Args:
        model: a freshly built model (its weights are replaced when resuming).
        dataset: yields ``(image [3,c,c], mask [c,c])``.
        cfg: the run's config (optimisation settings, saved in every checkpoint).
        plan: stage name, epochs, snapshot paths, resume file.
        device: where to train.
        sink: receives step, epoch and checkpoint events.
        seed: seeds the shuffling (and, offset by the rank, each rank's augmentation).
        should_stop: polled after every step (every ``plan.log_every`` steps and at epoch ends under
            DDP, where the ranks agree on it); when true, ``last.pt`` is written and
            :class:`StopRequested` raised on every rank.
    """
    main = is_main()
    sink = sink if main else NullSink()
    world = world_size()
    if world > 1 and rank() > 0:
        seed_everything(seed + rank())
    configure_backends(device)
    prepare_model(model, cfg, device)
    channels_last = use_channels_last(cfg, device)
    optimizer, _ = make_optimizer(model, cfg)
    if len(dataset) == 0:
        raise ValueError(f"stage {plan.stage}: the training set is empty")
    if cfg.optim.batch_size % world:
        sink.emit(Event("warning", plan.stage, message=(
            f"WARNING: optim.batch_size {cfg.optim.batch_size} does not divide over {world} processes; "
            f"training with a global batch of {global_batch_size(cfg)}")))
    dtype = autocast_dtype(cfg.optim.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    start_epoch, step = _resume(plan, model, optimizer, scaler, sink, seed)
    loader = make_train_loader(dataset, cfg, device, seed, range(start_epoch, plan.epochs))
    sampler: EpochBatches = loader.batch_sampler
    steps_per_epoch = sampler.batches_per_epoch
    total_steps = plan.epochs * steps_per_epoch
    train_model = wrap_ddp(model, device)
    stop = _StopCheck(should_stop, plan.log_every)
    if start_epoch < plan.epochs:
        record_shards(plan.shards_path, f"train:{plan.stage}:epoch{start_epoch + 1}",
                      [f"{i}:{_item_id(dataset, i)}" for i in sampler.epoch_indices(start_epoch)])
    batches = iter(loader)

    for epoch in range(start_epoch, plan.epochs):
        train_model.train()
        running = torch.zeros((), device=device)
        for batch_index in range(steps_per_epoch):
            images, masks = next(batches)
            _set_poly_lr(optimizer, step, total_steps, cfg.optim.poly_power)
            loss = train_step(train_model, optimizer, scaler, images, masks, device, dtype, channels_last,
                              cfg.data.ignore_index)
            running += loss.detach()
            step += 1
            if step % plan.log_every == 0 or step == total_steps:
                sink.emit(Event("step", plan.stage, step=step, total=total_steps, loss=float(loss.detach()),
                                data={"lr": optimizer.param_groups[0]["lr"], "epoch": epoch + 1}))
            if stop(step, batch_index + 1 == steps_per_epoch):
                _save_last(plan, model, optimizer, scaler, cfg, epoch, epoch * steps_per_epoch, device)
                sink.emit(Event("info", plan.stage, step=step, total=total_steps,
                                message=f"stopped at step {step}; resume continues from {plan.last_path.name}"))
                barrier()
                raise StopRequested(plan.stage)
        mean_loss = float(running) / steps_per_epoch
        sink.emit(Event("epoch", plan.stage, step=step, total=total_steps, loss=mean_loss,
                        data={"epoch": epoch + 1, "epochs": plan.epochs}))
        if epoch + 1 in plan.snapshots and main:
            path = save_checkpoint(plan.snapshots[epoch + 1], model=model.state_dict(), epoch=epoch + 1,
                                   step=step, stage=plan.stage, config=cfg.to_dict())
            sink.emit(Event("checkpoint", plan.stage, step=step, total=total_steps, message=str(path),
                            data={"epoch": epoch + 1, "path": str(path)}))
        if epoch + 1 < plan.epochs and (epoch + 1) % max(1, plan.last_every) == 0:
            _save_last(plan, model, optimizer, scaler, cfg, epoch + 1, step, device)
    if main:
        plan.last_path.unlink(missing_ok=True)
    barrier()
    return model


class _StopCheck:
    """Polls ``should_stop``: every step in one process; under DDP, where all ranks agree on it."""

    def __init__(self, should_stop: Callable[[], bool] | None, every: int) -> None:
        self.should_stop = should_stop
        self.every = max(1, every)

    def __call__(self, step: int, epoch_end: bool) -> bool:
        requested = bool(self.should_stop()) if self.should_stop is not None else False
        if world_size() == 1:
            return requested
        # A collective per step would stall every step; these steps are the same on every rank.
        if step % self.every == 0 or epoch_end:
            return any_rank(requested)
        return False


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               images: torch.Tensor, masks: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
               channels_last: bool, ignore_index: int) -> torch.Tensor:
    """One SGD step on a batch: forward (under autocast when ``dtype``), cross-entropy, scaled backward.

    Args:
        images: ``uint8 [N, 3, H, W]`` as the loader gives them, or floats in [0, 1]; normalised
            here, on ``device``.
        masks: class indices ``[N, H, W]``, any integer type.

    Returns:
        The loss, still on the device (reading it is a host sync: do it only when logging).
    """
    images = normalize(images.to(device, non_blocking=True))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    masks = masks.to(device, non_blocking=True).long()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with autocast:
        logits = model(images)["out"]
    loss = F.cross_entropy(logits.float(), masks, ignore_index=ignore_index)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def _item_id(dataset: Dataset, index: int) -> str:
    # Training items repeat labelled images, so shard records name the item index and its image.
    items = getattr(dataset, "items", None)
    return str(items[index].id) if items is not None else str(index)


def _set_poly_lr(optimizer: torch.optim.Optimizer, step: int, total: int, power: float) -> None:
    factor = (1 - step / total) ** power
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def _save_last(plan: FitPlan, model, optimizer, scaler, cfg: StppConfig, epoch: int, step: int,
               device: torch.device) -> None:
    # A stop in the middle of an epoch keeps the weights but replays that epoch from its first
    # step (``step`` is the epoch's starting step), so the schedule ends exactly at its total.
    # Every rank's RNG state is kept, so each resumes its own augmentation stream.
    rng_ranks = gather_objects(torch.get_rng_state())
    if not is_main():
        return
    extra = {"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
    save_checkpoint(
        plan.last_path, model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
        epoch=epoch, step=step, stage=plan.stage, config=cfg.to_dict(), rng=torch.get_rng_state(),
        rng_ranks=rng_ranks, world_size=world_size(), **extra,
    )


def _resumable(plan: FitPlan) -> bool:
    return plan.last_path.exists() and load_checkpoint(plan.last_path).get("stage") == plan.stage


def _resume(plan: FitPlan, model, optimizer, scaler, sink: EventSink, seed: int) -> tuple[int, int]:
    resumable = broadcast_from_main(_resumable(plan) if is_main() else None)
    if not resumable:
        return 0, 0
    state = load_checkpoint(plan.last_path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    rng_ranks = state.get("rng_ranks")
    if rng_ranks is not None and state.get("world_size", 1) == world_size():
        torch.set_rng_state(rng_ranks[rank()])
    elif is_main():
        torch.set_rng_state(state["rng"])
    else:
        seed_everything(seed + rank() + 7919 * int(state["epoch"]))
    if "cuda_rng" in state and torch.cuda.is_available() and world_size() == 1 == state.get("world_size", 1):
        torch.cuda.set_rng_state(state["cuda_rng"])
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
    shards_path: Path | None = None,
) -> ConfusionMatrix:
    """Accumulate a confusion matrix over a whole set at original resolution (one image per pass).

    Under DDP each rank evaluates every ``world_size``-th image (no padding duplicates) and the
    matrices are summed, so every rank returns the whole set's matrix. Images are decoded by the
    DataLoader's workers; the model runs in the configured precision and memory format.

    Args:
        model: the model (not DDP-wrapped).
        dataset: an :class:`~stpp.data.datasets.EvalDataset` (items with ``image``, ``mask``, ``id``).
        num_classes: rows and columns of the matrix.
        device: where to run.
        cfg: precision, memory format, sliding window, loader workers, ignore index.
        sink: receives ``eval_progress`` events (rank 0).
        stage: the stage named in the events.
        shards_path: under DDP, where the IDs each rank evaluated are recorded.
    """
    model.to(device).eval()
    predictor = Predictor(model, cfg.eval, autocast_dtype(cfg.optim.amp, device), use_channels_last(cfg, device))
    matrix = ConfusionMatrix(num_classes, cfg.data.ignore_index)
    total = len(dataset)
    indices = shard(range(total))
    workers = cfg.optim.num_workers
    loader = DataLoader(Subset(dataset, indices), batch_size=None, num_workers=workers,
                        pin_memory=device.type == "cuda", worker_init_fn=init_loader_worker)
    sink = sink if (sink is not None and is_main()) else None
    seen = []
    with cudnn_benchmark(few_sizes([dataset.image_paths[i] for i in indices]) if hasattr(dataset, "image_paths")
                         else False):
        for done, item in enumerate(loader, start=1):
            image = item["image"].unsqueeze(0).to(device, non_blocking=True)
            prediction = predictor.logits(image).argmax(dim=1)[0].to(torch.uint8)
            matrix.update(item["mask"], prediction)
            seen.append(item["id"])
            if sink is not None and (done % 25 == 0 or done == len(indices)):
                sink.emit(Event("eval_progress", stage, step=min(total, done * world_size()), total=total))
    all_reduce_sum_(matrix.matrix)
    record_shards(shards_path, f"eval:{stage}", seen)
    return matrix


def few_sizes(image_paths: Sequence[Path], limit: int = 4) -> bool:
    """True when the images come in at most ``limit`` sizes (read from the file headers).

    cuDNN autotuning pays off for a few shapes (Cityscapes: one) and costs more than it saves when
    every image has its own (Pascal VOC), so inference turns it on only in the first case.
    """
    sizes = set()
    for path in image_paths:
        sizes.add(header_size(path))
        if len(sizes) > limit:
            return False
    return True


def header_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` as stored in the file header (nothing is decoded, EXIF rotation not applied)."""
    with Image.open(path) as image:
        return image.size
