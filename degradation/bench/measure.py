"""What every measurement shares: the synthetic data, our network set up and stepped exactly
as `degrade train` does it, and the clock, peak memory and load around them.

`step_seconds` is the smallest such measurement: the seconds of one training step, which
the sweep's CPU estimate (launch/estimate.py) scales to a whole sweep.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from degradation.config import Config, TrainConfig
from degradation.data.cifar import NUM_CLASSES, SIZE, pixel_mean
from degradation.data.stream import TrainBatches
from degradation.training.device import Speed, build_network, resolve_device, resolve_speed
from degradation.training.step import evaluate, train_step

DATA_SEED = 0


@dataclass
class Data:
    """Synthetic CIFAR-shaped uint8 images with random labels (throughput only)."""

    train_images: Tensor  # (N, 3, 32, 32) uint8
    train_labels: Tensor
    eval_images: Tensor
    eval_labels: Tensor
    mean: Tensor  # the training images' per-pixel mean, as `degrade train` subtracts it
    drawn_with: tuple[int, int, int]  # `synthetic`'s arguments: the same data again elsewhere


def synthetic(images: int, eval_batches: int, eval_batch_size: int) -> Data:
    """`images` training images and `eval_batches` evaluation batches, drawn from DATA_SEED."""
    generator = torch.Generator().manual_seed(DATA_SEED)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        return (torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=generator,
                              dtype=torch.uint8),
                torch.randint(0, NUM_CLASSES, (n,), generator=generator))

    train_images, train_labels = draw(images)
    return Data(train_images, train_labels, *draw(eval_batches * eval_batch_size),
                mean=pixel_mean(train_images), drawn_with=(images, eval_batches, eval_batch_size))


def resolve(config: Config, **changes: Any) -> tuple[torch.device, Speed]:
    """The device `config` trains on and its speed settings as `degrade train` resolves them,
    with `changes` (`threads=1`, ...) made to the settings."""
    device = resolve_device(config.device)
    return device, replace(resolve_speed(config.train, device), **changes)


@dataclass
class Ours:
    """One network as `degrade train` builds it, and its stream of training batches."""

    config: Config
    device: torch.device
    speed: Speed
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: TrainBatches

    def steps(self, count: int) -> None:
        """`count` training steps, as `degrade train` takes them."""
        our_steps(self.model, self.optimizer, self.batches.__next__, self.config.train,
                  self.speed.memory_format, count)

    def eval_rate(self, images: Tensor, labels: Tensor) -> float:
        """Images/second of `evaluate` (training/step.py) after one warm-up batch."""
        recipe = self.config.train
        size = recipe.eval_batch_size
        args = (self.batches.mean, size, recipe.precision, self.speed.memory_format)
        timed(self.device, lambda: float(evaluate(self.model, images[:size], labels[:size],
                                                  *args)[1]))
        seconds = timed(self.device, lambda: float(evaluate(self.model, images[size:],
                                                            labels[size:], *args)[1]))
        return (len(images) - size) / seconds


def build_ours(config: Config, data: Data, device: torch.device, speed: Speed) -> Ours:
    """`config`'s network on `device` with `speed`, from the weights its seed draws, and
    `data`'s training images in the order its seed shuffles them."""
    torch.manual_seed(config.seed)  # all a model's initialisation draws from
    model, optimizer = build_network(config, device, speed)
    batches = TrainBatches(data.train_images, data.train_labels, data.mean,
                           config.train.batch_size, config.seed, device)
    return Ours(config, device, speed, model, optimizer, batches)


def our_steps(model: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer,
              next_batch: Callable[[], tuple[Tensor, Tensor]], recipe: TrainConfig,
              memory_format: torch.memory_format, steps: int) -> None:
    """`steps` of `train_step` as `degrade train` takes them, on a lone or a fused model."""
    loss_sum: Tensor | None = None
    for _ in range(steps):
        images, labels = next_batch()
        loss, _wrong = train_step(model, optimizer, images, labels, recipe.lr,
                                  recipe.precision, memory_format)
        # On the device, as `degrade train` accumulates it (one sum per member when fused).
        total = loss.double() * labels.shape[-1]
        loss_sum = total if loss_sum is None else loss_sum + total
    if loss_sum is not None:
        float(loss_sum.sum())  # one read at the end, as at a log point


def step_seconds(config: Config, steps: int = 3, warmup_steps: int = 1) -> float:
    """Seconds per training step of `config`'s network on its device, from a few timed steps
    on synthetic data: eager (a compile would take longer than the estimate is worth) and on
    one thread (threads that wait for each other make a busy CPU's timings erratic)."""
    device, speed = resolve(config, compile=False, threads=1)
    threads = torch.get_num_threads()
    try:
        data = synthetic(config.train.batch_size * (steps + warmup_steps), 1, 1)
        ours = build_ours(config, data, device, speed)
        ours.steps(warmup_steps)
        return timed(device, lambda: ours.steps(steps)) / steps
    finally:
        torch.set_num_threads(threads)  # the process goes on to train with its own


# --- the clock, memory and load --------------------------------------------------------------


def timed(device: torch.device, work: Callable[[], Any]) -> float:
    """Seconds `work` takes, the device's queued work included."""
    sync(device)
    started = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - started


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start counting `device`'s peak memory again (CUDA only: a process's RSS peak stays)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def load_average() -> float:
    """The 1-minute load average (NaN where the OS has none): other work skews CPU timings."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
