"""The task-balanced batch sampler."""

from collections import Counter

import pytest

from streamformer_pretrain.sampling import TaskBalancedBatchSampler, small_task_repeats


def batches(sampler):
    return [[(task, index) for task, index, _ in batch] for batch in sampler]


def test_each_batch_is_one_task_and_every_sample_appears_once():
    sampler = TaskBalancedBatchSampler({"ar": 40, "vis": 20, "rvos": 9}, batch_size=4, seed=1)
    out = batches(sampler)
    assert len(out) == len(sampler) == 10 + 5 + 2
    for batch in out:
        assert len({task for task, _ in batch}) == 1 and len(batch) == 4
    seen = Counter(pair for batch in out for pair in batch)
    assert max(seen.values()) == 1
    assert sum(task == "ar" for task, _ in seen) == 40 and sum(task == "rvos" for task, _ in seen) == 8


def test_tasks_interleave_in_proportion():
    sampler = TaskBalancedBatchSampler({"a": 40, "b": 20, "c": 10}, batch_size=5, seed=0)
    order = [batch[0][0] for batch in batches(sampler)]
    assert order[:7] == ["a", "a", "a", "a", "b", "b", "c"]  # scale 4 : 2 : 1 per round
    assert Counter(order) == {"a": 8, "b": 4, "c": 2}


def test_uneven_tasks_never_index_past_their_end():
    sampler = TaskBalancedBatchSampler({"a": 30, "b": 8}, batch_size=4, seed=0)  # 7 vs 2 batches, scale 3
    out = batches(sampler)
    assert Counter(b[0][0] for b in out) == {"a": 7, "b": 2}
    assert all(0 <= i < (30 if t == "a" else 8) for batch in out for t, i in batch)


def test_ranks_split_each_global_batch():
    sizes = {"a": 16, "b": 8}
    ranks = [batches(TaskBalancedBatchSampler(sizes, batch_size=2, seed=3, rank=r, world_size=2)) for r in range(2)]
    single = batches(TaskBalancedBatchSampler(sizes, batch_size=4, seed=3))
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for b0, b1, whole in zip(*ranks, single, strict=True):
        assert b0 + b1 == whole  # same task at the same step on every rank


def test_epochs_reshuffle_deterministically_and_resume_skips():
    sampler = TaskBalancedBatchSampler({"a": 12}, batch_size=3, seed=0)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same order and seeds
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.start_batch = 2
    assert list(sampler) == second[2:]
    assert list(sampler) == second  # the skip applies once


def test_small_tasks_recur_as_the_originals_balance_sample_num():
    sizes = {"a": 40, "b": 12, "c": 24}
    repeats = small_task_repeats(sizes)
    assert repeats == {"a": 1, "b": 3, "c": 1}  # 12 < 40 / 2 recurs 40 // 12 times; 24 does not
    sampler = TaskBalancedBatchSampler(sizes, batch_size=4, seed=0, repeats=repeats)
    out = batches(sampler)
    assert len(out) == len(sampler) == 10 + 9 + 6
    seen = Counter(pair for batch in out for pair in batch)
    assert {i for t, i in seen if t == "b"} == set(range(12)) and {n for (t, _), n in seen.items() if t == "b"} == {3}
    assert max(n for (t, _), n in seen.items() if t != "b") == 1
    # Each recurrence of a sample gets its own seed (its own augmentation).
    seeds = [seed for batch in sampler for task, index, seed in batch if (task, index) == ("b", 0)]
    assert len(set(seeds)) == 3
    # Without repeats the order is the sampler's usual one.
    assert batches(TaskBalancedBatchSampler(sizes, 4, 0, repeats={})) == batches(TaskBalancedBatchSampler(sizes, 4, 0))


def test_too_small_task_is_an_error():
    with pytest.raises(ValueError, match="fewer samples than one global batch"):
        TaskBalancedBatchSampler({"a": 3}, batch_size=4)
