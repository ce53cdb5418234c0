"""`degrade bench`: training and evaluation throughput, ours against the conventional pipeline.

    degrade bench --arch resnet --depth 20 --depth 56 --device cpu --repeats 3 --record
    degrade bench --arch plain --arch resnet --depth 20 --depth 56 --device cuda \
        --steps 300 --warmup-steps 50 --repeats 3 --record

Ours is exactly what `degrade train` runs: `build_network` (training/device.py),
`train_step` and `evaluate` (training/step.py) on a device-resident `TrainBatches`, with the
speed settings of conf/config.yaml (override them as in `degrade train`:
`train.compile=true`). The conventional pipeline is the shape of most CIFAR-10 repositories:
PIL images through torchvision's RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor
and Normalize in DataLoader workers, an eager fp32 NCHW model, PyTorch's default SGD, and
the loss read back with `.item()` every step. Both train the same network from the same
initial weights on the same synthetic CIFAR-shaped uint8 images at the same batch size, one
after the other, alternating. The conventional pipeline runs in a process of its own, with
the C library's allocator as it comes (ours tunes it for good in this one:
`keep_freed_memory`). Throughput is counted after warm-up; the warm-up time (compilation
included) is reported on its own.

Over 400 lines because it holds a whole second pipeline, the conventional one, that exists
only to be compared against ours and must stay next to the measurements that use it.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from degradation.config import Config, ConfigError, TrainConfig, from_dict
from degradation.console import shell_command
from degradation.data.cifar import NUM_CLASSES, SIZE, pixel_mean
from degradation.data.stream import TrainBatches
from degradation.hardware import Slot, assign_slots, pin_to, usable_cores, visible_gpus
from degradation.models import build_model, layer_names
from degradation.runs import network_name
from degradation.storage import atomic_write_text
from degradation.training.device import (
    Speed,
    available_cores,
    build_network,
    resolve_device,
    resolve_speed,
)
from degradation.training.step import evaluate, gradient_norms, train_step

# The per-channel statistics most CIFAR-10 repositories normalise with (conventional only).
CONVENTIONAL_MEAN = (0.4914, 0.4822, 0.4465)
CONVENTIONAL_STD = (0.2470, 0.2435, 0.2616)
DATA_SEED = 0

COLUMNS = ("network", "batch", "threads", "settings", "ours img/s", "conventional img/s",
           "speed-up", "ours warm-up s", "conventional warm-up s", "ours eval img/s",
           "conventional eval img/s", "ours peak MiB", "conventional peak MiB",
           "grad-norm logging", "steps x repeats", "load")
RECORD_COLUMNS = ("date", "machine", "device", "torch", *COLUMNS, "command")
PACKING_COLUMNS = ("network", "batch", "runs", "threads per run", "fused img/s",
                   "separate img/s", "one run img/s", "fused / separate", "steps x repeats")
PACKING_RECORD_COLUMNS = ("date", "machine", "device", "torch", *PACKING_COLUMNS, "command")


@dataclass
class Measured:
    """One pipeline on one network: medians over the repeats, warm-up of the first."""

    train_images_per_s: float
    warmup_s: float
    eval_images_per_s: float
    peak_mib: float


@dataclass
class BenchRow:
    """Both pipelines on one network."""

    config: Config
    device: torch.device
    speed: Speed
    ours: Measured
    conventional: Measured
    speedup: float  # the median over repeats of ours / conventional, each pair back to back
    steps: int
    repeats: int
    load: tuple[float, float]  # the 1-minute load average's range while measuring
    # Reading every layer's gradient norm at a log point, as % of the log_every steps it follows
    grad_norm_overhead: float

    def cells(self) -> list[str]:
        """The row under `COLUMNS`."""
        train = self.config.train
        layout = "channels_last" if self.speed.channels_last else "NCHW"
        compiled = "compiled" if self.speed.compile else "eager"
        return [network_name(self.config), str(train.batch_size), str(self.speed.threads),
                f"{train.precision}, {layout}, {compiled}",
                f"{self.ours.train_images_per_s:,.1f}",
                f"{self.conventional.train_images_per_s:,.1f}", f"{self.speedup:.2f}x",
                f"{self.ours.warmup_s:.1f}", f"{self.conventional.warmup_s:.1f}",
                f"{self.ours.eval_images_per_s:,.1f}",
                f"{self.conventional.eval_images_per_s:,.1f}",
                f"{self.ours.peak_mib:,.0f}", f"{self.conventional.peak_mib:,.0f}",
                f"{self.grad_norm_overhead:.2f}%", f"{self.steps} x {self.repeats}",
                "n/a" if math.isnan(self.load[0]) else f"{self.load[0]:.1f}-{self.load[1]:.1f}"]


@dataclass
class PackingRow:
    """K runs of one network at once: fused into one model, or K processes side by side.

    Images/s count every run's images. `lone` is one run alone with the whole device
    (`BenchRow.ours`): packing pays when the K runs together beat it.
    """

    config: Config
    runs: int
    threads: int
    fused: float
    separate: float
    lone: float
    steps: int
    repeats: int

    def cells(self) -> list[str]:
        """The row under `PACKING_COLUMNS`."""
        return [network_name(self.config), str(self.config.train.batch_size), str(self.runs),
                str(self.threads), f"{self.fused:,.1f}", f"{self.separate:,.1f}",
                f"{self.lone:,.1f}", f"{self.fused / self.separate:.2f}x",
                f"{self.steps} x {self.repeats}"]


def bench_command(archs: list[str], depths: list[int], batch_size: int | None = None,
                  device: str | None = None, steps: int = 20, warmup_steps: int = 3,
                  record: bool = False, benchmarks_file: Path = Path("BENCHMARKS.md"), *,
                  repeats: int = 1, workers: int | None = None, images: int = 50_000,
                  eval_steps: int = 2, overrides: Sequence[str] = (), runs: int = 1,
                  progress: Callable[[str], None] | None = None) -> str:
    """Benchmark every arch x depth; return the table (and append it to BENCHMARKS.md if asked).

    `batch_size`/`device` None take conf/config.yaml's values; `overrides` are Hydra
    overrides as for `degrade train` (`train.compile=true`, `train.precision=bf16`, ...).
    `workers` is the conventional DataLoader's; None: 4 as in akamaster/pytorch_resnet_cifar10,
    capped at the cores this process may use (more only oversubscribe them, as PyTorch warns).
    `runs` > 1 adds a second table: that many runs fused into one model against as many
    processes side by side (the two ways a sweep can pack runs on one device).
    """
    from degradation.launch.compose import compose_config

    if workers is None:
        workers = min(4, available_cores())
    for name, value, least in (("steps", steps, 1), ("warmup_steps", warmup_steps, 1),
                               ("repeats", repeats, 1), ("workers", workers, 0),
                               ("eval_steps", eval_steps, 1), ("runs", runs, 1)):
        if value < least:  # named as the command line spells it
            raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= {least}")
    fixed = [*([f"train.batch_size={batch_size}"] if batch_size is not None else []),
             *([f"device={device}"] if device is not None else []), *overrides]
    configs = [compose_config([f"arch={arch}", f"depth={depth}", *fixed])
               for arch in archs for depth in depths]  # every value checked before any run
    if not configs:
        raise ConfigError("nothing to benchmark: give at least one --arch and one --depth")
    batch = configs[0].train.batch_size
    if images < batch:
        raise ConfigError(f"--images={images} must be at least the batch size {batch}")
    data = _synthetic(images, eval_steps + 1, configs[0].train.eval_batch_size)
    rows = []
    for config in configs:
        row = bench_one(config, data, steps, warmup_steps, repeats, workers)
        rows.append(row)
        if progress is not None:
            progress(f"{network_name(config)}: ours {row.ours.train_images_per_s:,.1f} img/s, "
                     f"conventional {row.conventional.train_images_per_s:,.1f} img/s "
                     f"({row.speedup:.2f}x)")
    packing = [bench_packing(row, data, runs, steps, warmup_steps, repeats)
               for row in rows] if runs > 1 else []
    for row in packing:
        if progress is not None:
            progress(f"{network_name(row.config)} x {row.runs}: fused {row.fused:,.1f} img/s, "
                     f"separate {row.separate:,.1f} img/s, one run {row.lone:,.1f} img/s")
    device_name = _device_name(rows[0].device)
    tables = [f"device: {device_name}, torch {torch.__version__}, {machine()}",
              unpadded_table(COLUMNS, [row.cells() for row in rows])]
    if packing:
        tables += ["", unpadded_table(PACKING_COLUMNS, [row.cells() for row in packing])]
    if record:
        command = command_line(archs, depths, batch, rows[0].config.device, steps, warmup_steps,
                               repeats, workers, images, eval_steps, overrides, runs)
        stamp = [time.strftime("%Y-%m-%d %H:%M"), machine(), device_name, torch.__version__]
        append_records(benchmarks_file, RECORD_COLUMNS,
                       [[*stamp, *row.cells(), f"`{command}`"] for row in rows])
        if packing:
            append_records(benchmarks_file, PACKING_RECORD_COLUMNS,
                           [[*stamp, *row.cells(), f"`{command}`"] for row in packing])
    return "\n".join(tables)


@dataclass
class _Data:
    """Synthetic CIFAR-shaped uint8 images with random labels (throughput only)."""

    train_images: Tensor  # (N, 3, 32, 32) uint8
    train_labels: Tensor
    eval_images: Tensor
    eval_labels: Tensor
    mean: Tensor  # the training images' per-pixel mean, as `degrade train` subtracts it
    drawn_with: tuple[int, int, int]  # `_synthetic`'s arguments: the same data again elsewhere


def _synthetic(images: int, eval_batches: int, eval_batch_size: int) -> _Data:
    generator = torch.Generator().manual_seed(DATA_SEED)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        return (torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=generator,
                              dtype=torch.uint8),
                torch.randint(0, NUM_CLASSES, (n,), generator=generator))

    train_images, train_labels = draw(images)
    return _Data(train_images, train_labels, *draw(eval_batches * eval_batch_size),
                 mean=pixel_mean(train_images), drawn_with=(images, eval_batches, eval_batch_size))


def bench_one(config: Config, data: _Data, steps: int, warmup_steps: int, repeats: int,
              workers: int) -> BenchRow:
    """Both pipelines on `config`'s network, alternated `repeats` times."""
    device = resolve_device(config.device)
    speed = resolve_speed(config.train, device)
    recipe = config.train
    # First, so that the conventional process starts while this one still has its defaults.
    conventional = _ConventionalProcess(config, data, workers)
    torch.manual_seed(config.seed)  # all a model's initialisation draws from
    model, optimizer = build_network(config, device, speed)
    batches = TrainBatches(data.train_images, data.train_labels, data.mean, recipe.batch_size,
                           config.seed, device)
    eval_images, eval_labels = data.eval_images.to(device), data.eval_labels.to(device)
    layers = layer_names(model)
    measured: dict[str, list[tuple[float, float, float, float]]] = {
        "ours": [], "conventional": []}
    grad_norm_overheads: list[float] = []
    loads = [_load()]

    def ours() -> tuple[float, float, float, float]:
        _reset_peak(device)
        warm = _time(device, lambda: _our_steps(model, optimizer, batches.__next__, recipe,
                                                speed.memory_format, warmup_steps))
        timed = _time(device, lambda: _our_steps(model, optimizer, batches.__next__, recipe,
                                                 speed.memory_format, steps))
        read = _time(device, lambda: gradient_norms(model, layers).tolist())
        grad_norm_overheads.append(100 * read / (recipe.log_every * timed / steps))
        evaluated = _our_eval(model, eval_images, eval_labels, batches.mean,
                              recipe.eval_batch_size, recipe.precision, speed, device)
        return warm, steps * recipe.batch_size / timed, evaluated, _peak_mib(device)

    pipelines = {"ours": ours, "conventional": lambda: conventional.measure(steps, warmup_steps)}
    try:
        for repeat in range(repeats):
            # Alternate which goes first, so a drift in the machine's load hits both alike.
            for name in (("ours", "conventional") if repeat % 2 == 0
                         else ("conventional", "ours")):
                measured[name].append(pipelines[name]())
                loads.append(_load())
    finally:
        conventional.close()
    speedup = statistics.median(a[1] / b[1] for a, b in zip(measured["ours"],
                                                             measured["conventional"],
                                                             strict=True))
    return BenchRow(config, device, speed, _summarise(measured["ours"]),
                    _summarise(measured["conventional"]), speedup, steps, repeats,
                    (min(loads), max(loads)), statistics.median(grad_norm_overheads))


def step_seconds(config: Config, steps: int = 3, warmup_steps: int = 1) -> float:
    """Seconds per training step of `config`'s network on its device, from a few timed steps
    on synthetic data: eager (a compile would take longer than the estimate is worth) and on
    one thread (threads that wait for each other make a busy CPU's timings erratic)."""
    device = resolve_device(config.device)
    speed = replace(resolve_speed(config.train, device), compile=False, threads=1)
    threads = torch.get_num_threads()
    try:
        return _step_seconds(config, device, speed, steps, warmup_steps)
    finally:
        torch.set_num_threads(threads)  # the process goes on to train with its own


def _step_seconds(config: Config, device: torch.device, speed: Speed, steps: int,
                  warmup_steps: int) -> float:
    recipe = config.train
    data = _synthetic(recipe.batch_size * (steps + warmup_steps), 1, 1)
    torch.manual_seed(config.seed)
    model, optimizer = build_network(config, device, speed)
    batches = TrainBatches(data.train_images, data.train_labels, data.mean, recipe.batch_size,
                           config.seed, device)
    _our_steps(model, optimizer, batches.__next__, recipe, speed.memory_format, warmup_steps)
    return _time(device, lambda: _our_steps(model, optimizer, batches.__next__, recipe,
                                            speed.memory_format, steps)) / steps


def _summarise(measured: list[tuple[float, float, float, float]]) -> Measured:
    """Medians of (warm-up s, training img/s, evaluation img/s, peak MiB) repeats."""
    return Measured(train_images_per_s=statistics.median(m[1] for m in measured),
                    warmup_s=measured[0][0],  # the first repeat's: compilation happens there
                    eval_images_per_s=statistics.median(m[2] for m in measured),
                    peak_mib=max(m[3] for m in measured))


def bench_packing(row: BenchRow, data: _Data, runs: int, steps: int, warmup_steps: int,
                  repeats: int) -> PackingRow:
    """`runs` runs of `row`'s network at once: fused into one model in this process, and as
    many processes side by side, each confined as `hydra/launcher=local` confines a job."""
    config, device = row.config, row.device
    slots = _packing_slots(device, runs)
    configs = [replace(config, seed=config.seed + member) for member in range(runs)]
    fused = _fused_rate(configs, device, row.speed, data, steps, warmup_steps, repeats)
    separate = statistics.median(_separate_rate(configs, slots, data, steps, warmup_steps)
                                 for _ in range(repeats))
    return PackingRow(config, runs, len(slots[0].cores), fused, separate,
                      row.ours.train_images_per_s, steps, repeats)


def _packing_slots(device: torch.device, runs: int) -> list[Slot]:
    """Where the separate processes run: all on this GPU, or each on its share of the cores."""
    gpus = [visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())[
        device.index or 0]] if device.type == "cuda" else []
    return assign_slots(gpus, usable_cores(), runs_per_gpu=runs, parallel_runs=runs)


def _fused_rate(configs: list[Config], device: torch.device, speed: Speed, data: _Data,
                steps: int, warmup_steps: int, repeats: int) -> float:
    """Images/s of every member together, trained as one fused model (`train_step`): the
    median over `repeats`, each after its warm-up steps."""
    from degradation.training.fused import build_fused

    network = build_fused(configs, device, speed)
    members = [TrainBatches(data.train_images, data.train_labels, data.mean,
                            config.train.batch_size, config.seed, device) for config in configs]

    def next_batch() -> tuple[Tensor, Tensor]:
        return network.stack([next(batches) for batches in members])

    def run(count: int) -> None:
        _our_steps(network, network.optimizer, next_batch, configs[0].train,
                   network.memory_format, count)

    images = len(configs) * steps * configs[0].train.batch_size
    rates = []
    for _ in range(repeats):
        _time(device, lambda: run(warmup_steps))
        rates.append(images / _time(device, lambda: run(steps)))
    return statistics.median(rates)


def _separate_rate(configs: list[Config], slots: list[Slot], data: _Data, steps: int,
                   warmup_steps: int) -> float:
    """Images/s of every run together, each in its own process, all timed at once."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    ready = context.Barrier(len(configs))
    results = context.SimpleQueue()
    processes = [context.Process(target=_separate_worker, daemon=True, args=(
        config.to_dict(), slot.cores, data.drawn_with, steps, warmup_steps, ready, results))
        for config, slot in zip(configs, slots, strict=True)]
    with _environment(slots[0].env() if slots[0].gpus else {}):
        for process in processes:
            process.start()
    spans = [results.get() for _ in processes]
    for process in processes:
        process.join()
    if any(isinstance(span, str) for span in spans):
        raise RuntimeError(next(span for span in spans if isinstance(span, str)))
    started, ended = min(span[0] for span in spans), max(span[1] for span in spans)
    return len(configs) * steps * configs[0].train.batch_size / (ended - started)


def _separate_worker(values: dict[str, Any], cores: tuple[int, ...],
                     drawn_with: tuple[int, int, int], steps: int, warmup_steps: int,
                     ready: Any, results: Any) -> None:
    """One of the separate processes: its run's steps, timed after every process warmed up."""
    try:
        pin_to(cores)
        config = from_dict(values)
        device = resolve_device(config.device)
        speed = replace(resolve_speed(config.train, device), threads=max(1, len(cores)))
        torch.manual_seed(config.seed)
        model, optimizer = build_network(config, device, speed)
        data = _synthetic(*drawn_with)  # the parent's data, drawn again from its seed
        batches = TrainBatches(data.train_images, data.train_labels, data.mean,
                               config.train.batch_size, config.seed, device)
        _our_steps(model, optimizer, batches.__next__, config.train, speed.memory_format,
                   warmup_steps)
        _sync(device)
        ready.wait()
        started = time.time()  # wall clock: comparable across the processes
        _our_steps(model, optimizer, batches.__next__, config.train, speed.memory_format, steps)
        _sync(device)
        results.put((started, time.time()))
    except BaseException as error:  # the parent waits for one answer from each process
        ready.abort()
        results.put(f"{type(error).__name__}: {error}")


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the processes started inside (spawned children read
    CUDA_VISIBLE_DEVICES when they start CUDA)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _load() -> float:
    """The 1-minute load average (NaN where the OS has none): other work skews CPU timings."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def _time(device: torch.device, work: Callable[[], None]) -> float:
    _sync(device)
    started = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - started


# --- ours: the code `degrade train` runs ----------------------------------------------------


def _our_steps(model: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer,
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


def _our_eval(model: nn.Module, images: Tensor, labels: Tensor, mean: Tensor,
              batch_size: int, precision: str, speed: Speed, device: torch.device) -> float:
    """Images/second of `evaluate` (training/step.py) after one warm-up batch."""
    args = (batch_size, precision, speed.memory_format)
    _time(device, lambda: float(evaluate(model, images[:batch_size], labels[:batch_size],
                                         mean, *args)[1]))
    seconds = _time(device, lambda: float(evaluate(model, images[batch_size:],
                                                   labels[batch_size:], mean, *args)[1]))
    return (len(images) - batch_size) / seconds


# --- the conventional pipeline ---------------------------------------------------------------


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


class _ConventionalProcess:
    """The conventional pipeline in a process of its own, measured on request.

    Our CPU runs tune the process's allocator for good (`keep_freed_memory`); the
    conventional pipeline gets a fresh process with the C library's defaults, as it has in a
    script of its own. It trains the same network from the same weights on the same data.
    """

    def __init__(self, config: Config, data: _Data, workers: int) -> None:
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
    """`_ConventionalProcess`'s side: build once, then measure each (steps, warm-up) asked."""
    try:
        config = from_dict(values)
        device = resolve_device(config.device)
        data = _synthetic(*drawn_with)
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
                         loader: _ConventionalBatches, data: _Data, eval_batch_size: int,
                         workers: int, device: torch.device, steps: int, warmup_steps: int
                         ) -> tuple[float, float, float, float]:
    """(warm-up s, training img/s, evaluation img/s, peak MiB) of one conventional repeat."""
    _reset_peak(device)
    warm = _time(device, lambda: _conventional_steps(model, optimizer, loader, warmup_steps,
                                                     device))
    timed = _time(device, lambda: _conventional_steps(model, optimizer, loader, steps, device))
    evaluated = _conventional_eval(model, data.eval_images, data.eval_labels, eval_batch_size,
                                   workers, device)
    return warm, steps * loader.loader.batch_size / timed, evaluated, _peak_mib(device)


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
                _sync(device)
                started = time.perf_counter()
            outputs = model(batch.to(device, non_blocking=True))
            F.cross_entropy(outputs, targets.to(device, non_blocking=True)).item()
            counted += len(targets) if index >= 1 else 0
    _sync(device)
    model.train()
    return counted / (time.perf_counter() - started)


# --- the machine, and BENCHMARKS.md ----------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def machine() -> str:
    """`AMD EPYC, 2 cores`: the CPU model and the cores this process may use."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {available_cores()} cores"


def command_line(archs: list[str], depths: list[int], batch_size: int, device: str, steps: int,
                 warmup_steps: int, repeats: int, workers: int, images: int, eval_steps: int,
                 overrides: Sequence[str], runs: int = 1) -> str:
    """The `degrade bench` command that measures the same thing again."""
    options = [*(("--arch", arch) for arch in archs), *(("--depth", depth) for depth in depths),
               ("--batch-size", batch_size), ("--device", device), ("--steps", steps),
               ("--warmup-steps", warmup_steps), ("--repeats", repeats), ("--workers", workers),
               ("--images", images), ("--eval-steps", eval_steps),
               *([("--runs", runs)] if runs > 1 else [])]
    return shell_command("degrade", "bench", *(word for option in options for word in option),
                         *overrides, "--record")


def markdown_row(cells: Sequence[str]) -> str:
    """`| a | b |` (pipes inside a cell are escaped)."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def unpadded_table(columns: Sequence[str], rows: list[list[str]]) -> str:
    """A header, its separator and the rows, unpadded: BENCHMARKS.md gains a row at a time."""
    return "\n".join([markdown_row(columns), markdown_row(["---"] * len(columns)),
                      *(markdown_row(row) for row in rows)])


def append_records(path: Path, columns: Sequence[str], rows: list[list[str]]) -> None:
    """Append rows to the last table of `path` headed by `columns`; start one at the end of
    the file when there is none (older tables, with other columns, are left as they are)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = text.rstrip("\n").splitlines()
    header = markdown_row(columns)
    starts = [index for index, line in enumerate(lines) if line == header]
    if not starts:
        lines += ["", unpadded_table(columns, [])]
        lines = "\n".join(lines).splitlines()
        starts = [len(lines) - 2]
    end = starts[-1] + 2  # after the header and its separator
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[end:end] = [markdown_row(row) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
