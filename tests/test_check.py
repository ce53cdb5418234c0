"""`degrade check`: every path of the CPU passes here, and a failure is a row with its line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from degradation import check
from degradation.check import CHECKS, Check, CheckFailed, Workspace, expect_resumed, plan, rewind
from tests.conftest import PROJECT, degrade, degrade_here, help_commands


def passes(space: Workspace) -> None:
    pass


def breaks(space: Workspace) -> None:
    raise CheckFailed("the thing broke\nand said more on a second line")


def crashes(space: Workspace) -> None:
    raise KeyError("missing")


def refused_by_degrade(space: Workspace) -> None:
    space.degrade("train", "depth=21", f"output_dir={space.root}")


@pytest.mark.slow
def test_check_on_the_cpu_passes_every_row() -> None:
    result = degrade("check", "--device", "cpu", cwd=PROJECT, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    cpu_checks = [found for found in CHECKS if "cpu" in found.devices]
    rows = result.stdout.strip().splitlines()[1:-1]
    assert len(rows) == len(cpu_checks), result.stdout
    for row, expected in zip(rows, cpu_checks, strict=True):
        assert row.startswith(expected.name) and row.split()[len(expected.name.split())] \
            == "passed", row
    assert result.stdout.strip().splitlines()[-1] == f"{len(cpu_checks)} passed, 0 failed, " \
        "0 skipped"


def test_a_failing_check_is_a_failed_row_with_its_line_and_exit_1(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "CHECKS", [Check("fine", passes), Check("broken", breaks),
                                          Check("crashing", crashes),
                                          Check("only on CUDA", breaks, ("cuda",))])
    result = degrade_here("check", "--device", "cpu")
    assert result.exit_code == 1, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:-1]}
    assert sorted(rows) == ["broken", "crashing", "fine"]
    assert rows["fine"].split()[1] == "passed"
    assert rows["broken"].split()[1] == "failed"
    assert rows["broken"].endswith("the thing broke and said more on a second line")
    assert rows["crashing"].endswith("KeyError: 'missing'")
    assert result.stdout.splitlines()[-1] == "1 passed, 2 failed, 0 skipped"


@pytest.mark.slow
def test_a_failing_command_is_its_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "CHECKS", [Check("bad depth", refused_by_degrade)])
    result = degrade_here("check", "--device", "cpu")
    assert result.exit_code == 1
    row = result.stdout.splitlines()[1]
    assert row.split()[:3] == ["bad", "depth", "failed"]
    assert row.endswith("`degrade train` exited 2: error: depth=21 is not 6n+2 for n >= 1 "
                        "(allowed: 8, 14, 20, 26, ...; the paper uses 20, 32, 44, 56, 110, 1202)")


def test_cuda_without_cuda_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(check, "CHECKS", [Check("must not run", breaks)])
    for device, message in (("cuda", "error: device='cuda' but no CUDA device is available"),
                            ("tpu", "error: --device 'tpu' is not one of: auto, cpu, cuda")):
        result = degrade_here("check", "--device", device)
        assert result.exit_code == 2
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_auto_without_cuda_checks_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(check, "CHECKS", [Check("fine", passes)])
    result = degrade_here("check")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith("degrade check on cpu")


def test_checks_that_need_two_gpus_are_skipped_with_one() -> None:
    one = plan(CHECKS, "cuda", gpus=1)
    skipped = {found.name: why for found, why in one if why}
    assert skipped and all(found.gpus == 2 for found, why in one if why)
    assert set(skipped.values()) == {"needs 2 GPUs, 1 visible"}
    assert not any(why for _, why in plan(CHECKS, "cuda", gpus=2))
    assert {found.name for found, _ in one} == {
        found.name for found in CHECKS if "cuda" in found.devices}
    cpu = plan(CHECKS, "cpu", gpus=0)
    assert [found.name for found, _ in cpu] == [
        found.name for found in CHECKS if "cpu" in found.devices]
    assert not any(why for _, why in cpu)


def test_cuda_covers_every_path_of_the_report() -> None:
    names = " | ".join(found.name for found in CHECKS if "cuda" in found.devices)
    for path in ("compiled, channels_last, fused SGD", "bf16", "fused, compiled",
                 "runs_per_gpu=2", "a fused run's checkpoint", "a CPU checkpoint on CUDA",
                 "a CUDA checkpoint on the CPU", "2 GPUs visible", "responses", "bench",
                 "NCCL", "SyncBatchNorm", "trainer.gpus=2, SIGINT"):
        assert path in names, path


def test_a_run_that_started_again_instead_of_resuming_fails(tmp_path: Path) -> None:
    (tmp_path / "train.log").write_text("resnet-8-A: no checkpoint to resume from; starting "
                                        "again from iteration 0\n")
    with pytest.raises(CheckFailed, match=r"did not resume from its checkpoint: .*iteration 0"):
        expect_resumed(tmp_path)
    with pytest.raises(CheckFailed, match="no run of seed 0 with two checkpoints"):
        rewind(tmp_path)


def test_help_lists_check() -> None:
    result = degrade_here("--help")
    assert result.exit_code == 0 and "check" in help_commands(result.stdout)
