"""CIFAR-10 in the official format: reading, generated sets, errors, downloading."""

from __future__ import annotations

import multiprocessing
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
from tests.data_fixtures import (
    SUBSET,
    assert_data_error,
    raw,
    rewrite,
    snapshot,
)

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


# --- a crafted pickle ---------------------------------------------------------------------


class _Payload:
    """A pickle that runs a shell command while it is read (unless the unpickler refuses)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["the whole file", "inside 'data'", "batches.meta"])
def test_a_pickle_that_would_run_code_is_refused(generated: Path, tmp_path: Path,
                                                 where: str) -> None:
    from degradation.data.fingerprint import fingerprint

    marker = tmp_path / "PWNED"
    folder = generated / BATCH_DIR
    name = "batches.meta" if where == "batches.meta" else "data_batch_1"
    rewrite(folder / name, _Payload(marker) if where == "the whole file"
            else {**raw(folder / name), "data": _Payload(marker)})
    reads = [lambda: fingerprint(generated, val_split=0)]
    if name != "batches.meta":  # training reads only the batches
        reads.append(lambda: load_cifar10(generated, download=False))
    for read in reads:
        with pytest.raises(DataError) as error:
            read()
        assert_data_error(error, name, "is refused", "posix.system")
    assert not marker.exists()


def test_the_unpickler_reads_numpy_arrays_of_both_numpy_module_names(generated: Path) -> None:
    # NumPy 1 pickles name numpy.core.multiarray, NumPy 2 numpy._core.multiarray.
    path = generated / BATCH_DIR / "data_batch_1"
    expected = read_batch(path)
    text = path.read_bytes()
    for module in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        other = text.replace(b"numpy._core.multiarray", module)
        path.write_bytes(other)
        images, labels = read_batch(path)
        assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])


def test_a_failed_download_removes_the_folders_it_made(tmp_path: Path) -> None:
    def fail(into: Path) -> None:
        raise OSError("no network")

    root = tmp_path / "typo" / "data"
    with pytest.raises(DataError):
        ensure_cifar10(root, download=True, fetch=fail)
    assert list(tmp_path.iterdir()) == []  # neither data/ nor the typo/ above it is left
