"""How sure a verdict is: the difference of two networks' mean errors over seeds, its Welch
t-interval, and the rule that turns it into reproduced / not reproduced / inconclusive.

Usage: `compare([7.6, 7.4], [7.1, 7.3], claimed="lower", floor=PAPER_FLOOR)` judges "the second
network has the lower error" on two seeds each.

The rule (`LEVEL` = 95%): the interval of mean(b) - mean(a) is Welch's, with the
Welch-Satterthwaite degrees of freedom. An interval wholly on the claimed side is *reproduced*,
wholly on the other side *not reproduced*, and one that straddles zero *inconclusive*, with the
seeds per network that would resolve a difference of that size at the observed spread. A
network with one seed (or seeds that agree exactly) has no spread of its own: it takes a
stated `Floor`, the pooled spread of the study's other networks where they have seeds, else
the paper's ±0.16 (ResNet-110's test error over 5 runs).

The Student-t quantile is computed here (regularized incomplete beta, then bisection), so the
analysis needs no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from degradation.paper import PAPER_TABLE6_RUNS, PAPER_TABLE6_STD

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_ENOUGH = "not enough runs"
LEVEL = 0.95
MAX_SEEDS = 1000  # beyond this many seeds a network, a difference is called unresolvable
RULE = (f"{LEVEL:.0%} Welch t-interval of the difference of the means over seeds: reproduced "
        "when it lies wholly on the claimed side of 0, not reproduced when wholly on the "
        "other, else inconclusive")


@dataclass(frozen=True)
class Floor:
    """The spread a network with one seed is given: a standard deviation, its degrees of
    freedom, and where it comes from (said in the verdict)."""

    std: float
    df: float
    source: str


# He et al. 2016, Table 6: ResNet-110, "mean ± std of 5 runs" = 6.61 ± 0.16 (4 degrees of
# freedom). The paper publishes no other spread, so it stands in for training error too.
PAPER_FLOOR = Floor(PAPER_TABLE6_STD[110], PAPER_TABLE6_RUNS[110] - 1,
                    f"the paper's ±{PAPER_TABLE6_STD[110]} over {PAPER_TABLE6_RUNS[110]} runs "
                    "of ResNet-110")


# --- the Student-t distribution ---------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast on this side of the mean; the other side by symmetry.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom (0 < p < 1)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):  # bisection: the cdf is monotone, so this always converges
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


# --- one network's seeds ----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One network's finals over seeds: the finite values, how many were not (a diverged
    run's NaN), and the spread the interval uses (its own, or the floor's)."""

    values: tuple[float, ...]
    dropped: int
    std: float
    df: float
    floored: bool

    @property
    def n(self) -> int:
        """How many seeds the mean rests on."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """The mean over the finite seeds (NaN without one)."""
        return sum(self.values) / self.n if self.values else math.nan


def sample_std(values: Sequence[float]) -> float:
    """The standard deviation with ddof=1 (NaN for fewer than 2 values)."""
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def sample(values: Iterable[float], floor: Floor | None) -> Sample:
    """`values` without their NaNs, with their own spread, or `floor`'s where they have none
    (one seed, or seeds that agree exactly: a std of 0 says nothing of the noise)."""
    raw = [float(value) for value in values]
    finite = tuple(value for value in raw if math.isfinite(value))
    std = sample_std(finite)
    if finite and (math.isnan(std) or std == 0.0):
        if floor is None:
            return Sample(finite, len(raw) - len(finite), math.nan, math.nan, True)
        return Sample(finite, len(raw) - len(finite), floor.std, floor.df, True)
    return Sample(finite, len(raw) - len(finite), std, len(finite) - 1 if finite else math.nan,
                  False)


def pooled_floor(groups: Iterable[Sequence[float]], what: str) -> Floor | None:
    """The pooled standard deviation of the groups with 2+ finite, not all equal values
    (None without one): the spread a one-seed network of the same study is given."""
    squares, df, networks = 0.0, 0, 0
    for group in groups:
        finite = [value for value in group if math.isfinite(value)]
        std = sample_std(finite)
        if math.isnan(std) or std == 0.0:
            continue
        squares += (len(finite) - 1) * std**2
        df += len(finite) - 1
        networks += 1
    if not df:
        return None
    return Floor(math.sqrt(squares / df), df, f"the pooled spread of {what} over the seeds of "
                 f"{networks} other network{'s' if networks > 1 else ''}")


# --- the difference and the verdict -----------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """mean(b) - mean(a), its interval, and the verdict on the claimed sign."""

    a: Sample
    b: Sample
    difference: float
    low: float
    high: float
    df: float
    verdict: str
    seeds_needed: int | None = None  # inconclusive: seeds per network that would resolve it

    @property
    def one_seed(self) -> bool:
        """Whether a side rests on a single run."""
        return min(self.a.n, self.b.n) == 1

    @property
    def floored(self) -> bool:
        """Whether a side has no spread of its own and took the floor."""
        return self.a.floored or self.b.floored

    def interval(self) -> str:
        """`+0.42 [+0.10, +0.74]`: the difference and its interval, in the errors' unit."""
        if math.isnan(self.low):
            return f"{self.difference:+.2f}" if math.isfinite(self.difference) else "-"
        return f"{self.difference:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The t-interval of the mean of `values` at `level` (NaNs for fewer than 2 values)."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean = sum(values) / n
    half = t_quantile(0.5 + level / 2.0, n - 1) * sample_std(values) / math.sqrt(n)
    return mean - half, mean + half


def welch(a: Sample, b: Sample, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(difference, low, high, df): Welch's interval of mean(b) - mean(a) at `level`, each
    side's variance with its own degrees of freedom (Satterthwaite)."""
    difference = b.mean - a.mean
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    if va + vb == 0.0:  # both sides exactly known: the interval is the point
        return difference, difference, difference, math.inf
    df = (va + vb) ** 2 / (va**2 / a.df + vb**2 / b.df)
    half = t_quantile(0.5 + level / 2.0, df) * math.sqrt(va + vb)
    return difference, difference - half, difference + half, df


def seeds_to_resolve(difference: float, std_a: float, std_b: float, level: float = LEVEL
                     ) -> int | None:
    """The fewest seeds per network whose interval would exclude 0 for a true `difference` at
    these spreads (None when no number up to `MAX_SEEDS` would, as for a difference of 0)."""
    if difference == 0.0 or not math.isfinite(difference):
        return None
    variance = std_a**2 + std_b**2
    # t exceeds the normal quantile at any df, so fewer seeds than this never suffice.
    z = t_quantile(0.5 + level / 2.0, 1e9)
    start = max(2, math.floor(z * z * variance / difference**2))
    for n in range(start, MAX_SEEDS + 1):
        df = variance**2 * (n - 1) / (std_a**4 + std_b**4) if variance else math.inf
        if t_quantile(0.5 + level / 2.0, df) * math.sqrt(variance / n) < abs(difference):
            return n
    return None


def compare(a: Iterable[float], b: Iterable[float], claimed: str, floor: Floor | None,
            level: float = LEVEL) -> Comparison:
    """Judge the claim that network b's value is `claimed` ("lower" or "higher") than a's."""
    if claimed not in ("lower", "higher"):
        raise ValueError(f"claimed={claimed!r}: allowed are 'lower' and 'higher'")
    first, second = sample(a, floor), sample(b, floor)
    if not first.n or not second.n or math.isnan(first.std) or math.isnan(second.std):
        return Comparison(first, second, second.mean - first.mean, math.nan, math.nan,
                          math.nan, NOT_ENOUGH)
    difference, low, high, df = welch(first, second, level)
    # On the claimed side: the whole interval below 0 for "lower", above 0 for "higher".
    below, above = high < 0.0, low > 0.0
    if (below, above) != (False, False):
        held = below if claimed == "lower" else above
        return Comparison(first, second, difference, low, high, df,
                          REPRODUCED if held else NOT_REPRODUCED)
    return Comparison(first, second, difference, low, high, df, INCONCLUSIVE,
                      seeds_to_resolve(difference, first.std, second.std, level))


def combine(verdicts: Iterable[str]) -> str:
    """One verdict for a claim made of several comparisons: any not reproduced decides, then
    any without enough runs, then any inconclusive; reproduced only when every one is."""
    verdicts = list(verdicts)
    for verdict in (NOT_REPRODUCED, NOT_ENOUGH, INCONCLUSIVE):
        if verdict in verdicts:
            return verdict
    return REPRODUCED if verdicts else NOT_ENOUGH
