"""The statistics module against scipy's own implementations: exact McNemar, BH q-values, t intervals, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from nemesis_analysis.stats import bh_q_values, mcnemar_p, paired_difference, t_interval


def test_mcnemar_p_equals_binomtest_on_random_count_tables_with_zeros():
    rng = np.random.default_rng(0)
    gained = np.concatenate([rng.integers(0, 40, 300), [0, 0, 5, 0, 1, 7, 200]])
    lost = np.concatenate([rng.integers(0, 40, 300), [0, 3, 0, 1, 0, 7, 180]])
    got = mcnemar_p(gained, lost)
    for g, n_lost, p in zip(gained, lost, got):
        expected = 1.0 if g + n_lost == 0 else scipy_stats.binomtest(int(g), int(g + n_lost), 0.5).pvalue
        assert p == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert got[300] == 1.0 and got[305] == 1.0  # no discordant image; a tie
    assert mcnemar_p(0, 6) == pytest.approx(2 * 0.5**6)  # six losses and no gain: 1/32


def test_mcnemar_p_keeps_nan_and_refuses_negative_counts():
    assert np.isnan(mcnemar_p([np.nan], [2.0])[0])
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_p([-1], [2])


def test_bh_q_values_equal_scipy_false_discovery_control():
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.uniform(size=50), rng.uniform(0, 1e-3, 10), [1.0, 1.0]])
    np.testing.assert_allclose(bh_q_values(p), scipy_stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    with_nan = np.concatenate([p, [np.nan]])
    q = bh_q_values(with_nan)
    assert np.isnan(q[-1])
    np.testing.assert_allclose(q[:-1], scipy_stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    assert (bh_q_values(p) >= p - 1e-15).all()  # adjusting never lowers a p-value


@pytest.mark.parametrize("values", [[71.0, 72.5, 70.25], [1.0, 2.0], [5.0, 5.5, 4.0, 6.0, 5.25, 4.75]])
def test_t_interval_equals_scipy_t(values):
    x = np.asarray(values)
    low, high = scipy_stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    assert t_interval(values) == pytest.approx((low, high), rel=1e-12)
    assert t_interval([*values, math.nan]) == pytest.approx((low, high), rel=1e-12)  # NaN ignored


def test_t_interval_is_nan_below_two_values():
    assert all(math.isnan(v) for v in t_interval([3.0]))
    assert all(math.isnan(v) for v in t_interval([]))


def test_paired_difference_equals_ttest_rel():
    treated, baseline = [71.0, 73.0, 72.5, 70.0], [70.0, 72.5, 71.0, 70.5]
    result = paired_difference(treated, baseline)
    diff = np.subtract(treated, baseline)
    assert result.n_pairs == 4 and result.mean_diff == pytest.approx(diff.mean())
    assert result.p_value == pytest.approx(scipy_stats.ttest_rel(treated, baseline).pvalue, rel=1e-12)
    low, high = scipy_stats.t.interval(0.95, 3, loc=diff.mean(), scale=scipy_stats.sem(diff))
    assert (result.ci95_low, result.ci95_high) == pytest.approx((low, high), rel=1e-12)
    one = paired_difference([1.0, math.nan], [0.5, 2.0])  # one complete pair
    assert one.n_pairs == 1 and one.mean_diff == 0.5 and math.isnan(one.p_value) and math.isnan(one.ci95_low)


def test_paired_difference_without_spread_has_no_p_value():
    result = paired_difference([67.5, 71.5, 70.0], [62.5, 66.5, 65.0])  # +5 on every pair
    assert result.mean_diff == pytest.approx(5.0) and math.isnan(result.p_value)
