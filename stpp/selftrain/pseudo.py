"""Pseudo-labelling: hard masks for unlabelled images, written as palette PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from stpp.config import StppConfig
from stpp.data.datasets import EvalDataset
from stpp.data.masks import write_mask
from stpp.engine.events import Event, EventSink
from stpp.engine.inference import predict_probs


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
    stage: str,
    tta: bool,
    pixel_threshold: float = 0.0,
) -> list[Path]:
    """Predict and write ``out_dir/ID.png`` for every image, skipping masks already on disk.

    Args:
        model: the labelling model.
        image_ids / image_paths: the images to label, in matching order.
        out_dir: destination folder (created).
        cfg: the run's config (TTA scales and flip, evaluation settings).
        palette: class colours of the written palette PNGs.
        tta: average softmax over ``cfg.pseudo.tta_scales`` and flips; else one single-scale pass.
        pixel_threshold: when > 0, pixels whose top probability is below it become ignore (255).

    Returns:
        The paths of all masks, in input order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / f"{image_id}.png" for image_id in image_ids]
    todo = [i for i, path in enumerate(targets) if not path.exists()]
    if not todo:
        return targets
    model.to(device).eval()
    scales = tuple(cfg.pseudo.tta_scales) if tta else (1.0,)
    flip = cfg.pseudo.tta_flip if tta else False
    dataset = EvalDataset([image_ids[i] for i in todo], [Path(image_paths[i]) for i in todo], [None] * len(todo))
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.optim.num_workers)
    for done, item in enumerate(loader, start=1):
        image = item["image"].unsqueeze(0).to(device, non_blocking=True)
        probs = predict_probs(model, image, scales=scales, flip=flip, eval_cfg=cfg.eval)[0]
        confidence, mask = probs.max(dim=0)
        mask = mask.to(torch.uint8)
        if pixel_threshold > 0:
            mask[confidence < pixel_threshold] = cfg.data.ignore_index
        write_mask(out_dir / f"{item['id']}.png", mask.cpu().numpy().astype(np.uint8), palette)
        if done % 10 == 0 or done == len(todo):
            sink.emit(Event("labels", stage, step=done, total=len(todo), message=f"labelled into {out_dir.name}"))
    return targets
