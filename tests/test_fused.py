"""Fused runs: each member trains, logs, checkpoints and ends exactly as its lone run would.

The vmapped network computes each member's convolutions as one grouped convolution, which
sums in another order than the lone model: results agree to float rounding, which SGD at
lr 0.1 amplifies over a run. Lone runs here use contiguous layouts as the fused network does
(`train.channels_last=false`: channels_last alone moves results by as much, test_bench.py)
and one thread, so that a resumed run repeats the same arithmetic.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from degradation.config import Config
from degradation.data.cifar import load_cifar10
from degradation.data.stream import TrainBatches
from degradation.errors import Interrupted
from degradation.launch.compose import compose_config
from degradation.runs import (
    CHECKPOINT,
    CONFIG_FILE,
    GRAD_NORMS_FILE,
    METRICS_FILE,
    PREVIOUS_CHECKPOINT,
    SUMMARY_FILE,
    find_runs,
    run_dir,
    run_path,
)
from degradation.storage import LOCK, read_json
from degradation.training.device import build_network, resolve_speed, seed_everything
from degradation.training.fused import build_fused
from degradation.training.loop import train, train_all
from degradation.training.step import train_step
from tests.conftest import assert_close_in_norm, degrade_here, scalars, tiny_overrides

CPU = torch.device("cpu")
SEEDS = (0, 1)
SAME = {"train.channels_last": "false", "train.threads": 1}
STEP_ATOL = 1e-5  # three steps from initialisation: losses and weights measured within 4e-7
# Three steps from a checkpoint of iteration 9, alone and fused: weights and momentum
# measured within 8e-7 of a tensor's norm with AVX2 kernels, 7e-5 with AVX-512 ones (an
# element of a momentum buffer 5e-5 apart, 5% of itself), so they are compared in norm.
STEP_RTOL = 1e-3
# A whole run of 12 iterations at lr 0.1 amplifies that rounding by as much as the training
# happens to, and by how much depends on the CPU's kernels: seed 1's weights and momentum
# end up to 1.5e-2 of a tensor's norm from its lone run's with AVX-512 kernels, 1e-3 with
# AVX2 ones (another seed's run is 1-2 norms away), its logged losses 7e-4 and 8e-6
# relative. So whole runs are compared in norm (`assert_close_in_norm`), with room for
# other kernels; and exactly where they must agree: data stream, schedule, what is logged.
RUN_RTOL = 0.1
LOSS_RTOL = 1e-2
ONE_IMAGE = 100 / 16 + 1e-9  # an error may move by one image of a batch of 16


def config(cifar_root: Path, output: Path, seed: int = 0, **extra: object) -> Config:
    return compose_config(tiny_overrides(cifar_root, output, seed=seed, **SAME, **extra))


def fused(cifar_root: Path, output: Path, seeds: tuple[int, ...] = SEEDS, **extra: object
          ) -> Config:
    others = ",".join(map(str, seeds[1:]))
    return config(cifar_root, output, seeds[0], **{"trainer.fuse_with": f"[{others}]"}, **extra)


def checkpoint(folder: Path, name: str = CHECKPOINT) -> dict[str, Any]:
    return torch.load(folder / name, map_location="cpu", weights_only=False)


def metrics(folder: Path) -> list[dict[str, str]]:
    with (folder / METRICS_FILE).open() as file:
        return list(csv.DictReader(file))


def assert_same_metrics(ours: Path, theirs: Path) -> None:
    """The same rows, tags and iterations; values equal up to rounding (errors: one image)."""
    rows, expected = metrics(ours), metrics(theirs)
    assert [row["iteration"] for row in rows] == [row["iteration"] for row in expected]
    for row, other in zip(rows, expected, strict=True):
        assert [tag for tag in row if row[tag]] == [tag for tag in other if other[tag]]
        for tag in (tag for tag in row if row[tag] and tag != "iteration"):
            tolerance = {"abs": ONE_IMAGE} if tag.startswith("error") else {"rel": LOSS_RTOL}
            assert float(row[tag]) == pytest.approx(float(other[tag]), **tolerance), tag


def assert_same_weights(ours: dict[str, Any], theirs: dict[str, Any], rtol: float,
                        atol: float) -> None:
    """Model and momentum buffers of two checkpoints, key by key, within the tolerance."""
    assert list(ours["model"]) == list(theirs["model"])
    for key, tensor in theirs["model"].items():
        torch.testing.assert_close(ours["model"][key], tensor, rtol=rtol, atol=atol, msg=key)
    assert ours["optimizer"]["state"].keys() == theirs["optimizer"]["state"].keys()
    for number, state in theirs["optimizer"]["state"].items():
        torch.testing.assert_close(ours["optimizer"]["state"][number]["momentum_buffer"],
                                   state["momentum_buffer"], rtol=rtol, atol=atol)


def assert_close_runs(ours: dict[str, Any], theirs: dict[str, Any], rtol: float = RUN_RTOL
                      ) -> None:
    """Two checkpoints that differ by rounding only: weights, BN statistics and momentum
    within `rtol` in norm, counts equal."""
    def tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {**state["model"], **{f"momentum {number}": saved["momentum_buffer"]
                                     for number, saved in state["optimizer"]["state"].items()}}

    assert_close_in_norm(tensors(ours), tensors(theirs), rtol)


@pytest.fixture(scope="module")
def reference(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, dict[int, Path]]:
    """Seeds 0 and 1 trained fused, and each alone: their run folders by seed."""
    output = tmp_path_factory.mktemp("reference")
    together = train_all(fused(cifar_root, output / "fused"))
    alone = [train(config(cifar_root, output / "lone", seed)) for seed in SEEDS]
    assert [run.status for run in together + alone] == ["done"] * 4
    return {"fused": {run.summary["seed"]: run.run_dir for run in together},
            "lone": {run.summary["seed"]: run.run_dir for run in alone}}


def test_each_member_starts_from_the_weights_of_its_lone_run(cifar_root: Path,
                                                              tmp_path: Path) -> None:
    configs = [config(cifar_root, tmp_path, seed) for seed in (0, 5)]
    speed = resolve_speed(configs[0].train, CPU)
    network = build_fused(configs, CPU, speed)
    assert network.size == 2
    for index, member in enumerate(configs):
        seed_everything(member.seed)
        model, optimizer = build_network(member, CPU, speed)
        state = network.member_state_dict(index)
        assert list(state) == list(model.state_dict())
        for key, tensor in model.state_dict().items():
            assert torch.equal(state[key], tensor), key
        assert network.member_optimizer_state_dict(index) == optimizer.state_dict()
    assert not torch.equal(network.member_state_dict(0)["fc.weight"],
                           network.member_state_dict(1)["fc.weight"])


@pytest.mark.numerics
def test_fused_steps_are_each_members_lone_steps(cifar_root: Path, tmp_path: Path) -> None:
    configs = [config(cifar_root, tmp_path, seed) for seed in (0, 5)]
    recipe, speed = configs[0].train, resolve_speed(configs[0].train, CPU)
    splits = load_cifar10(cifar_root, download=False)

    def stream(seed: int) -> TrainBatches:
        return TrainBatches(splits.train_images, splits.train_labels, splits.mean,
                            recipe.batch_size, seed, CPU)

    network = build_fused(configs, CPU, speed)
    streams = [stream(member.seed) for member in configs]
    fused_losses = []
    for _ in range(3):
        images, labels = network.stack([next(batches) for batches in streams])
        loss, wrong = train_step(network, network.optimizer, images, labels, recipe.lr,
                                 "fp32", network.memory_format)
        assert loss.shape == wrong.shape == (2,)
        fused_losses.append(loss)
    for index, member in enumerate(configs):
        seed_everything(member.seed)
        model, optimizer = build_network(member, CPU, speed)
        batches = stream(member.seed)
        for step in range(3):
            loss, _ = train_step(model, optimizer, *next(batches), recipe.lr, "fp32",
                                 speed.memory_format)
            torch.testing.assert_close(fused_losses[step][index], loss, rtol=0, atol=STEP_ATOL)
        ours = {"model": network.member_state_dict(index),
                "optimizer": network.member_optimizer_state_dict(index)}
        theirs = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        # BN running variances are ~1e4 here (inputs are only mean-subtracted): relative.
        assert_same_weights(ours, theirs, rtol=1e-5, atol=STEP_ATOL)
        assert ours["model"]["stem.bn.num_batches_tracked"] == 3


@pytest.mark.numerics
def test_a_fused_member_writes_what_its_lone_run_writes(reference: dict[str, dict[int, Path]]
                                                        ) -> None:
    timing = {"wall_time_s", "finished_at"}
    for seed in SEEDS:
        ours, theirs = reference["fused"][seed], reference["lone"][seed]
        assert ours.relative_to(ours.parents[2]) == theirs.relative_to(theirs.parents[2])
        written = yaml.safe_load((ours / CONFIG_FILE).read_text())
        assert written["seed"] == seed
        assert written["trainer"]["fuse_with"] == [other for other in SEEDS if other != seed]
        assert_same_metrics(ours, theirs)
        logged, expected = scalars(ours), scalars(theirs)
        assert {tag: [step for step, _ in points] for tag, points in logged.items()} == {
            tag: [step for step, _ in points] for tag, points in expected.items()}
        summary, lone = read_json(ours / SUMMARY_FILE), read_json(theirs / SUMMARY_FILE)
        assert summary.keys() == lone.keys() | {"fused_with"}
        assert summary["fused_with"] == [other for other in SEEDS if other != seed]
        assert summary["seed"] == seed and summary["status"] == "done"
        same = {key for key in lone if key not in timing and not key.startswith(("final",
                                                                                 "best"))}
        assert {key: summary[key] for key in same} == {key: lone[key] for key in same}
        mine, yours = checkpoint(ours), checkpoint(theirs)
        assert mine.keys() == yours.keys() and mine["iteration"] == 12
        assert mine["optimizer"]["param_groups"] == yours["optimizer"]["param_groups"]
        assert torch.equal(mine["rng"]["torch"], yours["rng"]["torch"])
        assert mine["batches"]["step"] == yours["batches"]["step"]
        assert torch.equal(mine["batches"]["generator"], yours["batches"]["generator"])
        assert_close_runs(mine, yours)
        assert not (ours / LOCK).exists()
    with pytest.raises(AssertionError):  # the tolerance tells one seed's run from another's
        assert_close_runs(checkpoint(reference["fused"][0]), checkpoint(reference["lone"][1]))


@pytest.fixture
def stop_at_step(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    """`stop_at_step(n)`: SIGTERM arrives just before the n-th optimizer update, as SLURM's
    notice would (the handler records it; the loop checkpoints after that step and stops)."""
    handles = []

    def arrange(count: int) -> None:
        calls = []

        def before_step(*_: object) -> None:
            calls.append(1)
            if len(calls) == count:
                os.kill(os.getpid(), signal.SIGTERM)

        handles.append(register_optimizer_step_pre_hook(before_step))

    yield arrange
    for handle in handles:
        handle.remove()


@pytest.mark.numerics
def test_an_interrupted_fused_training_resumes_fused_or_alone(
        reference: dict[str, dict[int, Path]], cifar_root: Path, tmp_path: Path,
        stop_at_step: Callable[[int], None], caplog: pytest.LogCaptureFixture) -> None:
    stop_at_step(9)
    with pytest.raises(Interrupted, match="stopped by SIGTERM at iteration 9"):
        train_all(fused(cifar_root, tmp_path / "fused"))
    stopped = {seed: run_dir(config(cifar_root, tmp_path / "fused", seed)) for seed in SEEDS}
    for folder in stopped.values():
        assert checkpoint(folder)["iteration"] == 9
        assert not (folder / SUMMARY_FILE).exists() and not (folder / LOCK).exists()
    # Seed 1's checkpoint, in a folder of its own, resumed by a plain lone run.
    alone = config(cifar_root, tmp_path / "alone", 1)
    shutil.copytree(stopped[1], run_dir(alone))
    with caplog.at_level(logging.INFO, logger="degrade"):
        outcome = train(alone)
    assert outcome.status == "done" and "fused_with" not in outcome.summary
    assert "resumed from iteration 9" in caplog.text
    assert_same_metrics(outcome.run_dir, reference["lone"][1])
    assert_close_runs(checkpoint(outcome.run_dir), checkpoint(reference["lone"][1]))
    # Both resumed fused: the uninterrupted fused run's result.
    outcomes = train_all(fused(cifar_root, tmp_path / "fused"))
    assert [run.status for run in outcomes] == ["done", "done"]
    for seed, folder in stopped.items():
        assert_same_metrics(folder, reference["fused"][seed])
        assert_same_weights(checkpoint(folder), checkpoint(reference["fused"][seed]),
                            rtol=1e-5, atol=1e-6)
        assert read_json(folder / SUMMARY_FILE)["iterations_done"] == 12
    # From one checkpoint, the last 3 steps alone and fused differ by a few steps' rounding.
    assert_close_runs(checkpoint(outcome.run_dir), checkpoint(stopped[1]), rtol=STEP_RTOL)


@pytest.mark.numerics
def test_lone_checkpoints_resume_fused(reference: dict[str, dict[int, Path]],
                                       cifar_root: Path, tmp_path: Path) -> None:
    for seed in SEEDS:  # each lone run as it stood at its checkpoint of iteration 6
        folder = run_dir(config(cifar_root, tmp_path, seed))
        shutil.copytree(reference["lone"][seed], folder)
        (folder / SUMMARY_FILE).unlink()
        (folder / PREVIOUS_CHECKPOINT).replace(folder / CHECKPOINT)
    outcomes = train_all(fused(cifar_root, tmp_path))
    for seed, outcome in zip(SEEDS, outcomes, strict=True):
        assert outcome.status == "done" and outcome.summary["fused_with"] == [1 - seed]
        assert_same_metrics(outcome.run_dir, reference["lone"][seed])
        assert_close_runs(checkpoint(outcome.run_dir), checkpoint(reference["lone"][seed]))


@pytest.mark.numerics
def test_a_diverged_member_ends_alone_and_the_others_train_on(
        reference: dict[str, dict[int, Path]], cifar_root: Path, tmp_path: Path) -> None:
    calls = []

    def poison_the_first_member(optimizer: torch.optim.Optimizer, *_: object) -> None:
        calls.append(1)
        if len(calls) == 4:  # after the 4th update: its loss is NaN from step 5
            with torch.no_grad():
                for param in optimizer.param_groups[0]["params"]:
                    param[0] = float("nan")

    handle = register_optimizer_step_post_hook(poison_the_first_member)
    try:
        outcomes = train_all(fused(cifar_root, tmp_path))
    finally:
        handle.remove()
    first, second = outcomes
    assert first.status == "diverged" and second.status == "done"
    assert first.summary["diverged"]["iteration"] == 6 == first.summary["iterations_done"]
    assert first.summary["fused_with"] == [1]
    assert "nan" not in (first.run_dir / METRICS_FILE).read_text()
    assert max(int(row["iteration"]) for row in metrics(first.run_dir)) == 4
    assert not (first.run_dir / CHECKPOINT).exists()  # it diverged before the first one
    # The other member computed alone from iteration 6 on: the same run as with its partner.
    assert_same_metrics(second.run_dir, reference["fused"][1])
    assert_close_runs(checkpoint(second.run_dir), checkpoint(reference["fused"][1]))


def test_finished_members_are_skipped_and_the_rest_trained(
        reference: dict[str, dict[int, Path]], cifar_root: Path) -> None:
    output = reference["fused"][0].parents[2]
    before = {seed: (folder / CHECKPOINT).stat().st_mtime_ns
              for seed, folder in reference["fused"].items()}
    outcomes = train_all(fused(cifar_root, output, (0, 1, 2)))
    assert [run.status for run in outcomes] == ["skipped", "skipped", "done"]
    assert {seed: (folder / CHECKPOINT).stat().st_mtime_ns
            for seed, folder in reference["fused"].items()} == before
    assert "fused_with" not in outcomes[2].summary  # the only one left: trained alone
    assert run_path(config(cifar_root, output, 2)) in str(outcomes[2].run_dir)


def test_members_at_different_iterations_train_one_after_another(
        reference: dict[str, dict[int, Path]], cifar_root: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    started = run_dir(config(cifar_root, tmp_path, 0))  # at iteration 6; seed 1 not started
    shutil.copytree(reference["lone"][0], started)
    (started / SUMMARY_FILE).unlink()
    (started / PREVIOUS_CHECKPOINT).replace(started / CHECKPOINT)
    with caplog.at_level(logging.INFO, logger="degrade"):
        outcomes = train_all(fused(cifar_root, tmp_path))
    assert "have checkpoints at iterations [6, 0]" in caplog.text
    assert [run.status for run in outcomes] == ["done", "done"]
    assert all("fused_with" not in run.summary for run in outcomes)
    for seed, outcome in zip(SEEDS, outcomes, strict=True):
        assert metrics(outcome.run_dir) == metrics(reference["lone"][seed])  # alone, as alone


def test_degrade_train_with_fuse_with_reports_each_run(cifar_root: Path, tmp_path: Path
                                                       ) -> None:
    args = [*tiny_overrides(cifar_root, tmp_path, **SAME, **{
        "train.iterations": 4, "train.milestones": "[2,3]", "train.eval_every": 2}),
        "trainer.fuse_with=[3]"]
    result = degrade_here("train", *args)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if ": done, test error" in line]
    assert [line.split(":")[0] for line in lines] == ["resnet-8-A seed 0", "resnet-8-A seed 3"]
    folders = sorted(record.path for record in find_runs(tmp_path))
    assert len(folders) == 2
    for folder in folders:  # each run's own train.log, the second's too (Hydra gives the first)
        assert "resnet-8-A seed 3: done" in (folder / "train.log").read_text()
    again = degrade_here("train", *args)
    assert again.exit_code == 0 and again.stderr.count("already finished") == 2
    forced = degrade_here("train", "--force", *args)
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.count("previous run kept in") == 2  # both set aside, both trained
    assert forced.stderr.count(": done, test error") == 2


@pytest.mark.numerics
def test_a_fused_member_logs_the_gradient_norms_of_its_lone_run(
        reference: dict[str, dict[int, Path]]) -> None:
    for seed in SEEDS:
        ours, theirs = (read_grad_norms_rows(reference[kind][seed]) for kind in ("fused", "lone"))
        assert [row[:3] for row in ours] == [row[:3] for row in theirs]
        # The first log point is two steps in: rounding has not yet grown (see the docstring).
        first = [row for row in ours if row[0] == ours[0][0]]
        expected = [row for row in theirs if row[0] == theirs[0][0]]
        assert [row[3] for row in first] == pytest.approx([row[3] for row in expected],
                                                          rel=LOSS_RTOL)


def read_grad_norms_rows(folder: Path) -> list[tuple[int, int, str, float]]:
    with (folder / GRAD_NORMS_FILE).open() as file:
        return [(int(row["iteration"]), int(row["layer"]), row["name"], float(row["grad_norm"]))
                for row in csv.DictReader(file)]


# The CPU kernels ATen and oneDNN pick at process start, and with them the rounding.
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") == AVX2["ATEN_CPU_CAPABILITY"],
                    reason="this process computes with AVX2 kernels already")
def test_the_numerically_sensitive_tests_hold_with_avx2_kernels(tmp_path: Path) -> None:
    """Tolerances must hold on AVX2 and AVX-512 CPUs alike: the `numerics` tests run here
    with this CPU's own kernels, and again, in a process of their own, with AVX2 ones."""
    tests = Path(__file__).parent
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "numerics", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path), str(tests / "test_fused.py"), str(tests / "test_bench.py")],
        cwd=tests.parent, env={**os.environ, **AVX2, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
