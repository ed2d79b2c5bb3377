import pytest
import torch

from streamformer_pretrain.evaluate import _interval_iou, best_fixed_interval, predicted_moment


@pytest.mark.parametrize(
    ("scores", "moment"),
    [
        ([-3.0, -2.5, -1.0, -0.8, -0.9, -2.9, -3.1, -3.0], (2, 4)),  # no positive logit: still a moment
        ([0.5, 0.4, 3.0, 2.8, 0.2, 3.1, 0.1, 0.0], (2, 3)),  # runs 2-3 (excess 3.28) and 5 (1.84); 3 saw the end
        ([0.0, 1.0, 1.0, 0.0, 0.0, 4.0, 4.0, 4.0], (5, 7)),  # the larger run wins, also at the clip's end
        ([0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0], (3, 4)),  # a lone raised frame is the moment
        ([1.0] * 8, (0, 8)),  # no frame stands out: the whole clip
    ],
)
def test_predicted_moment_is_the_run_most_above_the_clip_mean_less_its_last_frame(scores, moment):
    assert predicted_moment(torch.tensor(scores)) == moment


def test_interval_iou_by_hand():
    assert _interval_iou((2, 5), (3, 7)) == pytest.approx(2 / 5)
    assert _interval_iou((0, 2), (4, 6)) == 0.0


def test_best_fixed_interval_by_hand():
    # (0, 2) scores 1, 1, 1/3 on these moments; the runner-up (0, 3) scores 2/3 on each.
    span, score = best_fixed_interval([(0, 2), (0, 2), (1, 3)], clip_length=4)
    assert span == (0, 2)
    assert score == pytest.approx(7 / 9)
