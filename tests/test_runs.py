"""Run identity (one folder per distinct run) and run discovery."""

from __future__ import annotations

import functools
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
