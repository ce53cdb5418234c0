"""Run identity (one folder per distinct run) and run discovery."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import yaml

from degradation.data.cifar import write_cifar10
from degradation.launch.compose import compose_config
from degradation.runs import (
    CONFIG_FILE,
    NOT_IDENTITY,
    SUMMARY_FILE,
    find_runs,
    identity,
    run_dir,
    run_path,
)
from degradation.storage import read_json
from tests.conftest import degrade_here, tiny_overrides


@pytest.fixture(scope="module")
def base() -> list[str]:
    return ["depth=20", "arch=resnet", "seed=0"]


@functools.cache
def path_of(*overrides: str) -> str:
    return run_path(compose_config(list(overrides)))


def test_same_configuration_same_folder(base: list[str]) -> None:
    assert path_of(*base) == path_of(*reversed(base))
    assert path_of(*base).startswith("resnet-20-A/seed-0-")


@pytest.mark.parametrize("change", [
    "seed=1", "depth=56", "arch=plain", "shortcut=B", "train.lr=0.05", "train.iterations=1000",
    "train.milestones=[500,750]", "train.batch_size=64", "train.momentum=0.8",
    "train.weight_decay=0.0005", "train.warmup=true", "data.val_split=5000",
    "train.eval_every=500", "train.lr_decay=0.2", "train.precision=bf16",
])
def test_every_identity_setting_gives_a_new_folder(base: list[str], change: str) -> None:
    # Milestones must stay below the iterations they are checked against.
    extra = ["train.milestones=[100,200]"] if change == "train.iterations=1000" else []
    assert path_of(*base, change, *extra) != path_of(*base)


@pytest.mark.parametrize("change", [
    "device=cpu", "data.root=/elsewhere", "data.download=false", "train.eval_batch_size=50",
    "train.threads=3", "train.compile=false", "train.channels_last=false",
])
def test_where_and_how_settings_keep_the_folder(base: list[str], change: str) -> None:
    assert path_of(*base, change) == path_of(*base)


def test_the_data_is_part_of_the_identity(base: list[str], tmp_path: Path) -> None:
    roots = {name: write_cifar10(tmp_path / name, 8, 4, seed=seed)
             for name, seed in (("a", 0), ("copy-of-a", 0), ("b", 1))}
    paths = {name: path_of(*base, f"data.root={root}") for name, root in roots.items()}
    assert paths["a"] == paths["copy-of-a"]  # where the data lies is not what it is
    assert paths["a"] != paths["b"]
    # Data not there yet is what a download brings: the official set, wherever it will lie.
    assert path_of(*base, f"data.root={tmp_path / 'none'}") == path_of(*base)
    assert path_of(*base) not in paths.values()


@pytest.mark.slow
def test_other_data_in_the_same_settings_trains_rather_than_answering_finished(
        cifar_root: Path, tmp_path: Path) -> None:
    other = write_cifar10(tmp_path / "other", 40, 60, seed=1)
    outputs = tmp_path / "outputs"
    for root in (cifar_root, other):
        result = degrade_here("train", *map(str, tiny_overrides(
            root, outputs, **{"train.threads": 1})))
        assert result.exit_code == 0, result.output
        assert "already finished" not in result.output
    summaries = [read_json(path) for path in sorted(outputs.rglob(SUMMARY_FILE))]
    assert len(summaries) == 2
    assert len({summary["data_fingerprint"] for summary in summaries}) == 2
    assert {summary["data"] for summary in summaries} == {"generated, 200 training images"}


def test_output_dir_moves_the_tree_not_the_run(base: list[str], tmp_path: Path) -> None:
    here, there = (compose_config([*base, f"output_dir={tmp_path / name}"]) for name in "ab")
    assert run_dir(here) == tmp_path / "a" / "runs" / run_path(here)
    assert run_path(here) == run_path(there)


def test_plain_nets_have_no_shortcut_option() -> None:
    plain = {path_of("arch=plain", f"shortcut={option}") for option in "ABC"}
    resnet = {path_of("arch=resnet", f"shortcut={option}") for option in "ABC"}
    assert len(plain) == 1 and next(iter(plain)).startswith("plain-20/seed-0-")
    assert len(resnet) == 3


# What decides a run's result. A key added to conf/config.yaml lands here (and changes every
# run's folder) unless runs.NOT_IDENTITY lists it: this test makes that a decision.
IDENTITY_KEYS = {
    "arch", "depth", "shortcut", "seed", "data.val_split", "train.iterations",
    "train.batch_size", "train.lr", "train.momentum", "train.weight_decay", "train.milestones",
    "train.lr_decay", "train.warmup", "train.warmup_lr", "train.warmup_until_error",
    "train.log_every", "train.eval_every", "train.precision",
}


def test_identity_is_exactly_the_settings_that_decide_the_result() -> None:
    config = compose_config([])
    assert set(identity(config)) == IDENTITY_KEYS, (
        "a config key is neither identity nor in runs.NOT_IDENTITY: decide which")
    assert not IDENTITY_KEYS & set(NOT_IDENTITY)


def write_config(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(compose_config([]).to_dict()))


def test_find_runs_skips_hydra_copies_and_replaced_runs(tmp_path: Path) -> None:
    write_config(tmp_path / "runs" / "resnet-20-A" / "seed-0-aaaaaaaa")
    write_config(tmp_path / "runs" / "resnet-20-A" / "seed-0-aaaaaaaa.replaced-20250101-000000")
    write_config(tmp_path / "runs" / "resnet-20-A" / "seed-0-aaaaaaaa" / ".hydra")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / CONFIG_FILE).write_text("not: a run\n")
    assert [record.path.name for record in find_runs(tmp_path)] == ["seed-0-aaaaaaaa"]


@pytest.fixture
def two_depths(tmp_path: Path) -> list[Path]:
    """Finished ResNet-8 and ResNet-20 runs (seeds 0 and 1), whose summaries name their data."""
    from degradation.data.fingerprint import official_fingerprint
    from tests.analysis_fixtures import write_study

    folders = write_study(tmp_path / "outputs", depths=(8, 20), archs=("resnet",),
                          seeds=(0, 1), iterations=4000)
    for folder in folders:  # as training writes them: with the data's fingerprint
        summary = read_json(folder / SUMMARY_FILE)
        summary["data_fingerprint"] = official_fingerprint(0).digest
        (folder / SUMMARY_FILE).write_text(json.dumps(summary))
    return folders


def left_out(result, folder: Path, reason: str) -> None:
    """`result` names `folder` as inconsistent, for `reason`, in its one warning line."""
    assert result.exit_code == 0, result.stderr
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(f"warning: {folder} is inconsistent (its "), warning
    assert reason in warning and warning.endswith("; that run is left out"), warning


@pytest.mark.parametrize("edit, reason", [
    (lambda folder, _: sed(folder / CONFIG_FILE, "depth: 8", "depth: 20"),
     "its folder is resnet-8-A, its config.yaml describes resnet-20-A"),
    (lambda folder, _: sed(folder / CONFIG_FILE, "lr: 0.1", "lr: 0.2"),
     "its config.yaml's settings and data hash to "),
    (lambda folder, others: shutil.copy(others["resnet-20-A", 0] / SUMMARY_FILE, folder),
     "its summary.json has depth=20, its config.yaml depth=8"),
    (lambda folder, others: shutil.copy(others["resnet-8-A", 1] / SUMMARY_FILE, folder),
     "its summary.json has seed=1, its config.yaml seed=0"),
], ids=["depth in config.yaml", "lr in config.yaml", "summary of another depth",
        "summary of another seed"])
def test_a_run_whose_files_disagree_is_set_apart(two_depths: list[Path], edit, reason: str
                                                 ) -> None:
    runs = {(folder.parent.name, int(folder.name.split("-")[1])): folder
            for folder in two_depths}
    outputs = two_depths[0].parents[2]
    edited = runs["resnet-8-A", 0]
    edit(edited, runs)
    table = degrade_here("table", outputs)
    left_out(table, edited, reason)
    rows = {line.split("|")[1].strip(): line for line in table.stdout.splitlines()
            if line.startswith("| ResNet-")}
    assert "2 done" in rows["ResNet-20"] and "1 done" in rows["ResNet-8"], table.stdout
    export = degrade_here("export", outputs / "points.csv", "--from", outputs)
    left_out(export, edited, reason)
    assert str(edited.relative_to(outputs)) not in (outputs / "points.csv").read_text()
    status = degrade_here("status", outputs)
    assert status.exit_code == 0 and status.stderr == ""
    (line,) = [line for line in status.stdout.splitlines() if str(edited) in line]
    assert " inconsistent " in line and f"  inconsistent ({reason}" in line
    assert status.stdout.strip().endswith("4 runs: 3 done, 1 inconsistent")


def sed(path: Path, old: str, new: str) -> None:
    """`sed -i 's/^old/new/' path`: one setting edited by hand."""
    text = path.read_text()
    assert f"\n  {old}\n" in text or f"\n{old}\n" in text, (old, text)
    path.write_text(text.replace(f"\n{old}\n", f"\n{new}\n").replace(f"\n  {old}\n",
                                                                      f"\n  {new}\n"))


def test_an_unfinished_run_is_described_and_checked_by_the_data_under_its_root(
        tmp_path: Path) -> None:
    from degradation.data.cifar import BATCH_DIR
    from degradation.runs import data_description, read_run
    from tests.analysis_fixtures import write_run

    data = tmp_path / "data"
    write_cifar10(data, 10, 10, 0)
    folder = write_run(tmp_path / "outputs", {"data.root": str(data)})  # no summary.json yet
    record = read_run(folder)
    assert data_description(record) == "generated, 50 training images"
    assert record.inconsistency is None  # its folder's hash is that of this data
    (data / BATCH_DIR / "data_batch_2").unlink()  # unreadable now: unknown, not a mismatch
    record = read_run(folder)
    assert (data_description(record), record.inconsistency) == (None, None)
    shutil.rmtree(data)
    record = read_run(folder)
    assert (data_description(record), record.inconsistency) == (None, None)
