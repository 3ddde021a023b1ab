"""The stage-long batch sampler of the training loop: epochs, shards, resume order."""

from __future__ import annotations

import pytest

from stpp.engine.train import EpochBatches


@pytest.mark.parametrize("length, batch, world, per_epoch", [
    (46, 16, 1, 2),   # the partial last batch is dropped
    (16, 16, 1, 1),
    (3, 4, 1, 1),     # a set smaller than a batch still trains, in one short batch
    (10, 4, 3, 1),    # 10 over 3 ranks: padded to 12, 4 each
    (7, 2, 2, 2),
])
def test_batches_per_epoch_and_disjoint_shards(length, batch, world, per_epoch):
    samplers = [EpochBatches(length, batch, range(3), seed=5, rank=r, world=world) for r in range(world)]
    for sampler in samplers:
        batches = list(sampler)
        assert sampler.batches_per_epoch == per_epoch and len(batches) == len(sampler) == 3 * per_epoch
        assert all(len(b) == min(batch, -(-length // world)) for b in batches)
    for epoch in range(3):
        shards = [s.epoch_indices(epoch) for s in samplers]
        seen = [i for shard in shards for i in shard]
        assert set(seen) == set(range(length))  # every item, the padding only repeats some
        assert len(seen) - len(set(seen)) == -(-length // world) * world - length


def test_each_epoch_is_a_new_order_and_a_resume_replays_the_same_batches():
    full = list(EpochBatches(40, 8, range(4), seed=3))
    assert full[:5] != full[5:10]
    assert list(EpochBatches(40, 8, range(2, 4), seed=3)) == full[10:]
    assert list(EpochBatches(40, 8, range(4), seed=4)) != full


def test_empty_set_is_refused():
    with pytest.raises(ValueError, match="empty"):
        EpochBatches(0, 4, range(1), seed=0)
