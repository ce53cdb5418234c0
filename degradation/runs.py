"""Run identity and run discovery: where a configuration's results live, and what is there.

A run's folder is a function of the settings that decide its result, never of the command
or the time that asked for it: `outputs/runs/resnet-56-A/seed-0-1a2b3c4d/`. Asking for the
same configuration again lands in the same folder, which is what lets sweeps skip finished
runs and resume interrupted ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from degradation.config import Config, from_dict
from degradation.storage import CHECKPOINT, RunLock, read_json

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"

# Settings that say where things are or how they are computed, not what is computed: two runs
# that differ only here are the same experiment and share a folder.
NOT_IDENTITY = ("device", "output_dir", "data.root", "data.download", "train.eval_batch_size",
                "train.channels_last", "train.compile", "train.threads")


def family(config: Config) -> str:
    """`plain-20`, `resnet-56-A`: the network as the paper names it."""
    if config.arch == "plain":
        return f"plain-{config.depth}"  # plain nets have no shortcut to choose
    return f"{config.arch}-{config.depth}-{config.shortcut}"


def identity(config: Config) -> dict[str, Any]:
    """The settings that decide a run's result, flattened to dotted keys."""
    flat = _flatten(config.to_dict())
    for key in NOT_IDENTITY:
        flat.pop(key, None)
    if config.arch == "plain":
        flat.pop("shortcut")
    return flat


def identity_hash(config: Config) -> str:
    """Eight hex digits over every identity setting other than arch, depth, shortcut, seed."""
    named_in_path = ("arch", "depth", "shortcut", "seed")
    rest = {key: value for key, value in identity(config).items() if key not in named_in_path}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]


def run_path(config: Config) -> str:
    """Path of a run's folder below `<output_dir>/runs/`."""
    return f"{family(config)}/seed-{config.seed}-{identity_hash(config)}"


def run_dir(config: Config) -> Path:
    """The run's folder."""
    return Path(config.output_dir) / "runs" / run_path(config)


@dataclass
class RunRecord:
    """A run folder found on disk and what it holds."""

    path: Path
    config: Config
    summary: dict[str, Any] | None

    @property
    def state(self) -> str:
        """done, diverged, failed, running (a live process holds the lock) or interrupted."""
        if self.summary is not None:
            return self.summary.get("status", "done")
        if RunLock(self.path).holder() is not None:
            return "running"
        if (self.path / "error.txt").exists():
            return "failed"
        return "interrupted" if (self.path / CHECKPOINT).exists() else "pending"


def find_runs(root: Path) -> list[RunRecord]:
    """Every run folder under `root` (a folder with a `config.yaml` written by `degrade`)."""
    records = []
    for config_path in sorted(Path(root).rglob(CONFIG_FILE)):
        if ".hydra" in config_path.parts:
            continue
        record = read_run(config_path.parent)
        if record is not None:
            records.append(record)
    return records


def read_run(path: Path) -> RunRecord | None:
    """The run in `path`, or None when it holds no readable run config."""
    try:
        values = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
        config = from_dict(values)
    except Exception:  # foreign or damaged folders are not runs
        return None
    summary_path = path / SUMMARY_FILE
    summary = read_json(summary_path) if summary_path.exists() else None
    return RunRecord(path=path, config=config, summary=summary)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
