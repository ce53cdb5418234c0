"""CIFAR-10 in the official python format, and a training stream that lives on the device.

The paper (Sec. 4.2) feeds 32x32 images with the per-pixel mean subtracted, trains on
random crops of the image zero-padded by 4 pixels with random horizontal flips, and tests
on the single original image. Following KellerJordan/cifar10-airbench, the training set is
kept on the device as uint8 and shuffled, cropped and flipped with batched tensor ops: no
PIL, no DataLoader. Every random number comes from one CPU torch.Generator, drawn an epoch
at a time and copied to the device, so a stream is the same on every device and can be
saved and resumed bit-identically, on the device it ran on or another.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from degradation.errors import DegradeError, error_line
from degradation.storage import StorageError, atomic_write_text

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")  # fmt: skip
NUM_CLASSES = 10
PAD = 4  # "4 pixels are padded on each side"
SIZE = 32
STREAM_FORMAT = 2  # of `TrainBatches.state_dict()`: 2 draws on the CPU
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
GENERATOR_MARK = "degradation.data.write_cifar10"  # in batches.meta of generated sets
FINGERPRINT_CACHE = ".degrade-fingerprint.json"  # beside the batches, in BATCH_DIR
DOWNLOAD_LOCK = ".cifar-10-download.lock"  # in data.root


class DataError(DegradeError, ValueError):
    """A data problem, told in one line that names the bad value or file."""


def read_batch(path: Path) -> tuple[Tensor, Tensor]:
    """Read one CIFAR-10 python batch: images uint8 (N,3,32,32), labels int64 (N,)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing: a CIFAR-10 folder holds {', '.join(TRAIN_FILES)} "
                        f"and {TEST_FILE}")
    try:
        with path.open("rb") as f:
            # latin1 reads Python-2 pickles of numpy arrays; MD5 is deliberately not checked,
            # because subsets and generated sets differ from the official checksums.
            batch = pickle.load(f, encoding="latin1")
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
        raise DataError(f"{folder} already holds {existing[0]}; write_cifar10 writes only into "
                        "a folder without CIFAR-10 batches")
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
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        lock = (Path(root) / DOWNLOAD_LOCK).open("a")
    except OSError as e:
        raise DataError(f"{cannot} ({error_line(e)}); {advice}") from e
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


@dataclass(frozen=True)
class DataFingerprint:
    """Which data a run trains and evaluates on: a content hash and a name for people."""

    digest: str  # 16 hex digits over the MD5 sums of the batch files used
    description: str  # official CIFAR-10 | generated, N training images | subset of N ...
    train_images: int  # in the training batches, before any validation split


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
    name, size and modification time, so a changed file is hashed again); a folder that cannot
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


_FINGERPRINTS: dict[tuple[str, str], DataFingerprint] = {}


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
        with contextlib.suppress(Exception):  # the meta file is optional and never trusted
            with path.open("rb") as f:
                meta = pickle.load(f, encoding="latin1")
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
    return [stat.st_size, stat.st_mtime_ns]


def _user_cache(folder: Path) -> Path:
    """Where the fingerprint cache of a read-only data folder lives."""
    name = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "degrade" / "data" / f"{name}.json"


def _digest(md5: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(md5, sort_keys=True).encode()).hexdigest()[:16]


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


def normalize(images_u8: Tensor, mean: Tensor) -> Tensor:
    """Float32 images minus the per-pixel mean, and nothing else (the paper's preprocessing)."""
    return images_u8.float() - mean.to(device=images_u8.device, dtype=torch.float32)


def augment_reference(image_u8: Tensor, mean: Tensor, dy: int, dx: int, flip: bool) -> Tensor:
    """The augmentation of one (3,32,32) image, written plainly: the definition `augment` meets."""
    # Padding comes after the mean subtraction, so padded pixels are exactly 0 in the
    # network's input, as in fb.resnet.torch (normalize, then pad-and-crop).
    canvas = torch.zeros(3, SIZE + 2 * PAD, SIZE + 2 * PAD, device=image_u8.device)
    canvas[:, PAD:PAD + SIZE, PAD:PAD + SIZE] = normalize(image_u8, mean)
    crop = canvas[:, dy:dy + SIZE, dx:dx + SIZE]
    return crop.flip(-1) if flip else crop


def draw_crops_flips(batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random crop offsets (B,2) as (dy, dx) uniform in 0..8, and flip flags (B,) with p=0.5."""
    device = generator.device
    offsets = torch.randint(0, 2 * PAD + 1, (batch_size, 2), generator=generator, device=device)
    flips = torch.rand(batch_size, generator=generator, device=device) < 0.5
    return offsets, flips


def crop_flip(images_u8: Tensor, mean: Tensor, offsets: Tensor, flips: Tensor) -> Tensor:
    """Batched `augment_reference` with the given offsets (B,2) and flips (B,)."""
    device = images_u8.device
    padded = F.pad(normalize(images_u8, mean), (PAD, PAD, PAD, PAD))  # zeros after the mean
    offsets, flips = offsets.to(device), flips.to(device)
    span = torch.arange(SIZE, device=device)
    rows = offsets[:, 0, None] + span  # (B, 32)
    cols = offsets[:, 1, None] + span
    # Reading a window's columns right to left is the same as flipping the crop.
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(len(images_u8), device=device)[:, None, None, None]
    channel = torch.arange(3, device=device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def augment(images_u8: Tensor, mean: Tensor, generator: torch.Generator) -> Tensor:
    """Normalized, randomly padded-cropped and flipped float32 batch (B,3,32,32)."""
    offsets, flips = draw_crops_flips(len(images_u8), generator)
    return crop_flip(images_u8, mean, offsets, flips)


class TrainBatches:
    """Endless augmented training batches, reshuffled each epoch, kept on `device`.

    An epoch is one torch.randperm of the N images cut into N // batch_size full batches;
    the remainder is dropped and the next epoch draws a fresh permutation. The permutation
    and the epoch's crops and flips are drawn at once, at the start of the epoch, from one
    CPU generator, then copied to `device`: one seed gives the same images in the same order
    on every device, and a stream saved on one device resumes on any other.
    """

    def __init__(self, images_u8: Tensor, labels: Tensor, mean: Tensor, batch_size: int,
                 seed: int, device: torch.device) -> None:
        """Move the uint8 images, labels and mean to `device` once and seed the generator."""
        n = len(images_u8)
        if not 1 <= batch_size <= n:
            raise DataError(f"train.batch_size={batch_size} must be between 1 and the {n} "
                            "training images")
        self.images = images_u8.to(device=device, dtype=torch.uint8)
        self.labels = labels.to(device=device, dtype=torch.int64)
        self.mean = mean.to(device=device, dtype=torch.float32)
        self.batch_size = batch_size
        self.steps_per_epoch = n // batch_size
        self.generator = torch.Generator()  # on the CPU whatever `device` is: see above
        self.generator.manual_seed(seed)
        self._drawn_from = self.generator.get_state()  # the state the epoch's draws began at
        self._step = 0  # batches handed out so far

    @property
    def epoch(self) -> int:
        """Index of the epoch the next batch comes from (= epochs completed)."""
        return self._step // self.steps_per_epoch

    def next(self) -> tuple[Tensor, Tensor]:
        """The next (normalized augmented float32 images, int64 labels) batch."""
        position = self._step % self.steps_per_epoch
        if position == 0:
            self._draw_epoch()
        rows = slice(position * self.batch_size, (position + 1) * self.batch_size)
        index = self._perm[rows]
        self._step += 1
        return (crop_flip(self.images[index], self.mean, self._offsets[rows], self._flips[rows]),
                self.labels[index])

    def _draw_epoch(self) -> None:
        """Draw the epoch's order, crops and flips on the CPU and send them to the device."""
        self._drawn_from = self.generator.get_state()
        perm = torch.randperm(len(self.images), generator=self.generator)
        draws = (perm, *draw_crops_flips(self.steps_per_epoch * self.batch_size,
                                         self.generator))
        device = self.images.device
        if device.type == "cuda":
            # Pinned, the copies are queued behind the steps before them: no wait for the GPU.
            draws = tuple(draw.pin_memory() for draw in draws)
        self._perm, self._offsets, self._flips = (draw.to(device, non_blocking=True)
                                                  for draw in draws)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The stream is its own iterator."""
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        """Same as `next()`; the stream never ends."""
        return self.next()

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides future batches: the CPU generator's state where the
        current epoch's draws began (or, between epochs, where the next one's will) and the
        position; the same whatever device the stream is on."""
        between_epochs = self._step % self.steps_per_epoch == 0
        return {"format": STREAM_FORMAT,
                "generator": self.generator.get_state() if between_epochs else self._drawn_from,
                "step": self._step, "num_images": len(self.images),
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the stream that wrote `state` stopped, on any device."""
        if state.get("format") != STREAM_FORMAT:
            # The earlier format drew crops and flips batch by batch on the run's device.
            raise DataError("the saved training stream was written by an earlier version of "
                            "degrade, which drew its random crops on the run's device; this "
                            "version cannot continue it: move the checkpoint away to retrain")
        saved = (state["num_images"], state["batch_size"])
        if saved != (len(self.images), self.batch_size):
            raise DataError(f"the saved training stream has {saved[0]} images in batches of "
                            f"{saved[1]}, this one {len(self.images)} in batches of "
                            f"{self.batch_size}: resume with the same data and batch size")
        self.generator.set_state(state["generator"].cpu())
        self._step = int(state["step"])
        if self._step % self.steps_per_epoch:
            self._draw_epoch()  # the same draws again: the same generator state


def eval_batches(images_u8: Tensor, labels: Tensor, mean: Tensor, batch_size: int,
                 device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """The original images, normalized, in order and in batches (the last may be smaller)."""
    if batch_size < 1:
        raise DataError(f"train.eval_batch_size={batch_size} must be >= 1")
    mean = mean.to(device)
    for start in range(0, len(images_u8), batch_size):
        stop = start + batch_size
        yield normalize(images_u8[start:stop].to(device), mean), labels[start:stop].to(device)
