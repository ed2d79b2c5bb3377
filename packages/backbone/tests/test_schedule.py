import pytest

from streamformer.schedule import warmup_cosine_factor


def test_warmup_then_half_cosine_to_the_floor_by_hand():
    factor = [warmup_cosine_factor(step, warmup=4, total=12, floor=0.2) for step in (0, 3, 4, 8, 12, 20)]
    assert factor == pytest.approx([0.25, 1.0, 1.0, 0.2 + 0.8 * 0.5, 0.2, 0.2])
    assert warmup_cosine_factor(0, warmup=0, total=10) == 1.0  # no warm-up: the cosine from step 0
