"""The ranking study: halves of a split measured against reference masks, the perfect and random splits,
and each ranking signal's share of the perfect gap (numpy on small made-up masks)."""

from __future__ import annotations

import numpy as np
import pytest

from stpp.core.metrics import confusion_matrix, mean_iou
from stpp.selftrain.ranking_study import SIGNALS, ImageEvidence, image_evidence, ranking_study
from stpp.selftrain.stability import stability_score

NUM_CLASSES = 3


def evidence(name: str, wrong_pixels: int, **signals: float) -> ImageEvidence:
    """A 10x10 image of three classes whose pseudo mask gets ``wrong_pixels`` of class 2 wrong."""
    reference = np.zeros((10, 10), dtype=np.uint8)
    reference[:, 4:7] = 1
    reference[:, 7:] = 2
    pseudo = reference.copy()
    pseudo.ravel()[np.flatnonzero(reference.ravel() == 2)[:wrong_pixels]] = 0
    values = {name: 0.0 for name in SIGNALS} | signals
    return ImageEvidence(name, confusion_matrix(reference, pseudo, NUM_CLASSES), values)


def test_the_perfect_split_is_the_ceiling_and_a_signal_in_its_order_reaches_all_of_it():
    wrong = [0, 3, 6, 12, 20, 30]  # image i has the i-th best pseudo mask
    images = [evidence(f"img{i}", w, stability=1 - i / 10, pixel_agreement=i / 10) for i, w in enumerate(wrong)]
    study = ranking_study(images, ratio=0.5, random_draws=20)
    assert (study.images, study.reliable) == (6, 3)
    best, worst = [images[i].confusion for i in range(3)], [images[i].confusion for i in range(3, 6)]
    assert study.perfect.reliable.pooled_miou == round(100 * mean_iou(sum(best)), 2)
    assert study.perfect.unreliable.pooled_miou == round(100 * mean_iou(sum(worst)), 2)
    assert study.perfect.reliable.mean_image_miou == round(100 * np.mean([images[i].miou for i in range(3)]), 2)
    assert study.perfect.gap > 0
    # stability follows the quality order: it is the perfect split; pixel agreement is its reverse.
    stability, agreement = study.signals["stability"], study.signals["pixel_agreement"]
    assert stability.split.reliable == study.perfect.reliable and stability.share_of_perfect == 1.0
    assert stability.spearman == pytest.approx(1.0)
    assert agreement.share_of_perfect == pytest.approx(-1.0) and agreement.spearman == pytest.approx(-1.0)
    gaps = [split.gap for split in study.random]
    # Every image holds the same classes here, so the pooled gap follows the images' order: perfect bounds it.
    assert len(gaps) == 20 and max(gaps) <= study.perfect.gap and min(gaps) >= -study.perfect.gap
    assert len(set(gaps)) > 1  # the draws differ
    # Per-class IoU shows what the ranking trades: class 2 is where the unreliable half is wrong.
    reliable_iou, unreliable_iou = study.perfect.reliable.iou, study.perfect.unreliable.iou
    assert reliable_iou[2] > unreliable_iou[2] and len(reliable_iou) == NUM_CLASSES


def test_the_rows_hold_every_ranking_and_the_random_mean_and_spread():
    images = [evidence(f"img{i}", w, stability=float(w % 3), pixel_agreement=-w) for i, w in enumerate(range(0, 40, 5))]
    rows = ranking_study(images, ratio=0.25, random_draws=7).rows()
    assert [row["ranking"] for row in rows] == [*SIGNALS, "perfect", "random (7 draws)"]
    assert rows[1]["share_of_perfect"] == 1.0  # fewer wrong pixels is better: -w is the perfect order
    random_row = rows[-1]
    assert len(random_row["gap"]) == 2 and random_row["gap"][1] >= 0
    assert all(set(row) == set(rows[0]) for row in rows)


def test_image_evidence_reads_the_signals_from_the_checkpoint_masks():
    final = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], dtype=np.uint8)
    first = np.array([[0, 1, 1, 1], [2, 2, 2, 0]], dtype=np.uint8)   # 5 of 7 counted pixels agree
    second = final.copy()
    reference = final.copy()
    found = image_evidence("x", reference, final, [first, second, final], NUM_CLASSES, 255)
    assert found.signals["pixel_agreement"] == pytest.approx((5 / 7 + 1.0) / 2)
    assert found.signals["stability"] == stability_score([first, second, final], NUM_CLASSES)[0]
    assert found.miou == 1.0


def test_the_probability_signals_are_studied_only_where_every_image_has_them():
    masks = {"stability", "pixel_agreement"}
    images = [ImageEvidence(e.image_id, e.confusion, {k: v for k, v in e.signals.items() if k in masks})
              for e in (evidence(f"img{i}", w, stability=-w) for i, w in enumerate(range(0, 30, 5)))]
    assert list(ranking_study(images, ratio=0.5).signals) == ["stability", "pixel_agreement"]
    # One image with a confidence is not enough: a signal half the images lack sorts nothing.
    images[0] = ImageEvidence(images[0].image_id, images[0].confusion, {**images[0].signals, "confidence": 0.9})
    assert "confidence" not in ranking_study(images, ratio=0.5).signals
    reference = np.zeros((4, 4), dtype=np.uint8)
    found = image_evidence("x", reference, reference, [reference, reference], NUM_CLASSES, 255,
                           {"confidence": 0.7, "tta_agreement": 0.9})
    assert found.signals["confidence"] == 0.7 and found.signals["tta_agreement"] == 0.9
    complete = [evidence(f"img{i}", w, confidence=1 - w / 100, tta_agreement=w / 100)
                for i, w in enumerate(range(0, 30, 5))]
    study = ranking_study(complete, ratio=0.5)
    assert list(study.signals) == list(SIGNALS)
    assert study.signals["confidence"].share_of_perfect == 1.0
    assert study.signals["tta_agreement"].share_of_perfect == pytest.approx(-1.0)


def test_a_study_needs_two_images_and_a_ratio_within_0_and_1():
    with pytest.raises(ValueError, match="at least two images"):
        ranking_study([evidence("a", 0)], ratio=0.5)
    with pytest.raises(ValueError, match="within"):
        ranking_study([evidence("a", 0), evidence("b", 1)], ratio=1.5)
