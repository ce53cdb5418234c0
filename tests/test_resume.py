"""Nothing lost: runs killed at chosen moments resume to exactly the uninterrupted result.

Each scenario starts `degrade train` in a subprocess with one failure injected at an exact
point (HOOK: a SIGKILL just before the N-th optimizer update, or while the N-th write of a
file is half on disk; SIGTERM/SIGINT/SIGSTOP the same way), then runs the same command again
and compares the result bit for bit with an uninterrupted run: final weights and optimizer
state (torch.equal), metrics.csv byte for byte, and every TensorBoard scalar with no
duplicated or stale steps. On the CPU every step is deterministic for a fixed thread count,
which every process here shares (`train.threads=1`). The schedule: 24 iterations of 8 images
from 80 (10 a pass, so resumes cross reshuffles), logs every 2, evaluations and checkpoints
every 6.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from degradation.runs import (
    CHECKPOINT,
    GRAD_NORMS_FILE,
    METRICS_FILE,
    PREVIOUS_CHECKPOINT,
    SUMMARY_FILE,
)
from degradation.storage import LOCK, read_json
from degradation.training.logs import let_new_event_file_sort_last
from tests.conftest import PROJECT, degrade_here, scalars, tiny_overrides

# Test-only: `degrade ARGS` with one failure injected at an exact moment; argv: MODE N ARGS.
HOOK = r"""
import os, signal, sys
from torch.optim.optimizer import register_optimizer_step_pre_hook

mode, count = sys.argv[1], int(sys.argv[2])
sys.argv = ["degrade", *sys.argv[3:]]
calls = 0

if mode.endswith("+flush"):  # events reach the disk at once, as when flush_secs has passed
    from torch.utils.tensorboard import SummaryWriter
    add_scalar = SummaryWriter.add_scalar
    def add_and_flush(self, *args, **kwargs):
        add_scalar(self, *args, **kwargs)
        self.flush()
    SummaryWriter.add_scalar = add_and_flush
    mode = mode.removesuffix("+flush")

def due():
    global calls
    calls += 1
    return calls == count

if mode.startswith("SIG"):  # the signal arrives just before the N-th update: mid-step
    def before_step(optimizer, args, kwargs):
        if due():
            os.kill(os.getpid(), getattr(signal, mode))
    register_optimizer_step_pre_hook(before_step)
else:  # "write:NAME": killed while the N-th write of NAME is half on disk, before its rename
    name, fsync = mode.split(":", 1)[1], os.fsync
    def dying_fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}.") \
                and due():
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return fsync(fd)
    os.fsync = dying_fsync

from degradation.cli import main
main()
"""


@pytest.fixture(scope="module")
def cifar_root(small_cifar_root: Path) -> Path:
    """80 training and 32 test images: a second a run."""
    return small_cifar_root


def overrides(cifar_root: Path, output: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(cifar_root, output, **{
        "train.iterations": 24, "train.milestones": "[12,18]", "train.batch_size": 8,
        "train.eval_batch_size": 32, "train.threads": 1}), *extra]


# The first process of every scenario: its failure, injected by HOOK. They all start at once
# (see `started`), since most of each one's time is importing torch.
SCENARIOS: dict[str, tuple[str, int] | None] = {
    "reference": None,  # the uninterrupted run
    "before-first-checkpoint": ("SIGKILL+flush", 5),
    "mid-step": ("SIGKILL+flush", 9),  # between the checkpoints at 6 and 12
    "mid-checkpoint-write": ("write:checkpoint.pt", 2),  # the checkpoint at 12, half written
    "mid-summary-write": ("write:summary.json", 1),  # after the last checkpoint
    "before-damage": ("SIGKILL", 15),  # checkpoints at 6 and 12 on disk
    "SIGTERM": ("SIGTERM", 9),
    "SIGINT": ("SIGINT", 9),
    "holder": ("SIGSTOP", 9),  # freezes itself mid-step, holding the run's lock
    "truncated-grad-norms": ("SIGKILL", 15),  # checkpoints at 6 and 12; the test cuts the log
    "garbled-grad-norms": ("SIGKILL", 15),
}


class Started:
    """One scenario's first process, its outputs folder and (once it ended) what it printed."""

    def __init__(self, hook: tuple[str, int] | None, output: Path, args: list[str]) -> None:
        command = [sys.executable, "-c", HOOK, *map(str, hook)] if hook else [
            sys.executable, "-m", "degradation"]
        self.output, self.args = output, args
        self.process = subprocess.Popen([*command, "train", *args], cwd=PROJECT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.stderr: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self) -> Started:
        if self.stderr is None:
            _, self.stderr = self.process.communicate(timeout=300)
        return self

    @property
    def returncode(self) -> int:
        return self.wait().process.returncode

    @property
    def folder(self) -> Path:
        return run_folder(self.output)


@pytest.fixture(scope="module")
def started(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Every scenario's first `degrade train`, in processes of their own, started together."""
    runs = {}
    for name, hook in SCENARIOS.items():
        output = tmp_path_factory.mktemp(name.lower())
        runs[name] = Started(hook, output, overrides(cifar_root, output))
    yield runs
    for run in runs.values():  # whatever a failed test left running
        if run.process.poll() is None:
            run.process.kill()
            run.process.communicate()


@pytest.fixture(scope="module")
def reference(started: dict[str, Started]) -> Path:
    """The uninterrupted run."""
    run = started["reference"].wait()
    assert run.returncode == 0, run.stderr
    return run.folder


def run_folder(output: Path) -> Path:
    (folder,) = (output / "runs").glob("*/*")
    return folder


def checkpoint_iteration(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["iteration"]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_identical(folder: Path, reference: Path) -> None:
    """Same final weights, optimizer state, CSV, TensorBoard points and summary."""
    ours = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
    theirs = torch.load(reference / CHECKPOINT, map_location="cpu", weights_only=False)
    assert ours["iteration"] == theirs["iteration"] == 24
    assert ours["model"].keys() == theirs["model"].keys()
    for name, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    for index, state in theirs["optimizer"]["state"].items():
        assert torch.equal(ours["optimizer"]["state"][index]["momentum_buffer"],
                           state["momentum_buffer"]), index
    assert (folder / METRICS_FILE).read_bytes() == (reference / METRICS_FILE).read_bytes()
    assert (folder / GRAD_NORMS_FILE).read_bytes() == (
        reference / GRAD_NORMS_FILE).read_bytes()
    logged = scalars(folder)
    assert logged == scalars(reference)
    for tag, points in logged.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: duplicated or stale steps {steps}"
    timing = {"wall_time_s", "finished_at"}
    summary, expected = read_json(folder / SUMMARY_FILE), read_json(reference / SUMMARY_FILE)
    assert {k: v for k, v in summary.items() if k not in timing} == {
        k: v for k, v in expected.items() if k not in timing}
    assert not [path.name for path in folder.iterdir() if path.name.endswith(".tmp")]
    assert not (folder / LOCK).exists()


@pytest.mark.parametrize("scenario, checkpoint_left", [
    ("before-first-checkpoint", None),  # starts again; the points logged so far are dropped
    ("mid-step", 6),
    ("mid-checkpoint-write", 6),
    ("mid-summary-write", 24),
])
@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_bit_identical(
        reference: Path, started: dict[str, Started], scenario: str,
        checkpoint_left: int | None) -> None:
    killed = started[scenario].wait()
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = killed.folder
    if checkpoint_left is None:
        assert not (folder / CHECKPOINT).exists()
    else:
        assert checkpoint_iteration(folder / CHECKPOINT) == checkpoint_left
    assert not (folder / SUMMARY_FILE).exists()
    # The dead process's lock is still on disk, naming it; the next run takes it over.
    assert (folder / LOCK).read_text().split()[1] == str(killed.pid)
    if scenario in ("before-first-checkpoint", "mid-step"):  # stale points are on disk
        assert max(step for step, _ in scalars(folder)["error/train"]) > (checkpoint_left or 0)
    resumed = degrade_here("train", *killed.args)
    assert resumed.exit_code == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    if checkpoint_left:
        assert f"resumed from iteration {checkpoint_left}" in resumed.stderr
    assert_identical(folder, reference)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
        reference: Path, started: dict[str, Started]) -> None:
    killed = started["before-damage"].wait()
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = killed.folder
    assert checkpoint_iteration(folder / CHECKPOINT) == 12
    assert checkpoint_iteration(folder / PREVIOUS_CHECKPOINT) == 6
    newest = folder / CHECKPOINT
    damaged = newest.read_bytes()[: newest.stat().st_size * 2 // 3]  # as a torn copy leaves it
    newest.write_bytes(damaged)
    resumed = degrade_here("train", *killed.args)
    assert resumed.exit_code == 0, resumed.stderr
    (warning,) = [line for line in resumed.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: checkpoint {newest} is damaged or truncated")
    assert "resumed from iteration 6" in resumed.stderr
    assert (folder / "checkpoint.pt.damaged").read_bytes() == damaged  # kept, not deleted
    assert_identical(folder, reference)  # points 8-12 logged before the kill are not doubled


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_and_exits_with_one_line(
        reference: Path, started: dict[str, Started], name: str) -> None:
    stopped = started[name].wait()
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert errors(stopped.stderr) == [f"error: stopped by {name} at iteration 9; checkpoint "
                                      "written, run the same command to resume"]
    folder = stopped.folder
    assert checkpoint_iteration(folder / CHECKPOINT) == 9
    assert not (folder / LOCK).exists()  # released on the way out
    resumed = degrade_here("train", *stopped.args)
    assert resumed.exit_code == 0, resumed.stderr
    assert "resumed from iteration 9" in resumed.stderr
    assert_identical(folder, reference)


def wait_until_stopped(pid: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in "Tt":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not stop")


def test_a_second_process_on_the_same_run_is_refused_and_the_first_is_undisturbed(
        reference: Path, started: dict[str, Started]) -> None:
    first = started["holder"]
    try:
        wait_until_stopped(first.pid)  # holding the lock, frozen mid-step
        folder = first.folder
        before = {path: path.read_bytes() for path in (folder / CHECKPOINT, folder / METRICS_FILE,
                                                       folder / LOCK)}
        second = degrade_here("train", *first.args)
        assert second.exit_code == 1
        assert "Traceback" not in second.stderr
        (line,) = errors(second.stderr)
        assert f"is being trained by process {first.pid} on " in line
        assert {path: path.read_bytes() for path in before} == before
        assert not (folder / "error.txt").exists()  # the folder is the other process's
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.returncode == 0, first.stderr
    assert_identical(folder, reference)


def test_a_full_disk_mid_run_stops_it_in_one_line_and_the_same_command_resumes(
        reference: Path, cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = overrides(cifar_root, tmp_path)
    fsync = os.fsync

    def fills_up_after_the_first_checkpoint(fd: int) -> None:
        if any((tmp_path / "runs").glob(f"*/*/{CHECKPOINT}")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", fills_up_after_the_first_checkpoint)
    full = degrade_here("train", *args)
    monkeypatch.undo()
    assert full.exit_code == 1 and "Traceback" not in full.stderr
    (line,) = errors(full.stderr)
    assert line.startswith("error: cannot write ") and "No space left on device" in line
    folder = run_folder(tmp_path)
    assert checkpoint_iteration(folder / CHECKPOINT) == 6
    assert not [path for path in folder.iterdir() if path.name.endswith(".tmp")]
    resumed = degrade_here("train", *args)  # space freed: the same command
    assert resumed.exit_code == 0, resumed.stderr
    assert "resumed from iteration 6" in resumed.stderr
    assert_identical(folder, reference)


def test_a_resumed_writers_event_file_sorts_after_the_one_it_replaces(tmp_path: Path) -> None:
    """TensorBoard reads event files in name order, and names start with the second the
    writer started: a restart within that second could otherwise sort first, undoing its
    purge of the stale points."""
    killed = f"events.out.tfevents.{int(time.time()) + 1}.{'z' * 8}.99999.0"
    (tmp_path / killed).write_bytes(b"")  # as if started in the coming second, on host zzz
    let_new_event_file_sort_last(tmp_path)
    writer = SummaryWriter(log_dir=str(tmp_path))
    writer.close()
    assert sorted(path.name for path in tmp_path.iterdir())[0] == killed


def test_the_uninterrupted_run_is_itself_reproducible(reference: Path, cifar_root: Path,
                                                      tmp_path: Path) -> None:
    """The premise of every other test: two clean runs (two processes) agree bit for bit."""
    result = degrade_here("train", *overrides(cifar_root, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert_identical(run_folder(tmp_path), reference)


def test_a_diverged_run_is_recorded_with_where_it_diverged_and_keeps_its_logs(
        cifar_root: Path, tmp_path: Path) -> None:
    args = overrides(cifar_root, tmp_path, "train.lr=1e6")
    result = degrade_here("train", *args)
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    folder = run_folder(tmp_path)
    summary = read_json(folder / SUMMARY_FILE)
    assert summary["status"] == "diverged"
    where = summary["diverged"]
    assert where.keys() == {"iteration", "lr", "last_train_error", "last_test_error"}
    assert where["lr"] == 1e6 and 0 < where["iteration"] < 24
    assert summary["iterations_done"] == where["iteration"]
    assert f"diverged at iteration {where['iteration']} (lr 1000000.0)" in result.stderr
    rows = (folder / METRICS_FILE).read_text().splitlines()[1:]
    assert rows and all(int(row.split(",")[0]) < where["iteration"] for row in rows)
    assert "nan" not in (folder / METRICS_FILE).read_text()
    assert scalars(folder)["error/train"]  # TensorBoard kept what was logged
    again = degrade_here("train", *args)  # finished: left alone
    assert again.exit_code == 0 and "already finished" in again.stdout


@pytest.mark.slow
def test_a_sweep_goes_on_past_a_diverged_run_and_lists_it(cifar_root: Path, tmp_path: Path
                                                          ) -> None:
    result = degrade_here("sweep", *overrides(cifar_root, tmp_path, "train.lr=0.1,1e6"))
    assert result.exit_code == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    statuses = {read_json(path)["status"]: path.parent
                for path in (tmp_path / "runs").rglob(SUMMARY_FILE)}
    assert statuses.keys() == {"done", "diverged"}
    assert "1 diverged" in output
    assert str(statuses["diverged"]) in output


@pytest.mark.parametrize("scenario", ["truncated-grad-norms", "garbled-grad-norms"])
@pytest.mark.slow
def test_a_damaged_grad_norms_csv_is_repaired_on_resume_and_loses_no_row(
        reference: Path, started: dict[str, Started], scenario: str) -> None:
    killed = started[scenario].wait()
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    path = killed.folder / GRAD_NORMS_FILE
    whole = path.read_bytes()
    damaged = whole[: len(whole) // 2 - 3] if scenario.startswith("truncated") else (
        b"iteration,layer,name,grad_norm\n\x00\xff garbled \x9c" + whole[40:])
    path.write_bytes(damaged)
    resumed = degrade_here("train", *killed.args)
    assert resumed.exit_code == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    (warning,) = [line for line in resumed.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: {path} is damaged (line "), warning
    assert "taken from the TensorBoard events" in warning, warning
    assert path.with_name(GRAD_NORMS_FILE + ".damaged").read_bytes() == damaged  # evidence
    assert_identical(killed.folder, reference)  # every row, byte for byte: none lost or cut
