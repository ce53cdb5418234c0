"""The training loop: the paper's CIFAR-10 recipe, counted in iterations.

    degrade train depth=56 arch=plain            # one run, the paper's full schedule
    degrade train experiment=smoke data.root=../shared/cifar10-subset

    degrade train seed=0 trainer.fuse_with=[1,2]  # seeds 0, 1 and 2 as one fused model

A run trains until `train.iterations`, evaluates every `train.eval_every` iterations and at
the end, and checkpoints at each evaluation. Started again, it resumes from its checkpoint;
finished, it is left alone. Runs fused together (degradation/fused.py) each write exactly
what they would write alone, into their own folders.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from degradation import __version__, distributed
from degradation.config import Config, ConfigError, TrainConfig, from_dict, members
from degradation.data import CifarSplits, DataError, TrainBatches, eval_batches, load_cifar10
from degradation.errors import Interrupted, error_line
from degradation.hardware import usable_cores
from degradation.logs import Progress
from degradation.models import build_model, count_parameters, layer_names
from degradation.package import code_version
from degradation.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    data_of,
    family,
    identity,
    run_dir,
)
from degradation.signals import noting_stop_signals
from degradation.storage import (
    CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    DamagedCheckpoint,
    StorageError,
    atomic_write_text,
    load_checkpoint,
    read_checkpoint,
    read_json,
    remove_temporaries,
    save_checkpoint,
    set_aside_damaged,
    write_json,
)

CHECKPOINT_FORMAT = 1
log = logging.getLogger("degrade")


@dataclass
class Outcome:
    """How a call to `train` ended."""

    status: str  # done, diverged, skipped (finished before)
    run_dir: Path
    summary: dict[str, Any]


def learning_rate(iteration: int, train: TrainConfig, warming_up: bool = False) -> float:
    """The rate for the step taken at `iteration` (0-based): divided at each milestone passed."""
    if warming_up:
        return train.warmup_lr
    passed = sum(iteration >= milestone for milestone in train.milestones)
    # Divide rather than multiply so 0.1 -> 0.01 -> 0.001 exactly, as the paper writes them.
    return train.lr / (1 / train.lr_decay) ** passed


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present; asking for CUDA without one is a `ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available (allowed here: auto, cpu)")
    return torch.device(name)


def train(config: Config, splits: CifarSplits | None = None) -> Outcome:
    """Train the run `config` describes in its own folder, resuming or skipping as needed.

    With `trainer.fuse_with` the runs of those seeds train along with it (`train_all`); the
    outcome returned is this run's own.
    """
    return train_all(config, splits)[0]


def train_all(config: Config, splits: CifarSplits | None = None) -> list[Outcome]:
    """Train `config` and the run of each seed in `trainer.fuse_with`: one outcome per run,
    `config`'s first. Finished runs are skipped; the others train as one fused model
    (degradation/fused.py) when their checkpoints stand at one iteration, else one by one.
    """
    configs = members(config)
    outcomes = {seed: Outcome("skipped", folder, read_json(folder / SUMMARY_FILE))
                for seed, folder in ((c.seed, run_dir(c)) for c in configs)
                if (folder / SUMMARY_FILE).exists()}
    todo = [c for c in configs if c.seed not in outcomes]
    if not todo:
        return [outcomes[c.seed] for c in configs]
    if distributed.launches_workers(config):  # trainer.gpus > 1: one DDP process per GPU
        return [distributed.spawn(config)]  # never fused (config.validate refuses it)
    with contextlib.ExitStack() as held:
        for member in todo:  # every member's lock before any is touched
            held.enter_context(distributed.run_lock(run_dir(member)))
        stop = held.enter_context(noting_stop_signals())
        groups = _training_groups(todo)
        for member in (member for group in groups for member in group):
            if distributed.is_writer():  # DDP: the other ranks wait for it in `resume`
                _write_config(run_dir(member), member)
        if splits is None:
            splits = load_cifar10(Path(config.data.root), config.data.download,
                                  config.data.val_split)
        for group in groups:
            outcomes.update((outcome.summary["seed"], outcome)
                            for outcome in _Run(group, splits, stop).run())
    return [outcomes[c.seed] for c in configs]


def _training_groups(configs: list[Config]) -> list[list[Config]]:
    """The runs trained together: all of them, each config's `trainer.fuse_with` naming the
    others; or, when their checkpoints stand at different iterations, each one alone."""
    seeds = [c.seed for c in configs]
    if len(configs) > 1:
        reached = [_checkpoint_iteration(run_dir(c)) for c in configs]
        if len(set(reached)) == 1:
            return [[replace(c, trainer=replace(c.trainer, fuse_with=[s for s in seeds
                                                                      if s != c.seed]))
                     for c in configs]]
        log.warning("warning: the runs of seeds %s have checkpoints at iterations %s; they are "
                    "trained one after another, not fused", seeds, reached)
    return [[replace(c, trainer=replace(c.trainer, fuse_with=[]))] for c in configs]


def _checkpoint_iteration(folder: Path) -> int:
    """The iteration a run would resume from: that of its newest readable checkpoint, or 0."""
    state, _ = load_checkpoint(folder)
    return 0 if state is None else state["iteration"]


# Runs at least this long compile on the CPU when `train.compile` is null (see resolve_speed).
CPU_COMPILE_MIN_ITERATIONS = 5000


@dataclass(frozen=True)
class Speed:
    """How a run's steps are computed on its device, never what: `train.channels_last`,
    `train.compile` and `train.threads` with their nulls resolved, and
    `train.deterministic`."""

    channels_last: bool
    compile: bool
    threads: int
    deterministic: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of conv weights and input batches."""
        return torch.channels_last if self.channels_last else torch.contiguous_format


def resolve_speed(recipe: TrainConfig, device: torch.device) -> Speed:
    """Fill in the nulls with what pays on `device` (the measurements are in BENCHMARKS.md)."""
    if recipe.precision == "bf16" and device.type != "cuda":
        # CPU runs stay fp32: exactly reproducible, and this CPU has no fast bf16 anyway.
        raise ConfigError("train.precision=bf16 needs a CUDA device; on the CPU use fp32")
    channels_last = True if recipe.channels_last is None else recipe.channels_last
    compile_model = recipe.compile
    if compile_model is None:
        # On the CPU the first compile takes 1-2 min on two cores for about 12% faster steps:
        # it pays back within a long run, never within a short one (BENCHMARKS.md).
        # Inductor's CPU kernels need a C++ compiler.
        long_run = recipe.iterations >= CPU_COMPILE_MIN_ITERATIONS
        compiler = any(shutil.which(cxx) for cxx in ("g++", "clang++"))
        compile_model = device.type == "cuda" or (long_run and compiler)
        if device.type != "cuda" and long_run and not compiler:
            log.info("no C++ compiler (g++ or clang++) found: the model is not compiled, so "
                     "CPU steps run about 12%% slower (BENCHMARKS.md); install one to compile")
    return Speed(channels_last, compile_model, recipe.threads or available_cores(),
                 recipe.deterministic)


def available_cores() -> int:
    """How many CPU cores this process may run on (its affinity mask: `taskset` narrows it)."""
    return len(usable_cores())


def build_network(config: Config, device: torch.device, speed: Speed
                  ) -> tuple[nn.Module, torch.optim.SGD]:
    """The run's freshly initialised model, laid out and compiled as `speed` says, and its SGD."""
    use_speed(device, speed)
    model = build_model(config.arch, config.depth, config.shortcut)
    model = distributed.sync_batchnorm(model, config.trainer)  # DDP; before compiling
    model = model.to(device=device, memory_format=speed.memory_format)
    optimizer = make_sgd(model.parameters(), config.train, device)
    if speed.compile:
        # In place, so state_dict keys (and checkpoints) are those of the plain module.
        model.compile(dynamic=False)
    return model, optimizer


def use_speed(device: torch.device, speed: Speed) -> None:
    """Set what `speed` says for the whole process: threads, deterministic algorithms or
    cuDNN's choice on CUDA, and on the CPU an allocator that keeps the memory of one step for
    the next."""
    torch.set_num_threads(speed.threads)
    # CPU steps are deterministic anyway; on CUDA some kernels (atomics, cuDNN's algorithm
    # choice) are not, unless asked for, at a cost in speed (README).
    torch.use_deterministic_algorithms(speed.deterministic)
    torch.backends.cudnn.deterministic = speed.deterministic
    # Picks the fastest conv algorithms for the fixed batch shape, which may differ between
    # processes; CPU runs are unaffected.
    torch.backends.cudnn.benchmark = device.type == "cuda" and not speed.deterministic
    if device.type != "cuda":
        keep_freed_memory()
    elif speed.deterministic:
        # cuBLAS is deterministic only with a fixed workspace; read when it first starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# glibc's mallopt() parameters (malloc.h) and the largest mmap threshold it accepts (64-bit).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD = -1, -3, 32 << 20


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MiB for reuse; False where the C
    library has no mallopt (macOS, musl).

    A CPU training step allocates and frees the same few-MiB activation tensors every step.
    By default glibc hands such blocks back to the kernel and takes them again, page fault by
    page fault (5-14 thousand faults a step for ResNet-20 at batch 128); kept, the step
    faults no page and runs 1.2-1.4x faster on 2 cores (BENCHMARKS.md). It is set for the
    whole process and for good, so `degrade bench` times the conventional pipeline in a
    process of its own.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def make_sgd(parameters: Iterable[Tensor], recipe: TrainConfig, device: torch.device
             ) -> torch.optim.SGD:
    """The recipe's SGD (momentum, weight decay) over `parameters`, on this device's kernel."""
    return torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, **sgd_kernel(device))


def sgd_kernel(device: torch.device) -> dict[str, bool]:
    """SGD's implementation: one fused kernel on CUDA; the per-tensor loop on the CPU."""
    # The CPU loop is as fast as foreach/fused there (the step is <1% of the time) and is the
    # implementation earlier CPU runs used, so their checkpoints resume bit-identically.
    return {"fused": True, "foreach": False} if device.type == "cuda" else {
        "fused": False, "foreach": False}


def fit_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's dtype, device and strides.

    A loaded momentum buffer keeps the layout of the run that saved it (a fused run's are
    NCHW, a lone run's follow `train.channels_last`); CUDA's fused SGD refuses a buffer
    whose strides differ from its parameter's.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if not isinstance(value, Tensor) or value.dim() == 0:
                    continue  # a step count, say: not laid out like the parameter
                if value.shape != param.shape:
                    raise ValueError(f"the saved optimizer's {name} has shape "
                                     f"{tuple(value.shape)}, its parameter "
                                     f"{tuple(param.shape)}")
                if (value.dtype, value.device, value.stride()) != (
                        param.dtype, param.device, param.stride()):
                    state[name] = torch.empty_like(param).copy_(value)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor,
               labels: Tensor, lr: float, precision: str,
               memory_format: torch.memory_format) -> tuple[Tensor, Tensor]:
    """One SGD step on a batch: its mean loss (fp32) and error count, left on the device.

    A fused model (degradation/fused.py) takes a (K, B, ...) batch, one per member, and
    answers (K, B, classes): the loss and count are then one per member, and the loss
    minimised is their sum, whose gradient for each member is that of its own mean loss.
    Nothing here reads a value back to the host, so on CUDA the CPU queues steps ahead of
    the GPU; the caller accumulates the two tensors and reads them at log points.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    images = images.contiguous(memory_format=memory_format)
    with _autocast(images.device, precision):
        outputs = model(images)
        loss = _cross_entropy(outputs, labels, "mean")
    optimizer.zero_grad(set_to_none=True)
    # Fused: the sum of the members' losses. A lone loss is a scalar already: no extra kernel.
    (loss.sum() if loss.dim() else loss).backward()
    optimizer.step()
    with torch.no_grad():
        wrong = (outputs.argmax(dim=-1) != labels).sum(dim=-1)
    return loss.detach().float(), wrong


def gradient_norms(model: nn.Module, layers: list[str], members: int = 1) -> Tensor:
    """(members, layers): the L2 norm of each layer's weight gradient left by the last step,
    one row per member of a fused model (a lone model is one member). Stays on the device."""
    with torch.no_grad():
        return torch.stack([
            model.get_parameter(f"{layer}.weight").grad.reshape(members, -1).norm(dim=1)
            for layer in layers], dim=1)


def evaluate(model: nn.Module, images_u8: Tensor, labels: Tensor, mean: Tensor,
             batch_size: int, precision: str,
             memory_format: torch.memory_format) -> tuple[Tensor, Tensor]:
    """Summed loss (fp64) and error count over a whole set with BN's running statistics.

    Batches are cut on the images' device (keep the set there to copy nothing per evaluation)
    and run under inference mode; the results stay on the device. A fused model sees the
    same batches with every member and gets one sum and one count per member.
    """
    device = images_u8.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    wrong = torch.zeros((), device=device, dtype=torch.int64)
    training = model.training
    model.eval()  # "running statistics at test time"
    try:
        with torch.inference_mode(), _autocast(device, precision):
            for images, batch_labels in eval_batches(images_u8, labels, mean, batch_size,
                                                     device):
                outputs = model(images.contiguous(memory_format=memory_format))
                batch_labels = batch_labels.expand(outputs.shape[:-1])  # fused: each member's
                # Out of place: the sums take the members' shape at the first batch.
                loss_sum = loss_sum + _cross_entropy(outputs.float(), batch_labels, "sum")
                wrong = wrong + (outputs.argmax(dim=-1) != batch_labels).sum(dim=-1)
    finally:
        model.train(training)
    return loss_sum, wrong


def _cross_entropy(outputs: Tensor, labels: Tensor, reduction: str) -> Tensor:
    """Cross-entropy reduced over the batch (the last dimension of `labels`): a scalar for a
    lone model's (B, classes) outputs, one per member for a fused model's (K, B, classes)."""
    if outputs.dim() == 2:
        return F.cross_entropy(outputs, labels, reduction=reduction)
    # Classes second, as cross_entropy wants them for (K, classes, B) inputs.
    losses = F.cross_entropy(outputs.movedim(-1, 1), labels, reduction="none")
    return losses.mean(dim=-1) if reduction == "mean" else losses.sum(dim=-1)


class _Run:
    """Runs that differ only in seed, from their start (or resume) to their end: one model
    alone (DDP over several processes included), or several as one fused model.

    The network and its optimizer are the run's; everything else is each member's own
    (`_Member`), written through the same code whether it trains alone or fused.
    """

    def __init__(self, configs: list[Config], splits: CifarSplits, stop: list[str]):
        self.pending, self.stop = stop, distributed.stop_list(stop)  # DDP: stop together
        self.recipe = configs[0].train
        self.device = resolve_device(configs[0].device)
        self.speed = resolve_speed(self.recipe, self.device)
        self.fused = len(configs) > 1
        if self.fused:
            from degradation.fused import build_fused  # fused.py builds on this module

            self.model, rngs = build_fused(configs, self.device, self.speed)
            self.optimizer, self.trained = self.model.optimizer, self.model
            self.memory_format = self.model.memory_format
        else:
            seed_everything(configs[0].seed)
            self.model, self.optimizer = build_network(configs[0], self.device, self.speed)
            self.trained = distributed.wrap(self.model, self.device)  # DDP
            self.memory_format = self.speed.memory_format
            rngs = [None]  # a lone run checkpoints the process's own generators
        # The data set is copied to the device once, not for each member or each evaluation.
        splits = replace(splits, **{name: getattr(splits, name).to(self.device) for name in (
            "train_images", "train_labels", "eval_images", "eval_labels", "mean")})
        self.members = [_Member(config, splits, self.device, rng)
                        for config, rng in zip(configs, rngs, strict=True)]
        self.everyone = list(self.members)  # self.members loses those that diverge
        self.layers = layer_names(self.model.base if self.fused else self.model)
        self.eval_images, self.eval_labels = splits.eval_images, splits.eval_labels
        self.mean = splits.mean
        resumed = [member.resume(lambda state, index=index: self._load(index, state))
                   for index, member in enumerate(self.members)]
        if len({member.iteration for member in self.members}) > 1:  # checked before fusing
            raise StorageError("fused runs must resume from one iteration; train them apart")
        for member, cut in zip(self.members, resumed, strict=True):
            member.open_logs(cut)

    @property
    def iteration(self) -> int:
        """The iteration every member still training has reached."""
        return self.members[0].iteration

    def run(self) -> list[Outcome]:
        """Train to the end (or divergence) and write each member's summary."""
        started = time.perf_counter()
        for member in self.members:
            member.started = started
        outcomes: list[Outcome] = []
        try:
            while self.members and self.iteration < self.recipe.iterations:
                self._step()
                for member in self.members:
                    member.iteration += 1
                at_end = self.iteration == self.recipe.iterations
                if self.iteration % self.recipe.log_every == 0 or at_end:
                    self._log_gradients()
                    outcomes += self._log_training()
                    if not self.members:
                        break
                if self.iteration % self.recipe.eval_every == 0 or at_end:
                    self._evaluate()
                    self._checkpoint()
                elif self.stop:
                    self._checkpoint()
                if self.stop and not at_end:  # at the end, finishing is the quickest stop
                    raise Interrupted(f"stopped by {self.stop[0]} at iteration {self.iteration}; "
                                      f"checkpoint written, run the same command to resume")
            return outcomes + [self._finish(member, "done") for member in self.members]
        finally:
            for member in self.everyone:
                member.metrics.close()

    def _step(self) -> None:
        batches = [distributed.shard(*next(member.batches))  # DDP: this rank's slice
                   for member in self.members]
        distributed.agree_on_stop(self.iteration, self.pending, self.stop)
        images, labels = self.model.stack(batches) if self.fused else batches[0]
        # Fusion refuses warm-up (config.validate), so the members share one rate.
        lr = learning_rate(self.iteration, self.recipe, self.members[0].warming_up)
        loss, wrong = train_step(self.trained, self.optimizer, images, labels, lr,
                                 self.recipe.precision, self.memory_format)
        for member, member_loss, member_wrong in zip(self.members, loss.reshape(-1),
                                                     wrong.reshape(-1), strict=True):
            member.add(member_loss, member_wrong, labels.shape[-1])

    def _log_gradients(self) -> None:
        """Log each member's per-layer weight-gradient norms of the step just taken."""
        # DDP: every rank holds the all-reduced gradients. One read back per log point, where
        # the training error is read back anyway.
        norms = gradient_norms(self.model, self.layers, len(self.members)).float().tolist()
        for member, row in zip(self.members, norms, strict=True):
            member.metrics.log_gradients(self.iteration, dict(zip(self.layers, row,
                                                                  strict=True)))

    def _log_training(self) -> list[Outcome]:
        """Log each member's training error; those no longer finite end as diverged."""
        outcomes = []
        for member in [member for member in self.members if not member.log_training()]:
            outcomes.append(self._finish(member, "diverged"))
            index = self.members.index(member)
            del self.members[index]
            if self.members:  # its NaNs never reach the others; it simply stops being computed
                self.model.drop(index)
                self.optimizer = self.model.optimizer  # over the members left
        return outcomes

    def _evaluate(self) -> None:
        loss_sum, wrong = evaluate(self.model, self.eval_images, self.eval_labels, self.mean,
                                   self.recipe.eval_batch_size, self.recipe.precision,
                                   self.memory_format)
        for member, member_loss, member_wrong in zip(self.members, loss_sum.reshape(-1),
                                                     wrong.reshape(-1), strict=True):
            member.record_test(member_loss, member_wrong, len(self.eval_labels))

    def _checkpoint(self) -> None:
        for index, member in enumerate(self.members):  # DDP: every rank, rank 0 writes
            member.checkpoint(self._saved(index))

    def _saved(self, index: int) -> dict[str, Any]:
        """A member's model, optimizer and RNG state, exactly as its lone run saves them."""
        if self.fused:
            return {"model": self.model.member_state_dict(index),
                    "optimizer": self.model.member_optimizer_state_dict(index),
                    "rng": self.members[index].rng}
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state()}

    def _load(self, index: int, state: dict[str, Any]) -> None:
        """Restore what `_saved` saves, from a checkpoint of a lone or a fused run."""
        if self.fused:
            self.model.load_member_state_dict(index, state["model"])
            self.model.load_member_optimizer_state_dict(index, state["optimizer"])
            self.members[index].rng = state["rng"]
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:
                # The checkpoint brought its kernel choice (a CUDA run's fused=True): use ours.
                group.update(sgd_kernel(self.device))
            set_rng_state(state["rng"])
        fit_optimizer_state(self.optimizer)

    def _finish(self, member: _Member, status: str) -> Outcome:
        parameters = self.model.parameters_per_member if self.fused else count_parameters(
            self.model)
        return member.finish(status, parameters)


class _Member:
    """One run's own part of the training, whether it trains alone or fused with others:
    its data stream, accumulated training error, logs, best and last errors, checkpoint,
    resume and summary."""

    def __init__(self, config: Config, splits: CifarSplits, device: torch.device,
                 rng: dict[str, Any] | None):
        self.config, self.folder, self.device = config, run_dir(config), device
        self.recipe = config.train
        self.eval_set = splits.eval_set
        self.batches = TrainBatches(splits.train_images, splits.train_labels, splits.mean,
                                    self.recipe.batch_size, config.seed, device)
        self.rng = rng  # fused: the generators' state its lone run holds (seeded, then init)
        self.iteration = 0
        self.warming_up = config.warmup_enabled
        self.best: dict[str, float] | None = None
        self.last_test: dict[str, float] = {}
        self.last_train: dict[str, float] = {}
        self.diverged: dict[str, Any] | None = None
        self.elapsed = 0.0
        self.started = time.perf_counter()
        self._reset_accumulators()

    def open_logs(self, resumed: bool) -> None:
        """Open the logs, cut back to the iteration resumed from when `resumed`."""
        self.metrics = distributed.metrics_log(self.folder, self.iteration if resumed else None)
        fused = f" seed {self.config.seed}" if self.config.trainer.fuse_with else ""
        self.progress = Progress(family(self.config) + fused, self.recipe.iterations,
                                 self.recipe.batch_size, start=self.iteration)

    def add(self, loss: Tensor, wrong: Tensor, count: int) -> None:
        """Accumulate one step's mean loss and error count over `count` images."""
        # On the device, read only at log points: no host sync per step.
        self.loss_sum += loss * count
        self.wrong += wrong
        self.seen += count

    def log_training(self) -> bool:
        """Log the running training error since the last log point; False if diverged."""
        distributed.all_reduce_sum(self.loss_sum, self.wrong, self.seen)  # DDP: every rank's
        seen = int(self.seen)
        loss = float(self.loss_sum) / max(seen, 1)
        error = 100.0 * float(self.wrong) / max(seen, 1)
        lr = learning_rate(self.iteration - 1, self.recipe, self.warming_up)
        self._reset_accumulators()
        if not np.isfinite(loss):
            self.diverged = {"iteration": self.iteration, "lr": lr,
                             "last_train_error": self.last_train.get("error/train")}
            return False
        self.last_train = {"error/train": error, "loss/train": loss}
        self.metrics.log(self.iteration, {"lr": lr, **self.last_train})
        if self.warming_up and error < self.recipe.warmup_until_error:
            # Paper: 0.01 "until the training error is below 80%", then back to 0.1.
            self.warming_up = False
            log.info("%s warm-up ended at iteration %d (training error %.1f%%)",
                     family(self.config), self.iteration, error)
        self.progress.update(self.iteration, lr, error)
        return True

    def record_test(self, loss_sum: Tensor, wrong: Tensor, count: int) -> None:
        """Log an evaluation's summed loss and error count over `count` images."""
        error = 100.0 * float(wrong) / count
        self.last_test = {"error/test": error, "loss/test": float(loss_sum) / count}
        self.metrics.log(self.iteration, self.last_test)
        if self.best is None or error < self.best["error"]:
            self.best = {"error": error, "iteration": self.iteration}
        self.progress.update(self.iteration, learning_rate(self.iteration - 1, self.recipe,
                                                           self.warming_up),
                             self.last_train.get("error/train", float("nan")), error)

    def checkpoint(self, saved: dict[str, Any]) -> None:
        """Write the checkpoint: `saved` (model, optimizer, rng) and this run's own state.

        DDP: called on every rank at the same iteration; rank 0 writes.
        """
        # Every rank's training-error sums since the last log point, so that a run resumed
        # mid-interval counts each image once (rank 0 alone restores them).
        accumulators = distributed.summed(self.loss_sum, self.wrong, self.seen)
        if not distributed.is_writer():
            return
        self.metrics.flush()
        save_checkpoint(self.folder, {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "model": saved["model"],
            "optimizer": saved["optimizer"],
            "batches": self.batches.state_dict(),
            "rng": saved["rng"],
            "warming_up": self.warming_up,
            "best": self.best,
            "last_test": self.last_test,
            "last_train": self.last_train,
            "accumulators": accumulators,
            "elapsed_s": self.elapsed + time.perf_counter() - self.started,
        })

    def resume(self, load: Callable[[dict[str, Any]], None]) -> bool:
        """Restore the newest good checkpoint, the network's part of it through `load`; True
        when logs must be cut back to its iteration.

        A damaged checkpoint is renamed `<name>.damaged` and the one before it used, saying so.
        With no usable checkpoint but logs of an earlier attempt, the run starts again from
        iteration 0 and True still asks for those logs to be cut (to nothing).
        DDP: rank 0 alone cleans up and picks the checkpoint, then every rank loads that one.
        """
        writer = distributed.is_writer()
        if writer:
            remove_temporaries(self.folder)  # left by a writer killed mid-write; we hold the lock
        path, state = None, None
        for name in (CHECKPOINT, PREVIOUS_CHECKPOINT) if writer else ():
            if not (self.folder / name).exists():
                continue
            try:
                path, state = self.folder / name, read_checkpoint(self.folder / name,
                                                                  map_location=self.device)
                break
            except DamagedCheckpoint as error:  # an I/O error is raised, not set aside
                kept = set_aside_damaged(self.folder / name)
                log.warning("warning: %s; kept as %s, using the checkpoint before it", error,
                            kept.name)
        chosen = distributed.from_writer(path)  # the other ranks wait for rank 0 here
        if state is None and chosen is not None:
            path, state = chosen, read_checkpoint(chosen, map_location=self.device)
        earlier_logs = (self.folder / METRICS_FILE).exists() or any(
            (self.folder / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
        if earlier_logs:
            _let_new_event_file_sort_last(self.folder / TENSORBOARD_DIR)
        if state is None:
            if earlier_logs:
                log.info("%s: no checkpoint to resume from; starting again from iteration 0",
                         family(self.config))
            return earlier_logs
        self._check_checkpoint(path, state)
        try:
            load(state)
            self.batches.load_state_dict(state["batches"])
            self.iteration = int(state["iteration"])
            self.warming_up = bool(state["warming_up"])
            self.best, self.last_test = state["best"], state["last_test"]
            self.last_train = state["last_train"]
            if writer:  # every rank's sums (`checkpoint`): counted once
                self.loss_sum, self.wrong, self.seen = (
                    value.to(self.device) for value in state["accumulators"])
            self.elapsed = float(state["elapsed_s"])
        except DataError as error:  # one line already
            raise StorageError(f"checkpoint {path}: {error}") from None
        except Exception as error:  # a foreign or damaged state can fail in almost any way
            raise StorageError(f"checkpoint {path} does not fit this run "
                               f"({error_line(error, with_type=False)}); move it away to "
                               "retrain") from None
        log.info("%s resumed from iteration %d (%s)", family(self.config), self.iteration,
                 self.folder)
        return True

    def _check_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of another format or another configuration, naming the values."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise StorageError(f"checkpoint {path} has format {state.get('format')!r}; this "
                               f"version reads format {CHECKPOINT_FORMAT}: move it away to retrain")
        missing = sorted(_CHECKPOINT_KEYS - state.keys())
        if missing:
            raise StorageError(f"checkpoint {path} has no {', '.join(missing)}: it was not "
                               "written by `degrade train`; move it away to retrain")
        try:
            saved = identity(_config_of(state))
        except ConfigError as error:
            raise StorageError(f"checkpoint {path} holds a configuration this version cannot "
                               f"read ({error}); move it away to retrain") from None
        wanted = identity(self.config)
        changed = [f"{key}={saved.get(key)!r} there, {wanted.get(key)!r} here"
                   for key in sorted(saved.keys() | wanted.keys())
                   if saved.get(key) != wanted.get(key)]
        if changed:
            raise ConfigError(f"checkpoint {path} was made with different settings "
                              f"({'; '.join(changed)}); move it away to retrain")

    def finish(self, status: str, parameters: int) -> Outcome:
        """Write the summary of a run that ended (`parameters`: its network's count)."""
        data = data_of(self.config)
        summary = {
            "status": status,
            "arch": self.config.arch,
            "depth": self.config.depth,
            "shortcut": None if self.config.arch == "plain" else self.config.shortcut,
            "seed": self.config.seed,
            "iterations": self.recipe.iterations,
            "iterations_done": self.iteration,
            "final_test_error": self.last_test.get("error/test"),
            "final_test_loss": self.last_test.get("loss/test"),
            "final_train_error": self.last_train.get("error/train"),
            "final_train_loss": self.last_train.get("loss/train"),
            "best_test_error": None if self.best is None else self.best["error"],
            "best_test_iteration": None if self.best is None else self.best["iteration"],
            "eval_set": self.eval_set,
            "data": data.description,
            "data_fingerprint": data.digest,
            "parameters": parameters,
            "wall_time_s": self.elapsed + time.perf_counter() - self.started,
            "device": _device_name(self.device),
            "versions": {"degrade": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "code_version": code_version(),
            # Where and how it diverged: iteration, lr, and the last finite errors.
            "diverged": None if self.diverged is None else {
                **self.diverged, "last_test_error": self.last_test.get("error/test")},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.config.trainer.fuse_with:
            summary["fused_with"] = list(self.config.trainer.fuse_with)
        if distributed.is_writer():
            write_json(self.folder / SUMMARY_FILE, summary)
            from degradation.board import write_hparams  # pandas, only once a run has ended

            write_hparams(self.folder, self.config, summary)
        return Outcome(status, self.folder, summary)

    def _reset_accumulators(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        self.seen = torch.zeros((), device=self.device, dtype=torch.int64)


def _write_config(folder: Path, config: Config) -> None:
    atomic_write_text(folder / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))


def _config_of(state: dict[str, Any]) -> Config:
    return from_dict(state["config"])


@contextlib.contextmanager
def _autocast(device: torch.device, precision: str) -> Iterator[None]:
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators, as a run does before building its model."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_CHECKPOINT_KEYS = frozenset({
    "config", "iteration", "model", "optimizer", "batches", "rng", "warming_up", "best",
    "last_test", "last_train", "accumulators", "elapsed_s"})


def rng_state() -> dict[str, Any]:
    """The state of every generator `seed_everything` seeds, as a checkpoint keeps it."""
    # CUDA's generator only if this process started CUDA: asking would start it (a CPU run
    # on a GPU machine), and an unstarted generator is still in its seeded state on resume.
    # Only the run's own device's: a resumed run may see fewer GPUs (a narrower slot).
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned, on whatever device this run now has."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state["cuda"]
    # Only in a run on CUDA (which started it by now): a CPU run leaves CUDA unstarted.
    if cuda is not None and torch.cuda.is_initialized():
        if isinstance(cuda, (list, tuple)):  # written by earlier versions: one per GPU seen
            device = torch.cuda.current_device()
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda.cpu())


def _let_new_event_file_sort_last(tensorboard: Path) -> None:
    """Wait, if needed, until a new TensorBoard event file will sort after the existing ones.

    TensorBoard reads a run's event files in name order, and a name begins with the second
    the writer started. A resumed writer started within the same second as the one it
    replaces could sort first, and the stale points its purge marker drops would come back.
    """
    started = [int(part[3]) for part in (path.name.split(".") for path in
                                         tensorboard.glob("events.out.tfevents.*"))
               if len(part) > 3 and part[3].isdigit()]
    if started:
        time.sleep(max(0.0, max(started) + 1 - time.time()))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"
