"""Fixtures shared across the suite: a small CIFAR-10 in the official format, tiny runs."""

from __future__ import annotations

import errno
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner, Result

from degradation.data.cifar import write_cifar10
from degradation.runs import TENSORBOARD_DIR

PROJECT = Path(__file__).resolve().parents[1]
SHARED_SUBSET = PROJECT.parent / "shared" / "cifar10-subset"


# Fixtures that only tests that train networks on data ask for: what `make test-fast` leaves
# out for the edit loop (`make test` runs everything, as CI does).
TRAINING_FIXTURES = {"cifar_root", "small_cifar_root"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that train on data `trains`, so `-m "not trains"` selects the rest."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.trains)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated data set: 5 x 40 training images, 60 test images."""
    return write_cifar10(tmp_path_factory.mktemp("cifar"), train_per_batch=40, test_size=60)


@pytest.fixture(scope="session")
def small_cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller generated data set: 5 x 16 training images, 32 test images."""
    return write_cifar10(tmp_path_factory.mktemp("small-cifar"), train_per_batch=16,
                         test_size=32)


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    """A generated CIFAR-10 copy: 5 train batches of 7 images, a test batch of 5."""
    return write_cifar10(tmp_path, train_per_batch=7, test_size=5, seed=3)


def tiny_overrides(cifar_root: Path, output_dir: Path, **extra: object) -> list[str]:
    """Overrides for a depth-8 run of a dozen iterations on CPU (a second or two)."""
    values: dict[str, object] = {
        "arch": "resnet", "depth": 8, "device": "cpu", "output_dir": output_dir,
        "data.root": cifar_root, "data.download": "false",
        "train.iterations": 12, "train.milestones": "[6,9]", "train.batch_size": 16,
        "train.log_every": 2, "train.eval_every": 6, "train.eval_batch_size": 64,
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every (iteration, value) a run logged to TensorBoard, by tag."""
    accumulator = EventAccumulator(str(folder / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def assert_close_in_norm(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor],
                         rtol: float) -> None:
    """Tensors, by name, of two computations that differ by rounding only: each float one
    within `rtol` of the other's norm, the others equal. Not element by element: amplified
    by training steps, rounding moves one element of thousands by any amount, and by how
    much depends on the CPU's kernels (AVX2 or AVX-512)."""
    assert list(ours) == list(theirs)
    for name, expected in theirs.items():
        mine = ours[name]
        assert mine.shape == expected.shape and mine.dtype == expected.dtype, name
        if not expected.is_floating_point():
            assert torch.equal(mine, expected), name
            continue
        distance = float((mine.float() - expected.float()).norm())
        assert distance <= rtol * float(expected.float().norm()), (name, distance)


def degrade(*args: object, cwd: Path | None = None, timeout: float = 600,
            hook: str | None = None, hook_dir: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    """`degrade ARGS` in a subprocess, as a user types it; what it prints is captured. The
    timeout only guards against a hang.

    `hook`: test-only code every Python process of the run executes as it starts (written
    as a `sitecustomize` module into `hook_dir`, which goes on PYTHONPATH).
    """
    env = None
    if hook is not None:
        assert hook_dir is not None
        hook_dir.mkdir()
        (hook_dir / "sitecustomize.py").write_text(hook)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(hook_dir), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    return subprocess.run([sys.executable, "-m", "degradation", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def degrade_here(*args: object, env: dict[str, str] | None = None) -> Result:
    """`degrade ARGS` in this process (Typer's runner): quick, and monkeypatches apply.

    `stdout` and `stderr` apart, `output` both, as Click 8.2 and later have them; Click 8.1
    (which typer < 0.16 brings: make test-min) mixes them unless asked not to.
    """
    from degradation.cli import app

    arguments = [str(arg) for arg in args]
    if "mix_stderr" not in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner().invoke(app, arguments, env=env)
    result = CliRunner(mix_stderr=False).invoke(app, arguments, env=env)
    result.__class__ = _BothStreams
    return result


class _BothStreams(Result):
    """A Click 8.1 result whose `output` is stdout and stderr, as Click 8.2's is."""

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def help_commands(text: str) -> list[str]:
    """The command names listed in the Commands panel of a `--help` text, in order."""
    panel = text.split("Commands")[1]
    return re.findall(r"^\W (\S+) {2,}\S", panel, flags=re.MULTILINE)


def no_space(*_args: object) -> None:
    """Stands in for a write that fails because the disk is full."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(folder: Path) -> list[str]:
    """Temporary files a writer left behind."""
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))
