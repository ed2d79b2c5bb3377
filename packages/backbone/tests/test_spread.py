import pytest

from streamformer.spread import exceeds_spread, format_spread, mean_std


def test_mean_and_sample_std_by_hand():
    mean, std = mean_std([0.4, 0.5, 0.6])
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(0.1)  # sqrt(((-0.1)^2 + 0 + 0.1^2) / (3 - 1))
    assert mean_std([0.7]) == (0.7, 0.0)
    assert format_spread([0.4, 0.5, 0.6]) == "0.500 ± 0.100"
    with pytest.raises(ValueError):
        mean_std([])


def test_a_difference_is_claimed_only_beyond_the_spread():
    assert exceeds_spread([0.4, 0.5, 0.6], [0.75, 0.8, 0.85])  # 0.3 apart, spreads 0.1 + 0.05
    assert not exceeds_spread([0.4, 0.5, 0.6], [0.55, 0.6, 0.65])  # 0.1 apart, spreads 0.1 + 0.05
