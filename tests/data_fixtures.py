"""Helpers of the data tests (test_cifar.py, test_fingerprint.py, test_stream.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

SUBSET = Path(__file__).parents[1] / "../shared/cifar10-subset"
CPU = torch.device("cpu")


def raw(path: Path, encoding: str = "latin1") -> dict:
    """A batch file exactly as pickle reads it, without the module under test."""
    with path.open("rb") as f:
        return pickle.load(f, encoding=encoding)


def rewrite(path: Path, batch: object) -> None:
    """Replace a batch file with another pickled object."""
    path.write_bytes(pickle.dumps(batch, protocol=2))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, to show that reading changed nothing on disk."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_data_error(error: pytest.ExceptionInfo, *names: str) -> None:
    """A DataError of one line that names each of `names`."""
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)


def images_encoding(values: list[int]) -> torch.Tensor:
    """Constant uint8 images whose every pixel holds the given value."""
    return torch.tensor(values, dtype=torch.uint8)[:, None, None, None].expand(-1, 3, 32, 32)
