"""`degrade status`: one line per run, whatever state each run is in."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
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


def test_status_shows_each_state_with_its_details(mixed: Path) -> None:
    result = degrade_here("status", str(mixed))
    assert result.exit_code == 0, result.output
    lines = dict(re.match(r"resnet-20-A\s+seed (\d)\s+(.*)", line).groups()
                 for line in result.output.splitlines()[:-1])
    assert lines["0"].split()[:2] == ["done", f"{TOTAL}/{TOTAL}"]
    assert "train  0.50%" in lines["0"] and "test  8.25%" in lines["0"]
    assert lines["1"].split()[:2] == ["diverged", f"300/{TOTAL}"]
    assert lines["2"].split()[:2] == ["running", f"200/{TOTAL}"]
    assert "train 30.00%" in lines["2"] and "test 35.50%" in lines["2"]
    eta = re.search(r"ETA 1m(\d\d)s$", lines["2"])
    assert eta and 8 <= int(eta.group(1)) <= 15, lines["2"]
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
