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
    cpu_estimate,
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


def test_a_cpu_sweep_over_an_hour_says_so_with_the_estimate_and_how_to_shorten() -> None:
    demo = [(make_config(Path("out"), {"arch": arch, "depth": depth,
                                       "train.iterations": 16000,
                                       "train.milestones": [8000, 12000]}), 16000)
            for arch in ("plain", "resnet") for depth in (20, 56)]
    timed = []

    def step_seconds(config) -> float:  # the timing is injected: no test depends on speed
        timed.append((config.arch, config.depth))
        return 0.02

    warning = cpu_estimate(demo, step_seconds, cores=1)
    # One network is timed, the shallowest; the others follow its depth: 56 layers cost 3x
    # what 20 do (54 against 18 conv layers).
    assert timed == [("plain", 20)]
    # 16000 iterations x (0.02 + 0.06 + 0.02 + 0.06) s = 42m40s: under an hour, no warning.
    assert warning is None
    slow = cpu_estimate(demo, lambda config: 0.1, cores=2)  # 16000 x 0.8 s over 2 cores
    assert slow is not None and slow.startswith("warning: no GPU: 4 runs need about 1h46m")
    assert "plain-20 timed here: 0.10 s a step on one core, eager" in slow
    assert "spread over 2 cores" in slow
    # 3600 s / 0.4 s per iteration of all four: 9000 iterations fit in about an hour, with
    # log and evaluation points that a schedule of that length can draw curves from (the
    # milestones quoted for a shell: brackets are a glob pattern).
    assert ("train.iterations=9000 'train.milestones=[4500,6750]' train.log_every=220 "
            "train.eval_every=2250") in slow
    assert "experiment=smoke" in slow
    short = [(config, 40) for config, _ in demo]
    assert cpu_estimate(short, lambda config: pytest.fail("short sweeps are not timed")) is None


def test_sweep_warns_before_starting_on_the_cpu(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import degradation.analysis.watch
    import degradation.bench

    monkeypatch.setattr(degradation.bench, "step_seconds", lambda config: 0.5)
    monkeypatch.setattr(degradation.analysis.watch, "usable_cores", lambda: [0, 1])
    result = degrade_here("sweep", "--dry-run", "device=cpu", "depth=20,56",
                                      f"output_dir={tmp_path}", "train.iterations=16000",
                                      "train.milestones=[8000,12000]")
    assert result.exit_code == 0, result.output
    warning = result.stderr.strip()
    assert warning.startswith("warning: no GPU: 2 runs need about 4h26m on this CPU")
    assert "train.iterations=3600 'train.milestones=[1800,2700]'" in warning


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


def test_train_warns_before_a_long_cpu_run_as_sweep_does(generated: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import degradation.analysis.watch
    import degradation.bench
    from degradation.launch import session

    monkeypatch.setattr(degradation.bench, "step_seconds", lambda config: 0.5)
    monkeypatch.setattr(degradation.analysis.watch, "usable_cores", lambda: [0, 1])
    launched = []
    monkeypatch.setattr(session, "launch", lambda *args, **kwargs: launched.append(args))
    result = degrade_here("train", "device=cpu", "depth=20", f"data.root={generated}",
                          "data.download=false", "train.batch_size=32",
                          f"output_dir={tmp_path / 'out'}")
    assert result.exit_code == 0, result.output
    # 64000 iterations x 0.5 s over 2 cores: a single run spreads over all of them.
    assert "warning: no GPU: 1 run needs about 4h26m on this CPU" in result.output
    assert launched  # a warning, not a refusal


def test_a_sweep_sent_to_a_cluster_is_not_timed_on_this_machine(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import degradation.bench

    monkeypatch.setattr(degradation.bench, "step_seconds",
                        lambda config: pytest.fail("the nodes' speed is not measured here"))
    result = degrade_here("sweep", "--dry-run", "hydra/launcher=slurm", "depth=20,56",
                          f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert result.output.startswith("2 runs: 2 to start")


def test_one_run_is_counted_in_the_singular(tmp_path: Path) -> None:
    result = degrade_here("sweep", "--dry-run", "device=cpu", "train.iterations=40",
                          "train.milestones=[20,30]", f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("1 run: 1 to start, ")


def test_the_estimate_notes_compilation_only_for_runs_that_compile() -> None:
    def runs(iterations: int) -> list:
        return [(make_config(Path("out"), {"depth": 56, "train.iterations": iterations,
                                           "train.milestones": [iterations // 2,
                                                                iterations * 3 // 4]}),
                 iterations)]

    long = cpu_estimate(runs(64000), lambda config: 1.0, cores=1)
    assert long is not None and "runs of 5,000+ iterations compile" in long
    short = cpu_estimate(runs(4000), lambda config: 1.0, cores=1)
    assert short is not None and "compile" not in short
