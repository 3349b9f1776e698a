"""Tail probabilities and multiple-testing corrections in pure Python (no SciPy at run time).

The binomial and Poisson upper tails are written through the regularized incomplete beta and gamma
functions, so that they also accept the fractional counts of confidence-weighted counting."""

from __future__ import annotations

import math
from collections.abc import Sequence

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 500


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def gammainc_lower(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) for a > 0, x >= 0."""
    if x <= 0.0:
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITER):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return min(1.0, total * math.exp(log_front))
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER + 1):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + an / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return max(0.0, 1.0 - math.exp(log_front) * h)


def binomial_sf(k: float, n: float, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p); k may be fractional (continuous extension via I_p(k, n-k+1))."""
    if k <= 0.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return min(1.0, max(0.0, betainc(k, n - k + 1.0, p)))


def poisson_sf(k: float, mu: float) -> float:
    """P(X >= k) for X ~ Poisson(mu); k may be fractional (continuous extension via P(k, mu))."""
    if k <= 0.0:
        return 1.0
    if mu <= 0.0:
        return 0.0
    return min(1.0, max(0.0, gammainc_lower(k, mu)))


def significant(p_values: Sequence[float], alpha: float, method: str, min_family: int = 1) -> list[bool]:
    """Which of a family of one-sided tests reject at level `alpha` after correction.

    `bonferroni` controls the family-wise error rate; `bh` (Benjamini-Hochberg) the false discovery rate,
    which equals the family-wise rate when nothing is going on (the null-stream case). The family is at
    least `min_family` tests, so a window in which only one key happens to have data is not over-trusted."""
    m = max(len(p_values), min_family)
    if not p_values:
        return []
    if method == "none":
        return [p <= alpha for p in p_values]
    if method == "bonferroni":
        return [p <= alpha / m for p in p_values]
    if method != "bh":
        raise ValueError(f"unknown correction {method!r}")
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    cutoff_rank = 0
    for rank, i in enumerate(order, start=1):
        if p_values[i] <= alpha * rank / m:
            cutoff_rank = rank
    rejected = set(order[:cutoff_rank])
    return [i in rejected for i in range(len(p_values))]


def binomial_cdf(k: float, n: float, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), with the same continuous extension as `binomial_sf`."""
    if k >= n:
        return 1.0
    return 1.0 - binomial_sf(k + 1.0, n, p)


def _beta_binomial_sf_int(k: int, n: int, a: float, b: float) -> float:
    """P(X >= k) for X ~ BetaBinomial(n, a, b), k an integer, summed from the pmf (ratio recurrence)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    mean = n * a / (a + b)

    def log_pmf(j: int) -> float:
        return (
            math.lgamma(n + 1)
            - math.lgamma(j + 1)
            - math.lgamma(n - j + 1)
            + math.lgamma(j + a)
            + math.lgamma(n - j + b)
            - math.lgamma(n + a + b)
            + math.lgamma(a + b)
            - math.lgamma(a)
            - math.lgamma(b)
        )

    if k > mean:  # the upper tail is the small side: sum it upwards
        j, term, total = k, math.exp(log_pmf(k)), 0.0
        while j <= n:
            total += term
            if term <= total * _EPS:
                break
            term *= (n - j) / (j + 1) * (j + a) / (n - j - 1 + b) if j < n else 0.0
            j += 1
        return min(1.0, total)
    # the lower tail is the small side: 1 - P(X <= k - 1), summed downwards
    j, term, total = k - 1, math.exp(log_pmf(k - 1)), 0.0
    while j >= 0:
        total += term
        if term <= total * _EPS:
            break
        term *= j / (n - j + 1) * (n - j + b) / (j - 1 + a) if j > 0 else 0.0
        j -= 1
    return max(0.0, 1.0 - total)


def beta_binomial_sf(k: float, n: int, a: float, b: float) -> float:
    """P(X >= k) for X ~ BetaBinomial(n, a, b): a binomial count whose rate is itself uncertain,
    Beta(a, b). This is the predictive tail of a window's count given a baseline estimated from a
    finite history. A fractional k (confidence-weighted counts) interpolates log-linearly between the
    neighbouring integers."""
    if k <= 0.0:
        return 1.0
    if k > n:
        return 0.0
    lo = math.floor(k)
    frac = k - lo
    p_lo = _beta_binomial_sf_int(lo, n, a, b)
    if frac == 0.0:
        return p_lo
    p_hi = _beta_binomial_sf_int(lo + 1, n, a, b)
    if p_hi <= 0.0:
        return 0.0
    return math.exp((1.0 - frac) * math.log(p_lo) + frac * math.log(p_hi))
