"""Files that survive crashes: atomic writes, verified checkpoints with a fallback, the run lock."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from degradation.runs import CHECKPOINT, PREVIOUS_CHECKPOINT
from degradation.storage import (
    LOCK,
    RunLock,
    RunLocked,
    StorageError,
    atomic_write_text,
    check_writable,
    remove_temporaries,
)
from degradation.training.checkpoint import (
    DamagedCheckpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    set_aside_damaged,
)


def no_space(*_args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(folder: Path) -> list[str]:
    """Temporary files a writer left behind."""
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


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


# Checkpoints -----------------------------------------------------------------------------------

def state(iteration: int) -> dict:
    generator = torch.Generator().manual_seed(iteration)
    return {"iteration": iteration, "model": {"w": torch.randn(64, 64, generator=generator)}}


def test_the_previous_checkpoint_is_kept_and_the_newest_is_never_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, state(6))
    save_checkpoint(tmp_path, state(12))
    assert read_checkpoint(tmp_path / CHECKPOINT)["iteration"] == 12
    assert read_checkpoint(tmp_path / PREVIOUS_CHECKPOINT)["iteration"] == 6
    monkeypatch.setattr(os, "fsync", no_space)  # the next save dies while writing
    with pytest.raises(StorageError):
        save_checkpoint(tmp_path, state(18))
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / CHECKPOINT)["iteration"] == 12  # not moved away
    loaded, notes = load_checkpoint(tmp_path)
    assert loaded["iteration"] == 12 and notes == []
    assert leftovers(tmp_path) == []


def flip_a_bit_in_the_tensor_data(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        member = next(info for info in archive.infolist() if "/data/" in info.filename)
        # The member's data starts after its local header (30 bytes + name + extra field).
        with path.open("rb") as file:
            file.seek(member.header_offset + 26)
            name_length, extra_length = (int.from_bytes(file.read(2), "little") for _ in "ab")
        start = member.header_offset + 30 + name_length + extra_length
    data = bytearray(path.read_bytes())
    data[start + member.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "empty", "not a checkpoint"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one_saying_so(
        tmp_path: Path, damage: str) -> None:
    save_checkpoint(tmp_path, state(6))
    save_checkpoint(tmp_path, state(12))
    newest = tmp_path / CHECKPOINT
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    elif damage == "bit flip":  # torch.load alone would load this silently
        flip_a_bit_in_the_tensor_data(newest)
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        torch.save([1, 2, 3], newest)
    loaded, notes = load_checkpoint(tmp_path)
    assert loaded["iteration"] == 6
    assert torch.equal(loaded["model"]["w"], state(6)["model"]["w"])
    assert len(notes) == 1 and "\n" not in notes[0] and str(newest) in notes[0]


def test_an_io_error_is_not_mistaken_for_a_damaged_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, state(6))
    (tmp_path / "half.pt").write_bytes((tmp_path / CHECKPOINT).read_bytes()[:100])
    with pytest.raises(DamagedCheckpoint):
        read_checkpoint(tmp_path / "half.pt")

    def io_error(_path: Path) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(Path, "read_bytes", io_error)  # e.g. a network file system hiccup
    with pytest.raises(StorageError, match="cannot be read") as raised:
        read_checkpoint(tmp_path / CHECKPOINT)
    assert not isinstance(raised.value, DamagedCheckpoint)  # so it is never set aside


def test_no_readable_checkpoint_gives_none_and_a_note_for_each(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path) == (None, [])
    (tmp_path / CHECKPOINT).write_bytes(b"PK\x03\x04garbage")
    (tmp_path / PREVIOUS_CHECKPOINT).write_bytes(b"")
    loaded, notes = load_checkpoint(tmp_path)
    assert loaded is None and len(notes) == 2


def test_a_damaged_checkpoint_is_set_aside_not_deleted(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT).write_bytes(b"half")
    kept = set_aside_damaged(tmp_path / CHECKPOINT)
    assert kept.name == "checkpoint.pt.damaged" and kept.read_bytes() == b"half"
    assert not (tmp_path / CHECKPOINT).exists()


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
