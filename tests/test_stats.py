"""The interval arithmetic and the verdict rule of analysis/stats.py, on constructed finals."""

from __future__ import annotations

import math

import pytest

from degradation.analysis.stats import (
    INCONCLUSIVE,
    NOT_ENOUGH,
    NOT_REPRODUCED,
    PAPER_FLOOR,
    REPRODUCED,
    Floor,
    combine,
    compare,
    pooled_floor,
    seeds_to_resolve,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize(("p", "df", "expected"), [
    # Printed tables of Student's t (two-sided 95% and one-sided 95%).
    (0.975, 1, 12.706205), (0.975, 4, 2.776445), (0.975, 10, 2.228139),
    (0.975, 30, 2.042272), (0.95, 5, 2.015048), (0.995, 3, 5.840909),
    # df = 2 has a closed form: t = (2p - 1) sqrt(2 / (1 - (2p - 1)^2)).
    (0.975, 2, 0.95 * math.sqrt(2 / (1 - 0.95**2))),
    # Large df tends to the normal quantile.
    (0.975, 1e7, 1.959964),
])
def test_t_quantile_matches_the_tables(p: float, df: float, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-6)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=2e-6)


def test_t_quantile_inverts_the_cdf_at_fractional_degrees_of_freedom() -> None:
    for df in (1.5, 2.7, 7.3):
        assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-10)
    # Between the whole-number neighbours, as Welch's df usually is.
    assert t_quantile(0.975, 4) > t_quantile(0.975, 4.5) > t_quantile(0.975, 5)


def test_welch_interval_by_hand() -> None:
    # a: mean 8, s^2 = 1 (n=3); b: mean 6, s^2 = 10/3 (n=4). Variance terms 1/3 and 5/6;
    # Satterthwaite df = (7/6)^2 / ((1/3)^2/2 + (5/6)^2/3) = 147/31; half = t * sqrt(7/6).
    result = compare([7, 8, 9], [4, 5, 7, 8], "lower", None)
    df = 147 / 31
    assert result.df == pytest.approx(df)
    half = t_quantile(0.975, df) * math.sqrt(7 / 6)
    assert result.difference == pytest.approx(-2.0)
    assert (result.low, result.high) == pytest.approx((-2 - half, -2 + half))
    assert result.verdict == INCONCLUSIVE  # half is about 3.0, larger than the gap


def test_a_clear_gap_is_reproduced_and_its_opposite_not_reproduced() -> None:
    deep, shallow = [12.9, 13.1, 13.0], [9.5, 9.7, 9.6]
    assert compare(shallow, deep, "higher", PAPER_FLOOR).verdict == REPRODUCED
    assert compare(shallow, deep, "lower", PAPER_FLOOR).verdict == NOT_REPRODUCED
    result = compare(shallow, deep, "higher", PAPER_FLOOR)
    assert not result.floored and not result.one_seed
    assert result.low > 0 and result.interval().startswith("+3.40 [")


def test_a_gap_within_the_spread_is_inconclusive_with_the_seeds_that_would_resolve_it() -> None:
    result = compare([7.0, 7.6, 7.3], [7.2, 6.9, 7.5], "lower", PAPER_FLOOR)
    assert result.verdict == INCONCLUSIVE and result.low < 0 < result.high
    assert result.seeds_needed is not None and result.seeds_needed > 3
    # At that many seeds a network, the same difference and spreads are resolved.
    assert result.seeds_needed == seeds_to_resolve(result.difference, result.a.std,
                                                   result.b.std)


def test_seeds_to_resolve_by_hand() -> None:
    # std 1 on both sides, a difference of 2: n = 4 gives df 6, t 2.447 * sqrt(2/4) = 1.73 < 2,
    # n = 3 gives df 4, t 2.776 * sqrt(2/3) = 2.27 > 2.
    assert seeds_to_resolve(2.0, 1.0, 1.0) == 4
    assert seeds_to_resolve(0.0, 1.0, 1.0) is None
    assert seeds_to_resolve(1e-6, 1.0, 1.0) is None  # more than MAX_SEEDS


def test_single_seeds_take_the_floor_and_say_so() -> None:
    # The example: ResNet-32 7.49 against ResNet-20 7.51, one seed each.
    result = compare([7.51], [7.49], "lower", PAPER_FLOOR)
    assert result.verdict == INCONCLUSIVE and result.one_seed and result.floored
    assert result.a.std == result.b.std == 0.16 and result.df == pytest.approx(8)
    assert compare([7.49], [7.51], "lower", PAPER_FLOOR).verdict == INCONCLUSIVE
    # A gap far beyond the floor is decided even on one seed.
    assert compare([9.6], [13.0], "higher", PAPER_FLOOR).verdict == REPRODUCED
    # No floor and no spread of its own: nothing to judge the gap by.
    assert compare([9.6], [13.0], "higher", None).verdict == NOT_ENOUGH


def test_identical_values() -> None:
    # Seeds that agree exactly carry no spread: the floor stands in.
    same = compare([7.5, 7.5], [7.5, 7.5], "lower", PAPER_FLOOR)
    assert same.verdict == INCONCLUSIVE and same.difference == 0 and same.seeds_needed is None
    assert same.floored
    assert compare([7.5, 7.5], [9.5, 9.5], "higher", PAPER_FLOOR).verdict == REPRODUCED


def test_nan_from_a_diverged_run() -> None:
    nan = math.nan
    # One seed diverged: judged on the others (here one seed, so the floor), the NaN counted.
    result = compare([9.6, nan], [13.0, 13.2], "higher", PAPER_FLOOR)
    assert result.a.dropped == 1 and result.a.n == 1 and result.verdict == REPRODUCED
    # Every seed of a network diverged: not enough runs.
    assert compare([nan, nan], [13.0, 13.2], "higher", PAPER_FLOOR).verdict == NOT_ENOUGH
    assert compare([], [13.0], "higher", PAPER_FLOOR).verdict == NOT_ENOUGH


def test_pooled_floor() -> None:
    # Variances 1 (df 2) and 4 (df 1): pooled sqrt((2*1 + 1*4) / 3) = sqrt(2).
    floor = pooled_floor([[1, 2, 3], [0, 2 * math.sqrt(2)], [5.0], [7, 7], [math.nan]],
                         "test error")
    assert floor == Floor(pytest.approx(math.sqrt(2)), 3, floor.source)
    assert "2 other networks" in floor.source
    assert pooled_floor([[5.0], [7, 7]], "test error") is None


def test_combine() -> None:
    assert combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert combine([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([INCONCLUSIVE, NOT_ENOUGH]) == NOT_ENOUGH
    assert combine([NOT_ENOUGH, NOT_REPRODUCED, REPRODUCED]) == NOT_REPRODUCED
    assert combine([]) == NOT_ENOUGH
