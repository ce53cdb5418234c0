"""The training stream that lives on the device, and the evaluation batches.

Following KellerJordan/cifar10-airbench, the training set is kept on the device as uint8 and
shuffled, cropped and flipped with batched tensor ops: no PIL, no DataLoader. Every random
number comes from one CPU torch.Generator, drawn an epoch at a time and copied to the
device, so a stream is the same on every device and can be saved and resumed
bit-identically, on the device it ran on or another.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from degradation.data.cifar import SIZE, DataError

PAD = 4  # "4 pixels are padded on each side"


STREAM_FORMAT = 2  # of `TrainBatches.state_dict()`: 2 draws on the CPU


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
