import numpy as np
import pytest

from stpp.selftrain.stability import rank_images, stability_score


def _masks(*arrays):
    return [np.array(a, dtype=np.uint8) for a in arrays]


def test_stability_is_mean_agreement_with_the_last_checkpoint():
    final = [[0, 0], [1, 1]]
    same = [[0, 0], [1, 1]]
    half = [[0, 1], [1, 1]]  # class 0: 1/2, class 1: 2/3
    score, per_ckpt = stability_score(_masks(half, same, final), num_classes=3)
    assert per_ckpt == pytest.approx((np.mean([1 / 2, 2 / 3]), 1.0))
    assert score == pytest.approx((np.mean([1 / 2, 2 / 3]) + 1.0) / 2)


def test_class_absent_from_both_masks_does_not_count():
    # class 2 is in neither mask: a 3-class nanmean would otherwise halve/shift the score
    score, _ = stability_score(_masks([[0, 1]], [[0, 1]]), num_classes=3)
    assert score == 1.0


def test_ranking_sorts_descending_breaks_ties_by_id_and_marks_floor_n_r():
    masks = {
        "b": _masks([[0, 0]], [[0, 0]], [[0, 0]]),  # 1.0
        "a": _masks([[0, 0]], [[0, 0]], [[0, 0]]),  # 1.0, tie with b: a first
        "c": _masks([[1, 1]], [[0, 0]], [[0, 0]]),  # 0.5
        "d": _masks([[1, 1]], [[1, 1]], [[0, 0]]),  # 0.0
        "e": _masks([[0, 1]], [[0, 0]], [[0, 0]]),  # (0.25 + 1) / 2
    }
    scores = rank_images(list(masks), masks.__getitem__, num_classes=2, reliable_ratio=0.5)
    assert [s.image_id for s in scores] == ["a", "b", "e", "c", "d"]
    assert [s.rank for s in scores] == [1, 2, 3, 4, 5]
    assert [s.reliable for s in scores] == [True, True, False, False, False]  # floor(5 * 0.5) = 2
    assert scores[2].stability == pytest.approx(0.625)


def test_random_split_is_seeded_and_keeps_the_reliable_count():
    masks = {f"img{i}": _masks([[i % 2]], [[0]], [[0]]) for i in range(10)}
    first = rank_images(list(masks), masks.__getitem__, num_classes=2, reliable_ratio=0.3, split="random", seed=1)
    again = rank_images(list(masks), masks.__getitem__, num_classes=2, reliable_ratio=0.3, split="random", seed=1)
    assert [s.image_id for s in first] == [s.image_id for s in again]
    assert sum(s.reliable for s in first) == 3
    with pytest.raises(ValueError):
        rank_images(list(masks), masks.__getitem__, num_classes=2, reliable_ratio=1.5)
