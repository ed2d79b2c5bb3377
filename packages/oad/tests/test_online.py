"""Online inference: the step-by-step runner equals the per-frame batch scoring, is causal and
holds a bounded number of frames."""

import pytest
import torch

from streamformer_oad.model import MAT, MATConfig
from streamformer_oad.online import OnlineDetector, score_video

RATE = 2
# Long memory of 8 samples at rate 2 (16 frames) in 2 groups, work window of 4.
TINY = dict(
    visual_size=6,
    d_model=16,
    num_heads=2,
    dim_feedforward=16,
    long_memory_num_samples=8,
    work_memory_length=4,
    anticipation_length=2,
    future_length=4,
    groups=2,
    enc_queries=4,
    gen_queries=3,
    num_classes=5,
)


def tiny_model(motion_size: int | None = None) -> MAT:
    torch.manual_seed(0)
    # float64: top-k selection compares logits, so float32 rounding between batch sizes could pick
    # a different key on a near-tie; float64 keeps the comparison about the algorithm.
    return MAT(MATConfig(**TINY, motion_size=motion_size)).double().eval()


def video(num_frames: int, size: int) -> torch.Tensor:
    return torch.randn(num_frames, size, dtype=torch.float64)


@pytest.mark.parametrize("motion_size", [None, 5])
def test_step_by_step_equals_batch_scoring(motion_size):
    model = tiny_model(motion_size)
    visual = video(40, 6)
    motion = video(40, motion_size) if motion_size else None
    # Batches of 7 frames mix grouped (late) and un-grouped (early, padded) samples.
    batch_scores = score_video(model, visual, motion, long_memory_rate=RATE, batch_size=7)
    detector = OnlineDetector(model, long_memory_rate=RATE)
    online_scores = torch.stack([detector.step(visual[t], None if motion is None else motion[t]) for t in range(40)])
    assert online_scores.shape == (40, 5)
    torch.testing.assert_close(online_scores, batch_scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(online_scores.sum(dim=-1), torch.ones(40, dtype=torch.float64))


def test_batch_size_does_not_change_the_scores():
    model = tiny_model()
    visual = video(30, 6)
    torch.testing.assert_close(
        score_video(model, visual, long_memory_rate=RATE, batch_size=1),
        score_video(model, visual, long_memory_rate=RATE, batch_size=30),
        rtol=0,
        atol=1e-10,
    )


def test_scores_do_not_see_later_frames():
    model = tiny_model()
    visual = video(40, 6)
    altered = visual.clone()
    altered[21:] = torch.randn(19, 6, dtype=torch.float64)
    before, after = (score_video(model, v, long_memory_rate=RATE, batch_size=8) for v in (visual, altered))
    torch.testing.assert_close(before[:21], after[:21], rtol=0, atol=1e-12)
    assert not torch.allclose(before[21:], after[21:])


def test_buffer_is_bounded_and_reset_starts_a_new_video():
    model = tiny_model()
    detector = OnlineDetector(model, long_memory_rate=RATE)
    assert detector.capacity == 8 * RATE + 4
    visual = video(200, 6)
    for t in range(200):
        scores = detector.step(visual[t])
    assert detector.frames_seen == 200 and detector.num_buffered == detector.capacity
    assert detector.visual_buffer.shape == (detector.capacity, 6)
    # Frame 199, 10 passes around the ring buffer later, still equals the whole-video scoring.
    torch.testing.assert_close(scores, score_video(model, visual, long_memory_rate=RATE)[-1], rtol=0, atol=1e-5)

    detector.reset()
    assert detector.num_buffered == 0
    torch.testing.assert_close(detector.step(visual[5]), score_video(model, visual[5:6], long_memory_rate=RATE)[0])


def test_step_rejects_a_missing_motion_feature():
    detector = OnlineDetector(tiny_model(motion_size=5), long_memory_rate=RATE)
    with pytest.raises(ValueError, match="needs motion"):
        detector.step(torch.zeros(6))
