"""Seed statistics: the one place where means and confidence intervals are computed.

Every number in the report that aggregates seeds goes through `mean_ci`: the sample mean and the
half-width of a two-sided 95% confidence interval from Student's t distribution with n - 1 degrees of
freedom, i.e. t_{0.975, n-1} * s / sqrt(n) with s the sample standard deviation (ddof = 1).
scipy is not a dependency, so the t quantile comes from a table (df 1..30, exact to 1e-6) and, above
that, the Cornish-Fisher expansion around the normal quantile (error < 1e-6 for df > 30).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

CI_LABEL = "95% CI, Student t"

# t_{0.975, df} for df = 1..30 (two-sided 95%).
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """Quantile 0.975 of Student's t with `df` degrees of freedom (the 95% two-sided critical value)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def mean_ci(values: Iterable[float]) -> tuple[float, float | None]:
    """Mean and 95% CI half-width (Student t) of `values`; NaN/None are dropped.

    Returns (nan, None) for no values and (value, None) for a single one: one seed has no interval.
    """
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, None
    mean = sum(xs) / n
    if n == 1:
        return mean, None
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, t975(n - 1) * sd / math.sqrt(n)
