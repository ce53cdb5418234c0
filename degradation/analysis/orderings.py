"""Judging one ordering a claim makes ("plain-56's training error is higher than plain-20's")
against the seeds' noise: the difference of the two means and its interval over seeds
(`stats.RULE`); a network with one seed takes a stated floor for its spread.

Usage: `order(study, ("plain", 20), ("plain", 56), "train_error", "higher").result.verdict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from degradation.analysis import stats
from degradation.analysis.results import network_label
from degradation.analysis.study import Study

METRIC_NAMES = {"train_error": "training error", "test_error": "test error",
                "clean_train_error": "clean training error", "response": "layer response"}


@dataclass
class Ordering:
    """One ordering a claim makes, judged: `b` is claimed `claimed` than `a` in `metric`."""

    a: tuple[str, int]
    b: tuple[str, int]
    metric: str
    result: stats.Comparison
    floor: stats.Floor | None = None  # the spread a one-seed side was given

    def label(self) -> str:
        """`plain-56 - plain-20 (training error)`."""
        return (f"{network_label(*self.b)} - {network_label(*self.a)} "
                f"({METRIC_NAMES[self.metric]})")


def _values(study: Study, network: tuple[str, int], metric: str) -> list[float]:
    """A network's finals over seeds, NaN for each diverged seed (left out, and named)."""
    if metric == "response":
        values = list(study.responses.get(network, []))
    else:
        finals = study.finals
        chosen = finals[(finals["arch"] == network[0]) & (finals["depth"] == network[1])]
        values = chosen[metric].astype(float).tolist()
    return values + [math.nan] * study.diverged.get(network, 0)


def floor_of(study: Study, metric: str) -> stats.Floor | None:
    """The spread a one-seed network is given: the pooled spread of the study's networks that
    have seeds, else the paper's ±0.16 (errors only: a layer response has no published one).
    Computed once per metric and kept in `study.floors`."""
    if metric not in study.floors:
        study.floors[metric] = _pooled_floor(study, metric)
    return study.floors[metric]


def _pooled_floor(study: Study, metric: str) -> stats.Floor | None:
    if metric == "response":
        groups = list(study.responses.values())
    else:
        groups = [part[metric].astype(float).tolist()
                  for _, part in study.finals.groupby(["arch", "depth"])]
    pooled = stats.pooled_floor(groups, METRIC_NAMES[metric])
    if pooled is not None or metric == "response":
        return pooled
    return stats.PAPER_FLOOR


def order(study: Study, a: tuple[str, int], b: tuple[str, int], metric: str,
          claimed: str) -> Ordering:
    """Judge "`b`'s `metric` is `claimed` ("lower"/"higher") than `a`'s" by `stats.RULE`."""
    floor = floor_of(study, metric)
    result = stats.compare(_values(study, a, metric), _values(study, b, metric), claimed, floor)
    return Ordering(a, b, metric, result, floor)


def ordering_text(ordering: Ordering) -> str:
    """`plain-56 - plain-20 (training error) +1.20 [+0.40, +2.00]`, and what would resolve
    an ordering that is not judged."""
    result = ordering.result
    text = f"{ordering.label()} {result.interval()}"
    if result.verdict == stats.INCONCLUSIVE:
        text += (f", {result.seeds_needed} seeds per network would resolve a difference of "
                 "this size at this spread" if result.seeds_needed else
                 f", more than {stats.MAX_SEEDS} seeds per network would not resolve it")
    elif result.verdict == stats.NOT_ENOUGH:
        text += ": no spread to judge it by (one seed each; a second seed gives one)" if (
            result.a.n and result.b.n) else ": every seed of a network diverged"
    return text


def floor_note(orderings: list[Ordering]) -> str:
    """`one seed: plain-20, plain-56 take the training error floor ±0.16 (source)`."""
    floored: dict[tuple[str, stats.Floor], list[str]] = {}
    for ordering in orderings:
        floor = ordering.floor
        for network, side in ((ordering.a, ordering.result.a), (ordering.b, ordering.result.b)):
            if side.floored and floor is not None:
                names = floored.setdefault((METRIC_NAMES[ordering.metric], floor), [])
                if network_label(*network) not in names:
                    names.append(network_label(*network))
    return "; ".join(f"one seed: {', '.join(names)} take the {metric} floor ±{floor.std:.3g} "
                     f"({floor.source})" for (metric, floor), names in floored.items())


def diverged_note(orderings: list[Ordering]) -> str:
    """`diverged, left out: 1 seed of plain-56`: the diverged seeds the orderings dropped."""
    dropped = {}
    for ordering in orderings:
        for network, side in ((ordering.a, ordering.result.a), (ordering.b, ordering.result.b)):
            if side.dropped:
                dropped[network_label(*network)] = side.dropped
    return ("diverged, left out: " + ", ".join(f"{count} seed{'s' if count > 1 else ''} of "
                                               f"{name}" for name, count in dropped.items())
            if dropped else "")
