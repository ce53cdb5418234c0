"""The checkpoint format: the newest is never missing, damage is detected and skipped, an I/O
error is never taken for damage."""

from __future__ import annotations

import errno
import os
import zipfile
from pathlib import Path

import pytest
import torch

from degradation.runs import CHECKPOINT, PREVIOUS_CHECKPOINT
from degradation.storage import StorageError
from degradation.training.checkpoint import (
    DamagedCheckpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    set_aside_damaged,
)
from tests.conftest import leftovers, no_space


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


def test_numpy_random_state_loads_with_weights_only(tmp_path: Path) -> None:
    import numpy as np

    numpy_state = np.random.get_state()
    save_checkpoint(tmp_path, {**state(6), "rng": {"numpy": numpy_state}})
    loaded = read_checkpoint(tmp_path / CHECKPOINT)["rng"]["numpy"]
    assert loaded[0] == numpy_state[0] and (loaded[1] == numpy_state[1]).all()
    assert loaded[1].dtype == numpy_state[1].dtype and loaded[2:] == numpy_state[2:]


class _ShellPayload:
    """Pickled, runs `touch MARKER` when loaded without `weights_only`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_not_set_aside(tmp_path: Path) -> None:
    from degradation.training.checkpoint import RefusedCheckpoint, newest_checkpoint

    save_checkpoint(tmp_path, state(6))
    save_checkpoint(tmp_path, state(12))
    marker = tmp_path / "PWN"
    newest = tmp_path / CHECKPOINT
    torch.save({**state(18), "model": _ShellPayload(marker)}, newest)
    crafted = newest.read_bytes()
    with pytest.raises(RefusedCheckpoint) as refused:
        newest_checkpoint(tmp_path, set_aside=True)
    message = str(refused.value)
    assert "\n" not in message and str(newest) in message and "posix.system" in message
    assert not isinstance(refused.value, DamagedCheckpoint)  # never replaced by the one before
    assert newest.read_bytes() == crafted and not list(tmp_path.glob("*.damaged"))
    assert not marker.exists()
