"""One run over several processes: DistributedDataParallel, one process per GPU.

    degrade train depth=110 trainer.gpus=2                      # 2 GPUs, like the paper
    degrade sweep experiment=fig6 trainer.gpus=2 hydra.launcher.gpus_per_run=2

`train` starts `trainer.gpus` worker processes with torchrun's environment variables (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: the rendezvous store, which the launching
process holds), NCCL on GPUs and gloo on a CPU-only device, and waits for them; when one
fails, the others are stopped at once (they would wait for it in their next collective) and
its error is the run's. `train.batch_size` stays the global batch (the paper's 128): every
rank draws the same augmented global batch from the same seeded stream and trains on its
own slice, so the data order is the single-process run's and the stream's checkpointed
state is the same on every rank. DDP averages the gradients; BatchNorm keeps per-process
statistics, as in the paper's 2-GPU training (`trainer.sync_batchnorm=true`: over the global
batch). Rank 0 alone writes logs, metrics, checkpoints and the summary, and alone cleans up
and picks the checkpoint to resume from, which every rank then loads. A signal to the
launching process (Ctrl-C, SIGTERM, SLURM's SIGUSR2) is passed on; the ranks agree on the
iteration where they stop, rank 0 writes the checkpoint, and the run resumes from it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from degradation.config import Config, ConfigError, TrainerConfig
from degradation.errors import INTERRUPTED_EXIT
from degradation.hardware import parse_cores, pin_to, usable_cores
from degradation.signals import noting_stop_signals

if TYPE_CHECKING:
    from degradation.train import Outcome

log = logging.getLogger("degrade")

# The ranks compare their stop requests (signals) every this many iterations: a collective
# costs a host sync on GPUs, and a stop a few steps later is still well inside SLURM's notice.
AGREE_EVERY = 10


def rank() -> int:
    """This process's rank; 0 without a process group."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Processes training this run; 1 without a process group."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_writer() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return rank() == 0


def launches_workers(config: Config) -> bool:
    """Whether `train` must start worker processes for `config` instead of training itself."""
    return config.trainer.gpus > 1 and not dist.is_initialized()


def run_lock(folder: Path) -> contextlib.AbstractContextManager[Any]:
    """The run's lock for rank 0 (or the only process); nothing for the other ranks."""
    from degradation.storage import RunLock

    return RunLock(folder) if is_writer() else contextlib.nullcontext()


def stop_list(stop: list[str]) -> list[str]:
    """The stop list the training loop reads: the signal handler's own for one process; with
    several, one that only `agree_on_stop` fills, at the same iteration on every rank."""
    return [] if dist.is_initialized() else stop


def metrics_log(folder: Path, resume_from: int | None) -> Any:
    """The run's MetricsLog on rank 0; on the other ranks one that writes nothing."""
    from degradation.logs import MetricsLog

    return MetricsLog(folder, resume_from=resume_from) if is_writer() else _NoMetrics()


class _NoMetrics:
    """MetricsLog's interface, for the ranks that do not write."""

    def log(self, iteration: int, values: dict[str, float]) -> None:
        """Nothing: rank 0 logs the same values."""

    def log_gradients(self, iteration: int, norms: dict[str, float]) -> None:
        """Nothing: rank 0 logs the same (all-reduced) gradients."""

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close."""


def from_writer(value: Any) -> Any:
    """Rank 0's `value` on every rank (`value` itself without a process group); the other
    ranks wait here until rank 0 gets here."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_batchnorm(model: nn.Module, trainer: TrainerConfig) -> nn.Module:
    """`model` with SyncBatchNorm layers when `trainer.sync_batchnorm` asks for them in a
    process group, else `model`; called before the model is compiled, so that the compiled
    code is that of the layers trained."""
    if not (trainer.sync_batchnorm and dist.is_initialized()):
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters, in place


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module `_step` trains: DDP around `model` in a process group, else `model`.

    `model` itself stays what is checkpointed and evaluated (no `module.` key prefix); the
    wrapper shares its parameters.
    """
    if not dist.is_initialized():
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """This rank's slice of the global batch (all of it without a process group)."""
    size = world_size()
    if size == 1:
        return images, labels
    per = len(labels) // size
    start = rank() * per
    return images[start:start + per], labels[start:start + per]


def all_reduce_sum(*tensors: Tensor) -> None:
    """Sum each tensor over the ranks, in place (a no-op for one process)."""
    if dist.is_initialized():
        for tensor in tensors:
            dist.all_reduce(tensor)


def summed(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Each tensor summed over the ranks, as new tensors (the tensors themselves for one
    process)."""
    if not dist.is_initialized():
        return tensors
    totals = tuple(tensor.clone() for tensor in tensors)
    all_reduce_sum(*totals)
    return totals


def agree_on_stop(iteration: int, pending: list[str], stop: list[str]) -> None:
    """Move a signal from `pending` (any rank's handler) into `stop` (read by the loop) on
    every rank at the same iteration, so that all ranks stop after the same step."""
    if not dist.is_initialized():  # one process: `stop` is the handler's own list already
        return
    if stop or iteration % AGREE_EVERY:
        return
    wanted = signal.Signals[pending[0]].value if pending else 0
    flag = torch.tensor([wanted], dtype=torch.int64,
                        device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if int(flag):
        stop.append(signal.Signals(int(flag)).name)


def spawn(config: Config) -> Outcome:
    """Train `config` in `trainer.gpus` worker processes; rank 0's outcome.

    Raises `Interrupted` when a signal stopped the workers (after rank 0's checkpoint), and
    the error of the worker that failed first (a `ConfigError`, `DataError`, ...) when one
    failed, once the others are stopped.
    """
    from degradation.errors import Interrupted
    from degradation.runs import SUMMARY_FILE, run_dir
    from degradation.storage import read_json
    from degradation.train import Outcome, resolve_device

    size = config.trainer.gpus
    device = resolve_device(config.device)
    if config.trainer.sync_batchnorm and device.type != "cuda":
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (SyncBatchNorm has no CPU "
                          "kernel); on the CPU each process keeps its own BN statistics")
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
        [sys.executable, "-m", "degradation.distributed", str(spec), str(error_file),
         ",".join(map(str, share))],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace")
    return worker


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


def _worker(spec_path: str, error_path: str, cores: str) -> int:
    """One rank: join the process group, train, leave; the error (if any) to `error_path`."""
    pin_to(parse_cores(cores))
    from degradation.config import from_dict
    from degradation.errors import Interrupted
    from degradation.train import resolve_device, train

    index = int(os.environ["RANK"])
    logging.basicConfig(level=logging.INFO if index == 0 else logging.WARNING,
                        format="%(message)s" if index == 0 else f"rank {index}: %(message)s",
                        stream=sys.stdout)
    config = from_dict(pickle.loads(Path(spec_path).read_bytes()))
    try:
        device = resolve_device(config.device)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        # A client of the launching process's store (see `spawn`), not a server of its own.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              is_master=False)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store,
                                rank=index, world_size=int(os.environ["WORLD_SIZE"]))
        train(config)
        # Only after success: a failed rank leaves at once, and the launching process kills
        # the ranks waiting for it in a collective.
        dist.destroy_process_group()
    except BaseException as error:
        with contextlib.suppress(Exception):
            Path(error_path).write_bytes(pickle.dumps(error))
        if not isinstance(error, Interrupted):
            log.exception("training failed")
        return INTERRUPTED_EXIT if isinstance(error, Interrupted) else 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker(*sys.argv[1:4]))
