"""One run over two processes (DDP, gloo on the CPU): the paper's split of the global batch.

With per-process BatchNorm, two ranks training on the halves of each global batch compute
exactly the gradient of the mean of the two half-batch losses, each half normalised by its
own statistics. A single process reproduces that step by step here, and the DDP run's
final weights must equal it, while a single process on the whole batch must not.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from degradation.config import ConfigError
from degradation.data.cifar import load_cifar10
from degradation.data.stream import TrainBatches
from degradation.errors import Interrupted
from degradation.launch.compose import compose_config
from degradation.runs import (
    CHECKPOINT,
    METRICS_FILE,
    PREVIOUS_CHECKPOINT,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    identity,
    run_dir,
)
from degradation.storage import read_json
from degradation.training import spawn
from degradation.training.checkpoint import load_checkpoint
from degradation.training.device import build_network, resolve_device, resolve_speed
from degradation.training.distributed import AGREE_EVERY
from degradation.training.logs import read_metrics
from degradation.training.loop import train
from degradation.training.step import learning_rate
from tests.conftest import degrade, tiny_overrides

ITERATIONS = 24


def halves_reference(config, cifar_root: Path, parts: int) -> dict[str, torch.Tensor]:
    """Final parameters of `parts` processes simulated in one: the mean of per-part losses."""
    splits = load_cifar10(cifar_root, download=False)
    device = resolve_device(config.device)
    speed = resolve_speed(config.train, device)
    torch.manual_seed(config.seed)  # what the run seeds before building its model
    model, optimizer = build_network(config, device, speed)
    batches = TrainBatches(splits.train_images, splits.train_labels, splits.mean,
                           config.train.batch_size, config.seed, device)
    for iteration in range(config.train.iterations):
        images, labels = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(iteration, config.train)
        optimizer.zero_grad(set_to_none=True)
        loss = sum(F.cross_entropy(model(x.contiguous(memory_format=speed.memory_format)), y)
                   for x, y in zip(images.chunk(parts), labels.chunk(parts), strict=True))
        (loss / parts).backward()
        optimizer.step()
    return {name: value.detach() for name, value in model.named_parameters()}


@pytest.mark.slow
def test_two_processes_split_the_global_batch_stop_together_and_resume(
        cifar_root: Path, tmp_path: Path) -> None:
    config = compose_config(tiny_overrides(cifar_root, tmp_path, **{
        "trainer.gpus": 2, "train.iterations": ITERATIONS, "train.milestones": "[12,18]",
        "train.eval_every": 2}))
    folder = run_dir(config)

    # SIGTERM once the first checkpoint exists: the launching process passes it on, the ranks
    # agree at the next multiple of AGREE_EVERY, rank 0 checkpoints, both stop.
    def interrupt() -> None:
        while not (folder / CHECKPOINT).exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(Interrupted, match=r"stopped by SIGTERM at iteration \d+") as stopped:
        train(config)
    state, _ = load_checkpoint(folder)
    assert state["iteration"] % AGREE_EVERY == 1 and state["iteration"] < ITERATIONS
    assert f"iteration {state['iteration']};" in str(stopped.value)

    outcome = train(config)  # resumes in two processes again
    assert outcome.status == "done" and outcome.summary["iterations_done"] == ITERATIONS
    # Rank 0 alone writes: one TensorBoard file per process that trained (start, resume).
    assert len(list((folder / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2

    trained = load_checkpoint(folder)[0]["model"]

    def distance(reference: dict[str, torch.Tensor]) -> float:
        return max(float((trained[name] - value).abs().max()) for name, value in
                   reference.items())

    # Equal up to float summation order (DDP sums gradients, then divides), and far from a
    # single process on the whole batch: BN statistics per process, not per global batch.
    split, whole = distance(halves_reference(config, cifar_root, parts=2)), \
        distance(halves_reference(config, cifar_root, parts=1))
    assert split < 0.02 and split < whole / 20, (split, whole)


def test_multi_process_runs_are_other_runs(cifar_root: Path, tmp_path: Path) -> None:
    one = compose_config(tiny_overrides(cifar_root, tmp_path))
    two = compose_config(tiny_overrides(cifar_root, tmp_path, **{"trainer.gpus": 2}))
    synced = compose_config(tiny_overrides(cifar_root, tmp_path, **{
        "trainer.sync_batchnorm": "true"}))
    assert run_dir(two) != run_dir(one)  # BN over half batches: another result
    assert run_dir(synced) == run_dir(one) and "trainer.gpus" not in identity(one)


def test_bad_process_counts_are_refused(cifar_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"split evenly over trainer\.gpus=3"):
        compose_config(tiny_overrides(cifar_root, tmp_path, **{"trainer.gpus": 3}))
    with pytest.raises(ConfigError, match=r"trainer\.gpus=0 must be >= 1"):
        compose_config(tiny_overrides(cifar_root, tmp_path, **{"trainer.gpus": 0}))
    config = compose_config(tiny_overrides(cifar_root, tmp_path, **{
        "trainer.gpus": 2, "trainer.sync_batchnorm": "true"}))
    with pytest.raises(ConfigError, match="SyncBatchNorm has no CPU kernel"):
        train(config)


# --- resuming, failing and starting over two processes -------------------------------------

# Checkpoints at 6 and 12, training error logged at 4, 8 and 12: the checkpoint at 6 is in the
# middle of a logging interval.
MID_INTERVAL = {"trainer.gpus": 2, "train.log_every": 4, "train.threads": 1}


@pytest.fixture(scope="module")
def finished(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-process run (its outputs folder)."""
    output = tmp_path_factory.mktemp("ddp-finished")
    done = degrade("train", *tiny_overrides(cifar_root, output, **MID_INTERVAL))
    assert done.returncode == 0, done.stderr
    return output


def resumed_copy(finished: Path, tmp_path: Path, cifar_root: Path) -> Path:
    """A copy of the finished run's folder without its summary, so that it trains again."""
    output = tmp_path / "outputs"
    shutil.copytree(finished, output)
    folder = run_dir(compose_config(tiny_overrides(cifar_root, output, **MID_INTERVAL)))
    (folder / SUMMARY_FILE).unlink()
    return folder


# Test-only: rank 1 fails if it writes config.yaml, removes temporaries or sets a checkpoint
# aside; two ranks doing so race each other (the second rename fails).
RANK_1_LEAVES_THE_FOLDER_ALONE = """
import os
if os.environ.get("RANK") == "1":
    import degradation.training.checkpoint as checkpoint
    import degradation.training.loop as loop
    def refuse(*args, **kwargs):
        raise RuntimeError("rank 1 changed the run folder")
    loop._write_config = loop.remove_temporaries = checkpoint.set_aside_damaged = refuse
"""


@pytest.mark.slow
def test_a_damaged_checkpoint_is_set_aside_once_and_both_ranks_resume_from_the_one_before(
        finished: Path, cifar_root: Path, tmp_path: Path) -> None:
    folder = resumed_copy(finished, tmp_path, cifar_root)
    newest = (folder / CHECKPOINT).read_bytes()
    (folder / CHECKPOINT).write_bytes(newest[:len(newest) // 2])
    (folder / ".checkpoint.pt.1234.tmp").write_bytes(b"left by a killed writer")
    again = degrade("train", *tiny_overrides(cifar_root, tmp_path / "outputs", **MID_INTERVAL),
                    hook=RANK_1_LEAVES_THE_FOLDER_ALONE, hook_dir=tmp_path / "hook")
    assert again.returncode == 0, again.stderr
    assert not (folder / ".checkpoint.pt.1234.tmp").exists()
    # Rank 0 alone set it aside (rank 1's lines carry "rank 1:"), and training went on from 6.
    output = again.stdout + again.stderr
    assert output.count("kept as checkpoint.pt.damaged") == 1, output
    assert "resumed from iteration 6" in output
    assert (folder / (CHECKPOINT + ".damaged")).read_bytes() == newest[:len(newest) // 2]
    assert read_json(folder / SUMMARY_FILE)["iterations_done"] == 12


@pytest.mark.slow
def test_a_resume_mid_interval_counts_every_image_of_the_interval_once(
        finished: Path, cifar_root: Path, tmp_path: Path) -> None:
    folder = resumed_copy(finished, tmp_path, cifar_root)
    os.replace(folder / PREVIOUS_CHECKPOINT, folder / CHECKPOINT)  # back to iteration 6
    again = degrade("train", *tiny_overrides(cifar_root, tmp_path / "outputs", **MID_INTERVAL))
    assert again.returncode == 0, again.stderr
    # Iterations 5-8 of both ranks, as in the uninterrupted run: the sums of 5 and 6 come from
    # the checkpoint, those of 7 and 8 from training again.
    expected = read_metrics(run_dir(compose_config(tiny_overrides(
        cifar_root, finished, **MID_INTERVAL))) / METRICS_FILE)[8]
    got = read_metrics(folder / METRICS_FILE)[8]
    assert got["error/train"] == expected["error/train"]
    assert got["loss/train"] == pytest.approx(expected["loss/train"], rel=1e-6)


# Test-only: rank 1 fails just before its third update, and rank 0 then waits for it without
# end, as NCCL waits in a collective for a lost peer (gloo would notice and fail too).
FAIL_ON_RANK_1 = """
import os, time
from torch.optim.optimizer import register_optimizer_step_pre_hook
steps = []
def fail(optimizer, args, kwargs):
    steps.append(1)
    if len(steps) == 3 and os.environ.get("RANK") == "1":
        from degradation.storage import StorageError
        raise StorageError("rank 1 cannot go on (injected)")
    if len(steps) == 3 and os.environ.get("RANK") == "0":
        time.sleep(3600)
register_optimizer_step_pre_hook(fail)
"""


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_with_its_own_error_line(
        cifar_root: Path, tmp_path: Path) -> None:
    # Unless the launcher stops rank 0, the run never ends (the subprocess timeout ends it).
    failed = degrade("train", *tiny_overrides(cifar_root, tmp_path, **{"trainer.gpus": 2}),
                     hook=FAIL_ON_RANK_1, hook_dir=tmp_path / "hook")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == "error: rank 1 cannot go on (injected)"


def test_the_rendezvous_port_is_held_by_the_launcher_from_before_the_workers_start(
        cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Checked(Exception):
        """Raised instead of starting a worker."""

    def start(config, spec, error_file, index, port):
        with socket.socket() as probe, pytest.raises(OSError):
            probe.bind(("127.0.0.1", port))  # taken: no other process can get it meanwhile
        raise Checked

    monkeypatch.setattr(spawn, "_start", start)
    config = compose_config(tiny_overrides(cifar_root, tmp_path, **{"trainer.gpus": 2}))
    with pytest.raises(Checked):
        spawn.spawn(config)


def test_sync_batchnorm_layers_are_in_place_before_the_model_is_compiled(
        cifar_root: Path, tmp_path: Path) -> None:
    config = compose_config(tiny_overrides(cifar_root, tmp_path, **{
        "trainer.sync_batchnorm": "true", "train.compile": "true"}))
    device = torch.device("cpu")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model, _ = build_network(config, device, resolve_speed(config.train, device))
    finally:
        dist.destroy_process_group()
    norms = [type(module) for module in model.modules()
             if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and set(norms) == {torch.nn.SyncBatchNorm}
    assert model._compiled_call_impl is not None  # compiled (lazily) with those layers
