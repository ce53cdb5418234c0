"""A catalogue of bad input, each through the real command line (Typer's runner, in process).

Every case must end the same way: one `error:` line on stderr that names the bad value, a
non-zero exit, no traceback, and every file that was on disk before (an earlier finished run,
the data set) unchanged. A mistake found before the run starts (its configuration, its data,
what the machine can do) creates nothing at all; one found once the run has started leaves
only that run's new bookkeeping files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from degradation.data import cifar as data_module
from degradation.data.cifar import BATCH_DIR
from degradation.launch.compose import compose_config
from degradation.runs import CHECKPOINT, METRICS_FILE, SUMMARY_FILE, run_dir
from degradation.training.logs import read_metrics
from tests.conftest import degrade_here, tiny_overrides


@pytest.fixture(scope="module")
def cifar_root(small_cifar_root: Path) -> Path:
    """80 training and 32 test images."""
    return small_cifar_root


def overrides(cifar_root: Path, output: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(cifar_root, output, **{"train.batch_size": 8, "train.threads": 1,
                                                   "train.eval_batch_size": 32}), *extra]


@pytest.fixture(scope="module")
def finished(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An outputs folder holding one finished run."""
    output = tmp_path_factory.mktemp("finished")
    result = degrade_here("train", *overrides(cifar_root, output))
    assert result.exit_code == 0, result.stderr
    return output


@pytest.fixture
def outputs(finished: Path, tmp_path: Path) -> Path:
    """A copy of `finished` for one test to point bad commands at."""
    return Path(shutil.copytree(finished, tmp_path / "outputs"))


@pytest.fixture
def data(cifar_root: Path, tmp_path: Path) -> Path:
    """A copy of the data set for one test to damage."""
    return Path(shutil.copytree(cifar_root, tmp_path / "data"))


def snapshot(*roots: Path) -> dict[Path, str]:
    """Every file under `roots` and a hash of its bytes."""
    return {path: hashlib.sha256(path.read_bytes()).hexdigest()
            for root in roots for path in sorted(Path(root).rglob("*")) if path.is_file()}


def assert_refused(result: Any, *named: str, code: int | None = None) -> str:
    """One `error:` line naming `named`, a non-zero exit, no traceback; returns the line."""
    assert result.exit_code != 0 and (code is None or result.exit_code == code), (
        result.exit_code, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def assert_intact(before: dict[Path, str], after: dict[Path, str], exactly: bool) -> None:
    """Files from before are unchanged; with `exactly`, no file was added either."""
    assert {path: after.get(path) for path in before} == before
    if exactly:
        assert sorted(after) == sorted(before)
    assert not [path for path in after if path.name.endswith(".tmp")]


# Refused before the run starts: exit 2, nothing written anywhere ------------------------------


@pytest.mark.parametrize("bad, named", [
    ("depth=9", ["depth=9", "6n+2", "20, 32, 44, 56, 110"]),
    ("depth=0", ["depth=0", "6n+2"]),
    ("depth=-4", ["depth=-4", "6n+2"]),
    ("depth=abc", ["depth='abc'", "integer"]),
    ("arch=foo", ["arch='foo'", "plain, resnet"]),
    ("shortcut=D", ["shortcut='D'", "A, B, C"]),
    ("experiment=nope", ["experiment='nope'", "fig6"]),
    ("nosuchkey=1", ["nosuchkey"]),
    ("train.nosuchkey=1", ["train.nosuchkey"]),
    ("train.lr=-1", ["train.lr=-1", "> 0"]),
    ("train.lr=fast", ["train.lr='fast'", "number"]),
    ("train.lr=inf", ["train.lr=inf", "finite"]),
    ("train.momentum=nan", ["train.momentum=nan", "finite"]),
    ("train.weight_decay=inf", ["train.weight_decay=inf", "finite"]),
    ("train.batch_size=0", ["train.batch_size=0", "> 0"]),
    ("train.milestones=[18,12]", ["train.milestones=[18, 12]", "increasing"]),
    ("train.milestones=[6,30]", ["train.milestones=[6, 30]", "train.iterations=12"]),
    ("seed=-1", ["seed=-1"]),
    ("device=tpu", ["device='tpu'", "auto, cpu, cuda"]),
    ("trainer.fuse=0", ["trainer.fuse=0", ">= 1"]),
    ("trainer.fuse_with=[0]", ["trainer.fuse_with=[0]", "seed=0"]),
    ("trainer.fuse_with=[-2]", ["trainer.fuse_with=[-2]", ">= 0"]),
    ("trainer.fuse_with=[1] depth=110", ["trainer.fuse_with=[1]", "warm-up", "depth=110"]),
])
def test_a_bad_value_is_refused_before_anything_is_written(
        cifar_root: Path, outputs: Path, bad: str, named: list[str]) -> None:
    before = snapshot(outputs, cifar_root)
    result = degrade_here("train", *overrides(cifar_root, outputs), *bad.split())
    assert_refused(result, *named, code=2)
    assert_intact(before, snapshot(outputs, cifar_root), exactly=True)


def test_a_sweep_with_one_bad_value_starts_none_of_its_runs(cifar_root: Path, outputs: Path
                                                            ) -> None:
    before = snapshot(outputs)
    result = degrade_here("sweep", *overrides(cifar_root, outputs), "depth=8,14,15")
    assert_refused(result, "depth=15", code=2)
    assert_intact(before, snapshot(outputs), exactly=True)


def test_a_missing_data_folder_with_download_off_is_refused(outputs: Path, tmp_path: Path
                                                            ) -> None:
    before = snapshot(outputs)
    missing = tmp_path / "no-such-data"
    result = degrade_here("train", *overrides(missing, outputs))
    assert_refused(result, f"data.root={missing}", "data.download=false", code=2)
    assert_intact(before, snapshot(outputs), exactly=True)
    assert not missing.exists()


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_failed_download_is_one_line_once_and_makes_no_run_folder(
        outputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    tried = []

    def offline(into: Path) -> None:
        tried.append(into)
        raise OSError("Name or service not known")

    monkeypatch.setattr(data_module, "_torchvision_download", offline)
    before = snapshot(outputs)
    seeds = "seed=3" if command == "train" else "seed=3,4,5"
    result = degrade_here(command, *tiny_overrides(tmp_path / "nodata", outputs,
                                              **{"data.download": "true"}), seeds)
    assert_refused(result, "downloading CIFAR-10", "Name or service not known", code=2)
    assert len(tried) == 1  # the sweep asks once for all its runs, before launching any
    assert_intact(before, snapshot(outputs), exactly=True)


def test_an_output_folder_that_cannot_be_made_is_refused(cifar_root: Path, tmp_path: Path
                                                         ) -> None:
    (tmp_path / "afile").write_text("a regular file, not a folder")
    before = snapshot(tmp_path)
    result = degrade_here("train", *overrides(cifar_root, tmp_path / "afile" / "sub"))
    assert_refused(result, str(tmp_path / "afile"))
    assert_intact(before, snapshot(tmp_path), exactly=True)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="no /proc on this system")
def test_an_output_folder_in_proc_is_refused_before_anything_starts(cifar_root: Path) -> None:
    # Its permission bits say writable to root; only making a folder there tells.
    result = degrade_here("train", *overrides(cifar_root, Path("/proc/x")))
    assert_refused(result, "cannot write into /proc/x", code=2)
    assert not Path("/proc/x").exists()


def test_a_damaged_summary_is_refused_saying_how_to_recover(cifar_root: Path, outputs: Path
                                                            ) -> None:
    (summary,) = outputs.rglob(SUMMARY_FILE)
    finished = json.loads(summary.read_text())
    summary.write_text('{"status": "done", "final_te')  # cut off by a half-finished copy
    before = snapshot(outputs)
    result = degrade_here("train", *overrides(cifar_root, outputs))
    assert_refused(result, str(summary), "is damaged", "delete the file", "--force", code=2)
    assert_intact(before, snapshot(outputs), exactly=True)
    summary.unlink()  # as the line says: the last checkpoint rewrites it
    assert degrade_here("train", *overrides(cifar_root, outputs)).exit_code == 0
    rewritten = json.loads(summary.read_text())
    assert rewritten["status"] == "done"
    assert rewritten["final_test_error"] == finished["final_test_error"]


def test_a_damaged_metrics_csv_is_set_aside_on_resume_and_repaired(
        cifar_root: Path, outputs: Path) -> None:
    (summary,) = outputs.rglob(SUMMARY_FILE)
    summary.unlink()  # the run resumes from its last checkpoint, and its logs with it
    metrics = summary.parent / METRICS_FILE
    metrics.write_bytes(b"iteration,lr\n\xff\xfe\x00")
    result = degrade_here("train", *overrides(cifar_root, outputs))
    assert result.exit_code == 0 and "Traceback" not in result.stdout + result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: {metrics} is damaged (line 2: ")
    assert f"kept as {metrics}.damaged" in warning
    assert metrics.with_name("metrics.csv.damaged").read_bytes() == b"iteration,lr\n\xff\xfe\x00"
    read_metrics(metrics)  # repaired: it reads whole (the run resumed at its last iteration)
    assert json.loads(summary.read_text())["status"] == "done"


@pytest.mark.parametrize("bad, named", [
    ("data.val_split=100000", ["data.val_split=100000", "1 to 79"]),
    ("train.batch_size=1000", ["train.batch_size=1000", "80 training images"]),
    ("train.precision=bf16", ["train.precision=bf16", "CUDA"]),
    ("trainer.gpus=2 trainer.sync_batchnorm=true", ["trainer.sync_batchnorm=true", "GPUs"]),
], ids=["split", "batch", "bf16", "sync_batchnorm"])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_what_a_run_would_find_once_started_is_refused_before_any_folder(
        cifar_root: Path, outputs: Path, command: str, bad: str, named: list[str]) -> None:
    # The data decides the split and the batch; the machine (device=cpu) bf16 and SyncBatchNorm.
    seeds = "seed=3" if command == "train" else "seed=3,4,5"
    before = snapshot(outputs, cifar_root)
    result = degrade_here(command, *overrides(cifar_root, outputs, seeds, *bad.split()))
    assert_refused(result, *named, code=2)  # a sweep says it once, not once per run
    assert_intact(before, snapshot(outputs, cifar_root), exactly=True)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _not_a_dict(path: Path) -> None:
    path.write_bytes(pickle.dumps([1, 2, 3]))


def _wrong_shape(path: Path) -> None:
    path.write_bytes(pickle.dumps({"data": np.zeros((16, 100), np.uint8), "labels": [0] * 16}))


def _not_a_pickle(path: Path) -> None:
    path.write_text("<html>404 Not Found</html>")


@pytest.mark.parametrize("damage, named", [
    (Path.unlink, "data_batch_3 is missing"),
    (_truncate, "data_batch_3 is truncated or not a CIFAR-10 pickle"),
    (_not_a_pickle, "data_batch_3 is truncated or not a CIFAR-10 pickle"),
    (_not_a_dict, "data_batch_3 holds a list, expected a dict"),
    (_wrong_shape, "shape (16, 100), expected a uint8 array of shape (N, 3072)"),
], ids=["missing", "truncated", "not a pickle", "not a dict", "wrong shape"])
def test_a_damaged_batch_file_is_refused_naming_it(
        data: Path, outputs: Path, damage: Any, named: str) -> None:
    damage(data / BATCH_DIR / "data_batch_3")
    before = snapshot(outputs, data)
    result = degrade_here("train", *overrides(data, outputs, "seed=3"))  # a run not yet trained
    assert_refused(result, named, code=2)  # found while naming the run's data
    assert_intact(before, snapshot(outputs, data), exactly=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_on_a_machine_without_it_is_refused(cifar_root: Path, outputs: Path) -> None:
    before = snapshot(outputs)
    result = degrade_here("train", *overrides(cifar_root, outputs, "device=cuda", "seed=3"))
    assert_refused(result, "device='cuda'", "no CUDA device", code=2)
    assert_intact(before, snapshot(outputs), exactly=True)  # refused before any folder is made


# Refused once the run has started: exit 1, earlier files untouched -----------------------------


def test_a_full_disk_is_one_line_and_leaves_no_half_files(
        cifar_root: Path, outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(outputs)

    def no_space(_fd: int) -> None:  # every write of ours fails as on a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    result = degrade_here("train", *overrides(cifar_root, outputs, "seed=1"))
    monkeypatch.undo()
    assert_refused(result, "No space left on device", "cannot write", code=1)
    assert_intact(before, snapshot(outputs), exactly=False)


def checkpoint_in(cifar_root: Path, outputs: Path, *extra: str) -> Path:
    """Where the run of these settings keeps its checkpoint (the folder is made)."""
    folder = run_dir(compose_config(overrides(cifar_root, outputs, *extra)))
    folder.mkdir(parents=True)
    return folder / CHECKPOINT


def test_a_checkpoint_from_another_configuration_is_refused_naming_the_difference(
        cifar_root: Path, outputs: Path) -> None:
    (theirs,) = outputs.rglob(CHECKPOINT)
    ours = checkpoint_in(cifar_root, outputs, "train.lr=0.05")
    shutil.copy(theirs, ours)  # e.g. copied by hand into the wrong run folder
    before = snapshot(outputs)
    result = degrade_here("train", *overrides(cifar_root, outputs, "train.lr=0.05"))
    assert_refused(result, str(ours), "train.lr=0.1 there, 0.05 here", code=1)
    assert_intact(before, snapshot(outputs), exactly=False)


@pytest.mark.parametrize("state, named", [
    ({"iteration": 3, "model": {}}, "has no accumulators, batches, best, config"),
    ({"format": 99, "iteration": 3, "model": {}}, "has format 99"),
], ids=["foreign", "future format"])
def test_a_checkpoint_not_written_by_this_version_is_refused(
        cifar_root: Path, outputs: Path, state: dict, named: str) -> None:
    path = checkpoint_in(cifar_root, outputs, "seed=2")
    torch.save({"format": 1, **state}, path)
    before = snapshot(outputs)
    result = degrade_here("train", *overrides(cifar_root, outputs, "seed=2"))
    assert_refused(result, str(path), named, "move it away", code=1)
    assert_intact(before, snapshot(outputs), exactly=False)


@pytest.mark.parametrize("part, value, named", [
    ("rng", "a state of another program", "does not fit this run"),
    ("accumulators", None, "does not fit this run"),
    ("optimizer", {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                   "param_groups": [{"params": list(range(29))}]}, "does not fit this run"),
    ("batches", {"generator": torch.zeros(16, dtype=torch.uint8), "perm": torch.arange(80),
                 "step": 3, "num_images": 80, "batch_size": 8}, "earlier version"),
], ids=["rng", "accumulators", "optimizer", "stream-of-an-earlier-version"])
def test_a_checkpoint_that_does_not_fit_ends_in_one_line(
        cifar_root: Path, outputs: Path, part: str, value: Any, named: str) -> None:
    (path,) = outputs.rglob(CHECKPOINT)
    (path.parent / "summary.json").unlink()  # unfinished: the run resumes from it
    state = torch.load(path, weights_only=False)
    torch.save({**state, part: value}, path)
    before = path.read_bytes()
    result = degrade_here("train", *overrides(cifar_root, outputs))
    assert_refused(result, str(path), named, "move", code=1)
    assert path.read_bytes() == before  # left for the user to move away


@pytest.mark.parametrize("field, text, named", [
    ("final_test_error", "NaN", "final_test_error=nan is not a finite number"),
    ("final_train_error", "Infinity", "final_train_error=inf is not a finite number"),
    ("depth", '"20"', "depth='20' is not an integer"),
    ("seed", "true", "seed=True is not an integer"),
    ("versions", "[]", "versions=[] is not an object"),
], ids=["NaN", "Infinity", "depth text", "seed bool", "versions list"])
def test_a_summary_of_valid_json_with_fields_of_the_wrong_type_is_damage(
        tmp_path: Path, field: str, text: str, named: str) -> None:
    from tests.analysis_fixtures import write_study

    folders = write_study(tmp_path, depths=(20,), archs=("resnet",), seeds=(0, 1),
                          iterations=4000)
    summary = folders[1] / SUMMARY_FILE
    values = json.loads(summary.read_text())
    values[field] = "PLACEHOLDER"
    summary.write_text(json.dumps(values).replace('"PLACEHOLDER"', text))
    for command in ("status", "table"):
        result = degrade_here(command, tmp_path)
        assert result.exit_code == 0, result.stderr
        (warning,) = result.stderr.splitlines()
        assert warning.startswith(f"warning: {summary} is damaged ({named})"), warning
        assert "nan" not in result.stdout.lower() and "inf%" not in result.stdout
    assert "1 done" in next(line for line in result.stdout.splitlines()
                            if line.startswith("| ResNet-20"))


def test_a_finished_run_with_a_damaged_config_is_skipped_naming_the_file_and_why(
        cifar_root: Path, outputs: Path) -> None:
    (summary,) = outputs.rglob(SUMMARY_FILE)
    config = summary.parent / "config.yaml"
    config.write_text("arch: [resnet\n  depth: {")
    before = snapshot(outputs)
    result = degrade_here("train", *overrides(cifar_root, outputs))
    assert result.exit_code == 0 and "Traceback" not in result.stdout + result.stderr
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith(f"resnet-8-A seed 0: already finished, but {config} is damaged (")
    assert line.endswith(f"({config.parent}); --force retrains it"), line
    assert_intact(before, snapshot(outputs), exactly=True)


@pytest.mark.parametrize("error_txt", ["binary", "folder"])
def test_an_unreadable_error_txt_is_no_traceback_in_the_sweeps_report(
        cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        error_txt: str) -> None:
    from degradation.launch import run
    from degradation.runs import CONFIG_FILE, ERROR_FILE, run_dir

    def failing(config) -> list:
        # Each run fails, leaving an error.txt that cannot be read as text.
        folder = run_dir(config)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text("depth: 8\n")
        if error_txt == "binary":
            (folder / ERROR_FILE).write_bytes(b"\xff\xfe\x00\x80 out of memory\n\x9c")
        else:
            (folder / ERROR_FILE).mkdir()
        return []

    monkeypatch.setattr(run, "train_all", failing)  # the jobs run here: hydra/launcher=basic
    result = degrade_here("sweep", *overrides(cifar_root, tmp_path, "seed=0,1"),
                          "hydra/launcher=basic")
    assert result.exit_code == 1 and "Traceback" not in result.stdout + result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 2, result.stderr
    if error_txt == "folder":
        assert all(line.endswith(": did not finish") for line in failed)

# Nothing a file holds runs code ---------------------------------------------------------------


class _ShellPayload:
    """Pickled, runs `touch MARKER` when read by an unpickler that allows any callable."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("command", [["sweep", "--dry-run"], ["train"]])
def test_a_batch_file_that_would_run_code_is_refused_naming_it(
        data: Path, outputs: Path, tmp_path: Path, command: list[str]) -> None:
    marker = tmp_path / "PWN"
    path = data / BATCH_DIR / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _ShellPayload(marker), "labels": [0]}, protocol=2))
    before = snapshot(outputs, data)
    result = degrade_here(*command, *overrides(data, outputs, "seed=3"))
    assert_refused(result, str(path), "is refused", code=2)
    assert not marker.exists()
    assert_intact(before, snapshot(outputs, data), exactly=True)


def test_a_checkpoint_that_would_run_code_is_refused_and_kept(
        cifar_root: Path, outputs: Path, tmp_path: Path) -> None:
    path = checkpoint_in(cifar_root, outputs, "seed=4")
    marker = tmp_path / "PWN"
    torch.save({"iteration": 3, "model": _ShellPayload(marker)}, path)
    before = snapshot(outputs)
    result = degrade_here("train", *overrides(cifar_root, outputs, "seed=4"))
    assert_refused(result, str(path), "is refused", "posix.system")
    assert not marker.exists()
    assert not list(outputs.rglob("*.damaged"))  # refused, not taken for damage and replaced
    assert_intact(before, snapshot(outputs), exactly=False)


def test_data_changed_with_its_modification_time_put_back_is_not_the_finished_runs(
        data: Path, outputs: Path) -> None:
    command = ["sweep", "--dry-run", *overrides(data, outputs)]
    first = degrade_here(*command)
    assert first.exit_code == 0 and "1 finished" in first.stdout, first.stdout + first.stderr
    path = data / BATCH_DIR / "data_batch_1"
    times = path.stat()
    batch = pickle.loads(path.read_bytes())
    batch["data"] = batch["data"][::-1].copy()  # other images, the same size of file
    with path.open("r+b") as f:
        f.write(pickle.dumps(batch, protocol=2))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (times.st_size, times.st_mtime_ns)
    second = degrade_here(*command)
    assert second.exit_code == 0 and "1 to start" in second.stdout, second.stdout + second.stderr
# Interpolations, sweeps and launcher settings that cannot work: exit 2, nothing written ------


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("bad, named", [
    ("depth=${oops}", ["depth='${oops}'", "'oops' not found", "${oc.env:NAME}"]),
    ("depth=${oc.env:DEGRADE_NO_SUCH_VARIABLE}",
     ["depth='${oc.env:DEGRADE_NO_SUCH_VARIABLE}'", "DEGRADE_NO_SUCH_VARIABLE' not found"]),
], ids=["key", "environment"])
def test_an_interpolation_that_cannot_be_resolved_is_refused(
        tmp_path: Path, command: str, bad: str, named: list[str]) -> None:
    result = degrade_here(command, *tiny_overrides(tmp_path / "data", tmp_path / "out"), bad)
    assert_refused(result, *named, code=2)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["sweep"], ["sweep", "--dry-run"], ["status"]])
def test_a_sweep_range_with_a_zero_step_is_refused(tmp_path: Path, command: list[str]) -> None:
    result = degrade_here(*command, *tiny_overrides(tmp_path / "data", tmp_path / "out"),
                          "seed=range(0,10,0)")
    assert_refused(result, "seed=range(0,10,0)", "step other than 0", code=2)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad, named", [
    ("hydra.launcher.parallel_runs=0", "hydra.launcher.parallel_runs=0"),
    ("hydra.launcher.parallel_runs=abc", "hydra.launcher.parallel_runs='abc'"),
    ("hydra.launcher.runs_per_gpu=0", "hydra.launcher.runs_per_gpu=0"),
])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["sweep", "dry-run"])
def test_a_local_launcher_setting_that_cannot_work_is_refused_before_any_run(
        tmp_path: Path, generated: Path, bad: str, named: str, dry_run: list[str]) -> None:
    output = tmp_path / "out"
    result = degrade_here("sweep", *dry_run, *tiny_overrides(generated, output), "seed=1,2", bad)
    assert_refused(result, named, "an integer >= 1", code=2)
    assert not output.exists()


LONG_NAME = "a" * 300  # longer than any common file system's NAME_MAX (255 bytes)


@pytest.mark.parametrize("command", [["train"], ["sweep", "seed=1,2"], ["sweep", "--dry-run"]])
@pytest.mark.parametrize("key", ["output_dir", "data.root"])
def test_a_path_with_a_name_too_long_for_the_file_system_is_refused(
        tmp_path: Path, generated: Path, command: list[str], key: str) -> None:
    long_path = tmp_path / LONG_NAME / "x"
    values = {"output_dir": tmp_path / "out", "data.root": generated, key: long_path}
    before = snapshot(tmp_path)
    result = degrade_here(*command, *tiny_overrides(values["data.root"], values["output_dir"]))
    assert_refused(result, f"{key}={long_path}", "300 bytes long", "at most 255", code=2)
    assert_intact(before, snapshot(tmp_path), exactly=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["status", "table", "plot"])
def test_an_analysis_path_with_a_name_too_long_is_refused(tmp_path: Path, command: str
                                                          ) -> None:
    result = degrade_here(command, tmp_path / LONG_NAME)
    assert_refused(result, "300 bytes long")
    assert not list(tmp_path.iterdir())


# Analysis outputs that cannot be written: exit 2, nothing written ------------------------------

ANALYSES = ["plot", "report", "gradients", "table", "claims"]


@pytest.mark.parametrize("where", ["a file", "under a file", "/proc"])
@pytest.mark.parametrize("command", ANALYSES)
def test_an_analysis_out_that_cannot_be_written_is_refused_up_front(
        outputs: Path, tmp_path: Path, command: str, where: str) -> None:
    if where == "/proc" and not Path("/proc/self").exists():
        pytest.skip("no /proc on this system")
    (tmp_path / "afile").write_text("a regular file, not a folder")
    out = {"a file": tmp_path / "afile", "under a file": tmp_path / "afile" / "sub",
           "/proc": Path("/proc/x")}[where]
    before = snapshot(tmp_path)
    result = degrade_here(command, outputs, "--out", out)
    assert_refused(result, f"cannot write into {out}", code=2)
    assert_intact(before, snapshot(tmp_path), exactly=True)


@pytest.mark.parametrize("command", ANALYSES)
def test_an_analysis_of_a_read_only_tree_is_refused_up_front(
        outputs: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    # Permission bits do not stop root, so the tree is made read-only where the check reads it.
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        not (mode & os.W_OK and Path(path).is_relative_to(outputs)) and access(path, mode, **kw)))
    before = snapshot(outputs)
    result = degrade_here(command, outputs)
    assert_refused(result, f"cannot write into {outputs / 'figures'}", "not writable", code=2)
    assert_intact(before, snapshot(outputs), exactly=True)


@pytest.mark.parametrize("command", ANALYSES)
def test_an_analysis_on_a_full_disk_is_one_line_and_leaves_no_half_files(
        outputs: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    def no_space(_fd: int) -> None:  # every write of ours fails as on a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    before = snapshot(outputs)
    result = degrade_here(command, outputs)
    monkeypatch.undo()
    assert_refused(result, "cannot write", "No space left on device", code=2)
    assert_intact(before, snapshot(outputs), exactly=True)


@pytest.mark.parametrize("target", ["afile/points.csv", "afile/sub/points.csv", "folder"])
def test_an_export_that_cannot_be_written_is_refused(outputs: Path, tmp_path: Path, target: str
                                                     ) -> None:
    (tmp_path / "afile").write_text("a regular file, not a folder")
    (tmp_path / "folder").mkdir()
    before = snapshot(tmp_path)
    result = degrade_here("export", tmp_path / target, "--from", outputs)
    assert_refused(result, str(tmp_path / ("folder" if target == "folder" else "afile")), code=2)
    assert_intact(before, snapshot(tmp_path), exactly=True)


def test_generate_data_into_a_folder_holding_data_is_refused(data: Path) -> None:
    before = snapshot(data)
    result = degrade_here("generate-data", data)
    assert_refused(result, str(data / BATCH_DIR), "already holds", "another folder", code=2)
    assert_intact(before, snapshot(data), exactly=True)


@pytest.mark.parametrize("where", ["under a file", "/proc"])
def test_generate_data_where_it_cannot_write_is_refused(tmp_path: Path, where: str) -> None:
    if where == "/proc" and not Path("/proc/self").exists():
        pytest.skip("no /proc on this system")
    (tmp_path / "afile").write_text("a regular file, not a folder")
    root = tmp_path / "afile" / "sub" if where == "under a file" else Path("/proc/x")
    before = snapshot(tmp_path)
    result = degrade_here("generate-data", root)
    assert_refused(result, f"cannot write into {root / BATCH_DIR}", code=2)
    assert_intact(before, snapshot(tmp_path), exactly=True)
    assert not Path("/proc/x").exists()


@pytest.mark.parametrize("path", [[], ["outputs"]], ids=["overrides", "path and overrides"])
def test_status_of_runs_on_data_missing_its_test_batch_is_one_line(
        data: Path, tmp_path: Path, path: list[str]) -> None:
    (data / BATCH_DIR / "test_batch").unlink()
    before = snapshot(tmp_path)
    result = degrade_here("status", *[tmp_path / name for name in path],
                          *tiny_overrides(data, tmp_path / "outputs"))
    assert_refused(result, str(data / BATCH_DIR / "test_batch"), "is missing", code=2)
    assert_intact(before, snapshot(tmp_path), exactly=True)


# bench refuses bad input as every command does: exit 2, nothing written -----------------------

@pytest.mark.parametrize("bad, named", [
    ("--steps 0", "--steps=0 must be >= 1"),
    ("--steps -1", "--steps=-1 must be >= 1"),
    ("--warmup-steps 0", "--warmup-steps=0 must be >= 1"),
    ("--repeats 0", "--repeats=0 must be >= 1"),
    ("--eval-steps -1", "--eval-steps=-1 must be >= 1"),
    ("--runs 0", "--runs=0 must be >= 1"),
    ("--workers -1", "--workers=-1 must be >= 0"),
    ("--images -5", "--images=-5 must be at least the batch size 8"),
    ("--batch-size 0", "train.batch_size=0 must be > 0"),
    ("--depth 9", "depth=9 is not 6n+2"),
    ("--arch foo", "arch='foo' is not one of: plain, resnet"),
    ("--device tpu", "device='tpu' is not one of: auto, cpu, cuda"),
    ("train.lr=-1", "train.lr=-1.0 must be > 0"),
])
def test_bench_refuses_bad_input_with_exit_2(tmp_path: Path, bad: str, named: str) -> None:
    record = tmp_path / "BENCHMARKS.md"
    record.write_text("# Benchmarks\n")
    result = degrade_here("bench", "--depth", "8", "--batch-size", "8", "--images", "64",
                          "--record", "--benchmarks-file", record, *bad.split())
    assert_refused(result, named, code=2)
    assert [path.name for path in tmp_path.iterdir()] == ["BENCHMARKS.md"]
    assert record.read_text() == "# Benchmarks\n"


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_bench_refuses_a_record_file_it_cannot_write_before_timing(tmp_path: Path, where: str
                                                                   ) -> None:
    (tmp_path / "afile").write_text("a regular file, not a folder")
    (tmp_path / "folder").mkdir()
    target = tmp_path / ("afile/BENCHMARKS.md" if where == "under a file" else "folder")
    before = snapshot(tmp_path)
    result = degrade_here("bench", "--depth", "8", "--batch-size", "8", "--images", "64",
                          "--steps", "1", "--warmup-steps", "1", "--repeats", "1",
                          "--eval-steps", "1", "--workers", "0", "train.compile=false",
                          "--record", "--benchmarks-file", target)
    assert_refused(result, str(tmp_path / ("afile" if where == "under a file" else "folder")),
                   code=2)
    assert_intact(before, snapshot(tmp_path), exactly=True)


@pytest.mark.parametrize("command", [*ANALYSES, "responses"])
def test_every_command_writing_figures_refuses_an_out_that_is_a_file(
        outputs: Path, tmp_path: Path, command: str) -> None:
    # Before any run is read: responses would otherwise evaluate every checkpoint first.
    (tmp_path / "afile").write_text("a regular file, not a folder")
    before = snapshot(tmp_path)
    result = degrade_here(command, outputs, "--out", tmp_path / "afile")
    assert_refused(result, f"cannot write into {tmp_path / 'afile'}", code=2)
    assert_intact(before, snapshot(tmp_path), exactly=True)
