"""The logged per-layer gradient norms of a study's runs, made ready for the gradient figure
and the claim that plain nets' gradients keep healthy norms (claim 8).

Usage: `gradient_ratios(gradient_norm_table(study))` gives each network's first-to-last conv
gradient-norm ratio per iteration; `gradient_iterations` picks the iterations to compare.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import pandas as pd

from degradation.analysis.study import Study
from degradation.errors import error_line
from degradation.storage import DamagedFile
from degradation.training.logs import read_grad_norms

# The iterations the gradient figure and claim 8 look at, as fractions of the schedule: 1k,
# 16k, 48k and 64k of the paper's 64k.
GRADIENT_FRACTIONS = (1 / 64, 1 / 4, 3 / 4, 1.0)
GRADIENT_COLUMNS = ["arch", "depth", "seed", "iteration", "layer", "name", "grad_norm"]
log = logging.getLogger("degrade")


def gradient_norm_table(study: Study) -> pd.DataFrame:
    """The logged per-layer gradient norms of the study's finished runs (columns
    `GRADIENT_COLUMNS`); empty when no run has `grad_norms.csv`."""
    frames = []
    for record in study.records:
        if record.state != "done":
            continue
        try:
            norms = read_grad_norms(record.path)
        except (OSError, DamagedFile) as error:  # named, and must not stop the analysis
            log.warning("warning: %s; its gradient norms are left out",
                        error_line(error, with_type=False))
            continue
        if not norms.empty:
            frames.append(norms.assign(arch=record.config.arch, depth=record.config.depth,
                                       seed=record.config.seed))
    if not frames:
        return pd.DataFrame({column: pd.Series(dtype="int64" if column in (
            "depth", "seed", "iteration", "layer") else "float64" if column == "grad_norm"
            else object) for column in GRADIENT_COLUMNS})
    return pd.concat(frames, ignore_index=True)[GRADIENT_COLUMNS]


def gradient_iterations(logged: Sequence[int], iterations: int) -> list[int]:
    """The logged iterations nearest to `GRADIENT_FRACTIONS` of the schedule (1k, 16k, 48k,
    64k of 64k), without repeats."""
    logged = sorted(set(logged))
    if not logged:
        return []
    chosen = {min(logged, key=lambda it: (abs(it - fraction * iterations), it))
              for fraction in GRADIENT_FRACTIONS}
    return sorted(chosen)


def gradient_ratios(norms: pd.DataFrame) -> pd.DataFrame:
    """Per network and iteration: the first conv's gradient norm over the last conv's,
    geometric mean over seeds (columns arch, depth, iteration, ratio, seeds)."""
    if norms.empty:
        return pd.DataFrame(columns=["arch", "depth", "iteration", "ratio", "seeds"])
    keys = ["arch", "depth", "seed", "iteration"]
    first = norms.loc[norms.groupby(keys)["layer"].idxmin()].set_index(keys)["grad_norm"]
    last = norms.loc[norms.groupby(keys)["layer"].idxmax()].set_index(keys)["grad_norm"]
    per_run = (first / last).rename("ratio").reset_index()
    per_run["log"] = per_run["ratio"].map(lambda x: math.log(x) if x > 0 else -math.inf)
    grouped = per_run.groupby(["arch", "depth", "iteration"])
    result = grouped["log"].mean().map(math.exp).rename("ratio").to_frame()
    result["seeds"] = grouped.size()
    return result.reset_index()

