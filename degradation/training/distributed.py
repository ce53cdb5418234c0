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
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from degradation.config import Config, TrainerConfig

if TYPE_CHECKING:
    pass

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
    from degradation.training.logs import MetricsLog

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
