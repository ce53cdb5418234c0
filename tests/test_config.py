"""The composed configuration is the paper's recipe, and every preset composes."""

from __future__ import annotations

from pathlib import Path

import pytest

from degradation.config import ConfigError
from degradation.launch.compose import compose_config, expand, experiments


def test_defaults_are_the_papers_recipe() -> None:
    config = compose_config([])
    assert (config.arch, config.depth, config.shortcut) == ("resnet", 20, "A")
    train = config.train
    assert train.iterations == 64_000
    assert train.milestones == [32_000, 48_000]
    assert (train.lr, train.lr_decay, train.momentum) == (0.1, 0.1, 0.9)
    assert train.weight_decay == 1e-4
    assert train.batch_size == 128
    assert config.data.val_split == 0 and config.data.download is True


@pytest.mark.parametrize("depth, expected", [(20, False), (56, False), (110, True), (1202, True)])
def test_warmup_is_on_from_depth_110_unless_set(depth: int, expected: bool) -> None:
    assert compose_config([f"depth={depth}"]).warmup_enabled is expected
    assert compose_config([f"depth={depth}", "train.warmup=false"]).warmup_enabled is False


def test_every_preset_composes() -> None:
    assert {"smoke", "fig6", "table6", "shortcuts", "resnet1202", "demo"} <= set(experiments())
    for name in experiments():
        compose_config([f"experiment={name}"])


def test_presets_expand_to_the_papers_grids() -> None:
    fig6 = [dict(item.split("=") for item in job) for job in expand(["experiment=fig6"])]
    assert {(job["arch"], job["depth"]) for job in fig6} == {
        (arch, depth) for arch in ("plain", "resnet") for depth in ("20", "32", "44", "56", "110")
    }
    table6 = expand(["experiment=table6"])
    assert len(table6) == 25
    assert all("arch=resnet" in job for job in table6)


def test_command_line_narrows_a_presets_sweep() -> None:
    jobs = expand(["experiment=fig6", "depth=20"])
    assert sorted(tuple(sorted(job)) for job in jobs) == [
        ("arch=plain", "depth=20", "experiment=fig6"),
        ("arch=resnet", "depth=20", "experiment=fig6"),
    ]


def test_resnet1202_preset_has_no_warmup() -> None:
    config = compose_config(["experiment=resnet1202"])
    assert config.depth == 1202 and config.warmup_enabled is False


@pytest.mark.parametrize("override, fragment", [
    ("depth=21", "depth=21"),
    ("depth=abc", "depth='abc' is not an integer"),
    ("arch=foo", "arch='foo'"),
    ("shortcut=D", "shortcut='D'"),
    ("nope=1", "unknown config key 'nope'"),
    ("experiment=nope", "experiment='nope' is not one of"),
    ("train.milestones=[48000,32000]", "strictly increasing"),
    ("train.milestones=[32000,64000]", "must lie between"),
    ("train.lr=0", "train.lr=0.0 must be > 0"),
    ("device=tpu", "device='tpu'"),
])
def test_bad_values_are_refused_in_one_line(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compose_config([override])
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_milestones_beyond_the_iterations_suggest_the_papers_proportions() -> None:
    with pytest.raises(ConfigError) as caught:
        compose_config(["train.iterations=2000"])  # the default milestones are 32k and 48k
    assert str(caught.value).endswith("did you mean 'train.milestones=[1000,1500]'?")
    # The suggestion itself is accepted.
    assert compose_config(["train.iterations=2000", "train.milestones=[1000,1500]"])


def test_quick_preset_is_plain_and_resnet_at_20_and_56_on_a_short_schedule() -> None:
    jobs = [dict(item.split("=") for item in job) for job in expand(["experiment=quick"])]
    assert {(job["arch"], job["depth"]) for job in jobs} == {
        (arch, depth) for arch in ("plain", "resnet") for depth in ("20", "56")}
    train = compose_config(["experiment=quick"]).train
    # The paper's proportions: lr divided at 1/2 and 3/4 of the schedule (32k, 48k of 64k).
    assert train.milestones == [train.iterations // 2, train.iterations * 3 // 4]
    assert train.iterations < 64000 and train.batch_size == 128


def test_each_device_refusal_is_worded_in_config_alone() -> None:
    # The planner, the device and the DDP launcher refuse with config's words, not copies.
    root = Path(__file__).resolve().parents[1] / "degradation"
    for words in ("no CUDA device is available", "needs a CUDA device",
                  "SyncBatchNorm has no CPU kernel"):
        holders = [source.relative_to(root).as_posix() for source in root.rglob("*.py")
                   if words in source.read_text(encoding="utf-8")]
        assert holders == ["config.py"], words


def test_a_plain_net_has_no_shortcut_whatever_the_key_says() -> None:
    import re

    assert compose_config(["arch=plain", "shortcut=B"]).network_shortcut is None
    assert compose_config(["arch=resnet", "shortcut=B"]).network_shortcut == "B"
    # Decided there alone: the folders, summaries, responses and HParams ask the config.
    root = Path(__file__).resolve().parents[1] / "degradation"
    deciding = [source.name for source in root.rglob("*.py")
                if re.search(r'\w\.arch == "plain" (else|or) .*shortcut',
                             source.read_text(encoding="utf-8"))]
    assert deciding == ["config.py"]
