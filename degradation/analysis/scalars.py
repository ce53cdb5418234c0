"""Every logged point of every run as one tidy frame, and its aggregate over seeds.

Usage: `read_scalars(Path("outputs"))` gives every logged point as a DataFrame (columns
`COLUMNS`); `aggregate(frame)` the mean, std, min, max and count over seeds per iteration.

A run logs each point twice, to `metrics.csv` (its record) and to TensorBoard's events (a
copy, which alone holds the gradient norms); `read_run_scalars` reads whichever is complete.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from degradation.analysis.results import (
    eval_set_of,
    load_runs,
    run_label,
    shortcut_of,
    variants,
)
from degradation.events import event_files, read_events
from degradation.runs import METRICS_FILE, SUMMARY_FILE, TENSORBOARD_DIR, RunRecord
from degradation.storage import DamagedFile
from degradation.training.logs import HPARAMS_METRICS, TAGS, read_metrics_prefix

COLUMNS = ["arch", "depth", "shortcut", "variant", "seed", "run", "state", "eval_set",
           "iteration", "metric", "value"]
GROUP = ["arch", "depth", "shortcut", "variant"]
_DTYPES = {"depth": "int64", "seed": "int64", "iteration": "int64", "value": "float64"}
_POINT_DTYPES = {"iteration": "int64", "metric": object, "value": "float64"}
log = logging.getLogger("degrade")


def read_scalars(path: Path, recursive: bool = False) -> pd.DataFrame:
    """Every logged scalar of every run under `path` as a tidy frame (columns `COLUMNS`)."""
    path = Path(path)
    return scalars_of(load_runs(path, recursive), path)


def scalars_of(records: Sequence[RunRecord], root: Path) -> pd.DataFrame:
    """`read_scalars` for runs already found; `run` is each folder relative to `root`."""
    labels = variants(records)
    frames = []
    for record in records:
        points = read_run_scalars(record.path)
        if points.empty:
            continue
        run = run_label(record, root)
        points = points.assign(
            arch=record.config.arch, depth=record.config.depth, shortcut=shortcut_of(record),
            variant=labels[record.path], seed=record.config.seed, run=run,
            state=record.state, eval_set=eval_set_of(record))
        frames.append(points[COLUMNS])
    if not frames:
        return pd.DataFrame({column: pd.Series(dtype=_dtype(column)) for column in COLUMNS})
    return pd.concat(frames, ignore_index=True).astype(_DTYPES)


def read_run_scalars(run_dir: Path) -> pd.DataFrame:
    """One run's scalars (iteration, metric, value), from whichever of its two logs is complete
    (`run_scalars`)."""
    return run_scalars(run_dir)[0]


def run_scalars(run_dir: Path) -> tuple[pd.DataFrame, dict[int, dict[str, float]]]:
    """One run's scalars (iteration, metric, value), from whichever of its two logs is complete,
    and metrics.csv's rows as written ({} where it is damaged or missing): each log read once.

    metrics.csv is the run's record and TensorBoard's events a copy (which alone holds the
    gradient norms). The events are read where they hold every point of metrics.csv; where
    they lack some (a damaged or cut event file, or events not yet flushed by a run in
    training) the CSV's points are; a damaged CSV gives only its valid rows, unless the events
    hold more. A damaged log of a finished run is named in a `warning:` line.
    """
    run_dir = Path(run_dir)
    files = event_files(run_dir / TENSORBOARD_DIR)
    events = _read_events(files)
    path = run_dir / METRICS_FILE
    try:
        rows, damage = read_metrics_prefix(path)
    except OSError:  # no metrics.csv: a run from before it, or one that has logged nothing yet
        return events, {}
    logged = _points(rows)
    in_events = set(zip(events["iteration"], events["metric"], strict=True))
    in_csv = set(zip(logged["iteration"], logged["metric"], strict=True))
    if in_csv <= in_events and (damage is None or len(_tags(in_events)) > len(in_csv)):
        if damage is not None:
            log.warning("warning: %s; its points are read from the TensorBoard events", damage)
        return events, {} if damage is not None else rows
    if damage is not None:
        log.warning("warning: %s; its points after that line are left out", damage)
    elif files and (run_dir / SUMMARY_FILE).exists():  # a finished run's events are whole
        where = files[0] if len(files) == 1 else run_dir / TENSORBOARD_DIR
        log.warning("warning: %s is damaged (its TensorBoard events hold %d of the %d points "
                    "of %s); the curves are read from %s", where, len(in_csv & in_events),
                    len(in_csv), METRICS_FILE, METRICS_FILE)
    others = events[~events["metric"].isin(TAGS)]  # the gradient norms: in the events only
    return pd.concat([logged, others], ignore_index=True).sort_values(
        ["metric", "iteration"], ignore_index=True), {} if damage is not None else rows


def _tags(points: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """The points of `metrics.csv`'s metrics (`TAGS`) among `points`."""
    return {point for point in points if point[1] in TAGS}


def _read_events(files: Sequence[Path]) -> pd.DataFrame:
    """The scalars of a run's event files (`events.read_events`); a damaged file is named in
    a `warning:` line and its points are left out."""
    def damaged(error: DamagedFile) -> None:  # a damaged event file must not stop the analysis
        log.warning("warning: %s; its points are left out", error)

    # The HParams session's final numbers (summary.json's) are no curve: written as a run
    # ends, they must not count as the points a resumed run's file starts with.
    points = read_events(files, damaged, keep=lambda tag: tag not in HPARAMS_METRICS)
    return pd.DataFrame(points, columns=list(_POINT_DTYPES)).astype(_POINT_DTYPES)


def _points(rows: dict[int, dict[str, float]]) -> pd.DataFrame:
    """metrics.csv's rows as points (iteration, metric, value)."""
    points = [(iteration, metric, value) for iteration, values in rows.items()
              for metric, value in values.items()]
    return pd.DataFrame(points, columns=list(_POINT_DTYPES)).astype(_POINT_DTYPES)


def _dtype(column: str) -> str:
    return _DTYPES.get(column, "object")


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one seed), min, max and count over seeds per iteration."""
    keys = [*GROUP, "metric", "iteration"]
    stats = df.groupby(keys, sort=True)["value"].agg(["mean", "std", "min", "max", "count"])
    return stats.reset_index()
