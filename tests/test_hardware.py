"""Where jobs go: slots of GPUs and cores, a pure function of the hardware."""

from __future__ import annotations

import pytest

from degradation.errors import LauncherError
from degradation.hardware import assign_slots, visible_gpus


def test_one_run_per_gpu_by_default() -> None:
    slots = assign_slots(["0", "1", "2", "3"], range(16))
    assert [slot.gpus for slot in slots] == [("0",), ("1",), ("2",), ("3",)]
    assert [slot.cores for slot in slots] == [tuple(range(i, i + 4)) for i in (0, 4, 8, 12)]
    assert slots[2].env()["CUDA_VISIBLE_DEVICES"] == "2"
    assert slots[2].env()["OMP_NUM_THREADS"] == "4"


def test_k_runs_per_gpu_spread_round_robin() -> None:
    slots = assign_slots(["0", "1", "2", "3"], range(8), runs_per_gpu=2)
    assert [",".join(slot.gpus) for slot in slots] == ["0", "1", "2", "3"] * 2
    assert all(len(slot.cores) == 1 for slot in slots)
    assert len({slot.cores for slot in slots}) == 8  # no core shared


def test_multi_gpu_runs_take_disjoint_groups() -> None:
    slots = assign_slots(["0", "1", "2", "3", "4"], range(4), gpus_per_run=2)
    assert [slot.gpus for slot in slots] == [("0", "1"), ("2", "3")]  # GPU 4 alone is no use
    assert slots[1].env()["CUDA_VISIBLE_DEVICES"] == "2,3"
    with pytest.raises(LauncherError, match="needs 2 GPUs but only 1"):
        assign_slots(["0"], range(4), gpus_per_run=2)


def test_cpu_only_divides_the_cores() -> None:
    assert [slot.cores for slot in assign_slots([], range(2), parallel_runs=2)] == [(0,), (1,)]
    assert [len(slot.cores) for slot in assign_slots([], range(10), parallel_runs=3)] == [4, 3, 3]
    # null: one-thread runs side by side (BENCHMARKS.md), within the jobs and the memory.
    assert [slot.cores for slot in assign_slots([], range(2))] == [(0,), (1,)]
    assert len(assign_slots([], range(32))) == 32
    assert [len(slot.cores) for slot in assign_slots([], range(8), jobs=3)] == [3, 3, 2]
    assert len(assign_slots([], range(32), memory=10 << 30)) == 4  # 2.5 GiB a run
    assert len(assign_slots([], range(4), memory=1 << 30)) == 1  # never none
    assert len(assign_slots([], range(2), parallel_runs=2, memory=1 << 30)) == 2  # as asked
    shared = assign_slots([], [0, 1], parallel_runs=3)  # more runs than cores: shared
    assert [slot.cores for slot in shared] == [(0,), (1,), (0,)]
    assert all(slot.env()["CUDA_VISIBLE_DEVICES"] == "" for slot in shared)
    with pytest.raises(LauncherError, match="parallel_runs=0"):
        assign_slots([], range(2), parallel_runs=0)


def test_visible_gpus_stay_inside_an_allocation() -> None:
    assert visible_gpus(None, 2) == ["0", "1"]
    assert visible_gpus("2,3", 2) == ["2", "3"]  # e.g. SLURM gave this job GPUs 2 and 3
    assert visible_gpus("GPU-aaaa,GPU-bbbb", 1) == ["GPU-aaaa"]
    assert visible_gpus("", 0) == []
