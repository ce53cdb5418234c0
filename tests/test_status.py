"""`degrade status`: one line per run, whatever state each run is in."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from degradation.data.cifar import write_cifar10
from degradation.runs import CHECKPOINT, ERROR_FILE, METRICS_FILE, TENSORBOARD_DIR
from degradation.storage import LOCK, RunLock
from degradation.training.logs import TAGS
from tests.analysis_fixtures import make_config, make_summary, write_run
from tests.conftest import degrade_here

TOTAL = 1000


def run(root: Path, seed: int, **summary_values: object) -> Path:
    """A resnet-20 run folder (seed `seed`), finished when summary values are given."""
    overrides = {"seed": seed, "train.iterations": TOTAL, "train.milestones": [500, 750]}
    summary = make_summary(make_config(root, overrides), **summary_values) \
        if summary_values else None
    return write_run(root, overrides, summary=summary)


def write_metrics(folder: Path, rows: dict[int, dict[str, float]]) -> None:
    lines = [",".join(("iteration", *TAGS))]
    lines += [",".join((str(it), *(repr(row[tag]) if tag in row else "" for tag in TAGS)))
              for it, row in sorted(rows.items())]
    (folder / METRICS_FILE).write_text("\n".join(lines) + "\n")


@pytest.fixture
def mixed(tmp_path: Path):
    """Six runs: done, diverged, running (lock held here), failed, interrupted, pending."""
    run(tmp_path, 0, final_test_error=8.25, final_train_error=0.5)
    run(tmp_path, 1, status="diverged", iterations_done=300, final_test_error=90.0,
        final_train_error=90.0)
    running = run(tmp_path, 2)
    write_metrics(running, {100: {"error/train": 40.0}, 200: {"error/train": 30.0,
                                                             "error/test": 35.5}})
    # 100 iterations in 10 s, the last point 5 s ago: 800 left at 10/s is 80 s, 75 from now.
    writer = SummaryWriter(log_dir=str(running / TENSORBOARD_DIR))
    for step, ago in ((100, 15.0), (200, 5.0)):
        writer.add_scalar("error/train", 30.0, step, walltime=time.time() - ago)
    writer.close()
    failed = run(tmp_path, 3)
    (failed / ERROR_FILE).write_text("Traceback ...\nDataError: data.root=/x holds no batches\n")
    interrupted = run(tmp_path, 4)
    write_metrics(interrupted, {100: {"error/train": 50.0, "error/test": 55.0}})
    (interrupted / CHECKPOINT).write_bytes(b"checkpoint")
    # A lock file left behind by a killed process: no kernel lock on it, so not running.
    (interrupted / LOCK).write_text("somehost 123\n")
    run(tmp_path, 5)
    with RunLock(running):
        yield tmp_path


def eta_seconds(line: str) -> int:
    """The ETA a status line ends with, in seconds ("ETA 1m02s", "ETA 59s")."""
    match = re.search(r"ETA (?:(\d+)m)?(\d\d?)s$", line)
    assert match, line
    return 60 * int(match.group(1) or 0) + int(match.group(2))


def test_status_shows_each_state_with_its_details(mixed: Path) -> None:
    (running,) = mixed.glob("runs/resnet-20-A/seed-2-*")
    accumulator = EventAccumulator(str(running / TENSORBOARD_DIR))
    accumulator.Reload()
    last_point = accumulator.Scalars("error/train")[-1].wall_time
    before = time.time()
    result = degrade_here("status", str(mixed))
    after = time.time()
    assert result.exit_code == 0, result.output
    lines = dict(re.match(r"resnet-20-A\s+seed (\d)\s+(.*)", line).groups()
                 for line in result.output.splitlines()[:-1])
    assert lines["0"].split()[:2] == ["done", f"{TOTAL}/{TOTAL}"]
    assert "train  0.50%" in lines["0"] and "test  8.25%" in lines["0"]
    assert lines["1"].split()[:2] == ["diverged", f"300/{TOTAL}"]
    assert lines["2"].split()[:2] == ["running", f"200/{TOTAL}"]
    assert "train 30.00%" in lines["2"] and "test 35.50%" in lines["2"]
    # 800 iterations left at 10 a second, less the time since the last point: however slow
    # this machine was between writing the run and asking for its status.
    eta = eta_seconds(lines["2"])
    assert 80 - (after - last_point) - 1 <= eta <= 80 - (before - last_point) + 1, lines["2"]
    assert lines["3"].split()[:2] == ["failed", f"0/{TOTAL}"]
    assert lines["3"].endswith("error: DataError: data.root=/x holds no batches")
    assert lines["4"].split()[:2] == ["interrupted", f"100/{TOTAL}"]
    assert "ETA" not in lines["4"]
    assert lines["5"].split()[:2] == ["pending", f"0/{TOTAL}"]
    assert "train      -  test      -" in lines["5"]
    assert result.output.splitlines()[-1] == (
        "6 runs: 1 done, 1 diverged, 1 running, 1 failed, 1 interrupted, 1 pending")


def test_status_without_runs_says_so(tmp_path: Path) -> None:
    result = degrade_here("status", str(tmp_path))
    assert result.exit_code == 1
    assert "no runs under" in result.output


def test_status_names_each_run_data(tmp_path: Path) -> None:
    overrides = {"seed": 0, "train.iterations": TOTAL, "train.milestones": [500, 750]}
    summary = {**make_summary(make_config(tmp_path, overrides)),
               "data": "subset of 3805 training images"}
    write_run(tmp_path, overrides, summary=summary)
    generated = write_cifar10(tmp_path / "generated", 4, 2)
    write_run(tmp_path, {**overrides, "seed": 1, "data.root": str(generated)})  # pending
    write_run(tmp_path, {**overrides, "seed": 2, "data.root": str(tmp_path / "gone")})
    result = degrade_here("status", str(tmp_path))
    assert result.exit_code == 0, result.output
    lines = {line.split()[2]: line for line in result.output.splitlines()[:-1]}
    assert "[subset of 3805 training images]" in lines["0"]
    assert "[generated, 20 training images]" in lines["1"]  # what data.root holds now
    assert "[data unknown]" in lines["2"]


def running_run(root: Path, seed: int) -> Path:
    """A run training at 10 iterations/s, at iteration 200 of TOTAL (its lock is not held)."""
    folder = run(root, seed)
    write_metrics(folder, {100: {"error/train": 40.0}, 200: {"error/train": 30.0}})
    writer = SummaryWriter(log_dir=str(folder / TENSORBOARD_DIR))
    for step, ago in ((100, 15.0), (200, 5.0)):
        writer.add_scalar("error/train", 30.0, step, walltime=time.time() - ago)
    writer.close()
    return folder


def test_status_with_a_path_and_overrides_looks_under_the_path_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = tmp_path / "elsewhere"
    with RunLock(running_run(outputs, 0)):
        monkeypatch.chdir(tmp_path)  # no ./outputs: the runs asked for are those under PATH
        result = degrade_here("status", str(outputs), "seed=0,1", f"train.iterations={TOTAL}",
                              "train.milestones=[500,750]", "--watch", "--times", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[2:4] for line in lines[:-1]] == [["0", "running"], ["1", "not"]]
    assert all(str(outputs) in line for line in lines[:-1])
    # 800 + 1000 iterations left at the running run's 10 iterations/s.
    assert lines[-1] == "sweep: 0/2 runs ended, 1 running, 1 not started; ETA 3m00s"
    assert not (tmp_path / "outputs").exists()


def test_status_watch_ends_when_no_run_can_change(tmp_path: Path) -> None:
    run(tmp_path, 0, final_test_error=8.25, final_train_error=0.5)
    (run(tmp_path, 1) / ERROR_FILE).write_text("DataError: data.root=/x holds no batches\n")
    result = degrade_here("status", str(tmp_path), "--watch", "--every", "0.1", "--times", "5")
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("sweep: ")] == [
        "sweep: 1/2 runs ended, 1 failed"]  # a failed run waits for a new command


def test_status_watch_follows_a_sweep_before_its_runs_write_anything(tmp_path: Path) -> None:
    import contextlib
    import threading

    from degradation.launch.sweeps import SWEEPS_DIR, recorded
    from degradation.runs import run_dir

    configs = [make_config(tmp_path, {"seed": seed, "train.iterations": TOTAL,
                                      "train.milestones": [500, 750]}) for seed in (0, 1)]
    with contextlib.ExitStack() as sweep:
        sweep.enter_context(recorded([(config, run_dir(config)) for config in configs]))
        # Not a run folder yet: the sweep's record alone says what will be trained.
        result = degrade_here("status", str(tmp_path))
        assert result.exit_code == 0, result.output
        assert [line.split()[2:4] for line in result.output.splitlines()[:-1]] == [
            ["0", "not"], ["1", "not"]]
        assert result.output.splitlines()[-1] == "2 runs: 2 not started"
        run(tmp_path, 0, final_test_error=8.25, final_train_error=0.5)  # one run ends
        threading.Timer(1.0, sweep.close).start()  # then the sweep ends, leaving run 1
        result = degrade_here("status", str(tmp_path), "--watch", "--every", "0.1",
                              "--times", "300")
    assert result.exit_code == 0, result.output
    refreshes = [line for line in result.output.splitlines() if line.startswith("sweep: ")]
    assert 1 < len(refreshes) < 300  # waited for the sweep, and stopped when it ended
    assert refreshes[-1] == "sweep: 1/2 runs ended, 1 not started"  # what the sweep left
    assert not (tmp_path / SWEEPS_DIR).exists()
    assert degrade_here("status", str(tmp_path)).output.splitlines()[-1] == "1 run: 1 done"


@pytest.mark.slow
def test_status_watch_started_with_a_sweep_waits_for_it_and_ends_with_it(
        small_cifar_root: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from degradation.launch.sweeps import SWEEPS_DIR
    from tests.conftest import tiny_overrides

    output = tmp_path / "outputs"
    overrides = tiny_overrides(small_cifar_root, output, **{"train.compile": "false"})
    sweep = subprocess.Popen([sys.executable, "-m", "degradation", "sweep", *overrides,
                              "seed=0,1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.time() + 300  # a guard against a hang only
        while not list(output.glob(f"{SWEEPS_DIR}/*/*.json")):
            if sweep.poll() is not None or time.time() > deadline:
                pytest.fail(f"the sweep wrote no record:\n{sweep.communicate()[0]}")
            time.sleep(0.02)
        watched = degrade_here("status", str(output), "--watch", "--every", "0.2")
        ended_first = not (output / SWEEPS_DIR).exists()
        log, _ = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, log
    assert watched.exit_code == 0, watched.output
    lines = watched.output.splitlines()
    assert [line for line in lines if line.startswith("sweep: ")][-1] == "sweep: 2/2 runs ended"
    assert sum(line.startswith("resnet-8-A") for line in lines[:3]) == 2  # listed from the start
    assert ended_first  # it watched until the sweep had ended


def test_a_sweep_whose_record_cannot_be_written_goes_on(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from degradation.launch.sweeps import SWEEPS_DIR, live_sweeps, recorded
    from degradation.runs import run_dir

    (tmp_path / SWEEPS_DIR).write_text("a file where the records would go")
    config = make_config(tmp_path, {"train.iterations": TOTAL, "train.milestones": [500, 750]})
    went_on = False
    with recorded([(config, run_dir(config))]):
        went_on = True
        assert live_sweeps(tmp_path) == []
    assert went_on and "lists this sweep's runs only once they start" in caplog.text


def test_status_with_overrides_reads_a_path_whose_name_hydra_would_split(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = tmp_path / "out,v2 $(x)"  # unquoted, Hydra reads a sweep over two folders
    run(outputs, 0, final_test_error=8.25, final_train_error=0.5)
    monkeypatch.chdir(tmp_path)
    result = degrade_here("status", str(outputs), "seed=0", f"train.iterations={TOTAL}",
                          "train.milestones=[500,750]")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[0].split()[3] == "done" and str(outputs) in lines[0]


def test_status_watch_reads_the_sweeps_once_per_refresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from degradation.analysis import watch
    from degradation.launch import sweeps

    calls = {"live_sweeps": 0, "configs_views": 0}

    def counted(name: str, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(sweeps, "live_sweeps", counted("live_sweeps", sweeps.live_sweeps))
    monkeypatch.setattr(watch, "configs_views", counted("configs_views", watch.configs_views))
    with RunLock(running_run(tmp_path, 0)):  # a run that trains: watched to the last refresh
        result = degrade_here("status", str(tmp_path), "seed=0,1", f"train.iterations={TOTAL}",
                              "train.milestones=[500,750]", "--watch", "--every", "0.1",
                              "--times", "3")
    assert result.exit_code == 0, result.output
    assert sum(line.startswith("sweep: ") for line in result.output.splitlines()) == 3
    assert calls == {"live_sweeps": 3, "configs_views": 1}  # the runs asked for do not change
