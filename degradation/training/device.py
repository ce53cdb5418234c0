"""Where and how fast a run computes, never what: the device, threads, deterministic
algorithms, the CPU allocator, compiling, channels_last, the SGD kernel, and seeding.

`resolve_speed` fills in the nulls of `train.channels_last`, `train.compile` and
`train.threads` with what pays on the device (the measurements are in BENCHMARKS.md).
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from degradation.config import NO_CUDA, Config, ConfigError, TrainConfig, cpu_refusal
from degradation.errors import one_line
from degradation.hardware import usable_cores
from degradation.models import build_model
from degradation.training import distributed

log = logging.getLogger("degrade")


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present; asking for CUDA without one is a `ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(NO_CUDA)
    return torch.device(name)


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
    refusal = cpu_refusal(recipe) if device.type != "cuda" else None
    if refusal:
        # CPU runs stay fp32: exactly reproducible, and this CPU has no fast bf16 anyway.
        raise ConfigError(refusal)
    channels_last = True if recipe.channels_last is None else recipe.channels_last
    compile_model = recipe.compile
    if compile_model is None:
        # On the CPU the first compile takes minutes for somewhat faster steps: it pays back
        # within a long run, never within a short one (BENCHMARKS.md).
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


def compile_failure(error: BaseException) -> str | None:
    """Why compiling the model failed, in one line, when `error` is a compiler's failure (a
    missing or broken C++ compiler, code it cannot compile) or was raised from one; None for
    any other error."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, BackendCompilerFailed | CppCompileError | InvalidCxxCompiler):
            # Dynamo wraps the compiler's error; its own message is a page of advice.
            inner = getattr(seen, "inner_exception", None) or seen
            first = next((line for line in str(inner).splitlines() if line.strip()), "")
            return one_line(f"{type(inner).__name__}: {first}" if first
                            else type(inner).__name__)
        seen = seen.__cause__ or seen.__context__
    return None


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
    page fault; kept, the step faults no page and runs faster (BENCHMARKS.md). It is set for the
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


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators, as a run does before building its model."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
