"""`bench_command`: both pipelines on every network asked for, alternated, into rows and
tables (and BENCHMARKS.md when asked)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from degradation.bench.conventional import ConventionalProcess
from degradation.bench.measure import (
    Data,
    build_ours,
    load_average,
    peak_mib,
    reset_peak,
    resolve,
    synthetic,
    timed,
)
from degradation.bench.packing import bench_packing
from degradation.bench.records import (
    COLUMNS,
    PACKING_COLUMNS,
    PACKING_RECORD_COLUMNS,
    RECORD_COLUMNS,
    BenchRow,
    Measured,
    append_records,
    device_name,
    machine,
    unpadded_table,
)
from degradation.bench.settings import (
    BENCHMARKS_FILE,
    DEFAULTS,
    BenchSettings,
    command_line,
)
from degradation.config import Config, ConfigError
from degradation.models import layer_names
from degradation.runs import network_name
from degradation.training.device import available_cores
from degradation.training.step import gradient_norms


def bench_command(archs: list[str], depths: list[int], batch_size: int | None = None,
                  device: str | None = None, settings: BenchSettings = DEFAULTS,
                  record: bool = False, benchmarks_file: Path = BENCHMARKS_FILE, *,
                  overrides: Sequence[str] = (),
                  progress: Callable[[str], None] | None = None) -> str:
    """Benchmark every arch x depth; return the table (and append it to BENCHMARKS.md if asked).

    `batch_size`/`device` None take conf/config.yaml's values; `overrides` are Hydra
    overrides as for `degrade train` (`train.compile=true`, `train.precision=bf16`, ...).
    `settings.runs` > 1 adds a second table: that many runs fused into one model against as
    many processes side by side.
    """
    from degradation.launch.compose import compose_config

    if settings.workers is None:
        settings = replace(settings, workers=min(4, available_cores()))
    refusal = settings.out_of_range()
    if refusal is not None:
        raise ConfigError(refusal)
    fixed = [*([f"train.batch_size={batch_size}"] if batch_size is not None else []),
             *([f"device={device}"] if device is not None else []), *overrides]
    configs = [compose_config([f"arch={arch}", f"depth={depth}", *fixed])
               for arch in archs for depth in depths]  # every value checked before any run
    if not configs:
        raise ConfigError("nothing to benchmark: give at least one --arch and one --depth")
    batch = configs[0].train.batch_size
    if settings.images < batch:
        raise ConfigError(f"--images={settings.images} must be at least the batch size {batch}")
    data = synthetic(settings.images, settings.eval_steps + 1, configs[0].train.eval_batch_size)
    rows = []
    for config in configs:
        row = bench_one(config, data, settings)
        rows.append(row)
        if progress is not None:
            progress(f"{network_name(config)}: ours {row.ours.train_images_per_s:,.1f} img/s, "
                     f"conventional {row.conventional.train_images_per_s:,.1f} img/s "
                     f"({row.speedup:.2f}x)")
    packing = [bench_packing(row, data, settings) for row in rows] if settings.runs > 1 else []
    for row in packing:
        if progress is not None:
            progress(f"{network_name(row.config)} x {row.runs}: fused {row.fused:,.1f} img/s, "
                     f"separate {row.separate:,.1f} img/s, one run {row.lone:,.1f} img/s")
    device_label = device_name(rows[0].device)
    tables = [f"device: {device_label}, torch {torch.__version__}, {machine()}",
              unpadded_table(COLUMNS, [row.cells() for row in rows])]
    if packing:
        tables += ["", unpadded_table(PACKING_COLUMNS, [row.cells() for row in packing])]
    if record:
        command = command_line(archs, depths, batch, rows[0].config.device, settings, overrides)
        stamp = [time.strftime("%Y-%m-%d %H:%M"), machine(), device_label, torch.__version__]
        append_records(benchmarks_file, RECORD_COLUMNS,
                       [[*stamp, *row.cells(), f"`{command}`"] for row in rows])
        if packing:
            append_records(benchmarks_file, PACKING_RECORD_COLUMNS,
                           [[*stamp, *row.cells(), f"`{command}`"] for row in packing])
    return "\n".join(tables)


def bench_one(config: Config, data: Data, settings: BenchSettings) -> BenchRow:
    """Both pipelines on `config`'s network, alternated `settings.repeats` times."""
    steps, warmup_steps = settings.steps, settings.warmup_steps
    device, speed = resolve(config)
    recipe = config.train
    # First, so that the conventional process starts while this one still has its defaults.
    conventional = ConventionalProcess(config, data, settings.workers)
    ours = build_ours(config, data, device, speed)
    eval_images, eval_labels = data.eval_images.to(device), data.eval_labels.to(device)
    layers = layer_names(ours.model)
    measured: dict[str, list[tuple[float, float, float, float]]] = {
        "ours": [], "conventional": []}
    grad_norm_overheads: list[float] = []
    loads = [load_average()]

    def measure_ours() -> tuple[float, float, float, float]:
        reset_peak(device)
        warm = timed(device, lambda: ours.steps(warmup_steps))
        seconds = timed(device, lambda: ours.steps(steps))
        read = timed(device, lambda: gradient_norms(ours.model, layers).tolist())
        grad_norm_overheads.append(100 * read / (recipe.log_every * seconds / steps))
        evaluated = ours.eval_rate(eval_images, eval_labels)
        return warm, steps * recipe.batch_size / seconds, evaluated, peak_mib(device)

    pipelines = {"ours": measure_ours,
                 "conventional": lambda: conventional.measure(steps, warmup_steps)}
    try:
        for repeat in range(settings.repeats):
            # Alternate which goes first, so a drift in the machine's load hits both alike.
            for name in (("ours", "conventional") if repeat % 2 == 0
                         else ("conventional", "ours")):
                measured[name].append(pipelines[name]())
                loads.append(load_average())
    finally:
        conventional.close()
    speedup = statistics.median(a[1] / b[1] for a, b in zip(measured["ours"],
                                                             measured["conventional"],
                                                             strict=True))
    return BenchRow(config, device, speed, _summarise(measured["ours"]),
                    _summarise(measured["conventional"]), speedup, steps, settings.repeats,
                    (min(loads), max(loads)), statistics.median(grad_norm_overheads))


def _summarise(measured: list[tuple[float, float, float, float]]) -> Measured:
    """Medians of (warm-up s, training img/s, evaluation img/s, peak MiB) repeats."""
    return Measured(train_images_per_s=statistics.median(m[1] for m in measured),
                    warmup_s=measured[0][0],  # the first repeat's: compilation happens there
                    eval_images_per_s=statistics.median(m[2] for m in measured),
                    peak_mib=max(m[3] for m in measured))
