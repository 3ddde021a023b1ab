"""How well a ranking of the unlabelled images sorts them by the quality of their pseudo masks.

ST++ trains its first student on the reliable top ``floor(N x R)`` of the stability ranking (Eq. 4) and
re-labels the rest. Where the unlabelled images have reference masks, this module measures what that
split buys and what a better one could:

- each half's teacher pseudo masks against the references: pooled mIoU (one confusion matrix over the
  half, the paper's Fig. 3), mean per-image mIoU, pixel accuracy and per-class IoU;
- the same for the **perfect** ranking (by each image's own pseudo-mask mIoU: no ranking separates the
  halves' *mean per-image* mIoU further; the pooled figures weigh images by their pixels per class,
  so there it is the natural ceiling, not a bound) and for **random** splits (mean and standard
  deviation over seeded draws: the floor);
- for each ranking **signal** (:data:`SIGNALS`): its split, the share of the perfect ranking's pooled
  gap (reliable minus unreliable) it reaches, and its Spearman correlation with per-image mIoU.

Everything is computed from per-image confusion matrices and signal values (:class:`ImageEvidence`),
so a study of thousands of images holds no masks in memory. numpy and scipy only: the store's quality
report, the Phases tab and the benchmarks share it.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from stpp.core.method import num_reliable
from stpp.core.metrics import class_iou, confusion_matrix, mean_iou, percent, pixel_accuracy
from stpp.selftrain.stability import stability_score

SIGNALS = {
    "stability": "Eq. 4: mean mIoU of each earlier checkpoint's mask with the last one's (the run's ranking)",
    "pixel_agreement": "mean share of pixels where each earlier checkpoint's mask agrees with the last one's",
    "confidence": "mean top softmax probability the final teacher's labels are taken from",
    "tta_agreement": "mean share of pixels where each TTA view's argmax is the views' consensus",
}
"""The ranking signals with what each is. The first two come from what an ST++ run keeps (its K
checkpoint masks); the last two from the final teacher's probabilities, which take one more pass
(:mod:`stpp.selftrain.teacher_signals`): a study measures them where its images have them."""
DEFAULT_RANDOM_DRAWS = 20


@dataclass(frozen=True)
class ImageEvidence:
    """What the study needs of one ranked image.

    Attributes:
        image_id: the image.
        confusion: its teacher pseudo mask against its reference (rows: reference), C x C.
        signals: the value of each of :data:`SIGNALS` it has (higher: ranked as more reliable).
    """

    image_id: str
    confusion: np.ndarray
    signals: dict[str, float]

    @functools.cached_property  # read for every split the study measures
    def miou(self) -> float:
        """The image's own pseudo-mask mIoU (0 to 1; 0 when no pixel is measured)."""
        value = mean_iou(self.confusion)
        return 0.0 if np.isnan(value) else float(value)


def image_evidence(image_id: str, reference: np.ndarray, pseudo: np.ndarray, checkpoint_masks: Sequence[np.ndarray],
                   num_classes: int, ignore_index: int,
                   probability_signals: Mapping[str, float] | None = None) -> ImageEvidence:
    """The evidence of one image from its reference, its teacher pseudo mask, its K checkpoint masks
    (checkpoint order, the last one last) and, where computed, its probability signals."""
    final = np.asarray(checkpoint_masks[-1])
    agreements = []
    for mask in checkpoint_masks[:-1]:
        counted = (np.asarray(mask) != ignore_index) & (final != ignore_index)
        agreements.append(float((np.asarray(mask) == final)[counted].mean()) if counted.any() else 0.0)
    signals = {"stability": stability_score(checkpoint_masks, num_classes)[0],
               "pixel_agreement": float(np.mean(agreements)), **(probability_signals or {})}
    return ImageEvidence(image_id, confusion_matrix(reference, pseudo, num_classes, ignore_index), signals)


@dataclass(frozen=True)
class HalfQuality:
    """The teacher pseudo masks of one half of a split against their references (figures in percent).

    Attributes:
        images: how many images.
        pooled_miou: mIoU of one confusion matrix over the half (None when nothing is measured).
        mean_image_miou: the mean of the images' own mIoUs.
        pixel_accuracy: correct pixels over measured pixels.
        iou: per-class IoU of the pooled matrix (None for a class absent from both sides).
    """

    images: int
    pooled_miou: float | None
    mean_image_miou: float | None
    pixel_accuracy: float | None
    iou: tuple[float | None, ...]


@dataclass(frozen=True)
class SplitQuality:
    """A split of the ranked images into a reliable top and the unreliable rest."""

    ranking: str
    reliable: HalfQuality
    unreliable: HalfQuality

    @property
    def gap(self) -> float | None:
        """Pooled mIoU of the reliable half minus the unreliable half's, in points."""
        if self.reliable.pooled_miou is None or self.unreliable.pooled_miou is None:
            return None
        return self.reliable.pooled_miou - self.unreliable.pooled_miou


@dataclass(frozen=True)
class SignalStudy:
    """One ranking signal: its split, the share of the perfect split's gap it reaches, and how its
    values follow the images' own pseudo-mask mIoU (Spearman; None when either is constant)."""

    split: SplitQuality
    share_of_perfect: float | None
    spearman: float | None


@dataclass(frozen=True)
class RankingStudy:
    """The whole study of one run's ranked images.

    Attributes:
        images: the ranked images with a reference mask (the ones measured).
        ratio: R.
        reliable: the size of the reliable half, ``floor(images x R)``.
        perfect: the split by the images' own pseudo-mask mIoU (the largest mean per-image gap).
        random: the seeded random splits.
        signals: one entry per signal of :data:`SIGNALS` that every image has, in that order.
    """

    images: int
    ratio: float
    reliable: int
    perfect: SplitQuality
    random: tuple[SplitQuality, ...]
    signals: dict[str, SignalStudy]

    def rows(self) -> list[dict]:
        """One row per ranking (each signal, then perfect and random), JSON-ready: each half's pooled and
        mean per-image mIoU and pixel accuracy, the gap, the share of the perfect gap and Spearman; a
        random row's figures are ``[mean, std]`` over the draws."""
        rows = [{**_split_figures(signal.split), "share_of_perfect": _round(signal.share_of_perfect, 3),
                 "spearman": _round(signal.spearman, 3)} for signal in self.signals.values()]
        rows.append({**_split_figures(self.perfect), "share_of_perfect": 1.0, "spearman": 1.0})
        draws = [_split_figures(split) for split in self.random]
        random_row = {key: None for key in rows[0]} | {"ranking": f"random ({len(draws)} draws)"}
        for key in random_row:
            values = [d[key] for d in draws if key in d and d[key] is not None and key != "ranking"]
            if values:
                random_row[key] = [round(float(np.mean(values)), 2), round(float(np.std(values)), 2)]
        rows.append(random_row)
        return rows


def ranking_study(evidence: Sequence[ImageEvidence], ratio: float, random_draws: int = DEFAULT_RANDOM_DRAWS,
                  seed: int = 0) -> RankingStudy:
    """Measure every ranking of ``evidence`` at the reliable ratio ``ratio``.

    A ranking sorts by its value, highest first, ties by image id (as the run's ranking does).

    Raises:
        ValueError: fewer than two images, or ``ratio`` outside [0, 1].
    """
    if len(evidence) < 2:
        raise ValueError(f"a ranking study needs at least two images with reference masks, not {len(evidence)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the reliable ratio must be within [0, 1], not {ratio}")
    images = sorted(evidence, key=lambda e: e.image_id)
    cut = num_reliable(len(images), ratio)
    own = [image.miou for image in images]
    perfect = _split("perfect", _ordered(images, own), cut)
    draws = []
    for draw in range(random_draws):
        order = list(images)
        random.Random(seed + draw).shuffle(order)
        draws.append(_split("random", order, cut))
    signals = {}
    for name in (name for name in SIGNALS if all(name in image.signals for image in images)):
        values = [image.signals[name] for image in images]
        split = _split(name, _ordered(images, values), cut)
        share = split.gap / perfect.gap if split.gap is not None and perfect.gap else None
        signals[name] = SignalStudy(split, share, spearman(values, own))
    return RankingStudy(len(images), ratio, cut, perfect, tuple(draws), signals)


def figure_text(value: float | list[float] | None) -> str:
    """A figure of :meth:`RankingStudy.rows` as text: ``12.34``, ``1.20 ± 0.40`` (a random row's mean ± std)
    or ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, list):
        return f"{value[0]:.2f} ± {value[1]:.2f}"
    return f"{value:.2f}"


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); None when either side is constant."""
    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(stats.spearmanr(a, b).statistic)


def _round(value: float | None, places: int) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), places)


def _split_figures(split: SplitQuality) -> dict:
    return {"ranking": split.ranking,
            "reliable_pooled_miou": split.reliable.pooled_miou, "unreliable_pooled_miou": split.unreliable.pooled_miou,
            "gap": _round(split.gap, 2),
            "reliable_image_miou": split.reliable.mean_image_miou,
            "unreliable_image_miou": split.unreliable.mean_image_miou,
            "reliable_pixel_accuracy": split.reliable.pixel_accuracy,
            "unreliable_pixel_accuracy": split.unreliable.pixel_accuracy}


def _ordered(images: Sequence[ImageEvidence], values: Sequence[float]) -> list[ImageEvidence]:
    order = sorted(range(len(images)), key=lambda i: (-values[i], images[i].image_id))
    return [images[i] for i in order]


def _split(ranking: str, ordered: Sequence[ImageEvidence], cut: int) -> SplitQuality:
    return SplitQuality(ranking, _half(ordered[:cut]), _half(ordered[cut:]))


def _half(images: Sequence[ImageEvidence]) -> HalfQuality:
    if not images:
        return HalfQuality(0, None, None, None, ())
    pooled = np.sum([image.confusion for image in images], axis=0)
    return HalfQuality(len(images), percent(mean_iou(pooled)), percent(float(np.mean([i.miou for i in images]))),
                       percent(pixel_accuracy(pooled)), tuple(percent(v) for v in class_iou(pooled).tolist()))
