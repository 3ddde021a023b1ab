"""Pseudo-labelling: hard masks for unlabelled images, written as palette PNGs.

One labelling pass reads the images with DataLoader workers, groups them by size into batches,
runs every TTA view of a batch in as few forward passes as memory allows (see
:func:`stpp.engine.inference.tta_predict`) and writes the masks from a small thread pool while the
next batch computes. Under ``torchrun`` every rank labels a disjoint shard and writes its own files.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stpp.core.config import StppConfig
from stpp.core.events import Activity, Event, EventSink
from stpp.core.masks import read_image, write_mask
from stpp.data.transforms import to_eval_tensor
from stpp.engine.device import autocast_dtype, cudnn_benchmark, peak_memory_mb, reset_peak_memory, use_channels_last
from stpp.engine.distributed import (
    barrier,
    broadcast_from_main,
    gather_objects,
    is_main,
    max_over_ranks,
    record_shards,
    shard,
    world_size,
)
from stpp.engine.inference import Predictor, tta_predict
from stpp.engine.train import header_size, init_loader_worker, process_batch_size

_AUTOTUNE_MIN_BATCHES = 50
"""cuDNN autotuning is on for a pass with at least this many batches per image size.

Every TTA scale of every size and batch shape is tuned on its first forward pass, which costs more
than a short pass saves: on an H100, CamVid's TTA pass over 321 images (one size, 21 batches) took
37 s with tuning and 17 s without. Cityscapes (thousands of images of one size) clears the bar;
Pascal VOC (hundreds of sizes) does not.
"""

_PENDING_WRITES = 64
"""Masks queued for writing before the labeller waits for the writers."""


@dataclass(frozen=True)
class LabelJob:
    """One image to label and where its masks go.

    Attributes:
        image_id: the image ID (named in events and shard records).
        image_path: the image file.
        target: the label mask (TTA and pixel selection as the pass asks).
        single_scale_target: where the plain single-scale argmax also goes (the K-th checkpoint's
            stability mask, computed in the same pass as the teacher's TTA labels), or None.
    """

    image_id: str
    image_path: Path
    target: Path
    single_scale_target: Path | None = None

    def missing(self) -> bool:
        """True when one of its masks is not on disk yet."""
        return not self.target.exists() or (self.single_scale_target is not None
                                            and not self.single_scale_target.exists())


@torch.inference_mode()
def label_images(
    model: nn.Module,
    image_ids: Sequence[str],
    image_paths: Sequence[Path],
    out_dir: Path,
    cfg: StppConfig,
    palette: Sequence[Sequence[int]],
    device: torch.device,
    sink: EventSink,
    activity: Activity,
    tta: bool,
    pixel_threshold: float = 0.0,
    *,
    single_scale_dir: Path | None = None,
    batch_size: int | None = None,
    shards_path: Path | None = None,
) -> list[Path]:
    """Predict and write ``out_dir/ID.png`` for every image, skipping masks already on disk.

    Args:
        model: the labelling model.
        image_ids / image_paths: the images to label, in matching order.
        out_dir: destination folder (created).
        cfg: the run's config (TTA scales and flip, evaluation settings, precision, loader workers).
        palette: class colours of the written palette PNGs.
        device: where to run.
        sink: receives ``labels`` events (rank 0).
        activity: what the ``labels`` events are about.
        tta: average softmax over ``cfg.pseudo.tta_scales`` and flips; else one single-scale pass.
        pixel_threshold: when > 0, pixels whose top probability is below it become ignore (255).
        single_scale_dir: also write the plain single-scale argmax of every image here (needs 1.0
            among the TTA scales when ``tta`` is on).
        batch_size: images per batch (same-size images only); default: the per-process training batch.
        shards_path: under DDP, where the IDs each rank labelled are recorded.

    Returns:
        The paths of all masks, in input order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [LabelJob(i, Path(p), out_dir / f"{i}.png",
                     Path(single_scale_dir) / f"{i}.png" if single_scale_dir is not None else None)
            for i, p in zip(image_ids, image_paths)]
    run_label_jobs(model, jobs, cfg, palette, device, sink, activity, tta, pixel_threshold,
                   batch_size=batch_size, shards_path=shards_path)
    return [job.target for job in jobs]


@torch.inference_mode()
def run_label_jobs(
    model: nn.Module,
    jobs: Sequence[LabelJob],
    cfg: StppConfig,
    palette: Sequence[Sequence[int]],
    device: torch.device,
    sink: EventSink,
    activity: Activity,
    tta: bool,
    pixel_threshold: float = 0.0,
    *,
    skip_existing: bool = True,
    batch_size: int | None = None,
    shards_path: Path | None = None,
    batch_views: bool = True,
) -> int:
    """Label ``jobs`` (this rank's shard of them under DDP); see :func:`label_images`.

    Args:
        skip_existing: leave jobs whose masks all exist alone (what is missing is decided on rank 0,
            so every rank shards the same list); False relabels everything.
        batch_views: batch each scale's flips (False: the paper's one-view-at-a-time loop).

    Returns:
        How many images were labelled over all ranks.
    """
    pending = list(range(len(jobs)))
    if skip_existing:
        pending = broadcast_from_main([i for i, job in enumerate(jobs) if job.missing()] if is_main() else None)
    if not pending:
        return 0
    scales = tuple(cfg.pseudo.tta_scales) if tta else (1.0,)
    flip = cfg.pseudo.tta_flip if tta else False
    keep_single = any(jobs[i].single_scale_target is not None for i in pending)
    if keep_single and 1.0 not in scales:
        raise ValueError("a single-scale mask from a TTA pass needs 1.0 among pseudo.tta_scales")
    mine = [jobs[i] for i in shard(pending)]
    main_sink = sink if is_main() else None
    reset_peak_memory(device)
    model.to(device)
    predictor = Predictor(model, cfg.eval, autocast_dtype(cfg.optim.amp, device), use_channels_last(cfg, device))
    batch = batch_size or process_batch_size(cfg)
    sizes = [header_size(job.image_path) for job in mine]
    workers = cfg.optim.num_workers
    batches = size_batches(sizes, batch)
    autotune = len(batches) >= _AUTOTUNE_MIN_BATCHES * len(set(sizes))
    loader = DataLoader(_Images([job.image_path for job in mine]), batch_sampler=batches,
                        collate_fn=_collate_by_shape, num_workers=workers, pin_memory=device.type == "cuda",
                        worker_init_fn=init_loader_worker)
    done = 0
    with ThreadPoolExecutor(max_workers=2) as writer, cudnn_benchmark(autotune):
        writes: list[Future] = []
        for groups in loader:
            for indices, images in groups:
                images = images.to(device, non_blocking=True)
                result = tta_predict(predictor, images, scales, flip, batch_views=batch_views,
                                     keep_single_scale=keep_single)
                confidence, masks = result.probs.max(dim=1)
                masks = masks.to(torch.uint8)
                if pixel_threshold > 0:
                    masks.masked_fill_(confidence < pixel_threshold, cfg.data.ignore_index)
                labels = masks.cpu().numpy()
                singles = result.single_scale.to(torch.uint8).cpu().numpy() if result.single_scale is not None else None
                for row, index in enumerate(indices):
                    job = mine[index]
                    if not (skip_existing and job.target.exists()):
                        writes.append(writer.submit(write_mask, job.target, labels[row], palette))
                    if job.single_scale_target is not None and not (skip_existing and job.single_scale_target.exists()):
                        writes.append(writer.submit(write_mask, job.single_scale_target, singles[row], palette))
                before, done = done, done + len(indices)
                if main_sink is not None and done // 10 != before // 10:
                    main_sink.emit(Event("labels", activity, step=min(len(pending), done * world_size()),
                                         total=len(pending), message=f"labelling ({activity})"))
            if len(writes) > _PENDING_WRITES:
                writes = _drain(writes, keep=_PENDING_WRITES // 2)
        _drain(writes, keep=0)
    counts = gather_objects(done)
    peak = max_over_ranks(peak_memory_mb(device))
    record_shards(shards_path, str(activity), [job.image_id for job in mine])
    barrier()
    if main_sink is not None:
        data: dict[str, Any] = {"per_rank": counts, "batch_size": batch, "views": len(scales) * (2 if flip else 1)}
        if peak is not None:
            data["peak_memory_mb"] = peak
        main_sink.emit(Event("labels", activity, step=len(pending), total=len(pending),
                             message=f"labelled {len(pending)} images ({activity})", data=data))
    return len(pending)


def _drain(writes: list[Future], keep: int) -> list[Future]:
    """Wait for the oldest writes until at most ``keep`` are pending; raise the first write error."""
    while len(writes) > keep:
        writes.pop(0).result()
    return writes


def size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Index batches of at most ``batch_size`` images of one size, sizes in order of first appearance.

    Args:
        sizes: the ``(width, height)`` of every image.
        batch_size: the largest batch.
    """
    groups: OrderedDict[tuple[int, int], list[int]] = OrderedDict()
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    batches = []
    for indices in groups.values():
        batches += [indices[i : i + batch_size] for i in range(0, len(indices), max(1, batch_size))]
    return batches


class _Images(Dataset):
    """Normalised images at original size, with their index in the pass."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, to_eval_tensor(read_image(self.paths[index]))


def _collate_by_shape(items: list[tuple[int, torch.Tensor]]) -> list[tuple[list[int], torch.Tensor]]:
    # Batches are grouped by header size; an EXIF rotation can still make sizes differ after decoding.
    groups: OrderedDict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = OrderedDict()
    for index, image in items:
        groups.setdefault(tuple(image.shape), []).append((index, image))
    return [([i for i, _ in members], torch.stack([image for _, image in members])) for members in groups.values()]
