"""The confusion matrix an evaluation pass accumulates on torch tensors (so ranks can sum it);
IoU, mIoU and the summary are read with :mod:`stpp.core.metrics`."""

from __future__ import annotations

import numpy as np
import torch

from stpp.core import metrics
from stpp.core.config import IGNORE_INDEX


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

    def iou(self) -> np.ndarray:
        """IoU per class; NaN for a class absent from both truth and prediction."""
        return metrics.class_iou(self.matrix.numpy())

    def miou(self) -> float:
        """Mean IoU over the classes seen in truth or prediction."""
        return metrics.mean_iou(self.matrix.numpy())

    def pixel_accuracy(self) -> float:
        return metrics.pixel_accuracy(self.matrix.numpy())

    def summary(self, class_names: tuple[str, ...] | list[str] | None = None) -> dict:
        """JSON-ready figures in percent (see :func:`stpp.core.metrics.summary`)."""
        return metrics.summary(self.matrix.numpy(), class_names)
