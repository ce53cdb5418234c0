"""The machine a sweep runs on: usable CPU cores, memory, visible GPUs, and the slots (GPUs
and cores) that jobs are pinned to. Pure functions of what the OS reports.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from degradation.errors import LauncherError

# CPU only, `parallel_runs: null`: one-thread runs side by side, one per core, as many as
# memory holds at this much each (the peak of a run at batch 128 is in BENCHMARKS.md).
CPU_RUN_MEMORY = 5 << 29  # 2.5 GiB

def usable_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity mask: `taskset` narrows it)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def available_memory() -> int | None:
    """Bytes of memory new processes can take now (Linux's MemAvailable, else the physical
    memory); None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def pin_to(cores: Iterable[int]) -> None:
    """Confine this process to `cores` where the OS can (Linux); no cores: left as it is."""
    cores = set(cores)
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def parse_cores(text: str) -> list[int]:
    """`0,1,2` (as `Slot` hands cores to a child process) as a list; empty for ``."""
    return [int(core) for core in text.split(",") if core]


@dataclass(frozen=True)
class Slot:
    """Where one job runs: its GPUs (CUDA_VISIBLE_DEVICES entries) and its CPU cores."""

    gpus: tuple[str, ...]
    cores: tuple[int, ...]

    def env(self) -> dict[str, str]:
        """The environment variables that confine a job to this slot."""
        threads = str(max(1, len(self.cores)))
        env = {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus), "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads}
        if self.gpus:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # the numbering nvidia-smi shows
        return env

    def describe(self) -> str:
        """`GPU 1`, `GPUs 0,1`, `CPU cores 0-3`."""
        if self.gpus:
            return f"GPU{'s' if len(self.gpus) > 1 else ''} {','.join(self.gpus)}"
        if len(self.cores) > 1 and list(self.cores) == list(
                range(self.cores[0], self.cores[-1] + 1)):
            return f"CPU cores {self.cores[0]}-{self.cores[-1]}"
        return f"CPU core{'s' if len(self.cores) > 1 else ''} {','.join(map(str, self.cores))}"


def visible_gpus(cuda_visible_devices: str | None, device_count: int) -> list[str]:
    """The GPUs this process may hand out, as CUDA_VISIBLE_DEVICES entries for its children.

    Inside an allocation that already narrowed CUDA_VISIBLE_DEVICES (SLURM, a container) the
    children get entries of that list (`"2"`, `"GPU-<uuid>"`), never indices that would
    reach GPUs outside it.
    """
    if cuda_visible_devices is None:
        return [str(index) for index in range(device_count)]
    entries = [entry.strip() for entry in cuda_visible_devices.split(",") if entry.strip()]
    return entries[:device_count]  # CUDA ignores the entries after an invalid one


def check_sharing(runs_per_gpu: object, parallel_runs: object) -> None:
    """Raise `LauncherError` unless `runs_per_gpu` is an integer >= 1 and `parallel_runs` is
    one or null (the local launcher's settings, as a command line may give them)."""
    if not _positive_integer(runs_per_gpu):
        raise LauncherError(f"hydra.launcher.runs_per_gpu={runs_per_gpu!r} must be an integer "
                            ">= 1")
    if parallel_runs is not None and not _positive_integer(parallel_runs):
        raise LauncherError(f"hydra.launcher.parallel_runs={parallel_runs!r} must be an integer "
                            ">= 1 (null: one run per core, as many as memory holds)")


def _positive_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def assign_slots(gpus: Sequence[str], cores: Sequence[int], runs_per_gpu: int = 1,
                 gpus_per_run: int = 1, parallel_runs: int | None = None,
                 jobs: int | None = None, memory: int | None = None) -> list[Slot]:
    """The places the jobs of a sweep run in at once; a pure function of the hardware.

    With GPUs: disjoint groups of `gpus_per_run` GPUs, each taken by `runs_per_gpu` jobs,
    listed round-robin so that the first jobs spread over all GPUs. Without: `parallel_runs`
    CPU slots; null: one per core, but no more than the `jobs` to run nor than `memory`
    (bytes available) holds at CPU_RUN_MEMORY a run. The cores are divided evenly among the
    slots either way, so fewer jobs than cores get several cores each.
    """
    check_sharing(runs_per_gpu, parallel_runs)
    if gpus_per_run < 1:
        raise LauncherError(f"gpus_per_run={gpus_per_run} must be >= 1")
    cores = list(cores) or [0]
    if gpus:
        if gpus_per_run > len(gpus):
            raise LauncherError(f"each run needs {gpus_per_run} GPUs but only {len(gpus)} are "
                                f"visible ({','.join(gpus)})")
        groups = [tuple(gpus[start:start + gpus_per_run])
                  for start in range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)]
        placed = [group for _ in range(runs_per_gpu) for group in groups]
    else:
        limits = [len(cores), jobs or len(cores)]
        if memory is not None:
            limits.append(memory // CPU_RUN_MEMORY)
        count = parallel_runs or max(1, min(limits))
        placed = [() for _ in range(count)]
    return [Slot(group, share) for group, share in zip(placed, _divide(cores, len(placed)),
                                                       strict=True)]


def _divide(cores: list[int], parts: int) -> list[tuple[int, ...]]:
    """`parts` contiguous, near-equal shares of `cores`; shared cores when there are fewer."""
    if parts > len(cores):
        return [(cores[index % len(cores)],) for index in range(parts)]
    size, extra = divmod(len(cores), parts)
    shares, start = [], 0
    for index in range(parts):
        stop = start + size + (index < extra)
        shares.append(tuple(cores[start:stop]))
        start = stop
    return shares
