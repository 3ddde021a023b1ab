import math

import numpy as np
import pytest
import torch

from stpp.core.metrics import mask_miou
from stpp.engine.metrics import ConfusionMatrix


def test_miou_from_hand_computed_confusion_matrix():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    prediction = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    matrix = ConfusionMatrix(3)
    matrix.update(target, prediction)
    # truth 0: pixels (0,0)->0, (0,1)->1 ; truth 1: three pixels all ->1 ; truth 2: (1,0)->2, (1,1)->0
    assert matrix.matrix.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    iou = matrix.iou().tolist()
    assert iou == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert matrix.miou() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    summary = matrix.summary(["a", "b", "c"])
    assert summary["per_class"] == {"a": 33.33, "b": 75.0, "c": 50.0}
    assert summary["pixel_accuracy"] == pytest.approx(100 * 5 / 7, abs=0.01)


def test_confusion_matrix_accumulates_and_skips_absent_classes():
    matrix = ConfusionMatrix(4)
    matrix.update(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
    matrix.update(torch.tensor([1, 255]), torch.tensor([0, 3]))
    assert int(matrix.matrix.sum()) == 4
    iou = matrix.iou()
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert matrix.miou() == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_confusion_matrix_rejects_out_of_range_truth():
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(2).update(np.array([2]), np.array([0]))


def test_mask_miou_averages_over_classes_present_in_either_mask():
    a = np.array([[0, 0], [1, 1]])
    b = np.array([[0, 0], [1, 2]])
    # class 0: 2/2, class 1: 1/2, class 2: 0/1, class 3 absent from both: dropped
    assert mask_miou(a, b, num_classes=4) == pytest.approx((1 + 0.5 + 0) / 3)
    assert mask_miou(a, a, num_classes=4) == 1.0
    assert math.isnan(mask_miou(np.full((2, 2), 255), np.zeros((2, 2)), num_classes=4))
