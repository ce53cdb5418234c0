"""Files that survive crashes: atomic writes, checkpoints with a fallback, a run lock.

Every file a run leaves is written to a temporary name, flushed to disk and renamed over the
old one, so a crash mid-write leaves the previous good file in place. A checkpoint is kept
with its predecessor so that a damaged newest one can be replaced by the one before it, and
it is checked (zip CRCs) before use, so a damaged file is never loaded as if it were good.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from degradation.errors import DegradeError

LOCK = "run.lock"
TEMPORARY_SUFFIX = ".tmp"

# Files are made with the permissions `open` would give them; mkstemp alone gives 0600.
_UMASK = os.umask(0)
os.umask(_UMASK)


class StorageError(DegradeError, RuntimeError):
    """A file that cannot be written or read back; the message is one line."""


class RunLocked(StorageError):
    """Another live process is training this run."""


class DamagedFile(StorageError):
    """A run's file (summary, config, metrics) that was read but cannot be understood."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a mix."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=TEMPORARY_SUFFIX)
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~_UMASK)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        temporary = None
        _sync_folder(path.parent)
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
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


DAMAGED_SUFFIX = ".damaged"  # a damaged checkpoint or log, set aside and kept as evidence


def set_aside_damaged(path: Path) -> Path:
    """Rename a damaged file to `<name>.damaged` (kept for inspection, never read again)."""
    target = Path(path).with_name(Path(path).name + DAMAGED_SUFFIX)
    try:
        os.replace(path, target)
    except OSError as error:
        raise StorageError(f"cannot move the damaged file {path} aside: "
                           f"{error.strerror or error}") from None
    return target


def path_refusal(path: Path | str) -> str | None:
    """Why `path` cannot name a file on this system (a name or the whole path longer than
    the file system allows), or None. Checked before use: `stat` would raise instead of
    saying the file is missing."""
    path = Path(path).absolute()
    name_max = _limit(path, "PC_NAME_MAX", 255)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            return (f"the name {part[:24]}... is {size} bytes long; names here are at most "
                    f"{name_max}")
    path_max = _limit(path, "PC_PATH_MAX", 4096)
    size = len(os.fsencode(str(path)))
    if size >= path_max:
        return f"the path is {size} bytes long; paths here are shorter than {path_max}"
    return None


def _limit(path: Path, name: str, default: int) -> int:
    """`os.pathconf(name)` of the nearest folder of `path` that exists."""
    for candidate in (path, *path.parents):
        try:
            return os.pathconf(candidate, name)
        except (OSError, ValueError):
            continue
    return default


def check_writable(folder: Path) -> None:
    """Raise `StorageError` unless `folder` is, or could be made as, a writable folder.

    Nothing is left behind: this is for checking a whole sweep's folders before any run
    starts.
    """
    folder = Path(folder).absolute()
    refusal = path_refusal(folder)
    if refusal is not None:
        raise StorageError(f"cannot write into {folder}: {refusal}")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(f"cannot write into {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write into {folder}: {existing} is not writable")
    if existing != folder:
        # Permission bits do not tell everything (a root user, /proc, a read-only mount):
        # make a folder there and remove it at once.
        try:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".degrade-probe-"))
        except OSError as error:
            raise StorageError(f"cannot write into {folder}: cannot create a folder in "
                               f"{existing} ({error.strerror or error})") from None


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed writer left in `folder`; call only under its lock."""
    removed = []
    for path in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


class RunLock:
    """One process per run folder: a kernel lock on `run.lock`, which names its holder.

    The lock is `flock` on the file; the kernel drops it when its process dies, however it
    dies (SIGKILL, a crash, OOM), so a lock left by a dead process is simply taken over,
    whatever pid it names. The file's text, `host pid`, only says who holds a live lock.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.handle: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self.handle is not None

    def holder(self) -> str | None:
        """`host pid` of a live holder, or None when free (or left by a dead process)."""
        try:
            handle = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = self._text()  # empty only while the holder is still writing it
                return text if len(text.split()) == 2 else "unknown 0"
            except OSError:  # no kernel locks on this file system: trust the pid
                text = self._text()
                return text if text and _pid_alive(text) else None
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
        finally:
            os.close(handle)

    def acquire(self) -> None:
        """Take the lock or raise `RunLocked` naming who holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"cannot create the run folder {self.path.parent}: "
                               f"{error.strerror or error}") from None
        for _ in range(10):
            try:
                handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise StorageError(f"cannot create the lock {self.path}: "
                                   f"{error.strerror or error}") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                self._refuse(self._text() or "unknown")
            except OSError:  # no kernel locks here (some network file systems): trust the pid
                text = self._text()
                if text and _pid_alive(text) and not _is_me(text):
                    os.close(handle)
                    self._refuse(text)
            # The holder may have unlinked the file between our open and our flock: then we
            # hold a lock on a file nobody else can see, so start again on the current one.
            if not _same_file(handle, self.path):
                os.close(handle)
                continue
            try:
                os.ftruncate(handle, 0)
                os.write(handle, f"{socket.gethostname()} {os.getpid()}\n".encode())
            except OSError as error:  # e.g. a full disk
                os.close(handle)
                raise StorageError(f"cannot write the lock {self.path}: "
                                   f"{error.strerror or error}") from None
            self.handle = handle
            return
        raise StorageError(f"cannot take the lock {self.path} (it keeps changing)")

    def release(self) -> None:
        """Give the lock back (only if this process holds it)."""
        if self.handle is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # while still locked, so nobody takes a file being removed
            os.close(self.handle)
            self.handle = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _text(self) -> str:
        try:
            return " ".join(self.path.read_text(encoding="utf-8").split())
        except (OSError, UnicodeDecodeError):
            return ""

    def refusal(self, holder: str) -> RunLocked:
        """The error that names `holder` (`host pid`, from `holder()`) as this run's trainer."""
        host, _, pid = holder.partition(" ")
        who = f"process {pid} on {host}" if pid else f"process {holder}"
        return RunLocked(f"{self.path.parent} is being trained by {who}; wait for it to finish "
                         "or stop it (a dead process's lock is taken over by itself)")

    def _refuse(self, holder: str) -> None:
        raise self.refusal(holder)


def keep_as_previous(newest: Path, previous: Path) -> None:
    """Make `previous` a copy of `newest` (a hard link where the file system has them), so
    that `newest` is never missing while it is being replaced."""
    link = previous.with_name(f".{previous.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        os.link(newest, link)
        os.replace(link, previous)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise StorageError(f"cannot keep {newest} as {previous.name}: "
                               f"{error.strerror or error}") from None
        os.replace(newest, previous)  # no hard links here: a short window without a newest
    _sync_folder(newest.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (best effort: not every file system can fsync a folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _same_file(handle: int, path: Path) -> bool:
    try:
        ours, now = os.fstat(handle), os.stat(path)
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (now.st_dev, now.st_ino)


def _pid_alive(holder: str) -> bool:
    host, _, pid = holder.partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's process cannot be checked from here
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_me(holder: str) -> bool:
    return holder == f"{socket.gethostname()} {os.getpid()}"
