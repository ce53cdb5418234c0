"""One run over two processes (DDP, gloo on the CPU): the paper's split of the global batch.

With per-process BatchNorm, two ranks training on the halves of each global batch compute
exactly the gradient of the mean of the two half-batch losses, each half normalised by its
own statistics. A single process reproduces that step by step here, and the DDP run's
final weights must equal it, while a single process on the whole batch must not.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from degradation.config import ConfigError
from degradation.data import TrainBatches, load_cifar10
from degradation.distributed import AGREE_EVERY
from degradation.launching import compose_config
from degradation.runs import TENSORBOARD_DIR, identity, run_dir
from degradation.storage import CHECKPOINT, load_checkpoint
from degradation.train import (
    Interrupted,
    build_network,
    learning_rate,
    resolve_device,
    resolve_speed,
    train,
)
from tests.conftest import tiny_overrides

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
