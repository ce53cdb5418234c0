"""How a run ended: the `Outcome` that `train` returns and the run's summary.json.

The summary carries what a result needs to be traced: the errors, the data's fingerprint,
the device, the versions and the code's commit (`degradation.package.code_version`).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from degradation import __version__
from degradation.config import Config
from degradation.package import code_version
from degradation.runs import SUMMARY_FILE, data_of
from degradation.storage import write_json


@dataclass
class Outcome:
    """How a call to `train` ended."""

    status: str  # done, diverged, skipped (finished before)
    run_dir: Path
    summary: dict[str, Any]


@dataclass
class Ending:
    """What the loop knows of a run when it ends (the errors in percent, losses per image)."""

    status: str  # done or diverged
    iterations_done: int
    last_train: dict[str, float]  # error/train, loss/train at the last log point
    last_test: dict[str, float]  # error/test, loss/test at the last evaluation
    best: dict[str, float] | None  # the lowest test error and its iteration
    diverged: dict[str, Any] | None  # where and how: iteration, lr, last finite train error
    parameters: int
    wall_time_s: float


def summary_of(config: Config, ending: Ending, eval_set: str, device: torch.device
               ) -> dict[str, Any]:
    """The summary.json of a run that ended."""
    data = data_of(config)
    best, last_test = ending.best, ending.last_test
    summary = {
        "status": ending.status,
        "arch": config.arch,
        "depth": config.depth,
        "shortcut": config.network_shortcut,
        "seed": config.seed,
        "iterations": config.train.iterations,
        "iterations_done": ending.iterations_done,
        "final_test_error": last_test.get("error/test"),
        "final_test_loss": last_test.get("loss/test"),
        "final_train_error": ending.last_train.get("error/train"),
        "final_train_loss": ending.last_train.get("loss/train"),
        "best_test_error": None if best is None else best["error"],
        "best_test_iteration": None if best is None else best["iteration"],
        "eval_set": eval_set,
        "data": data.description,
        "data_fingerprint": data.digest,
        "parameters": ending.parameters,
        "wall_time_s": ending.wall_time_s,
        "device": device_name(device),
        "versions": {"degrade": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "code_version": code_version(),
        # Where and how it diverged: iteration, lr, and the last finite errors.
        "diverged": None if ending.diverged is None else {
            **ending.diverged, "last_test_error": last_test.get("error/test")},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if config.trainer.fuse_with:
        summary["fused_with"] = list(config.trainer.fuse_with)
    return summary


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    """Write summary.json: the run has ended."""
    write_json(folder / SUMMARY_FILE, summary)


def device_name(device: torch.device) -> str:
    """The GPU's name, or `cpu (<processor>)`."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"
