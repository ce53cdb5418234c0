"""`degrade export`: every logged point of every run as one tidy table, config as columns.

    degrade export outputs/points.csv                     # CSV, readable anywhere
    degrade export outputs/points.parquet --format parquet  # needs pyarrow

One row per (run, iteration) with the run's configuration flattened to dotted columns
(`train.lr`, `data.val_split`, ...), its folder and state, and one column per logged tag
(`error/train`, `error/test`, `loss/train`, `loss/test`, `lr`), blank where a tag was not
logged at that iteration (test error only at evaluations).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from degradation.analysis.results import (
    AnalysisError,
    load_runs,
    read_run_scalars,
    run_label,
    shortcut_of,
)
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
        points = read_run_scalars(record.path)
        if points.empty:
            continue
        wide = points.pivot_table(index="iteration", columns="metric", values="value",
                                  aggfunc="last").reindex(columns=list(TAGS))
        wide = wide.reset_index().rename_axis(columns=None)
        config = run_columns(record, path)
        frames.append(wide.assign(**config)[[*config, "iteration", *TAGS]])
    if not frames:
        raise AnalysisError(f"no logged points under {path} yet (no run has logged a metric)")
    return pd.concat(frames, ignore_index=True)


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
