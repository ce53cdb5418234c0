"""Every file a run folder holds, damaged: the analysis commands name it once and go on.

A hand edit, a half-copied folder or a bad sync leaves a file that cannot be read.
`degrade status`, `table`, `plot` and `report` must then print one `warning:` line naming
that file, exit 0, and show every other run; no traceback. (Checkpoints have checksums and a
fallback of their own: tests/test_resume.py.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from degradation.analysis.measurements import RESPONSES_FILE
from degradation.runs import CONFIG_FILE, ERROR_FILE, METRICS_FILE, SUMMARY_FILE, TENSORBOARD_DIR
from degradation.storage import write_json
from tests.analysis_fixtures import write_study
from tests.conftest import degrade_here

COMMANDS = ("status", "table", "plot", "report")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three finished ResNet-20 seeds; each test damages a copy of the third."""
    root = tmp_path_factory.mktemp("study")
    return write_study(root, depths=(20,), archs=("resnet",), seeds=(0, 1, 2), iterations=4000)


def _garble(name: str, text: bytes = b'{"status": "done", "final_test_err\x00') -> Callable:
    def damage(folder: Path) -> Path:
        (folder / name).write_bytes(text)
        return folder / name
    return damage


def _metrics_only(folder: Path) -> Path:
    # An unfinished run that logged only its CSV: that is what status and the plots read.
    (folder / SUMMARY_FILE).unlink()
    shutil.rmtree(folder / TENSORBOARD_DIR)
    (folder / METRICS_FILE).write_text("iteration,lr,error/train\n100,0.1,abc\n")
    return folder / METRICS_FILE


def _events(folder: Path) -> Path:
    (event,) = (folder / TENSORBOARD_DIR).glob("events.out.tfevents.*")
    event.write_bytes(b"\x00" * 7 + b"not an event file")
    return event


def _error_txt(folder: Path) -> Path:
    # A failed run's reason, garbled: shown as far as it reads, never a reason to stop.
    (folder / SUMMARY_FILE).unlink()
    (folder / ERROR_FILE).write_bytes(b"\xff\xfe\x00 out of \x80memory\n")
    return folder / ERROR_FILE


def _responses(folder: Path) -> Path:
    write_json(folder / RESPONSES_FILE, {"arch": "resnet", "depth": 20, "std": "lots"})
    return folder / RESPONSES_FILE


@pytest.mark.slow
@pytest.mark.parametrize("damage, warned", [
    (_garble(SUMMARY_FILE), COMMANDS),
    (_garble(SUMMARY_FILE, b"[1, 2]"), COMMANDS),
    (_garble(SUMMARY_FILE, b'{"status": "done", "final_test_error": "8.5"}'), COMMANDS),
    (_garble(CONFIG_FILE, b"arch: [resnet\n  depth: {"), COMMANDS),
    (_metrics_only, ("status", "plot", "report")),
    (_events, ("plot", "report")),
    (_responses, ("plot", "report")),
    (_error_txt, ()),
], ids=["summary garbled", "summary not an object", "summary wrong type", "config garbled",
        "metrics.csv", "event file", "responses.json", "error.txt"])
def test_a_damaged_file_is_named_once_and_the_other_runs_are_analysed(
        study: list[Path], tmp_path: Path, damage: Callable, warned: tuple[str, ...]) -> None:
    root = study[0].parents[2]
    outputs = Path(shutil.copytree(root, tmp_path / "outputs"))
    damaged = damage(outputs / study[2].relative_to(root))
    for command in COMMANDS:
        result = degrade_here(command, str(outputs))
        assert result.exit_code == 0, (command, result.stderr, result.exception)
        assert "Traceback" not in result.stdout + result.stderr
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == (command in warned), (command, result.stderr)
        assert all(str(damaged) in line for line in warnings), (command, warnings)
        assert [line for line in result.stderr.splitlines() if line not in warnings] == []
        if command == "status":  # the two healthy runs, whatever the third is
            assert result.stdout.count("resnet-20-A    seed 0 ") == 1
            assert result.stdout.count("resnet-20-A    seed 1 ") == 1
        if command == "table":
            assert "| ResNet-20" in result.stdout


def test_a_run_found_twice_is_one_line_of_status_and_one_warning(study: list[Path],
                                                                 tmp_path: Path) -> None:
    root = study[0].parents[2]
    outputs = Path(shutil.copytree(root, tmp_path / "outputs"))
    shutil.copytree(outputs / "runs", outputs / "old" / "runs")  # a backup inside outputs
    alone = degrade_here("status", str(outputs))
    assert alone.exit_code == 0 and alone.stdout.strip().endswith("3 runs: 3 done")
    assert alone.stderr == ""
    both = degrade_here("table", str(outputs), "--recursive")
    assert both.exit_code == 0, both.stderr
    warnings = both.stderr.strip().splitlines()
    assert len(warnings) == 3 and all("is in 2 folders" in line for line in warnings)
    assert "3 done" in next(line for line in both.stdout.splitlines()
                            if line.startswith("| ResNet-20"))


def test_a_cut_event_file_gives_way_to_the_complete_metrics_csv(tmp_path: Path) -> None:
    from degradation.training.logs import MetricsLog, read_metrics
    from tests.analysis_fixtures import make_config, make_summary, write_run

    recipe = {"train.iterations": 4000, "train.milestones": [2000, 3000]}
    folder = write_run(tmp_path, recipe, summary=make_summary(make_config(tmp_path, recipe)))
    metrics = MetricsLog(folder)
    for iteration in range(100, 4001, 100):
        metrics.log(iteration, {"lr": 0.1, "error/train": 50.0 - iteration / 100,
                                "error/test": 60.0 - iteration / 100})
    metrics.close()
    (event,) = (folder / TENSORBOARD_DIR).glob("events.out.tfevents.*")
    event.write_bytes(event.read_bytes()[:200])  # a few points left of 120
    out = tmp_path / "points.csv"
    for command in (("export", out, "--from", tmp_path), ("plot", tmp_path),
                    ("report", tmp_path)):
        result = degrade_here(*command)
        assert result.exit_code == 0, (command, result.stderr)
        (warning,) = result.stderr.splitlines()
        assert warning.startswith(f"warning: {event} is damaged (its TensorBoard events hold ")
        assert warning.endswith("the curves are read from metrics.csv"), warning
    exported = pd.read_csv(out)
    assert len(exported) == len(read_metrics(folder / METRICS_FILE)) == 40
    assert exported["error/train"].tolist()[-1] == 10.0
