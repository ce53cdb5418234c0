"""Start the worker processes of a run trained over several processes (DDP) and wait for
them; see distributed.py for how the ranks share the run.

    degrade train depth=110 trainer.gpus=2                      # 2 GPUs, like the paper
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from degradation.config import Config, ConfigError, device_refusal
from degradation.errors import INTERRUPTED_EXIT
from degradation.hardware import usable_cores
from degradation.training.signals import noting_stop_signals

if TYPE_CHECKING:
    from degradation.training.summary import Outcome

log = logging.getLogger("degrade")


def spawn(config: Config) -> Outcome:
    """Train `config` in `trainer.gpus` worker processes; rank 0's outcome.

    Raises `Interrupted` when a signal stopped the workers (after rank 0's checkpoint), and
    the error of the worker that failed first (a `ConfigError`, `DataError`, ...) when one
    failed, once the others are stopped.
    """
    from degradation.errors import Interrupted
    from degradation.runs import SUMMARY_FILE, run_dir
    from degradation.storage import read_json
    from degradation.training.device import resolve_device
    from degradation.training.summary import Outcome

    size = config.trainer.gpus
    device = resolve_device(config.device)
    refusal = device_refusal(config, cuda=device.type == "cuda")  # the resolved device's
    if refusal:
        raise ConfigError(refusal)
    if device.type == "cuda" and torch.cuda.device_count() < size:
        raise ConfigError(f"trainer.gpus={size} but {torch.cuda.device_count()} GPU(s) are "
                          "visible to this run")
    folder = run_dir(config)
    with tempfile.TemporaryDirectory(prefix="degrade-ddp-") as scratch:
        spec = Path(scratch) / "config.pkl"
        spec.write_bytes(pickle.dumps(config.to_dict()))
        # The rendezvous store is this process's, listening from before any worker starts to
        # after the last one ends, on a port the kernel picked: no other process can take it.
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        workers = [_start(config, spec, Path(scratch) / f"rank-{index}.error", index,
                          store.port) for index in range(size)]
        # Relay the workers' lines through this process's logging (console and train.log).
        relays = [threading.Thread(target=_relay, args=(worker,), daemon=True)
                  for worker in workers]
        for relay in relays:
            relay.start()
        with _passing_signals_to(workers) as received:
            ended = _wait(workers)
        for relay in relays:  # their last lines (a traceback) before the run's own
            relay.join(timeout=5)  # bounded: a process they started may hold the pipe
        codes = [worker.returncode for worker in workers]
        files = [Path(scratch) / f"rank-{index}.error" for index in range(size)]
        errors = [_read_error(path) for path in files]
        written = [path.stat().st_mtime_ns if error is not None else 0
                   for path, error in zip(files, errors, strict=True)]
    if all(code == 0 for code in codes):
        summary = read_json(folder / SUMMARY_FILE)
        return Outcome(summary["status"], folder, summary)
    interrupted = next((error for error in errors if isinstance(error, Interrupted)), None)
    if interrupted is not None or received:
        raise interrupted or Interrupted(f"stopped by {received[0]}; run the same command to "
                                         "resume")
    failed = [index for index in ended if codes[index] != 0]
    reported = [index for index in failed if errors[index] is not None]
    if reported:
        # The error written first is the cause: a failed rank writes it before it leaves the
        # process group (by exiting), so before any other rank can find it gone.
        raise errors[min(reported, key=written.__getitem__)]
    raise RuntimeError(f"the training process of rank {failed[0]} exited with code "
                       f"{codes[failed[0]]} (see its output above)")


def _wait(workers: list[subprocess.Popen]) -> list[int]:
    """Wait for every worker; the ranks in the order they ended.

    When one fails, the others are killed at once: they would wait for it in their next
    collective (on NCCL for 10 minutes). SIGKILL, since a worker takes SIGTERM as a request
    to stop together with the other ranks. A rank stopped by a signal (INTERRUPTED_EXIT)
    has agreed on that stop with the others, which stop too.
    """
    ended: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index, worker in enumerate(workers):
        threading.Thread(target=lambda index=index, worker=worker: (worker.wait(),
                                                                    ended.put(index)),
                         daemon=True).start()
    order: list[int] = []
    while len(order) < len(workers):
        order.append(ended.get())
        if workers[order[-1]].returncode not in (0, INTERRUPTED_EXIT):
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
    return order


def _start(config: Config, spec: Path, error_file: Path, index: int, port: int
           ) -> subprocess.Popen:
    """Worker `index`, with torchrun's environment and its share of the CPU cores."""
    size = config.trainer.gpus
    cores = usable_cores()
    share = cores[index::size] or cores
    env = {**os.environ, "RANK": str(index), "LOCAL_RANK": str(index), "WORLD_SIZE": str(size),
           "LOCAL_WORLD_SIZE": str(size), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": str(len(share)),
           "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "degradation.training.worker", str(spec), str(error_file),
         ",".join(map(str, share)), str(os.getpid()), _log_file()],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace")
    return worker


def _log_file() -> str:
    """The file this process logs the run into (Hydra's job log), or "" when none: a worker
    writes there itself if this process ends before it."""
    return next((handler.baseFilename for handler in logging.getLogger().handlers
                 if isinstance(handler, logging.FileHandler)), "")


def _relay(worker: subprocess.Popen) -> None:
    for line in worker.stdout:
        log.info(line.rstrip("\n"))


def _passing_signals_to(workers: list[subprocess.Popen]
                        ) -> contextlib.AbstractContextManager[list[str]]:
    """Pass SIGINT/SIGTERM/SIGUSR2 on to the workers; yields the names received."""

    def forward(signum: int) -> None:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signum)

    return noting_stop_signals(also=forward)


def _read_error(path: Path) -> BaseException | None:
    try:
        return pickle.loads(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, TypeError):
        return None
