"""The conventional pipeline `degrade bench` measures ours against, in a process of its own.

The shape of most CIFAR-10 repositories: PIL images through torchvision's RandomCrop(32,
padding=4), RandomHorizontalFlip, ToTensor and Normalize in DataLoader workers, an eager
fp32 NCHW model, PyTorch's default SGD, and the loss read back with `.item()` every step.
It exists only to be compared against ours.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from degradation.bench.measure import Data, peak_mib, reset_peak, sync, synthetic, timed
from degradation.config import Config, from_dict
from degradation.data.cifar import SIZE
from degradation.models import build_model
from degradation.training.device import resolve_device

# The per-channel statistics most CIFAR-10 repositories normalise with.
CONVENTIONAL_MEAN = (0.4914, 0.4822, 0.4465)
CONVENTIONAL_STD = (0.2470, 0.2435, 0.2616)


class _PilCifar(Dataset):
    """CIFAR-10 as torchvision's `datasets.CIFAR10` serves it: a PIL image per index."""

    def __init__(self, images_u8: Tensor, labels: Tensor, transform: Callable) -> None:
        self.images = np.ascontiguousarray(images_u8.permute(0, 2, 3, 1).numpy())  # HWC
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def _to_tensor_normalized() -> list[Callable]:
    return [transforms.ToTensor(), transforms.Normalize(CONVENTIONAL_MEAN, CONVENTIONAL_STD)]


class _ConventionalBatches:
    """A shuffling DataLoader with per-sample PIL augmentation, restarted at each epoch's end."""

    def __init__(self, images_u8: Tensor, labels: Tensor, batch_size: int, workers: int,
                 device: torch.device, seed: int) -> None:
        augment = transforms.Compose([transforms.RandomCrop(SIZE, padding=4),
                                      transforms.RandomHorizontalFlip(),
                                      *_to_tensor_normalized()])
        self.loader = DataLoader(_PilCifar(images_u8, labels, augment), batch_size=batch_size,
                                 shuffle=True, num_workers=workers,
                                 pin_memory=device.type == "cuda",
                                 generator=torch.Generator().manual_seed(seed))
        self.iterator: Iterator | None = None

    def next(self) -> tuple[Tensor, Tensor]:
        """The next batch; a new epoch (and new workers, as by default) when one ends."""
        if self.iterator is not None:
            batch = next(self.iterator, None)
            if batch is not None:
                return batch
        self.iterator = iter(self.loader)
        return next(self.iterator)

    def close(self) -> None:
        """Stop the workers."""
        self.iterator = None


class ConventionalProcess:
    """The conventional pipeline in a process of its own, measured on request.

    Our CPU runs tune the process's allocator for good (`keep_freed_memory`); the
    conventional pipeline gets a fresh process with the C library's defaults, as it has in a
    script of its own. It trains the same network from the same weights on the same data.
    """

    def __init__(self, config: Config, data: Data, workers: int) -> None:
        context = multiprocessing.get_context("spawn")  # fresh: no allocator setting inherited
        self.connection, child = context.Pipe()
        # Not a daemon: its DataLoader starts worker processes of its own.
        self.process = context.Process(target=_conventional_worker, args=(
            config.to_dict(), data.drawn_with, workers, child))
        self.process.start()
        child.close()
        self._answer()  # ready

    def measure(self, steps: int, warmup_steps: int) -> tuple[float, float, float, float]:
        """(warm-up s, training img/s, evaluation img/s, peak MiB) of one repeat."""
        self.connection.send((steps, warmup_steps))
        return self._answer()

    def _answer(self) -> Any:
        try:
            answer = self.connection.recv()
        except EOFError:
            raise RuntimeError(f"the conventional pipeline's process died (exit code "
                               f"{self.process.exitcode})") from None
        if isinstance(answer, str):
            raise RuntimeError(f"the conventional pipeline failed: {answer}")
        return answer

    def close(self) -> None:
        """Stop the process (and its DataLoader workers)."""
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def _conventional_worker(values: dict[str, Any], drawn_with: tuple[int, int, int],
                         workers: int, connection: Any) -> None:
    """`ConventionalProcess`'s side: build once, then measure each (steps, warm-up) asked."""
    try:
        config = from_dict(values)
        device = resolve_device(config.device)
        data = synthetic(*drawn_with)
        recipe = config.train
        torch.manual_seed(config.seed)  # the weights our model starts from
        model = build_model(config.arch, config.depth, config.shortcut).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay)
        loader = _ConventionalBatches(data.train_images, data.train_labels, recipe.batch_size,
                                      workers, device, config.seed)
        connection.send(True)
        try:
            while (request := connection.recv()) is not None:
                connection.send(_conventional_repeat(model, optimizer, loader, data,
                                                     recipe.eval_batch_size, workers, device,
                                                     *request))
        finally:
            loader.close()
    except Exception as error:  # the parent waits for an answer
        connection.send(f"{type(error).__name__}: {error}")


def _conventional_repeat(model: nn.Module, optimizer: torch.optim.Optimizer,
                         loader: _ConventionalBatches, data: Data, eval_batch_size: int,
                         workers: int, device: torch.device, steps: int, warmup_steps: int
                         ) -> tuple[float, float, float, float]:
    """(warm-up s, training img/s, evaluation img/s, peak MiB) of one conventional repeat."""
    reset_peak(device)
    warm = timed(device, lambda: _conventional_steps(model, optimizer, loader, warmup_steps,
                                                     device))
    seconds = timed(device, lambda: _conventional_steps(model, optimizer, loader, steps,
                                                        device))
    evaluated = _conventional_eval(model, data.eval_images, data.eval_labels, eval_batch_size,
                                   workers, device)
    return warm, steps * loader.loader.batch_size / seconds, evaluated, peak_mib(device)


def _conventional_steps(model: nn.Module, optimizer: torch.optim.Optimizer,
                        loader: _ConventionalBatches, steps: int, device: torch.device) -> None:
    model.train()
    for _ in range(steps):
        images, labels = loader.next()
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        outputs = model(images)
        loss = F.cross_entropy(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the running-average meter of most training scripts: a sync per step


def _conventional_eval(model: nn.Module, images_u8: Tensor, labels: Tensor, batch_size: int,
                       workers: int, device: torch.device) -> float:
    """Images/second of a DataLoader evaluation under no_grad, after its first batch."""
    loader = DataLoader(_PilCifar(images_u8, labels, transforms.Compose(_to_tensor_normalized())),
                        batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    model.eval()
    counted, started = 0, 0.0
    with torch.no_grad():
        for index, (batch, targets) in enumerate(loader):
            if index == 1:  # the first batch (worker start-up) is the warm-up
                sync(device)
                started = time.perf_counter()
            outputs = model(batch.to(device, non_blocking=True))
            F.cross_entropy(outputs, targets.to(device, non_blocking=True)).item()
            counted += len(targets) if index >= 1 else 0
    sync(device)
    model.train()
    return counted / (time.perf_counter() - started)

