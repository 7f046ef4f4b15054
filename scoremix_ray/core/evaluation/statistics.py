"""Paired differences with a confidence interval: does a condition beat the real-only baseline?

A study cell is one (fold, seed): the same class partition, real images, verification pairs, generator and
recognizer initialisation for the baseline and for every condition. The difference d_i = condition_i -
baseline_i of a cell removes what the cell shares (an easy fold, a lucky initialisation), so the interval is
on the mean of d, not on the difference of two means.

Cells that share a fold are not independent draws (the same partition); with a handful of folds a cluster
bootstrap over folds is too coarse to be useful, so intervals treat cells as exchangeable and the README says
so.
"""

from __future__ import annotations

import math

import numpy as np


def _bootstrap_means(d: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` resamples of the cells, with replacement (seeded: the interval and the p-value of
    one set of cells use the same resamples)."""
    rng = np.random.default_rng(seed)
    return d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)


def paired_interval(
    diffs, confidence: float = 0.95, method: str = "t", resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high) of the mean paired difference.

    t:          mean +- t_{n-1, (1+c)/2} * s / sqrt(n), s the sample std (ddof 1).
    bootstrap:  percentile interval of the means of `resamples` resamples of the cells (with replacement).
    Fewer than two cells: (mean, nan, nan), no interval can be claimed.
    """
    d = np.asarray(diffs, np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan
    if method == "t":
        from scipy import stats

        half = float(stats.t.ppf((1 + confidence) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
        return mean, mean - half, mean + half
    if method == "bootstrap":
        low, high = np.quantile(_bootstrap_means(d, resamples, seed), [(1 - confidence) / 2, (1 + confidence) / 2])
        return mean, float(low), float(high)
    raise ValueError(f"unknown interval method '{method}' (valid: t, bootstrap)")


def paired_p(diffs, method: str = "t", resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of "mean difference = 0", the test behind `paired_interval`'s interval.

    t:          2 P(T_{n-1} > |mean| / (s / sqrt(n))).
    bootstrap:  2 min(share of resampled means <= 0, share >= 0) (the interval excludes 0 iff p < 1 - c).
    Fewer than two cells: nan.
    """
    d = np.asarray(diffs, np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return math.nan
    if method == "t":
        from scipy import stats

        return float(stats.ttest_1samp(d, 0.0).pvalue) if d.std(ddof=1) > 0 else (1.0 if d.mean() == 0 else 0.0)
    if method == "bootstrap":
        means = _bootstrap_means(d, resamples, seed)
        return float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))
    raise ValueError(f"unknown interval method '{method}' (valid: t, bootstrap)")


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment over a family of m tests (nan = not tested, left out of m): with p sorted
    ascending, p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j)). Rejecting where p_adj < alpha keeps the chance
    of any false "detected" at or below alpha, whichever hypotheses are true."""
    p = np.asarray(pvalues, np.float64)
    out = np.full(len(p), math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out


def verdict(low: float, high: float) -> str:
    """What the interval allows one to say, and no more."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "too few cells for an interval"
    if low > 0:
        return "higher than baseline"
    if high < 0:
        return "lower than baseline"
    return "no detectable difference"
