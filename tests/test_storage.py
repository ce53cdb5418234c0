"""Files that survive crashes: atomic writes, verified checkpoints with a fallback, the run lock."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from degradation.storage import (
    LOCK,
    RunLock,
    RunLocked,
    StorageError,
    atomic_write_text,
    check_writable,
    remove_temporaries,
)
from tests.conftest import leftovers, no_space

# Atomic writes ---------------------------------------------------------------------------------

def test_atomic_write_replaces_the_file_with_the_permissions_open_would_give(
        tmp_path: Path) -> None:
    path = tmp_path / "deep" / "summary.json"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert leftovers(path.parent) == []


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    path = tmp_path / "metrics.csv"
    atomic_write_text(path, "good\n")
    monkeypatch.setattr(os, failing, no_space)  # the disk fills up while writing or renaming
    with pytest.raises(StorageError, match=r"cannot write .*metrics\.csv: No space left"):
        atomic_write_text(path, "half of a new file")
    monkeypatch.undo()
    assert path.read_text() == "good\n"
    assert leftovers(tmp_path) == []


def test_an_interrupt_midway_is_re_raised_and_leaves_the_old_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    atomic_write_text(path, "good\n")

    def interrupted(_fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "good\n" and leftovers(tmp_path) == []


def test_a_folder_that_cannot_be_made_is_a_one_line_storage_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(StorageError, match=r"cannot write .*afile/sub/x\.json: Not a directory"):
        atomic_write_text(tmp_path / "afile" / "sub" / "x.json", "{}")


def test_check_writable_refuses_a_folder_under_a_file_and_creates_nothing(
        tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "runs")  # can be made
    assert not (tmp_path / "new").exists()
    (tmp_path / "afile").write_text("")
    with pytest.raises(StorageError, match=r"afile is a file, not a folder"):
        check_writable(tmp_path / "afile" / "sub" / "runs")


def test_temporaries_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / "keep.tmp").write_text("not ours: no leading dot")
    (tmp_path / "metrics.csv").write_text("kept")
    removed = remove_temporaries(tmp_path)
    assert [path.name for path in removed] == [".checkpoint.pt.abc123.tmp"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.tmp", "metrics.csv"]


# The run lock ----------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from degradation.storage import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_process_is_refused_naming_the_holder_and_takes_over_once_it_dies(
        tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock = RunLock(tmp_path)
        with pytest.raises(RunLocked) as refused:
            lock.acquire()
        message = str(refused.value)
        assert f"process {holder.pid} on {socket.gethostname()}" in message
        assert "\n" not in message and not lock.held
        assert lock.holder() == f"{socket.gethostname()} {holder.pid}"
    finally:
        holder.kill()  # SIGKILL: no chance to release; the kernel drops its lock
        holder.wait()
    assert (tmp_path / LOCK).exists()  # the dead process's lock file is still there ...
    assert RunLock(tmp_path).holder() is None  # ... but it is stale
    with RunLock(tmp_path) as lock:
        assert lock.held
        assert (tmp_path / LOCK).read_text().split() == [socket.gethostname(), str(os.getpid())]
    assert not (tmp_path / LOCK).exists()


def test_a_lock_file_naming_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (tmp_path / LOCK).write_text(f"{socket.gethostname()} {dead.stdout.strip()}\n")
    assert RunLock(tmp_path).holder() is None
    with RunLock(tmp_path) as lock:
        assert lock.held and RunLock(tmp_path).holder() == f"{socket.gethostname()} {os.getpid()}"


def test_one_process_cannot_take_its_own_lock_twice(tmp_path: Path) -> None:
    with RunLock(tmp_path), pytest.raises(RunLocked, match=str(os.getpid())):
        RunLock(tmp_path).acquire()


def test_a_lock_folder_under_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(StorageError, match="cannot create the run folder"):
        RunLock(tmp_path / "afile" / "run").acquire()
