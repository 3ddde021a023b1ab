"""Confusion matrix, per-class IoU and mIoU, accumulated over a whole set."""

from __future__ import annotations

import numpy as np
import torch

from stpp.config import IGNORE_INDEX


class ConfusionMatrix:
    """A ``num_classes x num_classes`` confusion matrix (rows: truth, columns: prediction).

    Pixels whose truth is ``ignore_index`` are skipped. Accumulate over a whole set, then read
    IoU once, as the paper (and torchvision's reference scripts) do.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, target: torch.Tensor | np.ndarray, prediction: torch.Tensor | np.ndarray) -> None:
        """Add one or more masks of identical shape (class indices)."""
        target = torch.as_tensor(target).flatten().to("cpu", torch.int64)
        prediction = torch.as_tensor(prediction).flatten().to("cpu", torch.int64)
        if target.shape != prediction.shape:
            raise ValueError(f"target has {target.numel()} pixels, prediction {prediction.numel()}")
        keep = target != self.ignore_index
        target, prediction = target[keep], prediction[keep]
        if target.numel() and int(target.max()) >= self.num_classes:
            raise ValueError(f"target holds class {int(target.max())} >= num_classes {self.num_classes}")
        index = target * self.num_classes + prediction
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add another matrix (e.g. another rank's shard) into this one."""
        self.matrix += other.matrix

    def iou(self) -> torch.Tensor:
        """IoU per class (float64); NaN for a class absent from both truth and prediction."""
        h = self.matrix.double()
        diag = torch.diag(h)
        union = h.sum(1) + h.sum(0) - diag
        return torch.where(union > 0, diag / union.clamp(min=1), torch.full_like(diag, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes seen in truth or prediction."""
        return float(torch.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(torch.diag(self.matrix).sum()) / total if total else float("nan")

    def summary(self, class_names: tuple[str, ...] | list[str] | None = None) -> dict:
        """JSON-ready figures in percent: ``{"miou", "pixel_accuracy", "per_class": {name: iou}}``."""
        names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        per_class = {
            name: (None if np.isnan(v) else round(100 * v, 2)) for name, v in zip(names, self.iou().tolist())
        }
        return {
            "miou": round(100 * self.miou(), 2),
            "pixel_accuracy": round(100 * self.pixel_accuracy(), 2),
            "per_class": per_class,
        }


def mask_miou(a: np.ndarray, b: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean IoU between two masks over the classes present in either (NaN-free when any class is).

    This is the per-image agreement of the stability score: classes absent from both masks drop out
    (nanmean), as in the paper's code. Pixels that are ``ignore_index`` in either mask are skipped.
    """
    a = np.asarray(a, dtype=np.int64).ravel()
    b = np.asarray(b, dtype=np.int64).ravel()
    keep = (a != ignore_index) & (b != ignore_index)
    a, b = a[keep], b[keep]
    hist = np.bincount(a * num_classes + b, minlength=num_classes**2).reshape(num_classes, num_classes)
    diag = np.diag(hist)
    union = hist.sum(0) + hist.sum(1) - diag
    present = union > 0
    if not present.any():
        return float("nan")
    return float(np.mean(diag[present] / union[present]))
