"""Several runs of one network on one device (`degrade bench --runs K`): fused into one
model in this process, against as many processes side by side, the two ways a sweep can
pack its runs."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from degradation.bench.measure import Data, build_ours, our_steps, resolve, sync, synthetic, timed
from degradation.bench.records import BenchRow, PackingRow
from degradation.bench.settings import BenchSettings
from degradation.config import Config, from_dict
from degradation.data.stream import TrainBatches
from degradation.hardware import Slot, assign_slots, pin_to, usable_cores, visible_gpus
from degradation.training.device import Speed


def bench_packing(row: BenchRow, data: Data, settings: BenchSettings) -> PackingRow:
    """`settings.runs` runs of `row`'s network at once: fused into one model in this process,
    and as many processes side by side, each confined as `hydra/launcher=local` confines a
    job."""
    config, device, runs = row.config, row.device, settings.runs
    slots = _packing_slots(device, runs)
    configs = [replace(config, seed=config.seed + member) for member in range(runs)]
    fused = _fused_rate(configs, device, row.speed, data, settings)
    separate = statistics.median(_separate_rate(configs, slots, data, settings)
                                 for _ in range(settings.repeats))
    return PackingRow(config, runs, len(slots[0].cores), fused, separate,
                      row.ours.train_images_per_s, settings.steps, settings.repeats)


def _packing_slots(device: torch.device, runs: int) -> list[Slot]:
    """Where the separate processes run: all on this GPU, or each on its share of the cores."""
    gpus = [visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())[
        device.index or 0]] if device.type == "cuda" else []
    return assign_slots(gpus, usable_cores(), runs_per_gpu=runs, parallel_runs=runs)


def _fused_rate(configs: list[Config], device: torch.device, speed: Speed, data: Data,
                settings: BenchSettings) -> float:
    """Images/s of every member together, trained as one fused model (`train_step`): the
    median over the repeats, each after its warm-up steps."""
    from degradation.training.fused import build_fused

    network = build_fused(configs, device, speed)
    members = [TrainBatches(data.train_images, data.train_labels, data.mean,
                            config.train.batch_size, config.seed, device) for config in configs]

    def next_batch() -> tuple[Tensor, Tensor]:
        return network.stack([next(batches) for batches in members])

    def run(count: int) -> None:
        our_steps(network, network.optimizer, next_batch, configs[0].train,
                  network.memory_format, count)

    images = len(configs) * settings.steps * configs[0].train.batch_size
    rates = []
    for _ in range(settings.repeats):
        timed(device, lambda: run(settings.warmup_steps))
        rates.append(images / timed(device, lambda: run(settings.steps)))
    return statistics.median(rates)


def _separate_rate(configs: list[Config], slots: list[Slot], data: Data,
                   settings: BenchSettings) -> float:
    """Images/s of every run together, each in its own process, all timed at once."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    ready = context.Barrier(len(configs))
    results = context.SimpleQueue()
    processes = [context.Process(target=_separate_worker, daemon=True, args=(
        config.to_dict(), slot.cores, data.drawn_with, settings.steps, settings.warmup_steps,
        ready, results)) for config, slot in zip(configs, slots, strict=True)]
    with _environment(slots[0].env() if slots[0].gpus else {}):
        for process in processes:
            process.start()
    spans = [results.get() for _ in processes]
    for process in processes:
        process.join()
    if any(isinstance(span, str) for span in spans):
        raise RuntimeError(next(span for span in spans if isinstance(span, str)))
    started, ended = min(span[0] for span in spans), max(span[1] for span in spans)
    return len(configs) * settings.steps * configs[0].train.batch_size / (ended - started)


def _separate_worker(values: dict[str, Any], cores: tuple[int, ...],
                     drawn_with: tuple[int, int, int], steps: int, warmup_steps: int,
                     ready: Any, results: Any) -> None:
    """One of the separate processes: its run's steps, timed after every process warmed up."""
    try:
        pin_to(cores)
        config = from_dict(values)
        device, speed = resolve(config, threads=max(1, len(cores)))
        # The parent's data, drawn again from its seed.
        ours = build_ours(config, synthetic(*drawn_with), device, speed)
        ours.steps(warmup_steps)
        sync(device)
        ready.wait()
        started = time.time()  # wall clock: comparable across the processes
        ours.steps(steps)
        sync(device)
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
