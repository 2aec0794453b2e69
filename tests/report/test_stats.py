import math

import pytest

from pulse.report.stats import mean_ci, t975


def test_mean_ci_hand_values():
    mean, half = mean_ci([1, 2, 3])
    assert mean == 2
    # s = 1, se = 1/sqrt(3), t_{0.975,2} = 4.302653 -> 2.484138
    assert half == pytest.approx(2.484138, abs=1e-5)


def test_mean_ci_two_values_uses_t1():
    mean, half = mean_ci([10.0, 12.0])
    assert mean == 11.0
    assert half == pytest.approx(12.706205 * 1.0, abs=1e-5)


def test_mean_ci_one_value_has_no_interval_and_nan_is_dropped():
    assert mean_ci([5.0]) == (5.0, None)
    assert mean_ci([5.0, float("nan"), None]) == (5.0, None)
    mean, half = mean_ci([])
    assert math.isnan(mean) and half is None


def _t_cdf(t: float, df: int, steps: int = 4000) -> float:
    def pdf(x):
        c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
        return c * (1 + x * x / df) ** (-(df + 1) / 2)

    h = t / steps
    s = pdf(0) + pdf(t) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 + s * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 30, 31, 45, 120, 1000])
def test_t975_is_the_0975_quantile(df):
    assert _t_cdf(t975(df), df) == pytest.approx(0.975, abs=2e-6)


def test_t975_rejects_zero_df():
    with pytest.raises(ValueError):
        t975(0)
