"""Interval statistics: the one home of the confidence-interval maths every check uses.

Everything here is vectorised over NumPy arrays (scalars broadcast) and written by hand rather than
taken from statsmodels, which stays a test-only dependency: tests/test_stats.py checks each interval
against statsmodels to 1e-12 over a grid of counts, including 0 and n.

* `wilson_interval`: a proportion (accuracy, recall, ..., the share of images with tag b among those
  with tag a).
* `newcombe_interval`: a difference of two independent proportions (the gap between two groups).
* `percentile_interval`, `bootstrap_std_error`, `multinomial_bootstrap`: statistics with no closed-form
  interval (macro recall, macro precision).
* `normal_interval`: estimate +- z * standard error, for differences of bootstrapped statistics.
* `bonferroni_confidence`: the per-comparison level that keeps a family of intervals at `confidence`.
* `newcombe_exceedance_pvalue`, `wilson_exceedance_pvalue`, `normal_exceedance_pvalue`: one-sided
  p-values of "the difference (or proportion) exceeds a margin", each the exact inverse of its interval:
  the p-value is the one-sided level at which the interval's lower end equals the margin.
* `holm_adjust`: Holm's step-down adjusted p-values over a family of one-sided tests.

Checks are `if ... raise`, never `assert` (which `python -O` strips): a two-sided `confidence` outside
(0, 1) or a resample count below 1 is a ConfigError (both come from the config); counts with successes
outside [0, trials] are a ValueError (they come from our own counting, so they are a bug).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np

from audit_tasks.errors import ConfigError

__all__ = [
    "MSG_BAD_COMPARISONS",
    "MSG_BAD_CONFIDENCE",
    "MSG_BAD_COUNTS",
    "MSG_BAD_RESAMPLES",
    "bonferroni_confidence",
    "bootstrap_std_error",
    "check_confidence",
    "check_resamples",
    "holm_adjust",
    "multinomial_bootstrap",
    "newcombe_exceedance_pvalue",
    "newcombe_interval",
    "normal_exceedance_pvalue",
    "normal_interval",
    "percentile_interval",
    "wilson_exceedance_pvalue",
    "wilson_interval",
    "z_quantile",
]

# Error messages (tests assert them word for word).
MSG_BAD_CONFIDENCE = "confidence must be a number in (0, 1), e.g. 0.95; got {confidence!r}"
MSG_BAD_COUNTS = "{what}: successes must lie between 0 and trials, and trials must be >= 0"
MSG_BAD_COMPARISONS = "the number of comparisons must be >= 1; got {comparisons!r}"
MSG_BAD_RESAMPLES = "{name} must be a whole number >= 1; got {n!r}"

#: Cells (groups x resamples x categories) drawn at once by `multinomial_bootstrap`: bounds its memory.
BOOTSTRAP_CHUNK_CELLS = 1 << 23


def check_confidence(confidence: Any) -> float:
    """`confidence` as a float, or ConfigError unless it is a number strictly between 0 and 1."""
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < float(confidence) < 1:
        raise ConfigError(MSG_BAD_CONFIDENCE.format(confidence=confidence))  # NaN fails the range test too
    return float(confidence)


def check_resamples(n: Any, name: str = "n_resamples") -> int:
    """`n` as an int, or ConfigError (naming the parameter `name`) unless it is a whole number >= 1."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ConfigError(MSG_BAD_RESAMPLES.format(name=name, n=n))
    return int(n)


def z_quantile(confidence: float) -> float:
    """The two-sided standard-normal quantile for `confidence` (0.95 -> 1.959964)."""
    return NormalDist().inv_cdf(0.5 + check_confidence(confidence) / 2)


def _counts(successes: Any, trials: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Successes and trials as float arrays; ValueError where successes is outside [0, trials] (NaN passes)."""
    s = np.asarray(successes, dtype=float)
    t = np.asarray(trials, dtype=float)
    if np.any((t < 0) | (s < 0) | (s > t)):
        raise ValueError(MSG_BAD_COUNTS.format(what=what))
    return s, t


def wilson_interval(successes: Any, trials: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Wilson score interval for the proportion successes / trials; NaN where trials == 0.

    Wilson, not Wald (p +- z * sqrt(p(1-p)/n)): the Wald interval collapses to the single point 0 or 1
    when every trial fails or succeeds, leaves [0, 1], and covers far less than it claims near 0 and 1,
    which is where the accuracies of good models and the co-occurrence shares that matter live. Wilson's
    interval inverts the score test instead: it stays inside [0, 1], is never empty, and keeps close to
    nominal coverage for small n and extreme p (Brown, Cai & DasGupta 2001 recommend it).

    Raises ConfigError for a confidence outside (0, 1) and ValueError where successes is not within
    [0, trials].
    """
    s, t = _counts(successes, trials, "wilson_interval")
    return _wilson_bounds_z(s, t, np.asarray(z_quantile(confidence)))  # trials == 0: 0/0 is NaN


def newcombe_interval(s1: Any, t1: Any, s2: Any, t2: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval for p1 - p2 of two independent proportions; NaN where a t is 0.

    Built from the two Wilson intervals (l1, u1), (l2, u2) at the same level (Newcombe 1998, method 10):
    [d - sqrt((p1 - l1)^2 + (u2 - p2)^2), d + sqrt((u1 - p1)^2 + (p2 - l2)^2)] with d = p1 - p2. Not the
    Wald difference d +- z * sqrt(se1^2 + se2^2), which inherits Wald's collapse at 0 and 1 (two groups
    at 100% and 97% accuracy), so that a gap looks established on far fewer images than it should.
    The sign follows statsmodels' ``confint_proportions_2indep(..., compare="diff")``: p1 - p2.
    """
    s1, t1 = _counts(s1, t1, "newcombe_interval (s1, t1)")
    s2, t2 = _counts(s2, t2, "newcombe_interval (s2, t2)")
    l1, u1 = wilson_interval(s1, t1, confidence)
    l2, u2 = wilson_interval(s2, t2, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = s1 / t1, s2 / t2
    d = p1 - p2
    return d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def normal_interval(estimate: Any, std_error: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """estimate +- z * std_error: for a statistic whose sampling distribution is close to normal.

    Used for the difference of two bootstrapped statistics, with std_error = hypot(se1, se2) of the two
    independent bootstrap standard errors; proportions use the score intervals above instead.
    """
    half = z_quantile(confidence) * np.asarray(std_error, dtype=float)
    estimate = np.asarray(estimate, dtype=float)
    return estimate - half, estimate + half


def bonferroni_confidence(confidence: float, comparisons: float) -> float:
    """The level of each of `comparisons` intervals so that all hold at once with probability >= confidence.

    Bonferroni: 1 - (1 - confidence) / comparisons. Valid whatever the dependence between the intervals,
    at the price of being conservative when there are many of them.
    """
    confidence = check_confidence(confidence)
    if not comparisons >= 1:  # also refuses NaN
        raise ConfigError(MSG_BAD_COMPARISONS.format(comparisons=comparisons))
    return 1 - (1 - confidence) / comparisons


#: Bisection steps of `newcombe_exceedance_pvalue` on z in [0, 40]: 40 / 2**70 is far below float noise.
_BISECTION_STEPS = 70
_Z_MAX = 40.0


def _wilson_bounds_z(s: np.ndarray, t: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wilson bounds at normal quantile z (broadcast): `wilson_interval`'s formula, and the bisection's."""
    z2 = z * z
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / t
        denom = 1.0 + z2 / t
        center = (p + z2 / (2.0 * t)) / denom
        half = z * np.sqrt(np.maximum(p * (1.0 - p), 0.0) / t + z2 / (4.0 * t * t)) / denom
    return np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)


def _one_sided_p(z: np.ndarray) -> np.ndarray:
    """1 - Phi(z), accurate in the far tail (erfc, not 1 - cdf)."""
    from scipy.special import ndtr  # scipy is a core dependency; the import stays local to this helper

    return np.asarray(ndtr(-np.asarray(z, dtype=float)), dtype=float)


def newcombe_exceedance_pvalue(s1: Any, t1: Any, s2: Any, t2: Any, margin: Any = 0.0) -> np.ndarray:
    """One-sided p-value of H1: p1 - p2 > margin (H0: p1 - p2 <= margin), consistent with Newcombe.

    The p-value is the alpha at which the lower end of the one-sided Newcombe interval at level 1 - alpha
    (the two-sided `newcombe_interval` at level 1 - 2 * alpha) equals `margin`: so p <= alpha exactly when
    that lower end exceeds the margin, and a decision by p-value and a decision by interval never
    disagree. The lower end falls monotonically as z grows (both Wilson intervals widen), so z is found by
    bisection, vectorised. Where the observed difference does not exceed the margin the p-value is 1 (no
    level below 1/2 rejects); where a trial count is 0 it is NaN.
    """
    s1, t1 = _counts(s1, t1, "newcombe_exceedance_pvalue (s1, t1)")
    s2, t2 = _counts(s2, t2, "newcombe_exceedance_pvalue (s2, t2)")
    s1, t1, s2, t2, margin = np.broadcast_arrays(s1, t1, s2, t2, np.asarray(margin, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = s1 / t1, s2 / t2
    d = p1 - p2

    def lower(z: np.ndarray) -> np.ndarray:
        l1, _ = _wilson_bounds_z(s1, t1, z)
        _, u2 = _wilson_bounds_z(s2, t2, z)
        return d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)

    lo = np.zeros(d.shape)
    hi = np.full(d.shape, _Z_MAX)
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        above = lower(mid) > margin
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    out = _one_sided_p((lo + hi) / 2)
    out = np.where(d > margin, out, 1.0)
    return np.where(np.isnan(d), np.nan, out)


def wilson_exceedance_pvalue(successes: Any, trials: Any, floor: Any) -> np.ndarray:
    """One-sided score-test p-value of H1: proportion > floor (H0: <= floor); NaN where trials == 0.

    z = (p - floor) / sqrt(floor * (1 - floor) / n): the Wilson interval is the inversion of this test, so
    p <= alpha exactly when the one-sided Wilson lower bound at level 1 - alpha is above `floor`.
    `floor` must lie in (0, 1).
    """
    s, t = _counts(successes, trials, "wilson_exceedance_pvalue")
    f = np.asarray(floor, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (s / t - f) / np.sqrt(f * (1.0 - f) / t)
    return np.where(np.isnan(z), np.nan, _one_sided_p(z))


def normal_exceedance_pvalue(estimate: Any, std_error: Any, margin: Any = 0.0) -> np.ndarray:
    """One-sided p-value of H1: estimate > margin under a normal estimate: 1 - Phi((estimate - margin) / se)."""
    est = np.asarray(estimate, dtype=float)
    se = np.asarray(std_error, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (est - np.asarray(margin, dtype=float)) / se
    return _one_sided_p(z)


def holm_adjust(pvalues: Any, n_hypotheses: int | None = None) -> np.ndarray:
    """Holm's step-down adjusted p-values: reject hypothesis i at family-wise level alpha when adj[i] <= alpha.

    Sorted ascending, adj_(j) = max over i <= j of min(1, (M - i + 1) * p_(i)) with M = `n_hypotheses`
    (default: the number of p-values; statsmodels' ``multipletests(method="holm")``). NaN p-values are
    left out and stay NaN. Passing M larger than the p-values given runs Holm on a subset of a family of
    M hypotheses: still family-wise valid (the first true null rejected at rank j has at most j - 1 false
    nulls before it, so its threshold alpha / (M - j + 1) is at most alpha / M0), only less powerful
    than Holm with every p-value; the subgroup check uses it to test only each group against the best.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    live = np.flatnonzero(~np.isnan(p))
    m = live.size if n_hypotheses is None else int(n_hypotheses)
    if live.size == 0:
        return out
    if m < live.size:
        raise ConfigError(MSG_BAD_COMPARISONS.format(comparisons=m))
    order = live[np.argsort(p[live], kind="stable")]
    factors = m - np.arange(live.size)
    out[order] = np.minimum(1.0, np.maximum.accumulate(factors * p[order]))
    return out


def percentile_interval(replicates: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval along the last axis, ignoring NaN replicates; NaN where all are NaN.

    The percentile interval needs no standard-error or normality assumption and stays inside the range
    the statistic can take (a macro recall interval never leaves [0, 1]).
    """
    reps = np.asarray(replicates, dtype=float)
    alpha = 1 - check_confidence(confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows of only NaN give NaN, as documented
        low, high = np.nanpercentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=-1)
    return low, high


def bootstrap_std_error(replicates: Any) -> np.ndarray:
    """Standard deviation (ddof=1) of the replicates along the last axis, NaN ignored; 0 for one replicate."""
    reps = np.asarray(replicates, dtype=float)
    if reps.shape[-1] <= 1:
        return np.where(np.isnan(reps).all(axis=-1), np.nan, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(reps, axis=-1, ddof=1)


def multinomial_bootstrap(
    cells: Any,
    n_resamples: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    *,
    chunk_cells: int = BOOTSTRAP_CHUNK_CELLS,
) -> np.ndarray:
    """(rows, n_resamples) bootstrap replicates of `statistic`, one row per row of count `cells`.

    Resampling a group's n items with replacement and counting them into categories gives the same
    distribution as one multinomial draw of n over the observed category shares, so each replicate
    costs one draw per row of counts, never a pass over the items. `statistic` maps drawn counts of
    shape (rows, n_resamples, categories) to (rows, n_resamples). Rows with no items are NaN. Rows are
    drawn in chunks of at most `chunk_cells` cells, in order, so the result depends only on `rng`.

    Raises ConfigError for n_resamples < 1.
    """
    b = check_resamples(n_resamples)
    cells = np.asarray(cells, dtype=float)
    n = cells.sum(axis=1)
    out = np.full((len(cells), b), np.nan)
    live = np.flatnonzero(n > 0)
    chunk = max(1, chunk_cells // max(1, b * cells.shape[1]))
    for start in range(0, live.size, chunk):  # chunks of rows (memory bound), never items
        idx = live[start : start + chunk]
        pvals = cells[idx] / n[idx, None]
        draws = rng.multinomial(n[idx, None].astype(np.int64), pvals[:, None, :], size=(idx.size, b))
        out[idx] = statistic(draws)
    return out
