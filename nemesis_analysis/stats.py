"""The statistics behind the Low-Norm Effect numbers: paired counts' exact test, false-discovery control,
Student-t intervals over seeds and paired comparisons (pure numpy/scipy, no torch, no pandas).

* :func:`mcnemar_p` -- the exact two-sided McNemar test of one corruption row: among the test images on
  which the corrupted and the uncorrupted prompt disagree in correctness, are gains and losses equally
  likely? A binomial test of ``n_gained`` among ``n_gained + n_lost`` at 1/2 (1 when both are 0).
* :func:`bh_q_values` -- Benjamini-Hochberg adjusted p-values (q-values) of one family of tests.
* :func:`t_interval` -- the 95% Student-t interval of a mean over seeds (NaN below two values).
* :func:`paired_difference` -- mean difference of paired values, its t interval and the paired t-test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


def mcnemar_p(n_gained, n_lost) -> np.ndarray:
    """Exact two-sided McNemar p-values, elementwise over arrays of counts (float64; NaN where a count is NaN).

    Under the null a discordant image is a gain or a loss with probability 1/2, so ``n_gained`` is
    Binomial(n, 1/2) with n = n_gained + n_lost; the distribution is symmetric, so the two-sided p-value is
    ``min(1, 2 * P(X <= min(n_gained, n_lost)))`` (what ``scipy.stats.binomtest(..., p=0.5)`` returns).
    """
    gained = np.asarray(n_gained, dtype=np.float64)
    lost = np.asarray(n_lost, dtype=np.float64)
    if np.any(gained < 0) or np.any(lost < 0):
        raise ValueError("paired counts must be non-negative")
    total = gained + lost
    smaller = np.minimum(gained, lost)
    with np.errstate(invalid="ignore"):
        p = np.minimum(1.0, 2.0 * scipy_stats.binom.cdf(smaller, total, 0.5))
    p = np.where(total == 0, 1.0, p)
    return np.where(np.isnan(total), np.nan, p)


def bh_q_values(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values of one family of p-values; NaN p-values stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    finite = ~np.isnan(p)
    if finite.any():
        q[finite] = scipy_stats.false_discovery_control(p[finite], method="bh")
    return q


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) of the Student-t interval of the mean of the non-NaN ``values``; NaN below two values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = len(x)
    if n < 2:
        return (math.nan, math.nan)
    return t_interval_from(float(x.mean()), float(x.std(ddof=1)), n, confidence)


def t_interval_from(mean: float, std: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) of the Student-t interval from a sample's mean, std (ddof=1) and size; NaN below two values."""
    if n < 2 or math.isnan(std) or math.isnan(mean):
        return (math.nan, math.nan)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return (mean - half, mean + half)


@dataclass(frozen=True)
class PairedDifference:
    """The difference ``treated - baseline`` over matched pairs."""

    n_pairs: int
    mean_diff: float
    ci95_low: float  # Student-t interval of the mean difference (NaN below two pairs)
    ci95_high: float
    p_value: float  # paired t-test (scipy.stats.ttest_rel), two-sided; NaN below two pairs


def paired_difference(treated: Sequence[float], baseline: Sequence[float]) -> PairedDifference:
    """Mean of ``treated - baseline`` over the pairs where both are measured, its t interval and the paired
    t-test p-value (NaN below two pairs, and when every difference is the same)."""
    a = np.asarray(treated, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same length, got {len(a)} and {len(b)}")
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    diff = a - b
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    low, high = t_interval(diff)
    p = math.nan
    if n >= 2 and not np.allclose(diff, diff[0], rtol=1e-12, atol=0.0):  # identical differences: no test
        p = float(scipy_stats.ttest_rel(a, b).pvalue)
    return PairedDifference(n_pairs=n, mean_diff=mean, ci95_low=low, ci95_high=high, p_value=p)
