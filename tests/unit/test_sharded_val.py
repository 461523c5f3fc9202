"""Validation split across ranks: every image once, in its one-process batch, uneven shards."""
from __future__ import annotations

import numpy as np
import pytest

from data.loader import ShardedBatchSampler
from engine.eval.evaluator import Shard, merge_shards


@pytest.mark.parametrize("n,batch,world", [(7, 3, 2), (23, 4, 2), (5, 4, 3), (1, 2, 2), (64, 8, 4), (10, 1, 3)])
def test_every_image_once_each_part_inside_its_one_process_batch(n, batch, world):
    parts = [list(ShardedBatchSampler(n, batch, rank, world)) for rank in range(world)]
    seen = [k for rank in parts for b in rank for k in b]
    assert sorted(seen) == list(range(n))  # none twice, none missing
    for rank, batches in enumerate(parts):
        assert len(batches) == len(ShardedBatchSampler(n, batch, rank, world))
        for b in batches:
            assert 0 < len(b) <= batch and b == list(range(b[0], b[0] + len(b)))  # contiguous
            assert b[0] // (batch * world) == b[-1] // (batch * world)  # one one-process batch


def test_a_rank_with_nothing_left_skips_the_last_batch():
    # 7 images, 2 ranks x 3: the last one-process batch is image 6 alone, rank 0's
    assert list(ShardedBatchSampler(7, 3, 0, 2)) == [[0, 1, 2], [6]]
    assert list(ShardedBatchSampler(7, 3, 1, 2)) == [[3, 4, 5]]


def test_merged_shards_sum_times_and_confusion_and_refuse_an_image_twice():
    a = Shard([{"image_id": 1}], [1], np.array([2.0, 4.0, 6.0]), np.eye(2, dtype=np.int64))
    b = Shard([{"image_id": 2}, {"image_id": 2}], [2, 3], np.array([4.0, 2.0, 0.0]), np.ones((2, 2), np.int64))
    results, ids, ms, matrix = merge_shards([a, b])
    assert ids == [1, 2, 3] and len(results) == 3
    assert ms.tolist() == [2.0, 2.0, 2.0]  # total ms over all ranks per image
    assert matrix.tolist() == [[2, 1], [1, 2]]
    with pytest.raises(RuntimeError, match="1 images predicted more than once"):
        merge_shards([a, Shard([], [1], np.zeros(3), None)])
