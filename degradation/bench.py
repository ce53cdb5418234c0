"""`degrade bench`: training and evaluation throughput, ours against the conventional pipeline.

    degrade bench --arch resnet --depth 20 --depth 56 --device cpu --repeats 3 --record
    degrade bench --arch plain --arch resnet --depth 20 --depth 56 --device cuda \
        --steps 300 --warmup-steps 50 --repeats 3 --record

Ours is exactly what `degrade train` runs: `train.build_network`, `train.train_step` and
`train.evaluate` on a device-resident `TrainBatches`, with the speed settings of
conf/config.yaml (override them as in `degrade train`: `train.compile=true`). The
conventional pipeline is the shape of most CIFAR-10 repositories: PIL images through
torchvision's RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize in
DataLoader workers, an eager fp32 NCHW model, PyTorch's default SGD, and the loss read back
with `.item()` every step. Both train the same network from the same initial weights on the
same synthetic CIFAR-shaped uint8 images at the same batch size, in this process, one after
the other. Throughput is counted after warm-up; the warm-up time (compilation included) is
reported on its own.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from degradation.config import Config, ConfigError
from degradation.data import NUM_CLASSES, SIZE, TrainBatches, pixel_mean
from degradation.models import build_model
from degradation.runs import family
from degradation.storage import atomic_write_text
from degradation.train import (
    Speed,
    available_cores,
    build_network,
    evaluate,
    resolve_device,
    resolve_speed,
    train_step,
)

# The per-channel statistics most CIFAR-10 repositories normalise with (conventional only).
CONVENTIONAL_MEAN = (0.4914, 0.4822, 0.4465)
CONVENTIONAL_STD = (0.2470, 0.2435, 0.2616)
DATA_SEED = 0

COLUMNS = ("network", "batch", "threads", "settings", "ours img/s", "conventional img/s",
           "speed-up", "ours warm-up s", "conventional warm-up s", "ours eval img/s",
           "conventional eval img/s", "ours peak MiB", "conventional peak MiB",
           "steps x repeats")
RECORD_COLUMNS = ("date", "machine", "device", "torch", *COLUMNS, "command")


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
    steps: int
    repeats: int

    @property
    def speedup(self) -> float:
        """Our training throughput over the conventional pipeline's."""
        return self.ours.train_images_per_s / self.conventional.train_images_per_s

    def cells(self) -> list[str]:
        """The row under `COLUMNS`."""
        train = self.config.train
        layout = "channels_last" if self.speed.channels_last else "NCHW"
        compiled = "compiled" if self.speed.compile else "eager"
        return [family(self.config), str(train.batch_size), str(self.speed.threads),
                f"{train.precision}, {layout}, {compiled}",
                f"{self.ours.train_images_per_s:,.1f}",
                f"{self.conventional.train_images_per_s:,.1f}", f"{self.speedup:.2f}x",
                f"{self.ours.warmup_s:.1f}", f"{self.conventional.warmup_s:.1f}",
                f"{self.ours.eval_images_per_s:,.1f}",
                f"{self.conventional.eval_images_per_s:,.1f}",
                f"{self.ours.peak_mib:,.0f}", f"{self.conventional.peak_mib:,.0f}",
                f"{self.steps} x {self.repeats}"]


def bench_command(archs: list[str], depths: list[int], batch_size: int | None = None,
                  device: str | None = None, steps: int = 20, warmup_steps: int = 3,
                  record: bool = False, benchmarks_file: Path = Path("BENCHMARKS.md"), *,
                  repeats: int = 1, workers: int | None = None, images: int = 50_000,
                  eval_steps: int = 2, overrides: Sequence[str] = (),
                  progress: Callable[[str], None] | None = None) -> str:
    """Benchmark every arch x depth; return the table (and append it to BENCHMARKS.md if asked).

    `batch_size`/`device` None take conf/config.yaml's values; `overrides` are Hydra
    overrides as for `degrade train` (`train.compile=true`, `train.precision=bf16`, ...).
    `workers` is the conventional DataLoader's; None: 4 as in akamaster/pytorch_resnet_cifar10,
    capped at the cores this process may use (more only oversubscribe them, as PyTorch warns).
    """
    from degradation.launching import compose_config  # Hydra: only when benchmarking

    if workers is None:
        workers = min(4, available_cores())
    for name, value, least in (("steps", steps, 1), ("warmup_steps", warmup_steps, 1),
                               ("repeats", repeats, 1), ("workers", workers, 0),
                               ("eval_steps", eval_steps, 1)):
        if value < least:
            raise ConfigError(f"{name}={value} must be >= {least}")
    fixed = [*([f"train.batch_size={batch_size}"] if batch_size is not None else []),
             *([f"device={device}"] if device is not None else []), *overrides]
    configs = [compose_config([f"arch={arch}", f"depth={depth}", *fixed])
               for arch in archs for depth in depths]  # every value checked before any run
    if not configs:
        raise ConfigError("nothing to benchmark: give at least one --arch and one --depth")
    batch = configs[0].train.batch_size
    if images < batch:
        raise ConfigError(f"images={images} must be at least the batch size {batch}")
    data = _synthetic(images, eval_steps + 1, configs[0].train.eval_batch_size)
    rows = []
    for config in configs:
        row = bench_one(config, data, steps, warmup_steps, repeats, workers)
        rows.append(row)
        if progress is not None:
            progress(f"{family(config)}: ours {row.ours.train_images_per_s:,.1f} img/s, "
                     f"conventional {row.conventional.train_images_per_s:,.1f} img/s "
                     f"({row.speedup:.2f}x)")
    device_name = _device_name(rows[0].device)
    table = "\n".join([f"device: {device_name}, torch {torch.__version__}, {machine()}",
                       markdown_row(COLUMNS), markdown_row(["---"] * len(COLUMNS)),
                       *(markdown_row(row.cells()) for row in rows)])
    if record:
        command = command_line(archs, depths, batch, rows[0].config.device, steps, warmup_steps,
                               repeats, workers, images, eval_steps, overrides)
        date = time.strftime("%Y-%m-%d %H:%M")
        append_records(benchmarks_file, [
            [date, machine(), device_name, torch.__version__, *row.cells(), f"`{command}`"]
            for row in rows])
    return table


@dataclass
class _Data:
    """Synthetic CIFAR-shaped uint8 images with random labels (throughput only)."""

    train_images: Tensor  # (N, 3, 32, 32) uint8
    train_labels: Tensor
    eval_images: Tensor
    eval_labels: Tensor


def _synthetic(images: int, eval_batches: int, eval_batch_size: int) -> _Data:
    generator = torch.Generator().manual_seed(DATA_SEED)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        return (torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=generator,
                              dtype=torch.uint8),
                torch.randint(0, NUM_CLASSES, (n,), generator=generator))

    return _Data(*draw(images), *draw(eval_batches * eval_batch_size))


def bench_one(config: Config, data: _Data, steps: int, warmup_steps: int, repeats: int,
              workers: int) -> BenchRow:
    """Both pipelines on `config`'s network, alternated `repeats` times."""
    device = resolve_device(config.device)
    speed = resolve_speed(config.train, device)
    recipe = config.train
    torch.manual_seed(config.seed)  # all a model's initialisation draws from
    model, optimizer = build_network(config, device, speed)
    batches = TrainBatches(data.train_images, data.train_labels,
                           pixel_mean(data.train_images), recipe.batch_size, config.seed, device)
    eval_images, eval_labels = data.eval_images.to(device), data.eval_labels.to(device)
    torch.manual_seed(config.seed)  # the same initial weights for the conventional model
    plain_model = build_model(config.arch, config.depth, config.shortcut).to(device)
    plain_optimizer = torch.optim.SGD(plain_model.parameters(), lr=recipe.lr,
                                      momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    loader = _ConventionalBatches(data.train_images, data.train_labels, recipe.batch_size,
                                  workers, device, config.seed)
    ours: list[tuple[float, float, float]] = []
    theirs: list[tuple[float, float, float]] = []
    peak = {"ours": 0.0, "conventional": 0.0}
    try:
        for _ in range(repeats):
            _reset_peak(device)
            warm = _time(device, lambda: _our_steps(model, optimizer, batches, recipe.lr,
                                                    recipe.precision, speed, warmup_steps))
            timed = _time(device, lambda: _our_steps(model, optimizer, batches, recipe.lr,
                                                     recipe.precision, speed, steps))
            evaluated = _our_eval(model, eval_images, eval_labels, batches.mean,
                                  recipe.eval_batch_size, recipe.precision, speed, device)
            peak["ours"] = max(peak["ours"], _peak_mib(device))
            ours.append((warm, steps * recipe.batch_size / timed, evaluated))
            _reset_peak(device)
            warm = _time(device, lambda: _conventional_steps(plain_model, plain_optimizer,
                                                             loader, warmup_steps, device))
            timed = _time(device, lambda: _conventional_steps(plain_model, plain_optimizer,
                                                              loader, steps, device))
            evaluated = _conventional_eval(plain_model, data.eval_images, data.eval_labels,
                                           recipe.eval_batch_size, workers, device)
            peak["conventional"] = max(peak["conventional"], _peak_mib(device))
            theirs.append((warm, steps * recipe.batch_size / timed, evaluated))
    finally:
        loader.close()
    return BenchRow(config, device, speed, _summarise(ours, peak["ours"]),
                    _summarise(theirs, peak["conventional"]), steps, repeats)


def _summarise(measured: list[tuple[float, float, float]], peak: float) -> Measured:
    return Measured(train_images_per_s=statistics.median(m[1] for m in measured),
                    warmup_s=measured[0][0],  # the first repeat's: compilation happens there
                    eval_images_per_s=statistics.median(m[2] for m in measured),
                    peak_mib=peak)


def _time(device: torch.device, work: Callable[[], None]) -> float:
    _sync(device)
    started = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - started


# --- ours: the code `degrade train` runs ----------------------------------------------------


def _our_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: TrainBatches,
               lr: float, precision: str, speed: Speed, steps: int) -> None:
    loss_sum = torch.zeros((), device=batches.images.device, dtype=torch.float64)
    for _ in range(steps):
        images, labels = next(batches)
        loss, _wrong = train_step(model, optimizer, images, labels, lr, precision,
                                  speed.memory_format)
        loss_sum += loss * labels.numel()  # as `degrade train` accumulates it
    float(loss_sum)  # one read at the end, as at a log point


def _our_eval(model: nn.Module, images: Tensor, labels: Tensor, mean: Tensor,
              batch_size: int, precision: str, speed: Speed, device: torch.device) -> float:
    """Images/second of `train.evaluate` after one warm-up batch."""
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
                 overrides: Sequence[str]) -> str:
    """The `degrade bench` command that measures the same thing again."""
    parts = ["degrade bench", *(f"--arch {arch}" for arch in archs),
             *(f"--depth {depth}" for depth in depths), f"--batch-size {batch_size}",
             f"--device {device}", f"--steps {steps}", f"--warmup-steps {warmup_steps}",
             f"--repeats {repeats}", f"--workers {workers}", f"--images {images}",
             f"--eval-steps {eval_steps}", *overrides, "--record"]
    return " ".join(parts)


def markdown_row(cells: Sequence[str]) -> str:
    """`| a | b |` (pipes inside a cell are escaped)."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def append_records(path: Path, rows: list[list[str]]) -> None:
    """Append rows to the results table that ends `path`, starting a table if it has none."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = text.rstrip("\n").splitlines()
    header = markdown_row(RECORD_COLUMNS)
    table_start = len(lines)
    while table_start > 0 and lines[table_start - 1].startswith("|"):
        table_start -= 1
    if table_start == len(lines) or lines[table_start] != header:
        lines += ["", header, markdown_row(["---"] * len(RECORD_COLUMNS))]
    lines += [markdown_row(row) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
