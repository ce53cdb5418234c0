"""How much `degrade bench` measures: the one home of its defaults, the command line's too.

Imports neither torch nor the config, so the command line reads the defaults without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from degradation.console import shell_command

BENCHMARKS_FILE = Path("BENCHMARKS.md")  # where `--record` appends, from the working folder
# The least value of each setting (`images`: at least a batch, known once a config is).
LEAST = {"steps": 1, "warmup_steps": 1, "repeats": 1, "workers": 0, "eval_steps": 1, "runs": 1}


@dataclass(frozen=True)
class BenchSettings:
    """The amount of measuring, the same for every network of one `degrade bench`."""

    steps: int = 20  # timed training steps per repeat
    warmup_steps: int = 3  # untimed steps first (compilation, caches)
    repeats: int = 3  # timed repeats; the median is reported
    # The conventional DataLoader's; None: 4 as in akamaster/pytorch_resnet_cifar10, capped
    # at the cores this process may use (more only oversubscribe them, as PyTorch warns).
    workers: int | None = None
    images: int = 50_000  # synthetic training images of CIFAR shape
    eval_steps: int = 2  # timed evaluation batches
    # > 1: also that many runs at once, fused into one model against as many processes side
    # by side (the two ways a sweep can pack runs on one device).
    runs: int = 1

    def out_of_range(self) -> str | None:
        """The first setting below its least value, named as the command line spells it;
        None when every one is in range."""
        for name, least in LEAST.items():
            value = getattr(self, name)
            if value is not None and value < least:
                return f"--{name.replace('_', '-')}={value} must be >= {least}"
        return None


DEFAULTS = BenchSettings()  # what `degrade bench` measures when not told otherwise


def command_line(archs: Sequence[str], depths: Sequence[int], batch_size: int, device: str,
                 settings: BenchSettings, overrides: Sequence[str]) -> str:
    """The `degrade bench` command that measures the same thing again."""
    options = [*(("--arch", arch) for arch in archs), *(("--depth", depth) for depth in depths),
               ("--batch-size", batch_size), ("--device", device), ("--steps", settings.steps),
               ("--warmup-steps", settings.warmup_steps), ("--repeats", settings.repeats),
               ("--workers", settings.workers), ("--images", settings.images),
               ("--eval-steps", settings.eval_steps),
               *([("--runs", settings.runs)] if settings.runs > 1 else [])]
    return shell_command("degrade", "bench", *(word for option in options for word in option),
                         *overrides, "--record")
