"""Before runs start on a machine without a GPU: how long they would take on its CPU, and a
warning, with how to shorten them, when that is over an hour.

One network is timed for a few steps (bench/measure.py, `step_seconds`); the rest of the
estimate is arithmetic on the runs' configs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from degradation.analysis.watch import run_progress
from degradation.config import Config, ConfigError, suggested_milestones
from degradation.console import shell_command
from degradation.hardware import usable_cores
from degradation.runs import network_name, read_run, runs_count
from degradation.training.logs import format_duration

if TYPE_CHECKING:  # plan imports the training loop, and torch with it
    from degradation.launch.plan import PlannedRun

LONG_SWEEP_S = 3600.0  # CPU-only sweeps longer than this say so before they start
# Slower than any CPU trains a CIFAR net of the paper's depths (<= 110) at batch 128: fewer
# images than this per second of the limit cannot take that long, and are not timed.
MIN_CPU_IMAGES_PER_S = 50.0


def estimate_warning(runs: Sequence[PlannedRun]) -> str | None:
    """Where the planned `runs` would train on this machine's CPU: a warning when they take
    over an hour (`cpu_estimate`); None on a GPU, for runs sent to a cluster, or when short."""
    from degradation.training.device import resolve_device  # (imports torch)

    try:
        # A cluster's nodes are not this machine: their speed is not measured here.
        if not runs or not runs[0].here or resolve_device(runs[0].config.device).type != "cpu":
            return None
    except ConfigError:  # device=cuda without one: training itself says so
        return None
    left = []
    for run in runs:
        record = read_run(run.folder) if run.action == "resume" else None
        # A damaged log of a run to resume is named by the resume itself.
        done = run_progress(record, name_damage=False).iteration if record is not None else 0
        left.append((run.config, run.config.train.iterations - done))
    return cpu_estimate(left)


def cpu_estimate(runs: Sequence[tuple[Config, int]],
                 step_seconds: Callable[[Config], float] | None = None,
                 limit_s: float = LONG_SWEEP_S, cores: int | None = None) -> str | None:
    """On a CPU-only machine, a warning for `runs` ((config, iterations left) each) that take
    longer than `limit_s`, with the estimate, what it was measured on and how to shorten it;
    None otherwise.

    One network is timed, for a few steps on one core (`step_seconds`, default
    `bench.measure.step_seconds`): the shallowest. The others are scaled by their depth, as
    every 3x3 conv of the paper's nets costs the same multiply-adds, and plain nets cost what
    ResNets of their depth cost. The runs' work is spread over the `cores` (default: this
    process's), one-thread runs side by side as the local launcher puts them.
    """
    images = sum(config.train.batch_size * left for config, left in runs)
    if images < MIN_CPU_IMAGES_PER_S * limit_s:
        return None  # too short to take an hour on any CPU: not worth timing steps
    if step_seconds is None:
        from degradation.bench.measure import step_seconds
    from degradation.training.device import CPU_COMPILE_MIN_ITERATIONS  # (imports torch)

    cores = cores or len(usable_cores())
    timed = min((config for config, _ in runs), key=lambda config: config.depth)
    timed_s = step_seconds(timed)

    def seconds(config: Config) -> float:
        """Seconds per step of `config`'s network on one core, from the timed one."""
        return (timed_s * (config.depth - 2) / (timed.depth - 2)
                * config.train.batch_size / timed.train.batch_size)

    # Side by side, or a lone run's threads: the cores share out the work either way.
    total = sum(seconds(config) * left for config, left in runs) / cores
    if total <= limit_s:
        return None
    per_iteration = sum(seconds(config) for config, _ in runs) / cores
    fits = max(100, int(limit_s / per_iteration) // 100 * 100)
    load = _busy_note(cores)
    compiled = any(config.train.compile is not False
                   and config.train.iterations >= CPU_COMPILE_MIN_ITERATIONS
                   for config, _ in runs)
    compile_note = (f"; runs of {CPU_COMPILE_MIN_ITERATIONS:,}+ iterations compile, about "
                    "10% faster" if compiled else "")
    return (f"warning: no GPU: {runs_count(len(runs))} "
            f"need{'s' * (len(runs) == 1)} about {format_duration(total)} on this CPU "
            f"({network_name(timed)} timed here: {timed_s:.2f} s a step on one core, eager; "
            f"deeper nets scaled by depth; spread over {cores} core{'s' * (cores != 1)}"
            f"{compile_note}{load}). To shorten: {shortened(fits)} (about an hour), fewer or "
            "shallower networks (depth=20), experiment=quick or experiment=smoke, or a machine "
            "with a GPU.")


def shortened(iterations: int) -> str:
    """The overrides for a schedule of `iterations`: the paper's milestone proportions, and
    log and evaluation points close enough to draw curves (the defaults, every 100 and
    1,000 iterations, are made for 64k)."""
    milestones = ",".join(map(str, suggested_milestones(iterations)))
    log_every = max(1, iterations // 40 // 10 * 10 or iterations // 40)
    return shell_command(f"train.iterations={iterations}", f"train.milestones=[{milestones}]",
                         f"train.log_every={log_every}",
                         f"train.eval_every={max(1, iterations // 4)}")


def _busy_note(cores: int) -> str:
    """A note when other work kept the CPU busy while the steps were timed."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load < cores:
        return ""
    return f"; the CPU was busy (load average {load:.1f}), which slows the timed steps"
