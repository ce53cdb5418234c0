"""`degrade export`: every logged point of every run as one tidy table, config as columns.

    degrade export outputs                       # outputs/figures/points.csv
    degrade export outputs --out points.parquet  # Parquet: needs pyarrow

One row per (run, iteration) with the run's configuration flattened to dotted columns
(`train.lr`, `data.val_split`, ...), its folder and state, and one column per logged tag
(`error/train`, `error/test`, `loss/train`, `loss/test`, `lr`), blank where a tag was not
logged at that iteration (test error only at evaluations). The values are the run's
`metrics.csv`, as exact as training wrote them (`lr` 0.1, not TensorBoard's float32
0.10000000149011612); TensorBoard's events give only the points the CSV lacks.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from degradation.analysis.results import AnalysisError, load_runs, run_label, shortcut_of
from degradation.analysis.scalars import run_scalars
from degradation.runs import RunRecord, flat_config
from degradation.storage import atomic_write_bytes
from degradation.training.logs import TAGS

FORMATS = ("csv", "parquet")


def run_columns(record: RunRecord, root: Path) -> dict[str, Any]:
    """The run's configuration as flat columns (lists as text), its folder and its state."""
    columns: dict[str, Any] = {"run": run_label(record, root), "state": record.state}
    for key, value in flat_config(record.config).items():
        columns[key] = str(value) if isinstance(value, list) else value
    columns["shortcut"] = shortcut_of(record)  # plain nets have none, whatever the YAML says
    return columns


def points_table(path: Path, recursive: bool = False) -> pd.DataFrame:
    """One row per logged iteration of every run under `path`: config columns, then tags."""
    path = Path(path)
    frames = []
    for record in load_runs(path, recursive):
        wide = logged_points(record.path)
        if wide.empty:
            continue
        wide = wide.reset_index()
        config = run_columns(record, path)
        frames.append(wide.assign(**config)[[*config, "iteration", *TAGS]])
    if not frames:
        raise AnalysisError(f"no logged points under {path} yet (no run has logged a metric)")
    return pd.concat(frames, ignore_index=True)


def logged_points(folder: Path) -> pd.DataFrame:
    """A run's points, indexed by iteration, one column per tag (TAGS): its metrics.csv as
    written, and TensorBoard's (float32) values only at iterations the CSV lacks (a damaged
    metrics.csv moved away restarts at the checkpoint; the events keep every point)."""
    # One read of each log: a damaged metrics.csv is named once (by `run_scalars`), and its
    # rows are not exported as exact then: the points `run_scalars` chose are.
    events, rows = run_scalars(Path(folder))
    exact = pd.DataFrame.from_dict(rows, orient="index", columns=list(TAGS), dtype="float64")
    events = events[events["metric"].isin(TAGS) & ~events["iteration"].isin(list(rows))]
    wide = events.pivot_table(index="iteration", columns="metric", values="value",
                              aggfunc="last").reindex(columns=list(TAGS))
    frames = [frame for frame in (exact, wide) if not frame.empty]
    both = pd.concat(frames) if frames else exact
    return both.sort_index().rename_axis(index="iteration", columns=None)


def format_refusal(fmt: str) -> str | None:
    """Why `fmt` cannot be written here (None: it can)."""
    if fmt not in FORMATS:
        return f"--format {fmt!r} is not one of: {', '.join(FORMATS)}"
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401  (pandas' parquet engine)
        except ImportError:
            return ("--format parquet needs pyarrow, which is not installed: "
                    "install pyarrow (pip install pyarrow) or use --format csv")
    return None


def export_command(path: Path, out: Path, fmt: str, recursive: bool = False) -> Path:
    """`degrade export`: write the points table to `out` as CSV or parquet; the path."""
    refusal = format_refusal(fmt)
    if refusal:
        raise AnalysisError(refusal)
    table = points_table(path, recursive)
    buffer = io.BytesIO()
    if fmt == "parquet":
        table.to_parquet(buffer, index=False)
    else:
        buffer.write(table.to_csv(index=False, lineterminator="\n").encode())
    out = Path(out)
    atomic_write_bytes(out, buffer.getvalue())  # makes the folder; a failure is one line
    return out
