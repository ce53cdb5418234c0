"""The processes of runs and sweeps: no orphans, no false failures, no hangs.

A sweep too large to plan is refused before anything is composed; workers whose launching
process died stop with a checkpoint; a sweep that finds its runs trained by another process
leaves them to it; a compile that fails falls back to eager training.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from degradation.launch.compose import MAX_SWEEP_RUNS, sweep_jobs, sweep_size
from tests.conftest import degrade_here, tiny_overrides


def test_sweep_size_is_the_count_of_hydras_jobs() -> None:
    overrides = ["depth=20,56", "arch=plain,resnet", "seed=range(3)", "depth=20,32,44"]
    parsed = OverridesParser.create().parse_overrides(overrides)
    assert sweep_size(parsed) == len(sweep_jobs({}, overrides)) == 18


def test_a_sweep_too_large_to_plan_is_refused_before_composing(generated: Path,
                                                                tmp_path: Path) -> None:
    # Composing 100000 runs took minutes without a word; the size is known from the
    # overrides alone.
    result = degrade_here("sweep", "--dry-run", "seed=range(100000)",
                          *tiny_overrides(generated, tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: the sweep asks for 100000 runs; at most "
                                     f"{MAX_SWEEP_RUNS} runs in one sweep (split it into "
                                     "several sweeps, e.g. by seed ranges)")
    assert not (tmp_path / "out").exists()
    zero_step = degrade_here("sweep", "--dry-run", "seed=range(0,10,0)",
                             *tiny_overrides(generated, tmp_path / "out"))
    assert zero_step.exit_code == 2
    assert zero_step.output.strip() == ("error: seed=range(0,10,0): range() arg 3 must not "
                                        "be zero")
