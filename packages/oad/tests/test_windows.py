"""Window and sampler indices against the original MAT's rules: window starts, long-memory samplers, future targets."""

import numpy as np
import pytest

from streamformer_oad.windows import (
    WindowLengths,
    future_indices,
    online_indices,
    stretched_memory_indices,
    uniform_memory_indices,
    window_starts,
)


def test_thumos_lengths():
    lengths = WindowLengths()
    assert (lengths.work, lengths.anticipation, lengths.future, lengths.memory_samples, lengths.memory_length) == (
        32,
        8,
        48,
        256,
        1024,
    )


@pytest.mark.parametrize("num_frames", [39, 40, 41, 100, 121, 1000])
@pytest.mark.parametrize("seed", [0, 5, 31])
def test_window_starts_thumos(num_frames, seed):
    starts = window_starts(num_frames, 32, 8, seed)
    assert starts == [s for s in range(seed, num_frames, 40) if s + 32 < num_frames - 8]
    covered = np.concatenate([np.arange(s, s + 40) for s in starts]) if starts else np.array([], dtype=int)
    assert len(covered) == len(set(covered.tolist()))  # every frame in at most one window
    assert all(s + 40 <= num_frames for s in starts)  # the 40 target rows exist


def test_window_starts_synthetic():
    # 24 rows, work 8, anticipation 2: 0 + 8 < 22 and 10 + 8 < 22, 20 + 8 is not
    assert window_starts(24, 8, 2, 0) == [0, 10]
    assert window_starts(24, 8, 2, 4) == [4]
    assert window_starts(41, 32, 8, 0) == [0]
    assert window_starts(40, 32, 8, 0) == []  # strict: work_end 32 < 40 - 8 fails


def test_uniform_sampler_work_start_100():
    indices, mask = uniform_memory_indices(100, 256, 1024, 4)
    assert indices.tolist() == [0] * 231 + list(range(0, 100, 4))
    assert mask.tolist() == [True] * 231 + [False] * 25


def test_uniform_sampler_far_from_start_has_no_padding():
    indices, mask = uniform_memory_indices(2000, 256, 1024, 4)
    assert indices.tolist() == list(range(976, 2000, 4))
    assert not mask.any()


@pytest.mark.parametrize("sampler", ["stretched", "uniform"])
def test_samplers_at_work_start_0(sampler):
    if sampler == "stretched":
        indices, mask = stretched_memory_indices(0, 256, 1024)
    else:
        indices, mask = uniform_memory_indices(0, 256, 1024, 4)
    assert indices.tolist() == [0] * 256
    assert mask.tolist() == [True] * 255 + [False]  # one index-0 sample stays visible


def test_stretched_sampler():
    indices, mask = stretched_memory_indices(100, 256, 1024)
    expected = np.linspace(0, 99, 256).astype(int)
    assert indices.tolist() == expected.tolist()
    num_zeros = int((expected == 0).sum())
    assert mask.tolist() == [True] * (num_zeros - 1) + [False] * (256 - num_zeros + 1)
    indices, mask = stretched_memory_indices(2000, 256, 1024)
    assert indices[0] == 976 and indices[-1] == 1999 and not mask.any()


def test_uniform_sampler_rejects_too_long_history():
    with pytest.raises(ValueError, match="num_samples"):
        uniform_memory_indices(100, 16, 64, 2)


def test_future_indices():
    assert future_indices(32, 1000, 48).tolist() == list(range(33, 81))
    assert future_indices(32, 40, 48).tolist() == list(range(33, 40)) + [39] * 41
    assert future_indices(39, 40, 4).tolist() == [39] * 4  # start clamped to the last frame


@pytest.mark.parametrize("t", [0, 1, 6, 7, 8, 30, 100])
def test_online_indices_use_the_past_only(t):
    memory, mask, work = online_indices(t, work_length=8, num_samples=16, length=16, rate=1)
    assert work.tolist() == [max(i, 0) for i in range(t - 7, t + 1)]  # ends at t, left-padded with frame 0
    assert memory.max() <= t and work.max() == t
    assert memory.shape == mask.shape == (16,)
    assert (memory[~mask] < max(t - 7, 1)).all()  # visible memory precedes the work window (or is frame 0)


def test_online_indices_before_a_full_window():
    memory, mask, _ = online_indices(3, work_length=8, num_samples=16, length=16, rate=1)
    assert memory.tolist() == [0] * 16 and mask.sum() == 15
    memory, mask, work = online_indices(100, 32, 256, 1024, 4)
    expected_memory, expected_mask = uniform_memory_indices(69, 256, 1024, 4)
    assert work.tolist() == list(range(69, 101))
    assert memory.tolist() == expected_memory.tolist() and mask.tolist() == expected_mask.tolist()
