"""The ST++ stability score and the reliable / unreliable split."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from stpp.core.method import num_reliable
from stpp.core.metrics import mask_miou


@dataclass(frozen=True)
class ImageScore:
    """One unlabelled image's place in the ranking.

    Attributes:
        image_id: the image ID.
        stability: mean over j < K of meanIoU(M_j, M_K) (the paper's Eq. 4 up to a constant factor).
        per_checkpoint: meanIoU(M_j, M_K) for each j < K.
        rank: 1 = most stable.
        reliable: in the top floor(N x R).
    """

    image_id: str
    stability: float
    per_checkpoint: tuple[float, ...]
    rank: int
    reliable: bool


def stability_score(masks: Sequence[np.ndarray], num_classes: int) -> tuple[float, tuple[float, ...]]:
    """Score one image from its K checkpoints' masks, the last one being the reference.

    Returns:
        (mean agreement, per-checkpoint agreements). An image where no class is present in any
        pair (all ignore) scores 0.
    """
    if len(masks) < 2:
        raise ValueError("stability needs masks from at least two checkpoints")
    final = masks[-1]
    per_checkpoint = tuple(mask_miou(m, final, num_classes) for m in masks[:-1])
    values = [v for v in per_checkpoint if not np.isnan(v)]
    return (float(np.mean(values)) if values else 0.0), per_checkpoint


def rank_images(
    image_ids: Sequence[str],
    load_masks: Callable[[str], Sequence[np.ndarray]],
    num_classes: int,
    reliable_ratio: float,
    split: str = "stability",
    seed: int = 0,
) -> list[ImageScore]:
    """Rank unlabelled images by stability (descending, ties by image ID) and mark the reliable.

    Args:
        image_ids: the unlabelled images.
        load_masks: returns the K masks of one image, checkpoint order, the final one last.
        num_classes: number of classes.
        reliable_ratio: R; the top floor(N x R) images are reliable.
        split: ``stability`` (ST++), or ``random`` (the paper's ablation: a seeded random order
            decides who is reliable; scores are still computed and reported).
        seed: seed of the random split.
    """
    if not 0.0 <= reliable_ratio <= 1.0:
        raise ValueError(f"reliable_ratio must be within [0, 1], got {reliable_ratio}")
    scored = [(image_id, *stability_score(load_masks(image_id), num_classes)) for image_id in image_ids]
    if split == "stability":
        scored.sort(key=lambda item: (-item[1], item[0]))
    elif split == "random":
        scored.sort(key=lambda item: item[0])
        random.Random(seed).shuffle(scored)
    else:
        raise ValueError(f"unknown split {split!r}; choose 'stability' or 'random'")
    cut = num_reliable(len(scored), reliable_ratio)
    return [
        ImageScore(image_id, score, per_ckpt, rank=index + 1, reliable=index < cut)
        for index, (image_id, score, per_ckpt) in enumerate(scored)
    ]
