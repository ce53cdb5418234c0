"""`degrade export`: every logged point of every run in one table, config as columns."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from degradation.runs import METRICS_FILE
from degradation.training.logs import TAGS, MetricsLog, read_metrics
from tests.analysis_fixtures import write_run
from tests.conftest import degrade_here


def logged_run(root: Path, arch: str, seed: int, iterations: int) -> Path:
    """A run folder whose points are logged as training logs them (TensorBoard and CSV)."""
    folder = write_run(root, {"arch": arch, "seed": seed, "train.iterations": 400,
                              "train.milestones": [200, 300]})
    metrics = MetricsLog(folder)
    for iteration in range(100, iterations + 1, 100):
        values = {"lr": 0.1, "error/train": 50.0 - iteration / 20, "loss/train": 1.5}
        if iteration % 200 == 0:
            values.update({"error/test": 60.0 - iteration / 20, "loss/test": 1.7})
        metrics.log(iteration, values)
    metrics.close()
    return folder


def test_export_writes_one_row_per_logged_point_with_the_config(tmp_path: Path) -> None:
    folders = [logged_run(tmp_path, "plain", 0, 400), logged_run(tmp_path, "resnet", 1, 300)]
    out = tmp_path / "export" / "points.csv"
    result = degrade_here("export", str(tmp_path), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    table = pd.read_csv(out)
    for column in ("run", "state", "arch", "depth", "shortcut", "seed", "train.lr",
                   "train.iterations", "train.milestones", "data.val_split", "iteration",
                   *TAGS):
        assert column in table.columns
    assert len(table) == sum(len(read_metrics(folder / METRICS_FILE)) for folder in folders)
    resnet = table[table["arch"] == "resnet"].set_index("iteration")
    assert list(resnet.index) == [100, 200, 300]
    assert resnet.loc[300, "error/train"] == 35.0 and pd.isna(resnet.loc[300, "error/test"])
    assert resnet.loc[200, "error/test"] == 50.0
    assert set(resnet["seed"]) == {1} and set(resnet["shortcut"]) == {"A"}
    assert set(table.loc[table["arch"] == "plain", "shortcut"]) == {"-"}
    assert set(table["train.milestones"]) == {"[200, 300]"}


def test_parquet_without_pyarrow_is_refused_in_one_line(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    logged_run(tmp_path, "resnet", 0, 200)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    out = tmp_path / "points.parquet"
    result = degrade_here("export", str(tmp_path), "--out", str(out))
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "install pyarrow" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    result = degrade_here("export", str(tmp_path / "x"), "--format", "xlsx")
    assert result.exit_code == 2
    assert "'xlsx' is not one of: csv, parquet" in result.output


def test_export_writes_the_values_of_metrics_csv_not_float32(tmp_path: Path) -> None:
    folder = logged_run(tmp_path, "resnet", 0, 400)
    out = tmp_path / "points.csv"
    assert degrade_here("export", str(tmp_path), "--out", str(out)).exit_code == 0
    table = pd.read_csv(out).set_index("iteration")
    assert set(table["lr"]) == {0.1}  # TensorBoard holds 0.10000000149011612
    assert "0.1," in out.read_text() and "0.10000000149" not in out.read_text()
    exact = read_metrics(folder / METRICS_FILE)
    assert {it: table.loc[it, "error/train"] for it in exact} == {
        it: row["error/train"] for it, row in exact.items()}


def test_export_takes_from_the_events_only_the_points_the_csv_lacks(tmp_path: Path) -> None:
    folder = logged_run(tmp_path, "resnet", 0, 400)
    csv = folder / METRICS_FILE
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], *lines[3:]]) + "\n")  # from iteration 300 on only
    out = tmp_path / "points.csv"
    assert degrade_here("export", str(tmp_path), "--out", str(out)).exit_code == 0
    table = pd.read_csv(out).set_index("iteration")
    assert list(table.index) == [100, 200, 300, 400]
    assert table.loc[100, "lr"] == pytest.approx(0.1) and table.loc[100, "lr"] != 0.1
    assert table.loc[300, "lr"] == 0.1 and table.loc[400, "error/test"] == 40.0
    assert pd.isna(table.loc[300, "error/test"])
    csv.unlink()  # a run logged before metrics.csv: its events alone
    assert degrade_here("export", str(tmp_path), "--out", str(out)).exit_code == 0
    assert list(pd.read_csv(out)["iteration"]) == [100, 200, 300, 400]


def test_export_takes_the_runs_folder_as_the_other_analysis_commands_do(tmp_path: Path) -> None:
    # `degrade export outputs` reads outputs/ and writes outputs/figures/points.csv.
    logged_run(tmp_path, "resnet", 0, 200)
    result = degrade_here("export", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = tmp_path / "figures" / "points.csv"
    assert result.output.strip() == str(out)
    assert list(pd.read_csv(out)["iteration"]) == [100, 200]
    usage = degrade_here("export", "--help", env={"COLUMNS": "120"}).stdout
    # Click before 8.2 writes the argument's name in capitals, later versions as declared.
    assert "export [options] [path]" in usage.lower() and "{out}" not in usage


def test_parquet_export_without_pyarrow_writes_nothing_under_path(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # refused before anything is read
    result = degrade_here("export", str(tmp_path), "--format", "parquet")
    assert result.exit_code == 2 and "install pyarrow" in result.output
    assert not (tmp_path / "figures").exists()


def test_export_still_reads_the_former_form_file_from_path(tmp_path: Path) -> None:
    logged_run(tmp_path, "plain", 0, 200)
    out = tmp_path / "points.csv"
    result = degrade_here("export", str(out), "--from", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == 2


def test_export_reads_metrics_csv_once_and_names_a_damaged_one_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from degradation.analysis import export
    from degradation.training import logs

    folder = logged_run(tmp_path, "plain", 0, 400)
    opened = []
    csv_lines = logs._csv_lines
    monkeypatch.setattr(logs, "_csv_lines", lambda path: opened.append(path) or csv_lines(path))
    whole = export.points_table(tmp_path)
    assert opened == [folder / METRICS_FILE]
    # Cut inside its last row: one warning, and the TensorBoard events give every point.
    path = folder / METRICS_FILE
    path.write_bytes(path.read_bytes()[:-3])
    opened.clear()
    with caplog.at_level(logging.WARNING, logger="degrade"):
        damaged = export.points_table(tmp_path)
    assert opened == [path]
    (warning,) = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"warning: {path} is damaged (line 5: ")
    assert damaged["iteration"].tolist() == whole["iteration"].tolist() == [100, 200, 300, 400]
