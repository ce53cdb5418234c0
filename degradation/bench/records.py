"""What `degrade bench` reports: its rows and their columns, printed as Markdown tables and
appended to BENCHMARKS.md, each with the machine, the device and the command behind it."""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from degradation.config import Config
from degradation.runs import network_name
from degradation.storage import atomic_write_text
from degradation.training.device import Speed, available_cores

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


# --- the machine, and BENCHMARKS.md ----------------------------------------------------------


def device_name(device: torch.device) -> str:
    """`cpu`, or `cuda (NAME)` with the GPU's name."""
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
