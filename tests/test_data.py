"""CIFAR-10 reading, the generated data sets, augmentation, and the on-device training stream."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from degradation.data.cifar import (
    BATCH_DIR,
    TEST_FILE,
    TRAIN_FILES,
    DataError,
    ensure_cifar10,
    load_cifar10,
    read_batch,
    write_cifar10,
)
from degradation.data.fingerprint import (
    FINGERPRINT_CACHE,
    OFFICIAL_MD5,
    fingerprint,
    official_fingerprint,
)
from degradation.data.stream import (
    TrainBatches,
    augment,
    augment_reference,
    crop_flip,
    draw_crops_flips,
    eval_batches,
    normalize,
)

SUBSET = Path(__file__).parents[1] / "../shared/cifar10-subset"
CPU = torch.device("cpu")


def raw(path: Path, encoding: str = "latin1") -> dict:
    """A batch file exactly as pickle reads it, without the module under test."""
    with path.open("rb") as f:
        return pickle.load(f, encoding=encoding)


def rewrite(path: Path, batch: object) -> None:
    """Replace a batch file with another pickled object."""
    path.write_bytes(pickle.dumps(batch, protocol=2))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, to show that reading changed nothing on disk."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_data_error(error: pytest.ExceptionInfo, *names: str) -> None:
    """A DataError of one line that names each of `names`."""
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    """A generated CIFAR-10 copy: 5 train batches of 7 images, a test batch of 5."""
    return write_cifar10(tmp_path, train_per_batch=7, test_size=5, seed=3)


def images_encoding(values: list[int]) -> torch.Tensor:
    """Constant uint8 images whose every pixel holds the given value."""
    return torch.tensor(values, dtype=torch.uint8)[:, None, None, None].expand(-1, 3, 32, 32)


# --- the official format ---------------------------------------------------------------------


def test_write_then_read_round_trip(generated: Path) -> None:
    folder = generated / BATCH_DIR
    for name, n in [*((f, 7) for f in TRAIN_FILES), (TEST_FILE, 5)]:
        batch = raw(folder / name)
        assert (folder / name).read_bytes()[:2] == b"\x80\x02"  # protocol-2 pickle
        assert set(batch) == {"batch_label", "labels", "data", "filenames"}
        assert batch["data"].shape == (n, 3072) and batch["data"].dtype == np.uint8
        images, labels = read_batch(folder / name)
        assert images.dtype == torch.uint8 and images.shape == (n, 3, 32, 32)
        assert labels.dtype == torch.int64 and labels.tolist() == batch["labels"]
        # R plane, then G, then B, each row-major.
        row = batch["data"][1]
        assert images[1, 0, 2, 5] == row[2 * 32 + 5]
        assert images[1, 2, 31, 0] == row[2 * 1024 + 31 * 32]
        assert torch.equal(images.reshape(n, -1), torch.from_numpy(batch["data"]))
    meta = raw(folder / "batches.meta")
    assert meta["label_names"][0] == "airplane" and len(meta["label_names"]) == 10
    assert meta["num_cases_per_batch"] == 7 and meta["num_vis"] == 3072


def test_generated_sets_are_deterministic_in_seed(tmp_path: Path) -> None:
    a = snapshot(write_cifar10(tmp_path / "a", 4, 3, seed=1) / BATCH_DIR)
    b = snapshot(write_cifar10(tmp_path / "b", 4, 3, seed=1) / BATCH_DIR)
    c = snapshot(write_cifar10(tmp_path / "c", 4, 3, seed=2) / BATCH_DIR)
    assert a == b
    assert a["data_batch_1"] != c["data_batch_1"]


def test_generated_images_carry_their_class(tmp_path: Path) -> None:
    # Learnable: a nearest-class-mean classifier fitted on the training batches beats chance.
    splits = load_cifar10(write_cifar10(tmp_path, 40, 100, seed=0), download=False)
    x = splits.train_images.float().flatten(1)
    centres = torch.stack([x[splits.train_labels == k].mean(0) for k in range(10)])
    guess = torch.cdist(splits.eval_images.float().flatten(1), centres).argmin(1)
    assert (guess == splits.eval_labels).float().mean() > 0.5


def test_write_refuses_to_overwrite_batches(generated: Path) -> None:
    before = snapshot(generated / BATCH_DIR)
    with pytest.raises(DataError) as error:
        write_cifar10(generated, 7, 5, seed=4)
    assert_data_error(error, "data_batch_1")
    assert snapshot(generated / BATCH_DIR) == before


def test_bytes_and_str_keys_read_the_same(generated: Path) -> None:
    path = generated / BATCH_DIR / "data_batch_2"
    expected = read_batch(path)
    batch = raw(path)
    rewrite(path, {key.encode(): value for key, value in batch.items()})
    assert all(isinstance(key, bytes) for key in raw(path))
    assert all(isinstance(key, bytes) for key in raw(path, encoding="bytes"))
    images, labels = read_batch(path)
    assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])


def test_load_cifar10_round_trip(generated: Path) -> None:
    folder = generated / BATCH_DIR
    splits = load_cifar10(generated, download=False)
    train = [raw(folder / name) for name in TRAIN_FILES]
    assert splits.train_images.shape == (35, 3, 32, 32)
    expected = np.concatenate([b["data"] for b in train])
    assert torch.equal(splits.train_images.reshape(35, -1), torch.from_numpy(expected))
    assert splits.train_labels.tolist() == [y for b in train for y in b["labels"]]
    test = raw(folder / TEST_FILE)
    assert splits.eval_set == "test"
    assert torch.equal(splits.eval_images.reshape(5, -1), torch.from_numpy(test["data"]))
    assert splits.eval_labels.tolist() == test["labels"]


@pytest.mark.skipif(not (SUBSET / BATCH_DIR).is_dir(), reason="no real CIFAR-10 subset")
def test_real_subset_loads() -> None:
    before = snapshot(SUBSET / BATCH_DIR)
    splits = load_cifar10(SUBSET, download=False)
    assert splits.train_images.shape == (3805, 3, 32, 32)
    assert splits.eval_images.shape == (761, 3, 32, 32) and splits.eval_set == "test"
    for labels in (splits.train_labels, splits.eval_labels):
        assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() <= 9
    first = raw(SUBSET / BATCH_DIR / "data_batch_1")
    second = raw(SUBSET / BATCH_DIR / "data_batch_2", encoding="bytes")
    assert splits.train_labels[0] == first["labels"][0] == 6  # the official first image: a frog
    assert splits.train_labels[761] == second[b"labels"][0]  # batches concatenated in order
    assert torch.equal(splits.train_images[0].reshape(-1), torch.from_numpy(first["data"][0]))
    assert splits.eval_labels[0] == raw(SUBSET / BATCH_DIR / TEST_FILE)["labels"][0]
    assert snapshot(SUBSET / BATCH_DIR) == before


# --- mean and validation split ---------------------------------------------------------------


def test_mean_is_the_training_per_pixel_mean(generated: Path) -> None:
    splits = load_cifar10(generated, download=False)
    reference = splits.train_images.double().mean(0)
    assert splits.mean.dtype == torch.float32 and splits.mean.shape == (3, 32, 32)
    torch.testing.assert_close(splits.mean.double(), reference, rtol=0, atol=1e-5)


def test_validation_split_holds_out_the_last_images(generated: Path) -> None:
    every = load_cifar10(generated, download=False)
    splits = load_cifar10(generated, download=False, val_split=6)
    assert splits.eval_set == "validation"
    assert torch.equal(splits.train_images, every.train_images[:29])
    assert torch.equal(splits.train_labels, every.train_labels[:29])
    assert torch.equal(splits.eval_images, every.train_images[29:])
    assert torch.equal(splits.eval_labels, every.train_labels[29:])
    # The mean covers only the 29 images still used for training.
    torch.testing.assert_close(splits.mean.double(), every.train_images[:29].double().mean(0),
                               rtol=0, atol=1e-5)
    assert (splits.mean - every.mean).abs().max() > 0.1


@pytest.mark.parametrize("val_split", [-1, 35, 36, 1000])
def test_bad_val_split_is_refused(generated: Path, val_split: int) -> None:
    with pytest.raises(DataError) as error:
        load_cifar10(generated, download=False, val_split=val_split)
    assert_data_error(error, f"data.val_split={val_split}", "35 training images")


# --- errors ----------------------------------------------------------------------------------


def test_missing_folder_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path, download=False)
    assert_data_error(error, f"data.root={tmp_path}", BATCH_DIR, "data.download=false")
    assert list(tmp_path.iterdir()) == []


def test_missing_batch_file(generated: Path) -> None:
    (generated / BATCH_DIR / "data_batch_3").unlink()
    before = snapshot(generated / BATCH_DIR)
    with pytest.raises(DataError) as error:
        load_cifar10(generated, download=False)
    assert_data_error(error, "data_batch_3")
    assert snapshot(generated / BATCH_DIR) == before


def test_missing_test_batch(generated: Path) -> None:
    (generated / BATCH_DIR / TEST_FILE).unlink()
    with pytest.raises(DataError) as error:
        load_cifar10(generated, download=False)
    assert_data_error(error, TEST_FILE)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_file(generated: Path, damage: str) -> None:
    path = generated / BATCH_DIR / "data_batch_4"
    content = path.read_bytes()
    path.write_bytes({"truncated": content[: len(content) // 2],
                      "garbage": bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8)),
                      "empty": b""}[damage])
    before = snapshot(generated / BATCH_DIR)
    with pytest.raises(DataError) as error:
        load_cifar10(generated, download=False)
    assert_data_error(error, "data_batch_4")
    assert snapshot(generated / BATCH_DIR) == before


BAD_FORMATS = {
    "not a dict": lambda b: list(b.items()),
    "no data": lambda b: {k: v for k, v in b.items() if k != "data"},
    "no labels": lambda b: {k: v for k, v in b.items() if k != "labels"},
    "wrong width": lambda b: {**b, "data": b["data"][:, :3071]},
    "not uint8": lambda b: {**b, "data": b["data"].astype(np.float32)},
    "images as 4-d": lambda b: {**b, "data": b["data"].reshape(-1, 3, 32, 32)},
    "data a list": lambda b: {**b, "data": b["data"].tolist()},
    "label 10": lambda b: {**b, "labels": [*b["labels"][:-1], 10]},
    "label -1": lambda b: {**b, "labels": [-1, *b["labels"][1:]]},
    "float labels": lambda b: {**b, "labels": [0.5] * len(b["labels"])},
    "too few labels": lambda b: {**b, "labels": b["labels"][:-1]},
}


@pytest.mark.parametrize("fault", BAD_FORMATS)
def test_wrong_format(generated: Path, fault: str) -> None:
    path = generated / BATCH_DIR / "data_batch_5"
    rewrite(path, BAD_FORMATS[fault](raw(path)))
    before = snapshot(generated / BATCH_DIR)
    with pytest.raises(DataError) as error:
        load_cifar10(generated, download=False)
    assert_data_error(error, "data_batch_5")
    assert snapshot(generated / BATCH_DIR) == before


def test_out_of_range_label_is_named(generated: Path) -> None:
    path = generated / BATCH_DIR / "data_batch_1"
    batch = raw(path)
    rewrite(path, {**batch, "labels": [*batch["labels"][:3], 12, *batch["labels"][4:]]})
    with pytest.raises(DataError) as error:
        read_batch(path)
    assert_data_error(error, "label 12 at index 3", "0-9")


# --- download --------------------------------------------------------------------------------


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no network\nat all")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", refuse)
    with pytest.raises(DataError) as error:
        ensure_cifar10(tmp_path, download=True)
    assert_data_error(error, str(tmp_path), "no network at all", "data.download=false")


def test_download_only_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    def fake_cifar10(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        if not (Path(root) / BATCH_DIR).exists():
            write_cifar10(Path(root), 3, 2)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    assert ensure_cifar10(tmp_path, download=True) == tmp_path / BATCH_DIR
    # Both halves into one temporary folder inside data.root, renamed into place after.
    scratch = Path(calls[0][0])
    assert scratch.parent == tmp_path and scratch.name.startswith(".cifar-10-download-")
    assert calls == [(str(scratch), True, True), (str(scratch), False, True)]
    assert not scratch.exists()
    assert load_cifar10(tmp_path, download=True).train_images.shape == (15, 3, 32, 32)
    assert len(calls) == 2  # present now: no second download


def _fetch_counted(into: Path) -> None:
    """A stand-in for the download: counts itself, then writes a generated set in two steps."""
    with (into.parent / "downloads").open("a") as f:
        f.write("one\n")
    write_cifar10(into, 4, 2)


def _ask_for_data(root: Path, barrier: multiprocessing.synchronize.Barrier,
                  report: Path) -> None:
    """One of the processes that want the data at once (a sweep's runs, DDP ranks)."""
    barrier.wait()
    folder = ensure_cifar10(root, download=True, fetch=_fetch_counted)
    # What it finds must be complete: every batch readable, the full training set.
    images = sum(len(read_batch(folder / name)[1]) for name in TRAIN_FILES)
    report.write_text(f"{images} {len(read_batch(folder / TEST_FILE)[1])}")


def test_processes_asking_at_once_download_once_and_see_a_whole_folder(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    reports = [tmp_path / f"report-{index}" for index in range(2)]
    processes = [context.Process(target=_ask_for_data, args=(tmp_path, barrier, report))
                 for report in reports]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [process.exitcode for process in processes] == [0, 0]
    assert (tmp_path / "downloads").read_text() == "one\n"
    assert [report.read_text() for report in reports] == ["20 2", "20 2"]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".cifar-10-download-")]


def test_a_failed_download_leaves_no_partial_folder(tmp_path: Path) -> None:
    def half_then_fail(into: Path) -> None:
        (into / BATCH_DIR).mkdir()
        (into / BATCH_DIR / "data_batch_1").write_bytes(b"half")
        raise OSError("connection reset")

    with pytest.raises(DataError) as error:
        ensure_cifar10(tmp_path, download=True, fetch=half_then_fail)
    assert_data_error(error, "connection reset", "data.download=false")
    assert not (tmp_path / BATCH_DIR).exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [".cifar-10-download.lock"]


# --- the data's fingerprint -------------------------------------------------------------------


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


# --- normalization and augmentation ----------------------------------------------------------


def random_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    mean = torch.rand(3, 32, 32, generator=g) * 200 + 20
    return images, mean


def test_normalize_only_subtracts_the_mean() -> None:
    images, mean = random_batch(4)
    out = normalize(images, mean)
    assert out.dtype == torch.float32
    assert torch.equal(out, images.double().sub(mean.double()).float())


def test_augment_equals_the_reference_definition() -> None:
    images, mean = random_batch(64)
    out = augment(images, mean, torch.Generator().manual_seed(5))
    offsets, flips = draw_crops_flips(64, torch.Generator().manual_seed(5))
    assert flips.any() and not flips.all() and len(set(map(tuple, offsets.tolist()))) > 20
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    for i in range(64):
        dy, dx = offsets[i].tolist()
        assert torch.equal(out[i], augment_reference(images[i], mean, dy, dx, bool(flips[i])))


def test_every_crop_and_flip_matches_the_reference() -> None:
    images, mean = random_batch(162, seed=1)
    offsets = torch.tensor([(dy, dx) for dy in range(9) for dx in range(9)] * 2)
    flips = torch.arange(162) >= 81
    out = crop_flip(images, mean, offsets, flips)
    for i, ((dy, dx), flip) in enumerate(zip(offsets.tolist(), flips.tolist(), strict=True)):
        assert torch.equal(out[i], augment_reference(images[i], mean, dy, dx, flip))


def test_reference_crops_and_flips() -> None:
    # The reference itself, against hand-made expectations: crop (0, 8) of the padded image
    # has 4 zero rows on top and 4 zero columns on the right, and flipping moves them left.
    image = torch.arange(3 * 32 * 32).reshape(3, 32, 32).remainder(251).to(torch.uint8)
    mean = torch.full((3, 32, 32), 0.5)
    crop = augment_reference(image, mean, 0, 8, flip=False)
    assert torch.equal(crop[:, 4:, :28], image[:, :28, 4:].float() - 0.5)
    assert (crop[:, :4] == 0).all() and (crop[:, :, 28:] == 0).all()
    flipped = augment_reference(image, mean, 0, 8, flip=True)
    assert torch.equal(flipped, crop.flip(-1)) and (flipped[:, :, :4] == 0).all()
    assert torch.equal(augment_reference(image, mean, 4, 4, flip=False), image - mean)


def test_padded_pixels_are_exactly_zero() -> None:
    # Image 200, mean 100.5 everywhere: inside pixels are 99.5, padding must be 0.0 (not -mean).
    offsets = torch.tensor([(dy, dx) for dy in range(9) for dx in range(9)])
    flips = torch.arange(81) % 2 == 1
    out = crop_flip(images_encoding([200] * 81), torch.full((3, 32, 32), 100.5), offsets, flips)
    span = torch.arange(32)
    for i, ((dy, dx), flip) in enumerate(zip(offsets.tolist(), flips.tolist(), strict=True)):
        inside_rows = (span + dy >= 4) & (span + dy < 36)
        cols = span.flip(0) if flip else span
        inside_cols = (cols + dx >= 4) & (cols + dx < 36)
        inside = inside_rows[:, None] & inside_cols[None, :]
        assert (out[i][:, inside] == 99.5).all()
        assert (out[i][:, ~inside] == 0.0).all() and (out[i][:, ~inside].signbit() == 0).all()


def test_offsets_and_flips_are_uniform() -> None:
    n = 81 * 200
    offsets, flips = draw_crops_flips(n, torch.Generator().manual_seed(0))
    assert offsets.min() == 0 and offsets.max() == 8
    counts = torch.bincount(offsets[:, 0] * 9 + offsets[:, 1], minlength=81).double()
    assert len(counts) == 81 and counts.min() > 0
    chi2 = ((counts - 200) ** 2 / 200).sum()
    assert chi2 < 200  # 80 degrees of freedom: mean 80, sd 12.6; a broken draw is far above
    assert abs(flips.double().mean() - 0.5) < 0.03  # sd 0.004


def test_augment_draws_from_the_generator_only() -> None:
    images, mean = random_batch(8)
    a = augment(images, mean, torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # the global generator must not matter
    b = augment(images, mean, torch.Generator().manual_seed(1))
    c = augment(images, mean, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- the training stream ---------------------------------------------------------------------


def indexed_stream(n: int = 100, batch_size: int = 32, seed: int = 0) -> TrainBatches:
    """A stream over images whose every pixel holds their index; label = index % 10."""
    return TrainBatches(images_encoding(list(range(n))), torch.arange(n) % 10,
                        torch.zeros(3, 32, 32), batch_size, seed, CPU)


def identities(images: torch.Tensor) -> torch.Tensor:
    """The index encoded in each image: the centre pixel always survives a crop."""
    return images[:, 0, 16, 16].long()


def test_batches_have_the_right_shape_and_labels() -> None:
    stream = indexed_stream()
    for _ in range(7):
        images, labels = next(stream)
        assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
        assert labels.shape == (32,) and labels.dtype == torch.int64
        assert torch.equal(labels, identities(images) % 10)  # labels stay with their images


def test_each_epoch_is_a_permutation() -> None:
    stream = indexed_stream(n=100, batch_size=32)  # 3 full batches an epoch, 4 images dropped
    epochs = []
    for epoch in range(3):
        assert stream.epoch == epoch
        seen = torch.cat([identities(stream.next()[0]) for _ in range(3)])
        assert len(seen) == 96 and len(set(seen.tolist())) == 96  # no repeats in an epoch
        assert seen.min() >= 0 and seen.max() < 100
        epochs.append(seen.tolist())
    assert stream.epoch == 3
    assert epochs[0] != epochs[1]  # a fresh permutation each epoch


def test_stream_is_iterable() -> None:
    stream = indexed_stream()
    batches = [batch for batch, _ in zip(stream, range(4), strict=False)]
    assert len(batches) == 4 and stream.epoch == 1


@pytest.mark.parametrize("taken", [0, 2, 3, 5])
def test_resume_continues_bit_identically(taken: int) -> None:
    stream = indexed_stream(n=100, batch_size=32, seed=7)
    for _ in range(taken):
        stream.next()
    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)  # as a checkpoint would
    expected = [stream.next() for _ in range(7)]
    resumed = indexed_stream(n=100, batch_size=32, seed=99)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.epoch == taken // 3
    for (images, labels), (want_images, want_labels) in zip(
            (resumed.next() for _ in range(7)), expected, strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_same_seed_same_batches() -> None:
    a, b, c = indexed_stream(seed=1), indexed_stream(seed=1), indexed_stream(seed=2)
    for _ in range(4):
        (xa, ya), (xb, yb), (xc, _) = a.next(), b.next(), c.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)


def test_one_seed_gives_one_stream_drawn_on_the_cpu_an_epoch_at_a_time() -> None:
    """The definition: an epoch's order, then its crops and flips, from a CPU generator."""
    stream = indexed_stream(n=100, batch_size=32, seed=3)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):  # two epochs of 3 batches
        order = torch.randperm(100, generator=generator)
        offsets, flips = draw_crops_flips(96, generator)
        for rows in (slice(0, 32), slice(32, 64), slice(64, 96)):
            images, labels = stream.next()
            expected = crop_flip(images_encoding(order[rows].tolist()), torch.zeros(3, 32, 32),
                                 offsets[rows], flips[rows])
            assert torch.equal(images, expected) and torch.equal(labels, order[rows] % 10)


@pytest.mark.parametrize("taken", [2, 3])
def test_a_stream_saved_on_one_device_resumes_on_another(taken: int) -> None:
    """`meta` stands in for a GPU: what decides the batches is the same on every device."""
    images, labels = images_encoding(list(range(100))), torch.arange(100) % 10
    elsewhere = TrainBatches(images, labels, torch.zeros(3, 32, 32), 32, 7,
                             torch.device("meta"))
    for _ in range(taken):
        images_there, labels_there = elsewhere.next()
        assert images_there.is_meta and labels_there.is_meta
    state = elsewhere.state_dict()
    assert all(value.device == CPU for value in state.values()
               if isinstance(value, torch.Tensor))
    uninterrupted = indexed_stream(n=100, batch_size=32, seed=7)
    for _ in range(taken):
        uninterrupted.next()
    here = indexed_stream(n=100, batch_size=32, seed=0)
    here.load_state_dict(state)
    for _ in range(4):
        (x, y), (want_x, want_y) = here.next(), uninterrupted.next()
        assert torch.equal(x, want_x) and torch.equal(y, want_y)


def test_a_stream_saved_by_an_earlier_version_is_refused_in_one_line() -> None:
    # Earlier versions drew on the run's device, batch by batch: a CUDA generator's state.
    earlier = {"generator": torch.zeros(16, dtype=torch.uint8),
               "perm": torch.randperm(100), "step": 5, "num_images": 100, "batch_size": 32}
    with pytest.raises(DataError) as error:
        indexed_stream(n=100, batch_size=32).load_state_dict(earlier)
    assert_data_error(error, "earlier version", "move the checkpoint away")


def test_resume_into_different_data_is_refused() -> None:
    state = indexed_stream(n=100, batch_size=32).state_dict()
    with pytest.raises(DataError) as error:
        indexed_stream(n=90, batch_size=32).load_state_dict(state)
    assert_data_error(error, "100 images", "90")


@pytest.mark.parametrize("batch_size", [101, 0])
def test_bad_batch_size_is_refused(batch_size: int) -> None:
    with pytest.raises(DataError) as error:
        indexed_stream(n=100, batch_size=batch_size)
    assert_data_error(error, f"train.batch_size={batch_size}", "100 training images")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_stream_lives_on_cuda_and_resumes() -> None:
    cuda = torch.device("cuda")
    images, labels = images_encoding(list(range(100))), torch.arange(100) % 10
    stream = TrainBatches(images, labels, torch.zeros(3, 32, 32), 32, 0, cuda)
    stream.next()
    state = stream.state_dict()
    x, y = stream.next()
    assert x.is_cuda and y.is_cuda and torch.equal(y, identities(x) % 10)
    resumed = TrainBatches(images, labels, torch.zeros(3, 32, 32), 32, 5, cuda)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next()[0], x)


def test_eval_batches_are_the_normalized_originals_in_order() -> None:
    images, mean = random_batch(10)
    labels = torch.arange(10) % 10
    batches = list(eval_batches(images, labels, mean, 4, CPU))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), normalize(images, mean))
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
