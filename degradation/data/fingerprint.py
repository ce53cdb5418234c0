"""Which data a run trained on: a fingerprint of the CIFAR-10 files it reads.

The official files are recognised by their MD5 sums (as torchvision lists them) without
reading them; any other set (a generated one, a subset) is hashed once and the result cached
beside the batches, or in the user's cache when that folder is read-only. Run identities and
Table 6 keep runs on different data apart by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from degradation.data.cifar import (
    BATCH_DIR,
    GENERATOR_MARK,
    TEST_FILE,
    TRAIN_FILES,
    DataError,
    RefusedPickle,
    load_data_pickle,
    read_batch,
)
from degradation.errors import error_line
from degradation.storage import StorageError, atomic_write_text

# The official files' MD5 sums, as torchvision lists them (torchvision.datasets.CIFAR10).
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


OFFICIAL_TRAIN_IMAGES = 50_000


FINGERPRINT_CACHE = ".degrade-fingerprint.json"  # beside the batches, in BATCH_DIR


@dataclass(frozen=True)
class DataFingerprint:
    """Which data a run trains and evaluates on: a content hash and a name for people."""

    digest: str  # 16 hex digits over the MD5 sums of the batch files used
    description: str  # official CIFAR-10 | generated, N training images | subset of N ...
    train_images: int  # in the training batches, before any validation split


# The fingerprints computed in this process, by folder and the files' `_stat_key`s.
_FINGERPRINTS: dict[tuple[str, str], DataFingerprint] = {}


def used_files(val_split: int) -> tuple[str, ...]:
    """The batch files a run reads: the test batch only when it is the evaluation set."""
    return TRAIN_FILES + ((TEST_FILE,) if val_split == 0 else ())


def official_fingerprint(val_split: int) -> DataFingerprint:
    """The fingerprint of the official set, known without the files (before a download)."""
    return DataFingerprint(_digest({name: OFFICIAL_MD5[name] for name in used_files(val_split)}),
                           "official CIFAR-10", OFFICIAL_TRAIN_IMAGES)


def fingerprint(root: Path, val_split: int) -> DataFingerprint:
    """The fingerprint of the data under root/cifar-10-batches-py/ that a run would use.

    MD5 sums are computed once per file and cached beside the batches (keyed by each file's
    name, size, modification and inode change times, inode and device, so a changed file is
    hashed again even when its modification time was put back); a folder that cannot
    be written keeps its cache in the user's cache folder, or in this process only. Missing
    data is what a download would bring: the official set (`ensure_cifar10` refuses it where
    nothing may be downloaded).
    """
    folder = Path(root) / BATCH_DIR
    if not folder.is_dir():
        return official_fingerprint(val_split)
    names = used_files(val_split)
    keys = {name: _stat_key(folder / name) for name in (*names, "batches.meta")}
    memo_key = (str(folder.resolve()), json.dumps(keys, sort_keys=True))
    if memo_key not in _FINGERPRINTS:
        _FINGERPRINTS[memo_key] = _fingerprint(folder, names, keys)
    return _FINGERPRINTS[memo_key]


def _fingerprint(folder: Path, names: tuple[str, ...], keys: dict[str, list[int] | None]
                 ) -> DataFingerprint:
    # A folder without write bits is left alone even by root (a shared, read-only copy).
    beside = [folder / FINGERPRINT_CACHE] if folder.stat().st_mode & 0o222 else []
    caches = [*beside, _user_cache(folder)]
    cached: dict[str, Any] = {}
    for path in reversed(caches):  # the one beside the data wins
        with contextlib.suppress(OSError, ValueError, TypeError):
            cached.update(json.loads(path.read_text(encoding="utf-8")))
    files, changed = {}, False
    for name in (*names, "batches.meta"):
        entry = cached.get(name)
        if keys[name] is None:  # only batches.meta may be absent; read_batch names the others
            if name != "batches.meta":
                read_batch(folder / name)
            continue
        if not isinstance(entry, dict) or entry.get("key") != keys[name]:
            entry, changed = _describe_file(folder / name, keys[name]), True
        files[name] = entry
    if changed:
        text = json.dumps({**cached, **files}, indent=2, sort_keys=True) + "\n"
        for path in caches:  # a cache only: a read-only data folder still works
            try:
                atomic_write_text(path, text)
                break
            except StorageError:
                continue
    md5 = {name: files[name]["md5"] for name in names}
    images = sum(files[name].get("images", 0) for name in TRAIN_FILES)
    if all(md5[name] == OFFICIAL_MD5[name] for name in names):
        description = "official CIFAR-10"
    elif files.get("batches.meta", {}).get("generated"):
        description = f"generated, {images} training images"
    else:
        description = f"subset of {images} training images"
    return DataFingerprint(_digest(md5), description, images)


def _describe_file(path: Path, key: list[int]) -> dict[str, Any]:
    """MD5 and, for a batch, the image count (read through `read_batch`, which checks it)."""
    try:
        digest = hashlib.md5(path.read_bytes()).hexdigest()
    except OSError as e:
        raise DataError(f"cannot read {path} ({error_line(e)})") from e
    entry: dict[str, Any] = {"key": key, "md5": digest}
    if path.name == "batches.meta":
        try:
            meta = load_data_pickle(path)
        except RefusedPickle:  # a crafted file is refused, as a crafted batch is
            raise
        except Exception:  # otherwise the meta file is optional and never trusted
            meta = None
        entry["generated"] = isinstance(meta, dict) and meta.get("generator") == GENERATOR_MARK
    elif digest == OFFICIAL_MD5.get(path.name):
        entry["images"] = 10_000  # the official batches hold 10,000 images each
    else:
        entry["images"] = len(read_batch(path)[1])
    return entry


def _stat_key(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    # A rewrite can restore a file's size and modification time (`touch -r`, `os.utime`), but
    # not its inode change time, nor its inode when it replaces the file.
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _user_cache(folder: Path) -> Path:
    """Where the fingerprint cache of a read-only data folder lives."""
    name = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "degrade" / "data" / f"{name}.json"


def _digest(md5: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(md5, sort_keys=True).encode()).hexdigest()[:16]
