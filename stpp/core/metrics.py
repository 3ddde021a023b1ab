"""Confusion matrices and IoU in numpy: the one definition the engine, the store's reports and the
benchmarks share.

A confusion matrix is ``num_classes x num_classes`` (rows: truth, columns: prediction). IoU is read
from a matrix accumulated over a whole set, as the paper (and torchvision's reference scripts) do;
a class absent from both truth and prediction has no IoU and drops out of the mean.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from stpp.core.config import IGNORE_INDEX


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The confusion matrix (int64) of two class-index masks of one shape.

    Pixels that are ``ignore_index`` in either mask are skipped (a pseudo mask marks the pixels it
    leaves out that way).

    Raises:
        ValueError: masks of different shapes, or a value that is neither a class nor ignore.
    """
    truth = np.asarray(truth)
    prediction = np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(f"masks of different shapes: {truth.shape} and {prediction.shape}")
    truth = truth.astype(np.int64, copy=False).ravel()
    prediction = prediction.astype(np.int64, copy=False).ravel()
    keep = (truth != ignore_index) & (prediction != ignore_index)
    truth, prediction = truth[keep], prediction[keep]
    for name, values in (("truth", truth), ("prediction", prediction)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = int(values.max()) if values.max() >= num_classes else int(values.min())
            raise ValueError(f"{name} holds class {bad}, outside 0..{num_classes - 1}")
    index = truth * num_classes + prediction
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_iou(matrix: np.ndarray) -> np.ndarray:
    """IoU per class (float64, 0..1); NaN for a class absent from both truth and prediction."""
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / np.maximum(union, 1), np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    """The mean IoU (0..1) over the classes seen in truth or prediction; NaN when none is."""
    iou = class_iou(matrix)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(matrix: np.ndarray) -> float:
    """The share of counted pixels whose prediction is right (NaN for an empty matrix)."""
    matrix = np.asarray(matrix)
    total = int(matrix.sum())
    return float(np.trace(matrix)) / total if total else float("nan")


def mask_miou(a: np.ndarray, b: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean IoU between two masks over the classes present in either: the per-image agreement of the
    stability score (the paper's code drops classes absent from both, nanmean). NaN when no pixel counts."""
    return mean_iou(confusion_matrix(a, b, num_classes, ignore_index))


def percent(value: float) -> float | None:
    """A 0..1 figure as a percentage rounded to two places; None for NaN."""
    return None if np.isnan(value) else round(100 * float(value), 2)


def summary(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """JSON-ready figures in percent: ``{"miou", "pixel_accuracy", "per_class": {name: iou or None}}``."""
    names = list(class_names) if class_names else [str(i) for i in range(len(matrix))]
    return {
        "miou": percent(mean_iou(matrix)),
        "pixel_accuracy": percent(pixel_accuracy(matrix)),
        "per_class": {name: percent(v) for name, v in zip(names, class_iou(matrix).tolist())},
    }
