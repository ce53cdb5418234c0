"""Progress you can watch: the one renderer behind the sweep's console and `status --watch`."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from degradation.analysis.watch import (
    NOT_STARTED,
    ProgressView,
    RunView,
    run_line,
    sweep_line,
)
from tests.analysis_fixtures import make_config, make_summary, write_run
from tests.conftest import degrade_here
from tests.test_status import mixed  # noqa: F401  (a fixture)

RECIPE = {"train.iterations": 4000, "train.milestones": [2000, 3000]}


def fake(name: str, seed: int, state: str, iteration: int, rate: float | None = None) -> RunView:
    """A run's view as the run folders would give it."""
    return RunView(name, seed, state, iteration, 4000, 0.1 if iteration else None,
                   30.0 if iteration else None, 35.5 if iteration else None,
                   None if rate is None else rate * 128, rate,
                   None if rate is None else (4000 - iteration) / rate, None,
                   Path(f"outputs/runs/{name}/seed-{seed}"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_one_per_run_per_interval_with_the_sweep_line() -> None:
    stream, clock, reads = io.StringIO(), Clock(), []
    views = [fake("plain-20", 0, "done", 4000), fake("resnet-20-A", 0, "running", 1000, 10.0),
             fake("resnet-56-A", 0, NOT_STARTED, 0)]

    def snapshot() -> list[RunView]:
        reads.append(clock.now)
        return views

    view = ProgressView(stream=stream, every_s=60, live=False, clock=clock)
    for second in range(0, 181, 5):  # the launcher ticks far more often than it prints
        clock.now = float(second)
        view.tick(snapshot)
    assert reads == [0.0, 60.0, 120.0, 180.0]  # the folders are read only when due
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 * (len(views) + 1)
    for name in ("plain-20", "resnet-20-A", "resnet-56-A"):
        assert sum(line.startswith(name) for line in lines) == 4
    running = next(line for line in lines if line.startswith("resnet-20-A"))
    assert re.search(r"running\s+1000/4000\s+train 30.00%  test 35.50%  lr 0.1  1,280 img/s",
                     running)
    assert running.endswith("ETA 5m00s")
    # 3000 + 4000 iterations left at the running run's 10 it/s.
    assert lines[3] == "sweep: 1/3 runs ended, 1 running, 1 not started; ETA 11m40s"


def test_sweep_line_counts_ended_runs_and_has_no_eta_without_a_speed() -> None:
    views = [fake("plain-20", 0, "done", 4000), fake("plain-20", 1, "diverged", 300),
             fake("plain-20", 2, "failed", 10)]
    assert sweep_line(views) == "sweep: 2/3 runs ended, 1 failed"
    assert "lr" not in run_line(fake("plain-20", 3, NOT_STARTED, 0))


def test_a_terminal_gets_a_table_redrawn_in_place() -> None:
    stream = io.StringIO()
    view = ProgressView(stream=stream, live=True, clock=Clock())
    view.tick(lambda: [fake("resnet-20-A", 0, "running", 1000, 10.0)])
    view.close()
    text = stream.getvalue()
    for heading in ("network", "iter.", "img/s", "ETA", "resnet-20-A", "1000/4000",
                    "sweep: 0/1 runs ended"):
        assert heading in text


def test_status_watch_refreshes_a_bounded_number_of_times(mixed: Path) -> None:  # noqa: F811
    result = degrade_here("status", str(mixed), "--watch", "--every", "0.1",
                                      "--times", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum(line.startswith("sweep: ") for line in lines) == 3
    assert sum(line.startswith("resnet-20-A    seed 2   running") for line in lines) == 3


def test_status_watch_stops_when_every_run_has_ended(tmp_path: Path) -> None:
    config = make_config(tmp_path, RECIPE)
    write_run(tmp_path, RECIPE, summary=make_summary(config))
    result = degrade_here("status", str(tmp_path), "--watch", "--every", "0.1")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "sweep: 1/1 runs ended"


def test_status_with_overrides_lists_the_runs_not_started(tmp_path: Path) -> None:
    config = make_config(tmp_path, {**RECIPE, "arch": "plain"})
    write_run(tmp_path, {**RECIPE, "arch": "plain"}, summary=make_summary(config))
    # Plain nets have no shortcut: `shortcut=A,B` asks for each seed's run twice.
    overrides = ["seed=0,1,2", "arch=plain", "shortcut=A,B", "train.iterations=4000",
                 "train.milestones=[2000,3000]", f"output_dir={tmp_path}"]
    result = degrade_here("status", *overrides)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[2:5] for line in lines[:-1]] == [
        ["0", "done", "4000/4000"], ["1", "not", "started"], ["2", "not", "started"]]
    assert lines[-1] == "3 runs: 1 done, 2 not started"
    # Without the overrides only what is on disk is known.
    assert degrade_here("status", str(tmp_path)).output.splitlines()[-1] == \
        "1 run: 1 done"


def test_log_lines_during_a_live_table_are_printed_above_it(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    import logging
    import sys

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)  # the launcher's console, as Hydra logs to it
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        view = ProgressView(stream=stream, live=True, clock=Clock())
        view.tick(lambda: [fake("resnet-20-A", 0, "running", 1000, 10.0)])
        assert handler.stream is not stream  # through rich's proxy while the table is live
        logging.getLogger().warning("[1/2 finished] resnet-20-A seed 0")
        view.close()
        assert handler.stream is stream
    finally:
        logging.getLogger().removeHandler(handler)
    assert "[1/2 finished] resnet-20-A seed 0" in stream.getvalue()


def test_one_run_is_counted_in_the_singular(tmp_path: Path) -> None:
    result = degrade_here("sweep", "--dry-run", "device=cpu", "train.iterations=40",
                          "train.milestones=[20,30]", f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("1 run: 1 to start, ")
