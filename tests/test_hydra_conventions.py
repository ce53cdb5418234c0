"""Hydra's conventions through `degrade`: its inspection flags, a user's presets, its records."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from degradation.completion import complete_override
from degradation.config import ConfigError
from degradation.launch.compose import compose_config, expand, show_config
from degradation.launch.plan import plan
from tests.conftest import degrade_here, tiny_overrides
from tests.test_cli import degrade

PRESET = "# @package _global_\narch: plain\ndepth: 8\n"


def test_cfg_job_is_the_run_config_without_hydra() -> None:
    shown = yaml.safe_load(show_config(["depth=32"], "job"))
    assert shown["depth"] == 32 and shown["arch"] == "resnet" and "hydra" not in shown


def test_cfg_hydra_resolved_names_the_run_folder() -> None:
    # Hydra's own `--cfg hydra --resolve` fails here: hydra.run.dir refers to job keys.
    shown = yaml.safe_load(show_config(["depth=32", "output_dir=out"], "hydra", resolve=True))
    assert set(shown) == {"hydra"}
    assert shown["hydra"]["run"]["dir"].startswith("out/runs/resnet-32-A/seed-0-")
    assert "help" not in shown["hydra"]


def test_cfg_package_prints_one_part() -> None:
    assert show_config([], "job", package="train").startswith("# @package train\n")
    assert show_config(["depth=56"], "all", package="depth") == "56\n"
    with pytest.raises(ConfigError, match="--package 'nope' is not in the config"):
        show_config([], "job", package="nope")


@pytest.mark.parametrize(("override", "listed"), [
    ("hydra/launcher=nope", "hydra/launcher='nope' is not one of: basic, local, slurm"),
    ("hydra/sweeper=nope", "hydra/sweeper='nope' is not one of: basic, degrade"),
    ("experiment=nope", "experiment='nope' is not one of: demo, fig6"),
])
def test_unknown_group_value_lists_what_is_available(override: str, listed: str) -> None:
    with pytest.raises(ConfigError) as refused:
        compose_config([override])
    assert listed in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        expand([override, "depth=20,56"])  # a sweep composes Hydra's node too
    assert listed in str(refused.value)


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir"])
def test_run_folder_overrides_are_refused_pointing_at_output_dir(key: str) -> None:
    for sweep in (False, True):
        with pytest.raises(ConfigError, match=rf"^{key} cannot be set: .* set output_dir=DIR"):
            plan([f"{key}=/tmp/elsewhere"], sweep=sweep)


def test_a_users_config_dir_adds_presets(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(PRESET)
    config = compose_config(["experiment=mine"], config_dir=tmp_path)
    assert (config.arch, config.depth) == ("plain", 8)
    (tmp_path / "experiment").mkdir()  # Hydra's own layout: DIR/GROUP/NAME.yaml
    (tmp_path / "experiment" / "theirs.yaml").write_text(PRESET.replace("8", "14"))
    assert compose_config(["experiment=theirs"], config_dir=tmp_path).depth == 14
    with pytest.raises(ConfigError, match="experiment='mine' is not one of"):
        compose_config(["experiment=mine"])


def test_completion_lists_keys_and_preset_names(tmp_path: Path) -> None:
    context = SimpleNamespace(params={})
    assert complete_override(context, "experiment=f") == ["experiment=fig6"]
    assert {"train.lr=", "train.lr_decay="} <= set(complete_override(context, "train.lr"))
    assert "data.root=" in complete_override(context, "")
    assert "hydra/launcher=local" in complete_override(context, "hydra/launcher=")
    (tmp_path / "mine.yaml").write_text(PRESET)
    mine = SimpleNamespace(params={"config_dir": tmp_path})
    assert complete_override(mine, "experiment=m") == ["experiment=mine"]
    bash = SimpleNamespace(params={"overrides": ["depth=8", "experiment", "="]})
    assert complete_override(bash, "f") == ["fig6"]  # bash splits words at `=`


def test_version_names_version_and_commit() -> None:
    result = degrade_here("--version")
    assert result.exit_code == 0
    assert result.output.startswith("degrade 0.") and "(commit " in result.output


@pytest.mark.slow
def test_cfg_and_info_reach_the_command_line(tmp_path: Path) -> None:
    shown = degrade("train", "--cfg", "job", "depth=32")
    assert shown.returncode == 0, shown.stderr
    assert "depth: 32" in shown.stdout and "arch: resnet" in shown.stdout
    swept = degrade("sweep", "--cfg", "job", "--package", "depth", "depth=8,14")
    assert swept.returncode == 0, swept.stderr
    assert swept.stdout.split() == ["8", "---", "14"]
    info = degrade("train", "--info")
    assert info.returncode == 0, info.stderr
    assert "Installed Hydra Plugins" in info.stdout and "Config search path" in info.stdout
    searchpath = degrade("sweep", "--info", "searchpath", "--config-dir", tmp_path, "depth=8,14")
    assert searchpath.returncode == 0, searchpath.stderr
    assert f"file://{tmp_path}" in searchpath.stdout
    refused = degrade("train", "hydra.run.dir=/tmp/elsewhere")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: hydra.run.dir cannot be set: a run's folder is output_dir/runs/<network>/"
        "seed-<seed>-<hash>/, so set output_dir=DIR instead"]
    assert "--install-completion" in degrade("--help").stdout


@pytest.mark.slow
def test_sweep_with_a_users_preset_records_multirun_yaml(small_cifar_root: Path, tmp_path: Path
                                                         ) -> None:
    presets = tmp_path / "my_experiments"
    presets.mkdir()
    (presets / "mine.yaml").write_text(PRESET)
    output = tmp_path / "outputs"
    overrides = tiny_overrides(small_cifar_root, output, **{
        "train.iterations": 2, "train.milestones": "[1]", "train.log_every": 1,
        "train.eval_every": 2, "train.compile": "false"})[2:]  # arch, depth: from the preset
    result = degrade("sweep", "--config-dir", presets, "experiment=mine", *overrides,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((output / "runs" / "plain-8").glob("seed-0-*/summary.json"))) == 1
    record = yaml.safe_load((output / "multirun.yaml").read_text())
    assert "experiment=mine" in record["hydra"]["overrides"]["task"]
    assert record["hydra"]["mode"] == "MULTIRUN"


@pytest.mark.parametrize("flag", ["--resolve", "--package=train"])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_resolve_and_package_without_cfg_are_refused_as_hydra_does(
        command: str, flag: str, tmp_path: Path) -> None:
    from tests.test_bad_input import assert_refused

    result = degrade_here(command, flag, *tiny_overrides(tmp_path / "data", tmp_path / "out"))
    assert_refused(result, flag.split("=")[0], "--cfg", code=2)
    assert sorted(tmp_path.iterdir()) == []  # nothing started, nothing downloaded


def test_show_config_needs_no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no data/ here, and the smoke preset may not download
    result = degrade_here("train", "--show-config", "experiment=smoke", "depth=32")
    assert result.exit_code == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["depth"] == 32 and shown["data"]["download"] is False
    assert list(tmp_path.iterdir()) == []


def test_slurm_launcher_without_its_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from hydra.core.config_store import ConfigStore

    from degradation.launch.compose import register
    from tests.test_bad_input import assert_refused

    register()
    # What Hydra holds when hydra-submitit-launcher is not installed: no submitit configs.
    launchers = ConfigStore.instance().repo["hydra"]["launcher"]
    for name in [name for name in launchers if name.startswith("submitit_")]:
        monkeypatch.delitem(launchers, name)
    for launcher in ("slurm", "slurm_local"):
        result = degrade_here("sweep", "--dry-run", f"hydra/launcher={launcher}", "depth=8,14")
        assert_refused(result, "hydra-submitit-launcher", "pip install 'degrade[slurm]'",
                       code=2)


def test_completion_offers_no_key_that_degrade_refuses() -> None:
    offered = complete_override(SimpleNamespace(params={}), "")
    assert "defaults=" not in offered and not [key for key in offered if key.startswith("hydra.")]
    assert complete_override(SimpleNamespace(params={}), "d") == [
        "depth=", "device=", "data.root=", "data.download=", "data.val_split="]
