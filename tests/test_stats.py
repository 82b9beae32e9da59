"""Tests of audit_tasks.stats: each interval against statsmodels over a grid of counts, by formula, and its edges."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audit_tasks.errors import ConfigError
from audit_tasks.stats import (
    MSG_BAD_COMPARISONS,
    MSG_BAD_CONFIDENCE,
    MSG_BAD_RESAMPLES,
    bonferroni_confidence,
    bootstrap_std_error,
    holm_adjust,
    multinomial_bootstrap,
    newcombe_exceedance_pvalue,
    newcombe_interval,
    normal_exceedance_pvalue,
    normal_interval,
    percentile_interval,
    wilson_exceedance_pvalue,
    wilson_interval,
    z_quantile,
)

statsmodels_proportion = pytest.importorskip("statsmodels.stats.proportion")

CONFIDENCES = (0.8, 0.9, 0.95, 0.99, 0.999)


def count_grid() -> tuple[np.ndarray, np.ndarray]:
    """(successes, trials) for small and large n, every k for small n and 0, 1, n-1, n and some between."""
    ks, ns = [], []
    for n in (1, 2, 3, 5, 10, 30, 37, 100, 1000, 100_000):
        k = range(n + 1) if n <= 37 else sorted({0, 1, 2, n // 3, n // 2, n - 2, n - 1, n})
        ks += list(k)
        ns += [n] * len(k)
    return np.array(ks), np.array(ns)


# --------------------------------------------------------------------------------------------- z


def test_z_quantile_is_the_two_sided_normal_quantile() -> None:
    from scipy.stats import norm

    for confidence in CONFIDENCES:
        assert z_quantile(confidence) == pytest.approx(norm.ppf(0.5 + confidence / 2), abs=1e-14)
    assert z_quantile(0.95) == pytest.approx(1.959963984540054, abs=1e-15)


# --------------------------------------------------------------------------------------------- Wilson


@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_wilson_interval_matches_statsmodels_over_a_grid_of_counts(confidence: float) -> None:
    k, n = count_grid()
    expected_low, expected_high = statsmodels_proportion.proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    low, high = wilson_interval(k, n, confidence)
    np.testing.assert_allclose(low, expected_low, rtol=0, atol=1e-12)
    np.testing.assert_allclose(high, expected_high, rtol=0, atol=1e-12)


def test_wilson_interval_of_8_of_10_by_formula() -> None:
    """Wilson (1927): (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), p = 0.8, n = 10, z = 1.95996."""
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    low, high = wilson_interval(8, 10, 0.95)
    assert (float(low), float(high)) == (
        pytest.approx(centre - half, abs=1e-15),
        pytest.approx(centre + half, abs=1e-15),
    )
    assert (float(low), float(high)) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))


def test_wilson_interval_at_0_and_n_reaches_the_bound_and_stays_wide() -> None:
    low, high = wilson_interval([0, 20], [20, 20], 0.95)
    assert (low[0], high[1]) == (pytest.approx(0.0, abs=1e-15), pytest.approx(1.0, abs=1e-15))
    assert 0.1 < high[0] < 0.2 and 0.8 < low[1] < 0.9  # Wald would give the empty intervals [0, 0] and [1, 1]


def test_wilson_interval_is_nan_without_trials() -> None:
    low, high = wilson_interval(np.array([0, 3]), np.array([0, 4]))
    assert np.isnan(low[0]) and np.isnan(high[0])
    assert not np.isnan(low[1]) and not np.isnan(high[1])


def test_wilson_interval_broadcasts_a_scalar_against_an_array() -> None:
    low, high = wilson_interval(3, np.array([4, 10, 100]))
    assert low.shape == high.shape == (3,)
    assert float(low[0]) == float(wilson_interval(3, 4)[0])


@pytest.mark.parametrize(("successes", "trials"), [(5, 4), (-1, 4), (0, -1)], ids=["over", "negative-k", "negative-n"])
def test_wilson_interval_refuses_impossible_counts(successes: int, trials: int) -> None:
    with pytest.raises(ValueError, match="successes must lie between 0 and trials"):
        wilson_interval(successes, trials)


# --------------------------------------------------------------------------------------------- Newcombe


@pytest.mark.parametrize("confidence", (0.9, 0.95, 0.99))
def test_newcombe_interval_matches_statsmodels_over_a_grid_of_counts(confidence: float) -> None:
    k, n = count_grid()
    small = n <= 10  # every pair of small counts (0 and n included), plus large against small
    k1, k2 = np.meshgrid(k[small], k[small])
    n1, n2 = np.meshgrid(n[small], n[small])
    k1, n1 = np.concatenate([k1.ravel(), k]), np.concatenate([n1.ravel(), n])
    k2, n2 = np.concatenate([k2.ravel(), k[::-1]]), np.concatenate([n2.ravel(), n[::-1]])
    expected_low, expected_high = statsmodels_proportion.confint_proportions_2indep(
        k1, n1, k2, n2, method="newcomb", compare="diff", alpha=1 - confidence
    )
    low, high = newcombe_interval(k1, n1, k2, n2, confidence)
    np.testing.assert_allclose(low, expected_low, rtol=0, atol=1e-12)
    np.testing.assert_allclose(high, expected_high, rtol=0, atol=1e-12)


def test_newcombe_interval_matches_published_example() -> None:
    """Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 - 48/80, method 10."""
    low, high = newcombe_interval(56, 70, 48, 80, 0.95)
    assert (float(low), float(high)) == (pytest.approx(0.0524, abs=1e-4), pytest.approx(0.3339, abs=1e-4))


def test_newcombe_interval_of_8_of_10_minus_5_of_10_by_formula() -> None:
    l1, u1 = (float(x) for x in wilson_interval(8, 10))
    l2, u2 = (float(x) for x in wilson_interval(5, 10))
    low, high = newcombe_interval(8, 10, 5, 10)
    assert float(low) == pytest.approx(0.3 - math.sqrt((0.8 - l1) ** 2 + (u2 - 0.5) ** 2), abs=1e-15)
    assert float(high) == pytest.approx(0.3 + math.sqrt((u1 - 0.8) ** 2 + (0.5 - l2) ** 2), abs=1e-15)


def test_newcombe_interval_is_for_p1_minus_p2() -> None:
    low, high = newcombe_interval(56, 70, 48, 80)  # 0.8 - 0.6: the interval lies above 0
    swapped_low, swapped_high = newcombe_interval(48, 80, 56, 70)
    assert float(low) > 0
    assert (float(swapped_low), float(swapped_high)) == (pytest.approx(-float(high)), pytest.approx(-float(low)))


def test_newcombe_interval_is_nan_when_either_group_is_empty() -> None:
    low, high = newcombe_interval([0, 3, 3], [0, 4, 4], [2, 0, 1], [3, 0, 2])
    assert np.isnan(low[:2]).all() and np.isnan(high[:2]).all()
    assert not np.isnan(low[2]) and not np.isnan(high[2])


def test_newcombe_interval_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match=r"newcombe_interval \(s2, t2\): successes must lie between 0 and trials"):
        newcombe_interval(1, 2, 3, 2)


# --------------------------------------------------------------------------------------------- confidence


@pytest.mark.parametrize("confidence", [0, 1, -0.05, 1.5, 95, float("nan"), "0.95", None, True])
@pytest.mark.parametrize(
    "function",
    [
        lambda c: z_quantile(c),
        lambda c: wilson_interval(1, 2, c),
        lambda c: newcombe_interval(1, 2, 1, 2, c),
        lambda c: percentile_interval([0.1, 0.2], c),
        lambda c: normal_interval(0.0, 1.0, c),
        lambda c: bonferroni_confidence(c, 2),
    ],
    ids=["z", "wilson", "newcombe", "percentile", "normal", "bonferroni"],
)
def test_confidence_outside_0_1_is_refused_with_a_config_error(function, confidence) -> None:
    with pytest.raises(ConfigError) as raised:
        function(confidence)
    assert str(raised.value) == MSG_BAD_CONFIDENCE.format(confidence=confidence)


def test_confidence_is_checked_without_assert_so_python_O_keeps_it() -> None:
    code = (
        "from audit_tasks.errors import ConfigError\nfrom audit_tasks.stats import wilson_interval\n"
        "try:\n    wilson_interval(1, 2, 1.5)\nexcept ConfigError:\n    print('refused')\n"
    )
    out = subprocess.run(
        [sys.executable, "-O", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "refused"


# --------------------------------------------------------------------------------------------- Bonferroni, normal


def test_bonferroni_confidence_divides_the_error_rate() -> None:
    assert bonferroni_confidence(0.95, 1) == pytest.approx(0.95, abs=1e-15)
    assert bonferroni_confidence(0.95, 10) == pytest.approx(0.995, abs=1e-15)
    assert bonferroni_confidence(0.9, 4 * 3 / 2) == pytest.approx(1 - 0.1 / 6, abs=1e-15)


@pytest.mark.parametrize("comparisons", [0, 0.5, -1, float("nan")])
def test_bonferroni_refuses_fewer_than_one_comparison(comparisons: float) -> None:
    with pytest.raises(ConfigError) as raised:
        bonferroni_confidence(0.95, comparisons)
    assert str(raised.value) == MSG_BAD_COMPARISONS.format(comparisons=comparisons)


def test_normal_interval_is_estimate_plus_minus_z_standard_errors() -> None:
    low, high = normal_interval(np.array([0.1, 0.0]), np.array([0.02, 0.0]), 0.95)
    np.testing.assert_allclose(low, [0.1 - 1.959963984540054 * 0.02, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(high, [0.1 + 1.959963984540054 * 0.02, 0.0], rtol=0, atol=1e-15)


# --------------------------------------------------------------------------------------------- bootstrap


def test_percentile_interval_takes_the_tail_percentiles_along_the_last_axis() -> None:
    reps = np.vstack([np.arange(101, dtype=float), np.arange(101, dtype=float) * 2])
    low, high = percentile_interval(reps, 0.9)
    np.testing.assert_allclose(low, [5.0, 10.0])
    np.testing.assert_allclose(high, [95.0, 190.0])


def test_percentile_interval_ignores_nan_and_is_nan_for_a_row_of_nan(recwarn: pytest.WarningsRecorder) -> None:
    reps = np.array([[np.nan, 0.0, 1.0, 2.0, np.nan], [np.nan] * 5])
    low, high = percentile_interval(reps, 0.5)
    assert (low[0], high[0]) == (0.5, 1.5)
    assert np.isnan(low[1]) and np.isnan(high[1])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_bootstrap_std_error_is_the_sample_standard_deviation() -> None:
    reps = np.array([[1.0, 2.0, 4.0, np.nan], [3.0, np.nan, np.nan, np.nan], [np.nan] * 4])
    se = bootstrap_std_error(reps)
    assert se[0] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1), abs=1e-15)
    assert np.isnan(se[1]) and np.isnan(se[2])  # one replicate has no spread estimate; none has no value
    np.testing.assert_array_equal(bootstrap_std_error(np.array([[0.3], [np.nan]])), [0.0, np.nan])


def test_multinomial_bootstrap_draws_each_row_from_its_own_shares() -> None:
    cells = np.array([[30, 70], [0, 0], [5, 5]])
    reps = multinomial_bootstrap(
        cells, 20_000, lambda draws: draws[..., 0] / draws.sum(axis=-1), np.random.default_rng(0)
    )
    assert reps.shape == (3, 20_000)
    assert np.isnan(reps[1]).all()  # a row without items has no replicates
    assert reps[0].mean() == pytest.approx(0.3, abs=0.002)
    assert reps[0].var() == pytest.approx(0.3 * 0.7 / 100, rel=0.05)  # binomial variance of a share of 100
    assert set(np.unique(reps[2] * 10)) <= set(range(11))


def test_multinomial_bootstrap_is_seeded_and_does_not_depend_on_the_chunk_size() -> None:
    cells = np.array([[3, 5, 2], [0, 0, 0], [10, 1, 0], [4, 4, 4], [1, 0, 0]])

    def statistic(draws: np.ndarray) -> np.ndarray:
        return draws[..., 0] / draws.sum(axis=-1)

    whole = multinomial_bootstrap(cells, 50, statistic, np.random.default_rng(1))
    row_by_row = multinomial_bootstrap(cells, 50, statistic, np.random.default_rng(1), chunk_cells=1)
    other_seed = multinomial_bootstrap(cells, 50, statistic, np.random.default_rng(2))
    np.testing.assert_array_equal(whole, row_by_row)
    assert not np.array_equal(whole, other_seed, equal_nan=True)


def test_multinomial_bootstrap_refuses_zero_resamples() -> None:
    with pytest.raises(ConfigError) as raised:
        multinomial_bootstrap(np.array([[1, 1]]), 0, lambda draws: draws[..., 0], np.random.default_rng(0))
    assert str(raised.value) == MSG_BAD_RESAMPLES.format(name="n_resamples", n=0)


# --------------------------------------------------------------------------------------------- one-sided tests, Holm


def test_holm_adjust_matches_statsmodels() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    for size in (1, 2, 10, 1000):
        p = np.concatenate([rng.random(size) ** 4, [0.0, 1.0, 0.5, 0.5]])  # ties and the ends included
        expected = multitest.multipletests(p, alpha=0.05, method="holm")[1]
        np.testing.assert_allclose(holm_adjust(p), expected, rtol=0, atol=1e-12)


def test_holm_adjust_on_a_subset_equals_holm_with_the_rest_of_the_family_at_p_one() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(1).random(20) ** 6
    expected = multitest.multipletests(np.concatenate([p, np.ones(80)]), method="holm")[1][:20]
    np.testing.assert_allclose(holm_adjust(p, n_hypotheses=100), expected, rtol=0, atol=1e-12)


def test_holm_adjust_keeps_nan_and_refuses_a_family_smaller_than_its_p_values() -> None:
    np.testing.assert_array_equal(holm_adjust([np.nan, 0.01]), [np.nan, 0.01])
    with pytest.raises(ConfigError):
        holm_adjust([0.1, 0.2], n_hypotheses=1)


def test_newcombe_exceedance_pvalue_is_the_level_where_the_interval_touches_the_margin() -> None:
    k, n = count_grid()
    small = np.flatnonzero((n >= 10) & (n <= 1000))
    i, j = (x.ravel() for x in np.meshgrid(small, small))
    k1, n1, k2, n2 = k[i], n[i], k[j], n[j]
    for margin in (0.0, 0.05, 0.2):
        p = newcombe_exceedance_pvalue(k1, n1, k2, n2, margin)
        live = np.flatnonzero((p > 1e-6) & (p < 0.5))  # 1 - 2p keeps the digits
        assert live.size > 50
        for i in live[:: max(1, live.size // 200)]:  # the interval takes one confidence per call
            low, _ = newcombe_interval(k1[i], n1[i], k2[i], n2[i], 1 - 2 * p[i])
            assert float(low) == pytest.approx(margin, abs=1e-9)
        assert np.all(p[k1 / n1 - k2 / n2 <= margin] == 1.0)


@pytest.mark.parametrize("alpha", (0.05, 0.001))
def test_newcombe_exceedance_pvalue_decides_as_the_one_sided_interval(alpha: float) -> None:
    rng = np.random.default_rng(2)
    n1, n2 = rng.integers(20, 2000, 5000), rng.integers(20, 2000, 5000)
    k1, k2 = rng.binomial(n1, 0.9), rng.binomial(n2, 0.8)
    low, _ = newcombe_interval(k1, n1, k2, n2, 1 - 2 * alpha)
    p = newcombe_exceedance_pvalue(k1, n1, k2, n2, 0.05)
    clear = np.abs(low - 0.05) > 1e-9
    np.testing.assert_array_equal((p <= alpha)[clear], (low > 0.05)[clear])


def test_wilson_exceedance_pvalue_is_the_score_test_of_statsmodels() -> None:
    k, n = count_grid()
    live = n >= 1
    for floor in (0.5, 0.8, 0.95):
        expected = [
            statsmodels_proportion.proportions_ztest(kk, nn, value=floor, alternative="larger", prop_var=floor)[1]
            for kk, nn in zip(k[live], n[live], strict=True)
        ]
        np.testing.assert_allclose(wilson_exceedance_pvalue(k[live], n[live], floor), expected, rtol=1e-10, atol=1e-12)


def test_wilson_exceedance_pvalue_decides_as_the_one_sided_wilson_bound() -> None:
    k, n = count_grid()
    low, _ = wilson_interval(k, n, 0.9)  # two-sided 0.9: one-sided lower bound at 0.95
    p = wilson_exceedance_pvalue(k, n, 0.8)
    clear = np.abs(low - 0.8) > 1e-9
    np.testing.assert_array_equal((p <= 0.05)[clear], (low > 0.8)[clear])


def test_normal_exceedance_pvalue_is_the_upper_normal_tail() -> None:
    assert float(normal_exceedance_pvalue(0.05 + 1.959963984540054 * 0.01, 0.01, 0.05)) == pytest.approx(0.025)
    assert float(normal_exceedance_pvalue(0.0, 0.01, 0.05)) == pytest.approx(1.0)
