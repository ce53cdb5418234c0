"""The command line end to end: real tiny sweeps in a subprocess, as a user types them."""

from __future__ import annotations

from pathlib import Path

import pytest

from degradation.package import presets
from degradation.runs import find_runs
from tests.conftest import degrade, help_commands, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("sweep")
    result = degrade("sweep", "depth=8,14", "arch=plain,resnet",
                     *tiny_overrides(cifar_root, output)[2:])
    assert result.returncode == 0, result.stderr
    return output


def test_sweep_trains_one_folder_per_run(swept: Path) -> None:
    records = find_runs(swept)
    assert sorted((r.config.arch, r.config.depth) for r in records) == [
        ("plain", 8), ("plain", 14), ("resnet", 8), ("resnet", 14)]
    assert all(record.state == "done" for record in records)
    assert {record.path.parent.name for record in records} == {
        "plain-8", "plain-14", "resnet-8-A", "resnet-14-A"}


def test_rerunning_a_sweep_trains_nothing(swept: Path, cifar_root: Path) -> None:
    checkpoints = sorted(swept.rglob("checkpoint.pt"))
    before = [path.stat().st_mtime_ns for path in checkpoints]
    result = degrade("sweep", "depth=8,14", "arch=plain,resnet",
                     *tiny_overrides(cifar_root, swept)[2:])
    assert result.returncode == 0, result.stderr
    assert "4 finished (skipped)" in result.stdout
    assert [path.stat().st_mtime_ns for path in checkpoints] == before


def test_dry_run_normalises_plain_nets_and_starts_nothing(cifar_root: Path, tmp_path: Path
                                                          ) -> None:
    result = degrade("sweep", "--dry-run", "arch=plain,resnet", "shortcut=A,B",
                     *tiny_overrides(cifar_root, tmp_path)[1:])
    assert result.returncode == 0, result.stderr
    assert "3 runs: 3 to start" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_train_refuses_to_overwrite_a_finished_run_unless_forced(swept: Path, cifar_root: Path
                                                                 ) -> None:
    overrides = tiny_overrides(cifar_root, swept)
    skipped = degrade("train", *overrides)
    assert skipped.returncode == 0 and "already finished" in skipped.stdout
    forced = degrade("train", "--force", *overrides)
    assert forced.returncode == 0, forced.stderr
    kept = list((swept / "runs" / "resnet-8-A").glob("*.replaced-*"))
    assert len(kept) == 1 and (kept[0] / "summary.json").exists()


def test_bad_value_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = degrade("sweep", "depth=20,21", f"output_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: depth=21 is not 6n+2 for n >= 1 (allowed: 8, 14, 20, 26, ...; "
        "the paper uses 20, 32, 44, 56, 110, 1202)"]
    assert not (tmp_path / "runs").exists()


def test_show_config_prints_the_resolved_values() -> None:
    result = degrade("train", "--show-config", "depth=56", "arch=plain")
    assert result.returncode == 0, result.stderr
    assert "arch: plain" in result.stdout and "depth: 56" in result.stdout
    assert "- 32000" in result.stdout


def test_help_names_every_command_and_preset() -> None:
    result = degrade("--help")
    assert result.returncode == 0
    listed = help_commands(result.stdout)
    for command in ("train", "sweep", "status", "plot", "table", "responses", "report", "bench"):
        assert command in listed
    named = " ".join(result.stdout.split())  # rich wraps the text to the terminal's width
    assert f"({', '.join(presets())})" in named  # from experiments/, none missing


def test_help_shows_no_value_type_for_flags() -> None:
    from tests.conftest import degrade_here

    # A flag takes no value; `--force <bool>` would read as if it wanted one.
    for command in ([], ["train"], ["sweep"], ["status"]):
        result = degrade_here(*command, "--help", env={"COLUMNS": "120"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output
        assert "--dry-run" in result.output or command != ["sweep"]
