"""The record a running sweep leaves for `degrade status`: its runs, and whether it goes on.

    <output_dir>/sweeps/<time>-<pid>/sweep.json   every run the sweep will train
    <output_dir>/sweeps/<time>-<pid>/run.lock     held by the sweep's process while it runs

A run shows up under `runs/` only once its own process writes config.yaml, which can be long
after the sweep started (runs queued behind others, jobs waiting on a cluster). With this
record, `degrade status` lists those runs as not started, and `--watch` waits while the lock
is held. The kernel drops the lock when the sweep's process ends, however it ends, so a killed
sweep is over too; the folder is removed when the sweep ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from degradation.config import Config
from degradation.runs import network_name
from degradation.storage import RunLock, StorageError, read_json, write_json

SWEEPS_DIR = "sweeps"
RECORD_FILE = "sweep.json"
log = logging.getLogger("degrade")


@dataclass(frozen=True)
class RecordedRun:
    """A run a sweep under way will train, as `status` lists it before it starts."""

    folder: Path
    network: str  # `resnet-56-A`
    seed: int
    iterations: int


@contextlib.contextmanager
def recorded(runs: Sequence[tuple[Config, Path]]) -> Iterator[None]:
    """While the body runs (the sweep), a record of `runs` ((config, run folder) each) in each
    of their output folders, under a lock this process holds."""
    by_output: dict[Path, list[tuple[Config, Path]]] = {}
    for config, folder in runs:
        by_output.setdefault(Path(config.output_dir), []).append((config, folder))
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    locks = []
    try:
        for output_dir, members in by_output.items():
            lock = RunLock(output_dir / SWEEPS_DIR / name)
            try:
                lock.acquire()  # before the record: a record without a live lock is over
                locks.append(lock)
                write_json(lock.path.parent / RECORD_FILE, {"pid": os.getpid(), "runs": [
                    {"folder": _relative(folder, output_dir), "network": network_name(config),
                     "seed": config.seed, "iterations": config.train.iterations}
                    for config, folder in members]})
            except StorageError as error:  # the sweep goes on; `status` lists less of it
                log.warning("warning: %s; `degrade status` lists this sweep's runs only once "
                            "they start", error)
        yield
    finally:
        for lock in locks:
            lock.release()
            shutil.rmtree(lock.path.parent, ignore_errors=True)
            with contextlib.suppress(OSError):  # other sweeps may still run here
                lock.path.parent.parent.rmdir()


def live_sweeps(root: Path) -> list[list[RecordedRun]]:
    """The runs of each sweep under way in the output folder `root` (none: no sweep runs)."""
    sweeps = []
    for folder in sorted(Path(root).glob(f"{SWEEPS_DIR}/*/")):
        if RunLock(folder).holder() is None:  # ended, or killed
            continue
        try:
            record = read_json(folder / RECORD_FILE)
        except (OSError, ValueError):  # not written yet: the sweep is still planning
            record = {"runs": []}
        sweeps.append([RecordedRun(Path(root) / run["folder"], run["network"], run["seed"],
                                    run["iterations"]) for run in record["runs"]])
    return sweeps


def _relative(folder: Path, output_dir: Path) -> str:
    """`folder` as seen from `output_dir` (where `status` finds the record), else absolute."""
    with contextlib.suppress(ValueError):
        return Path(folder).relative_to(output_dir).as_posix()
    return str(Path(folder).absolute())
