"""One pass of the final teacher checkpoint over the ranked images for the probability signals
(``confidence`` and ``tta_agreement``; what each is, and their file: :mod:`stpp.core.teacher_signals`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from stpp.core.config import StppConfig
from stpp.core.layout import RunLayout
from stpp.core.masks import read_image
from stpp.core.teacher_signals import read_teacher_signals, write_teacher_signals
from stpp.data.transforms import to_eval_tensor
from stpp.engine.checkpoint import load_model
from stpp.engine.device import autocast_dtype, use_channels_last
from stpp.engine.inference import Predictor

_SAVE_EVERY = 50
"""Computed images between two writes of the file, so an interrupted pass keeps most of its work."""


def teacher_signals(layout: RunLayout, cfg: StppConfig, image_paths: Mapping[str, Path], device: torch.device,
                    on_image: Callable[[int, int], None] | None = None) -> dict[str, dict[str, float]]:
    """The probability signals of every image of ``image_paths`` (ID to image file) from the run's final
    teacher checkpoint; images already in ``RUN_DIR/teacher_signals.csv`` are read, the others computed and added.

    Args:
        on_image: called with (images done, images to compute) after each computed image.

    Raises:
        FileNotFoundError: the run has no final teacher checkpoint.
    """
    known = read_teacher_signals(layout)
    missing = [image_id for image_id in image_paths if image_id not in known]
    if missing:
        model = load_model(layout.teacher_checkpoint(cfg.pseudo.num_checkpoints), device)
        predictor = Predictor(model, cfg.eval, autocast_dtype(cfg.optim.amp, device), use_channels_last(cfg, device))
        for done, image_id in enumerate(missing, 1):
            image = to_eval_tensor(read_image(image_paths[image_id])).unsqueeze(0).to(device)
            known[image_id] = image_signals(predictor, image, cfg)
            if on_image is not None:
                on_image(done, len(missing))
            if done % _SAVE_EVERY == 0 or done == len(missing):
                write_teacher_signals(layout, known)
    return {image_id: known[image_id] for image_id in image_paths}


@torch.inference_mode()
def image_signals(predictor: Predictor, image: torch.Tensor, cfg: StppConfig) -> dict[str, float]:
    """``confidence`` and ``tta_agreement`` of one normalised image (1, 3, H, W)."""
    views = list(_view_probabilities(predictor, image, tuple(cfg.pseudo.tta_scales), cfg.pseudo.tta_flip))
    mean = torch.stack([probs for _, probs in views]).mean(dim=0)
    consensus = mean.argmax(dim=1)
    agreement = torch.stack([(probs.argmax(dim=1) == consensus).float().mean() for _, probs in views]).mean()
    labelled_from = mean
    if not cfg.pseudo.tta:
        plain = [probs for plain_view, probs in views if plain_view]
        labelled_from = plain[0] if plain else predictor.logits(image).softmax(dim=1)
    return {"confidence": float(labelled_from.max(dim=1).values.mean()), "tta_agreement": float(agreement)}


def _view_probabilities(predictor: Predictor, image: torch.Tensor, scales: tuple[float, ...],
                        flip: bool) -> Iterator[tuple[bool, torch.Tensor]]:
    """(whether it is the plain view, softmax at the image's size) for each TTA view."""
    height, width = image.shape[-2:]
    for scale in scales:
        scaled = image
        if scale != 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            probs = predictor.logits(scaled.flip(-1) if mirrored else scaled).softmax(dim=1)
            if mirrored:
                probs = probs.flip(-1)
            if scale != 1.0:
                probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            yield scale == 1.0 and not mirrored, probs

