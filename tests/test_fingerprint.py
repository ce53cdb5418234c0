"""Which data a run used: the fingerprint of its CIFAR-10 files."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest

from degradation.data.cifar import (
    BATCH_DIR,
    TEST_FILE,
    write_cifar10,
)
from degradation.data.fingerprint import (
    FINGERPRINT_CACHE,
    OFFICIAL_MD5,
    fingerprint,
    official_fingerprint,
)
from tests.data_fixtures import (
    SUBSET,
    raw,
    rewrite,
)


def test_the_fingerprint_follows_the_content_not_the_folder(tmp_path: Path) -> None:
    one = fingerprint(write_cifar10(tmp_path / "a", 8, 4, seed=0), 0)
    same = fingerprint(write_cifar10(tmp_path / "b", 8, 4, seed=0), 0)
    other = fingerprint(write_cifar10(tmp_path / "c", 8, 4, seed=1), 0)
    assert one == same and one.digest != other.digest
    assert one.description == "generated, 40 training images" and one.train_images == 40
    # With a validation split the test batch is not used, so it is not part of the data.
    assert fingerprint(tmp_path / "a", 5).digest != one.digest
    (tmp_path / "b" / BATCH_DIR / TEST_FILE).unlink()
    assert fingerprint(tmp_path / "b", 5) == fingerprint(tmp_path / "a", 5)


def test_the_fingerprint_cache_is_used_until_a_file_changes(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path, 8, 4)
    folder = root / BATCH_DIR
    real = fingerprint(root, 0)
    cache = json.loads((folder / FINGERPRINT_CACHE).read_text())
    assert cache["data_batch_1"]["md5"] != OFFICIAL_MD5["data_batch_1"]
    # A cache that says "official" for unchanged files is believed (nothing is hashed again)...
    for name, md5 in OFFICIAL_MD5.items():
        cache[name] = {**cache[name], "md5": md5, "images": 10_000}
    (folder / FINGERPRINT_CACHE).write_text(json.dumps(cache))
    os.utime(folder / "batches.meta", ns=(1, 1))  # a new key: the per-process memo is missed
    assert fingerprint(root, 0) == official_fingerprint(0)
    assert official_fingerprint(0).description == "official CIFAR-10"
    # ...until a file changes: rewritten with other images, it is hashed again.
    path = folder / "data_batch_3"
    batch = raw(path)
    rewrite(path, {**batch, "data": batch["data"][::-1].copy()})
    changed = fingerprint(root, 0)
    assert changed.digest not in (real.digest, official_fingerprint(0).digest)
    assert json.loads((folder / FINGERPRINT_CACHE).read_text())["data_batch_3"]["md5"] != (
        OFFICIAL_MD5["data_batch_3"])


def test_a_read_only_data_folder_is_fingerprinted_without_writing_to_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = write_cifar10(tmp_path / "data", 8, 4)
    folder = root / BATCH_DIR
    expected = fingerprint(write_cifar10(tmp_path / "copy", 8, 4), 0)
    mode = folder.stat().st_mode
    folder.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        before = sorted(path.name for path in folder.iterdir())
        assert fingerprint(root, 0) == expected
        assert sorted(path.name for path in folder.iterdir()) == before
    finally:
        folder.chmod(mode)
    assert list((tmp_path / "home" / ".cache" / "degrade").rglob("*.json"))


@pytest.mark.skipif(not (SUBSET / BATCH_DIR).is_dir(), reason="no real CIFAR-10 subset")
def test_the_real_subset_is_named_a_subset() -> None:
    assert fingerprint(SUBSET, 0).description == "subset of 3805 training images"


@pytest.mark.parametrize("how", ["in place", "replaced"])
def test_a_changed_file_with_its_modification_time_put_back_is_hashed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    from degradation.data import fingerprint as module

    root = write_cifar10(tmp_path, 8, 4)
    path = root / BATCH_DIR / "data_batch_1"
    before = fingerprint(root, 0)
    times = path.stat()
    batch = raw(path)
    batch["data"] = batch["data"][::-1].copy()  # other images, the same size of file
    if how == "in place":
        with path.open("r+b") as f:
            f.write(pickle.dumps(batch, protocol=2))
    else:
        rewrite(path.with_name("new"), batch)
        os.replace(path.with_name("new"), path)
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (times.st_size, times.st_mtime_ns)
    monkeypatch.setattr(module, "_FINGERPRINTS", {})  # as a new process: the cache file alone
    after = fingerprint(root, 0)
    assert after.digest != before.digest
