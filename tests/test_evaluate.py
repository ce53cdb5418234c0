"""`degrade evaluate`: the final weights on a whole split, eval mode, no augmentation; stored
once per checkpoint and split, read back by the claims."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from degradation.analysis import claims
from degradation.analysis.evaluate import evaluate_command
from degradation.analysis.measurements import EVALUATION_FILE, clean_error, file_sha256
from degradation.analysis.study import select_study
from degradation.data.cifar import write_cifar10
from degradation.runs import CHECKPOINT, find_runs
from degradation.storage import write_json
from tests.analysis_fixtures import make_config, make_summary, write_run
from tests.conftest import SHARED_SUBSET, degrade_here, tiny_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated CIFAR-10: 5 x 7 training images, 5 test images."""
    return write_cifar10(tmp_path_factory.mktemp("data"), train_per_batch=7, test_size=5, seed=3)


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An outputs folder holding one finished depth-8 ResNet and one finished plain-8."""
    output = tmp_path_factory.mktemp("trained")
    for arch in ("resnet", "plain"):
        result = degrade_here("train", *tiny_overrides(data, output, arch=arch,
                                                       **{"train.batch_size": 8,
                                                          "train.threads": 1}))
        assert result.exit_code == 0, result.stderr
    return output


@pytest.fixture
def outputs(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "outputs"))


def stored(folder: Path) -> dict:
    return json.loads(next(folder.rglob(EVALUATION_FILE)).read_text())


@pytest.mark.trains  # trains two tiny networks once per module
def test_evaluate_measures_each_finished_run_once_per_checkpoint_and_split(outputs: Path):
    rows = evaluate_command(outputs, "train", "cpu")
    assert [(row.network, row.cached) for row in rows] == [("plain-8", False),
                                                            ("resnet-8-A", False)]
    assert all(row.entry["images"] == 35 and row.entry["iteration"] == 12 for row in rows)
    files = {path: path.read_bytes() for path in outputs.rglob(EVALUATION_FILE)}
    assert len(files) == 2
    # Asked again: nothing measured, nothing rewritten, the same numbers.
    again = evaluate_command(outputs, "train", "cpu")
    assert [row.cached for row in again] == [True, True]
    assert [row.entry for row in again] == [row.entry for row in rows]
    assert {path: path.read_bytes() for path in outputs.rglob(EVALUATION_FILE)} == files
    assert "already evaluated" in again[0].text() and "train error" in again[0].text()
    # Another split joins the same file; the training split's entry stays.
    test = evaluate_command(outputs, "test", "cpu")
    assert [row.entry["images"] for row in test] == [5, 5]
    run = rows[0]
    entry = stored(outputs / run.run)
    assert set(entry["splits"]) == {"train", "test"}
    assert entry["splits"]["train"] == run.entry
    checkpoint = outputs / run.run / CHECKPOINT
    assert entry["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


@pytest.mark.trains  # trains two tiny networks once per module
def test_a_checkpoint_evaluated_twice_gives_identical_numbers(outputs: Path):
    first = evaluate_command(outputs, "train", "cpu")
    for path in outputs.rglob(EVALUATION_FILE):
        path.unlink()
    second = evaluate_command(outputs, "train", "cpu")
    assert [row.cached for row in second] == [False, False]
    for one, two in zip(first, second, strict=True):
        assert (one.entry["error"], one.entry["loss"], one.entry["wrong"]) == (
            two.entry["error"], two.entry["loss"], two.entry["wrong"])


@pytest.mark.trains  # trains two tiny networks once per module
def test_another_checkpoint_is_evaluated_again(outputs: Path):
    evaluate_command(outputs, "train", "cpu")
    path = next(outputs.rglob(EVALUATION_FILE))
    kept = json.loads(path.read_text())
    write_json(path, {**kept, "sha256": "0" * 64})  # as if the run were retrained since
    rows = evaluate_command(outputs, "train", "cpu")
    assert sorted(row.cached for row in rows) == [False, True]
    assert json.loads(path.read_text())["sha256"] == kept["sha256"]


@pytest.mark.trains  # trains two tiny networks once per module
def test_runs_that_cannot_be_evaluated_say_why_in_their_row(outputs: Path):
    rows = evaluate_command(outputs, "val", "cpu")  # trained without data.val_split
    assert [row.entry for row in rows] == [None, None]
    assert "holds out no validation split (data.val_split=0)" in rows[0].text()
    result = degrade_here("evaluate", outputs, "--split", "val", "--device", "cpu")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no finished run under {outputs} could be evaluated on val"]
    assert len(result.stdout.strip().splitlines()) == 2


@pytest.mark.trains  # trains two tiny networks once per module
def test_degrade_evaluate_prints_one_row_per_run(outputs: Path):
    result = degrade_here("evaluate", outputs, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(" train error " in line for line in lines)
    assert lines[0].startswith("plain-8") and lines[0].endswith(
        next(outputs.rglob("plain-8/*")).relative_to(outputs).as_posix())


@pytest.mark.trains
@pytest.mark.parametrize(("args", "named"), [
    (["--split", "everything"], "--split 'everything' is not a split (allowed: train, test, "
                                "val)"),
    (["--device", "tpu9"], "--device 'tpu9' is not a device (allowed: auto, cpu, cuda)"),
])
def test_bad_input_is_one_line_and_writes_nothing(outputs: Path, args: list[str], named: str):
    result = degrade_here("evaluate", outputs, *args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {named}"]
    assert not list(outputs.rglob(EVALUATION_FILE))


def test_a_missing_folder_is_one_line(tmp_path: Path):
    result = degrade_here("evaluate", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'} does not exist"]


# --- the claims read it -----------------------------------------------------------------------


def finished_with_clean(root: Path, depth: int, seed: int, running: float, clean: float | None):
    """A finished plain net with a checkpoint file and, optionally, its clean training error."""
    overrides = {"arch": "plain", "depth": depth, "seed": seed}
    summary = make_summary(make_config(root, overrides), final_test_error=running + 8,
                           final_train_error=running)
    folder = write_run(root, overrides, summary=summary)
    (folder / CHECKPOINT).write_bytes(f"weights of plain-{depth} seed {seed}".encode())
    if clean is not None:
        write_json(folder / EVALUATION_FILE, {
            "checkpoint": CHECKPOINT, "sha256": file_sha256(folder / CHECKPOINT),
            "splits": {"train": {"error": clean, "loss": 0.1, "images": 50000}}})
    return folder


def test_claim_1_is_judged_on_the_clean_training_error_where_every_run_has_it(tmp_path: Path):
    # The running error says plain-56 is worse; the clean one says it is not (by far).
    folders = [finished_with_clean(tmp_path, depth, seed, running, clean)
               for depth, running, clean in ((20, 1.0, 3.0), (56, 6.0, 0.5)) for seed in (0, 1)]
    study = select_study(find_runs(tmp_path), tmp_path)
    claim = claims.judge(study)[0]
    assert claim.ours.startswith("clean training error (%): plain-56 0.50 < plain-20 3.00")
    assert claim.verdict == claims.NOT_REPRODUCED
    assert "measured on the clean training error" in claim.note
    assert clean_error(study.records[0], "train") in (3.0, 0.5)
    # One run without it: the running error for every run, and the note says how to measure.
    (folders[-1] / EVALUATION_FILE).unlink()
    claim = claims.judge(select_study(find_runs(tmp_path), tmp_path))[0]
    assert claim.ours.startswith("training error (%): plain-56 6.00 > plain-20 1.00")
    assert f"`degrade evaluate {tmp_path} --split train` measures the clean one" in claim.note
    # An evaluation of another checkpoint does not count.
    (folders[0] / CHECKPOINT).write_bytes(b"retrained")
    assert select_study(find_runs(tmp_path), tmp_path).finals[
        "clean_train_error"].isna().sum() == 2


@pytest.mark.slow
def test_evaluate_on_the_real_image_subset(tmp_path: Path):
    if not (SHARED_SUBSET / "cifar-10-batches-py").is_dir():
        pytest.skip(f"the real-image CIFAR-10 subset is not at {SHARED_SUBSET}")
    result = degrade_here("train", *tiny_overrides(SHARED_SUBSET, tmp_path, arch="plain",
                                                   **{"train.threads": 1}))
    assert result.exit_code == 0, result.stderr
    first = evaluate_command(tmp_path, "train", "cpu")
    assert first[0].entry["images"] == 3805 and 0 < first[0].entry["error"] < 100
    for path in tmp_path.rglob(EVALUATION_FILE):
        path.unlink()
    second = evaluate_command(tmp_path, "train", "cpu")
    assert second[0].entry["error"] == first[0].entry["error"]
    assert second[0].entry["loss"] == first[0].entry["loss"]
    assert evaluate_command(tmp_path, "test", "cpu")[0].entry["images"] == 761


@pytest.mark.trains  # trains two tiny networks once per module
def test_evaluate_hashes_each_checkpoint_once(outputs: Path, monkeypatch: pytest.MonkeyPatch):
    # A checkpoint can be large: `evaluate` reads its bytes once per run, also where
    # evaluation.json already holds the split.
    from degradation.analysis import evaluate, measurements

    hashed = []

    def counting(path: Path) -> str:
        hashed.append(Path(path).name)
        return file_sha256(path)

    for module in (evaluate, measurements):
        monkeypatch.setattr(module, "file_sha256", counting)
    evaluate_command(outputs, "train", "cpu")
    assert len(hashed) == 2  # two runs
    hashed.clear()
    assert [row.cached for row in evaluate_command(outputs, "train", "cpu")] == [True, True]
    assert len(hashed) == 2
