"""CIFAR-10 in the official python format: reading, writing (generated sets), downloading
under a lock, and the splits a run trains and evaluates on.

The paper (Sec. 4.2) feeds 32x32 images with the per-pixel mean subtracted, trains on
random crops of the image zero-padded by 4 pixels with random horizontal flips (stream.py),
and tests on the single original image.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import Tensor

from degradation.errors import DegradeError, error_line

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")  # fmt: skip
NUM_CLASSES = 10
SIZE = 32
# In batches.meta of generated sets; the name write_cifar10 had when it was first written.
GENERATOR_MARK = "degradation.data.write_cifar10"
DOWNLOAD_LOCK = ".cifar-10-download.lock"  # in data.root


class DataError(DegradeError, ValueError):
    """A data problem, told in one line that names the bad value or file."""


# What the official batches hold besides dicts, lists, strings and ints: NumPy arrays (their
# reconstructor, under NumPy 1's and NumPy 2's module names, their dtype, and the scalars a
# subset's labels may be), and `_codecs.encode`, which protocol-2 pickles use for bytes.
PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})


class RefusedPickle(DataError):
    """A pickle that names something besides plain data and NumPy arrays (it could run code)."""


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data and NumPy arrays and refuses any other global.

    A pickle runs whatever callable it names while it is read, so a crafted batch file could
    run code even in `sweep --dry-run`; only the names in `PICKLE_GLOBALS` are ever looked up.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PICKLE_GLOBALS:
            raise RefusedPickle(f"it names {module}.{name}, which a CIFAR-10 file never holds "
                                "(only dicts, lists, strings, bytes, numbers and NumPy arrays "
                                "are read)")
        return super().find_class(module, name)


def load_data_pickle(path: Path) -> Any:
    """Read a CIFAR-10 pickle with `_DataUnpickler` (latin1 reads Python-2 pickles of
    NumPy arrays); `RefusedPickle`, naming the file, for anything that is not plain data."""
    try:
        with Path(path).open("rb") as f:
            return _DataUnpickler(f, encoding="latin1").load()
    except RefusedPickle as e:
        raise RefusedPickle(f"{path} is refused: {e}") from None


def read_batch(path: Path) -> tuple[Tensor, Tensor]:
    """Read one CIFAR-10 python batch: images uint8 (N,3,32,32), labels int64 (N,)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing: a CIFAR-10 folder holds {', '.join(TRAIN_FILES)} "
                        f"and {TEST_FILE}")
    try:
        # MD5 is deliberately not checked: subsets and generated sets differ from the
        # official checksums.
        batch = load_data_pickle(path)
    except RefusedPickle:
        raise
    except Exception as e:  # a corrupt pickle can raise almost any exception type
        raise DataError(f"{path} is truncated or not a CIFAR-10 pickle ({error_line(e)})") from e
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, expected a dict with "
                        "'data' and 'labels' (a CIFAR-10 python batch)")
    # Python-2 str keys load as str with latin1, but bytes-keyed pickles stay bytes.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DataError(f"{path} has no {' or '.join(map(repr, missing))} entry (keys found: "
                        f"{sorted(map(str, batch))}); expected a CIFAR-10 batch")
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * SIZE * SIZE):
        found = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise DataError(f"{path}: 'data' is a {found}, expected a uint8 array of shape "
                        f"(N, 3072) (R, G, B planes of a 32x32 image)")
    try:
        labels = np.asarray(batch["labels"])
    except ValueError as e:  # e.g. a ragged list
        raise DataError(f"{path}: 'labels' is not a list of integers ({error_line(e)})") from e
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: 'labels' has shape {labels.shape} but 'data' holds "
                        f"{len(data)} images; expected one label per image")
    if len(labels) and labels.dtype.kind not in "iu":
        raise DataError(f"{path}: 'labels' are {labels.dtype}, expected integers 0-9")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if len(bad):
        raise DataError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is out of range; "
                        f"CIFAR-10 labels are 0-{NUM_CLASSES - 1}")
    # Each row is the R plane, then G, then B, each row-major: exactly a (3, 32, 32) image.
    images = torch.tensor(data).reshape(len(data), 3, SIZE, SIZE)
    return images, torch.tensor(labels, dtype=torch.int64)


def write_cifar10(root: Path, train_per_batch: int, test_size: int, seed: int = 0) -> Path:
    """Write a small learnable data set in the official format under root/cifar-10-batches-py/."""
    if train_per_batch < 1 or test_size < 1:
        raise DataError(f"write_cifar10 needs train_per_batch >= 1 and test_size >= 1, got "
                        f"{train_per_batch} and {test_size}")
    folder = Path(root) / BATCH_DIR
    existing = [name for name in (*TRAIN_FILES, TEST_FILE) if (folder / name).exists()]
    if existing:  # never overwrite a real copy of CIFAR-10
        raise DataError(f"{folder} already holds {existing[0]}; data is generated only into "
                        "a folder without CIFAR-10 batches (choose another folder)")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Class k has its own colour and stripe pattern (orientation k % 2, period 4 + k // 2);
    # phase, brightness and noise vary per image, so the task is learnable but not constant.
    hue = 2 * np.pi * np.arange(NUM_CLASSES) / NUM_CLASSES
    colours = 128 + 80 * np.cos(hue[:, None] + np.array([0, 2, 4]) * np.pi / 3)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    sizes = {**dict.fromkeys(TRAIN_FILES, train_per_batch), TEST_FILE: test_size}
    for name, n in sizes.items():
        labels = rng.permutation(np.arange(n) % NUM_CLASSES)
        coord = np.where((labels % 2 == 0)[:, None, None], yy, xx)
        period = (4 + labels // 2)[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
        stripes = 40 * np.sign(np.sin(2 * np.pi * coord / period + phase))
        images = (colours[labels][:, :, None, None] + stripes[:, None]
                  + rng.normal(0, 20, size=(n, 1, 1, 1)) + rng.normal(0, 25, (n, 3, SIZE, SIZE)))
        batch = {
            "batch_label": (f"training batch {name[-1]} of 5" if name != TEST_FILE
                            else "testing batch 1 of 1"),
            "labels": [int(label) for label in labels],
            "data": np.clip(np.rint(images), 0, 255).astype(np.uint8).reshape(n, -1),
            "filenames": [f"synthetic_{name}_{i:05d}.png" for i in range(n)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)  # the official files are protocol-2 pickles
    meta = {"label_names": list(LABEL_NAMES), "num_cases_per_batch": train_per_batch,
            "num_vis": 3 * SIZE * SIZE, "generator": GENERATOR_MARK}
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump(meta, f, protocol=2)
    return Path(root)


def ensure_cifar10(root: Path, download: bool,
                   fetch: Callable[[Path], None] | None = None) -> Path:
    """Return root/cifar-10-batches-py, downloading it first only if missing and allowed.

    Processes that ask at once (a sweep's runs, DDP ranks) download it once: the download
    holds a lock in data.root and is extracted into a temporary folder that is renamed into
    place, so no one ever reads a half-extracted folder. `fetch(into)` must leave
    into/cifar-10-batches-py/ (default: torchvision's download, which checks the MD5 sums).
    """
    folder = Path(root) / BATCH_DIR
    if folder.is_dir():
        return folder
    if not download:
        raise DataError(f"data.root={root} holds no {BATCH_DIR}/ and data.download=false: point "
                        f"data.root at the folder that holds {BATCH_DIR}/, or set "
                        "data.download=true")
    cannot = f"cannot download CIFAR-10 into data.root={root}"
    advice = (f"set data.download=false and point data.root at a local copy that holds "
              f"{BATCH_DIR}/")
    made = [folder for folder in (Path(root), *Path(root).parents) if not folder.exists()]
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        lock = (Path(root) / DOWNLOAD_LOCK).open("a")
    except OSError as e:
        raise DataError(f"{cannot} ({error_line(e)}); {advice}") from e
    try:
        return _download_locked(lock, Path(root), fetch, cannot, advice)
    except DataError:
        _remove_made(made, Path(root) / DOWNLOAD_LOCK)
        raise


def _remove_made(made: list[Path], lock: Path) -> None:
    """After a failed download, remove the folders it made (deepest first) while they are
    empty, so a typo in data.root leaves no empty folder behind."""
    if not made:
        return  # data.root was there before: its lock stays, as other processes may wait on it
    lock.unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty (another process is downloading into it) or not ours
            return


def _download_locked(lock: TextIO, root: Path, fetch: Callable[[Path], None] | None,
                     cannot: str, advice: str) -> Path:
    """Under the download lock: download into a scratch folder and rename it into place."""
    folder = root / BATCH_DIR
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if folder.is_dir():  # another process downloaded it while this one waited
            return folder
        try:
            scratch = Path(tempfile.mkdtemp(prefix=".cifar-10-download-", dir=root))
        except OSError as e:
            raise DataError(f"{cannot} ({error_line(e)}); {advice}") from e
        try:
            (fetch or _torchvision_download)(scratch)
            if not (scratch / BATCH_DIR).is_dir():
                raise DataError(f"downloading CIFAR-10 into data.root={root} left no "
                                f"{BATCH_DIR}/; {advice}")
            os.rename(scratch / BATCH_DIR, folder)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"downloading CIFAR-10 into data.root={root} failed "
                            f"({error_line(e)}); {advice}") from e
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _torchvision_download(into: Path) -> None:
    """Download and extract the official archive into `into` (torchvision checks its MD5)."""
    import torchvision.datasets  # imported here: only a download needs torchvision

    for train in (True, False):
        torchvision.datasets.CIFAR10(str(into), train=train, download=True)


def check_split(val_split: int, train_images: int) -> None:
    """Refuse a validation split that leaves no training image (`DataError`)."""
    if not 0 <= val_split < train_images:
        raise DataError(f"data.val_split={val_split} is out of range: use 0 to evaluate on the "
                        f"test set, or 1 to {train_images - 1} to hold out that many of the "
                        f"{train_images} training images")


def check_batch_size(batch_size: int, train_images: int) -> None:
    """Refuse a batch larger than the training set (`DataError`)."""
    if not 1 <= batch_size <= train_images:
        raise DataError(f"train.batch_size={batch_size} must be between 1 and the "
                        f"{train_images} training images")


@dataclass
class CifarSplits:
    """Training images and labels, the evaluation set, and the training per-pixel mean."""

    train_images: Tensor  # uint8 (N, 3, 32, 32)
    train_labels: Tensor  # int64 (N,)
    eval_images: Tensor  # uint8 (M, 3, 32, 32)
    eval_labels: Tensor  # int64 (M,)
    eval_set: str  # "test" or "validation"
    mean: Tensor  # float32 (3, 32, 32): per-pixel mean of train_images


def load_cifar10(root: Path, download: bool = True, val_split: int = 0) -> CifarSplits:
    """Load CIFAR-10; val_split > 0 holds out the last val_split training images for evaluation."""
    folder = ensure_cifar10(root, download)
    parts = [read_batch(folder / name) for name in TRAIN_FILES]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    n = len(images)
    check_split(val_split, n)
    if val_split == 0:
        # The test batch is read only when it is the evaluation set.
        eval_images, eval_labels = read_batch(folder / TEST_FILE)
        eval_set = "test"
    else:
        # The held-out part is the *last* val_split images in the official order, so the split
        # is deterministic; 5000 gives the paper's 45k/5k split used to choose the schedule.
        eval_images, eval_labels = images[n - val_split:], labels[n - val_split:]
        images, labels, eval_set = images[: n - val_split], labels[: n - val_split], "validation"
    return CifarSplits(images, labels, eval_images, eval_labels, eval_set, pixel_mean(images))


def pixel_mean(images_u8: Tensor) -> Tensor:
    """Per-pixel mean image (3,32,32) float32 of a uint8 batch, summed exactly in int64."""
    total = torch.zeros(images_u8.shape[1:], dtype=torch.int64)
    for chunk in images_u8.split(4096):  # bounded memory even for 50k images
        total += chunk.sum(0, dtype=torch.int64).cpu()
    return (total.double() / max(len(images_u8), 1)).float()


