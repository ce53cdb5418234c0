"""Files that survive crashes: atomic writes, checkpoints with a fallback, a run lock.

Every file a run leaves is written to a temporary name, flushed to disk and renamed over the
old one, so a crash mid-write leaves the previous good file in place. A checkpoint is kept
with its predecessor so that a damaged newest one can be replaced by the one before it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
LOCK = "run.lock"


class StorageError(RuntimeError):
    """A file that cannot be written or read back; the message is one line."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise StorageError(f"cannot write {path}: {error.strerror or error}") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text variant of `atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: Any) -> None:
    """Atomically write `value` as indented JSON."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file written by `write_json`."""
    return json.loads(path.read_text(encoding="utf-8"))


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write `state` as the newest checkpoint, keeping the previous one as a fallback."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    newest = run_dir / CHECKPOINT
    if newest.exists():
        os.replace(newest, run_dir / PREVIOUS_CHECKPOINT)
    atomic_write_bytes(newest, buffer.getvalue())


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest readable checkpoint (or None) and a note for each damaged one skipped."""
    notes = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as error:  # any unreadable file is treated alike
            notes.append(f"checkpoint {path} is damaged ({type(error).__name__}); skipped")
            continue
        if isinstance(state, dict) and "iteration" in state and "model" in state:
            return state, notes
        notes.append(f"checkpoint {path} is not a degrade checkpoint; skipped")
    return None, notes


class RunLock:
    """One process per run folder: an exclusive lock file naming its holder.

    The lock is a file created with O_EXCL holding `host pid`; a lock whose process is gone
    (same host, pid not alive) is stale and taken over.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.held = False

    def holder(self) -> str | None:
        """`host pid` of a live holder, or None when free or stale."""
        try:
            host, pid = self.path.read_text(encoding="utf-8").split()
        except (FileNotFoundError, ValueError):
            return None
        if host == socket.gethostname() and not _process_alive(int(pid)):
            return None
        return f"{host} {pid}"

    def acquire(self) -> None:
        """Take the lock or raise `StorageError` naming who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is not None:
                    raise StorageError(
                        f"{self.path.parent} is being trained by process {holder}; "
                        "wait for it or stop it"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # stale: its process is gone
                continue
            with os.fdopen(handle, "w") as file:
                file.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            return
        raise StorageError(f"cannot take the lock {self.path}")

    def release(self) -> None:
        """Give the lock back (only if this process holds it)."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
