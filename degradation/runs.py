"""Run identity and run discovery: where a configuration's results live, and what is there.

A run's folder is a function of the settings that decide its result, never of the command
or the time that asked for it: `outputs/runs/resnet-56-A/seed-0-1a2b3c4d/`. Asking for the
same configuration again lands in the same folder, which is what lets sweeps skip finished
runs and resume interrupted ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from degradation.config import Config, from_dict
from degradation.data.cifar import BATCH_DIR, DataError
from degradation.data.fingerprint import DataFingerprint, fingerprint
from degradation.errors import error_line
from degradation.storage import DamagedFile, RunLock, read_json

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
PLAIN_SHORTCUT = "-"  # plain nets have no shortcut; "-" (not None) so pandas never drops them
GRAD_NORMS_FILE = "grad_norms.csv"  # per log point, each 3x3 conv weight's gradient norm
TENSORBOARD_DIR = "tensorboard"
ERROR_FILE = "error.txt"
CHECKPOINT = "checkpoint.pt"  # the newest; its format: degradation/training/checkpoint.py
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the one before, kept as a fallback
REPLACED = ".replaced-"  # `<folder>.replaced-<time>`: a finished run set aside by `--force`
RUNS_DIR = "runs"  # an output tree is a folder holding `runs/`: `<output_dir>/runs/...`
log = logging.getLogger("degrade")

# Settings that say where things are or how they are computed, not what is computed: two runs
# that differ only here are the same experiment and share a folder.
NOT_IDENTITY = ("device", "output_dir", "data.root", "data.download", "train.eval_batch_size",
                "train.channels_last", "train.compile", "train.threads", "train.deterministic",
                "trainer.fuse", "trainer.fuse_with")


def runs_count(count: int) -> str:
    """`1 run`, `4 runs`: how the commands count runs."""
    return f"{count} run{'s' * (count != 1)}"


def network_name(config: Config) -> str:
    """`plain-20`, `resnet-56-A`: the network as the paper names it."""
    if config.network_shortcut is None:
        return f"plain-{config.depth}"  # plain nets have no shortcut to choose
    return f"{config.arch}-{config.depth}-{config.shortcut}"


def identity(config: Config) -> dict[str, Any]:
    """The settings that decide a run's result, flattened to dotted keys."""
    flat = _flatten(config.to_dict())
    for key in NOT_IDENTITY:
        flat.pop(key, None)
    if config.network_shortcut is None:
        flat.pop("shortcut")
    if config.trainer.gpus == 1:
        # One process: the paper's single-batch BN, whatever the multi-process options say;
        # a run split over several processes has per-process BN statistics, another result.
        flat.pop("trainer.gpus")
        flat.pop("trainer.sync_batchnorm")
    return flat


# The identity settings a run folder's path spells out; the hash stands for the rest.
NAMED_IN_PATH = ("arch", "depth", "shortcut", "seed")


def hashed_identity(config: Config) -> dict[str, Any]:
    """The identity settings other than those the path names: what its hash stands for."""
    return {key: value for key, value in identity(config).items() if key not in NAMED_IN_PATH}


def data_of(config: Config) -> DataFingerprint:
    """The fingerprint of the data the run trains and evaluates on (cached per data folder)."""
    return fingerprint(Path(config.data.root), config.data.val_split)


def identity_hash(config: Config, data_digest: str | None = None) -> str:
    """Eight hex digits over `hashed_identity(config)` and the fingerprint of the run's data
    (`data_digest`, or that of the data under data.root now).

    data.root is not part of the identity, the data's content is: two folders that hold the
    same files share runs, two data sets never do.
    """
    digest = data_of(config).digest if data_digest is None else data_digest
    values = {**hashed_identity(config), "data": digest}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def run_path(config: Config) -> str:
    """Path of a run's folder below `<output_dir>/runs/`."""
    return f"{network_name(config)}/seed-{config.seed}-{identity_hash(config)}"


def run_dir(config: Config) -> Path:
    """The run's folder."""
    return Path(config.output_dir) / "runs" / run_path(config)


@dataclass
class RunRecord:
    """A run folder found on disk and what it holds."""

    path: Path
    config: Config
    summary: dict[str, Any] | None
    damaged: str | None = None  # why its summary.json cannot be read (state `damaged`)

    @functools.cached_property
    def inconsistency(self) -> str | None:
        """Why its folder's name, config.yaml and summary.json do not describe one run (one
        line); None when they agree (`check_consistency`)."""
        return check_consistency(self)

    @functools.cached_property
    def state(self) -> str:
        """done, diverged, damaged (a summary.json that cannot be read), running (a live
        process holds the lock), failed, interrupted (a checkpoint to resume from) or pending
        (nothing trained yet).

        Found once per record (a lock probe and a few file checks), so that every part of a
        command sees the same state even if the run ends meanwhile; `read_run` again for news.
        """
        if self.damaged is not None:
            return "damaged"
        if self.summary is not None:
            return self.summary.get("status", "done")
        if RunLock(self.path).holder() is not None:  # a kernel lock: gone with its process
            return "running"
        if (self.path / ERROR_FILE).exists():
            return "failed"
        return "interrupted" if (self.path / CHECKPOINT).exists() else "pending"


RUN_FOLDER = re.compile(r"seed-(?P<seed>-?\d+)-(?P<hash>[0-9a-f]{8})")


def check_consistency(record: RunRecord) -> str | None:
    """Why a run's folder name, config.yaml and summary.json do not describe the same run (one
    line); None when they agree.

    The run's identity is recomputed from its config.yaml: its network and seed must be the
    folder's, its settings and data must hash to the folder's hash, and its summary must name
    the same network, seed and schedule. The data is the summary's fingerprint for a finished
    run (the data under data.root may have changed since), else the data under data.root when
    it is there (a run copied from another machine may not have it: then only the name is
    checked). Otherwise a hand-edited config.yaml, or a summary.json copied from another run,
    would file one run's numbers under another's name.
    """
    config, path = record.config, record.path
    network = network_name(config)
    if path.parent.name != network:
        return f"its folder is {path.parent.name}, its config.yaml describes {network}"
    named = RUN_FOLDER.fullmatch(path.name)
    if named is None or int(named["seed"]) != config.seed:
        return f"its folder {path.name} is not seed-{config.seed}-<hash> of its config.yaml"
    summary = record.summary or {}
    ours = {"arch": config.arch, "depth": config.depth,
            "shortcut": config.network_shortcut,
            "seed": config.seed, "iterations": config.train.iterations}
    for key, value in ours.items():
        if key in summary and summary[key] != value:
            return (f"its summary.json has {key}={summary[key]!r}, its config.yaml "
                    f"{key}={value!r}")
    digest = summary.get("data_fingerprint")
    if not digest:
        here = _data_here(config)
        digest = here.digest if here is not None else None
    if digest is not None and identity_hash(config, digest) != named["hash"]:
        return (f"its config.yaml's settings and data hash to {identity_hash(config, digest)}, "
                f"not to its folder's {named['hash']}")
    return None


def _data_here(config: Config) -> DataFingerprint | None:
    """The fingerprint of the data under the run's data.root now; None when none is there
    (not the official set a download would bring) or it cannot be read (a damaged batch)."""
    if not (Path(config.data.root) / BATCH_DIR).is_dir():
        return None
    try:
        return data_of(config)
    except DataError:
        return None


def data_description(record: RunRecord) -> str | None:
    """The run's data as its summary names it; for an unfinished run, what data.root holds.

    None when that is not known: a run finished before summaries named their data, or data
    that is missing or unreadable now.
    """
    if record.summary is not None:
        return record.summary.get("data")
    here = _data_here(record.config)
    return here.description if here is not None else None


def data_name(record: RunRecord) -> str:
    """`data_description`, or `data unknown` (`status`, the report)."""
    return data_description(record) or "data unknown"


def find_runs(root: Path, recursive: bool = False) -> list[RunRecord]:
    """Every run of the output tree `root`: those under `root/runs/`, or under `root` itself
    when it holds no `runs/` (a runs folder, a network's folder, one run).

    Another output tree nested inside (a folder holding its own `runs/`, such as a backup
    copy) is searched only with `recursive`. Folders set aside by `--force`
    (`<folder>.replaced-<time>`) are kept on disk but not listed. A run folder whose
    config.yaml or summary.json cannot be read is named in a `warning:` line and left out.
    """
    root = Path(root)
    start = root / RUNS_DIR if not recursive and (root / RUNS_DIR).is_dir() else root
    records = []
    for folder, subfolders, files in os.walk(start):
        subfolders.sort()
        # Hydra's own copy of the config; a run set aside by `--force` (superseded).
        subfolders[:] = [name for name in subfolders if name != ".hydra" and REPLACED not in name]
        here = Path(folder)
        if not recursive and here != start and RUNS_DIR in subfolders:
            subfolders[:] = []  # another output tree: only with `recursive`
            continue
        if CONFIG_FILE not in files:
            continue
        try:
            record = _read_record(here)
        except DamagedFile as error:
            log.warning("warning: %s; that run is left out", error)
            continue
        if record is None:
            continue
        if record.damaged is not None:
            log.warning("warning: %s; that run is left out (%s)", record.damaged,
                        SUMMARY_RECOVERY)
            continue
        records.append(record)
    return records


# How to recover a run whose summary.json was damaged: its last checkpoint rewrites it.
SUMMARY_RECOVERY = ("delete the file and run `degrade train` with the run's settings again: "
                    "it rewrites the summary from the run's last checkpoint (or add --force "
                    "to retrain the run)")
# Files only a run folder holds: a config.yaml beside one of them is a run's, even if damaged.
RUN_FILES = (SUMMARY_FILE, METRICS_FILE, TENSORBOARD_DIR, CHECKPOINT)


def read_run(path: Path, strict: bool = False) -> RunRecord | None:
    """The run in `path`, or None when it holds no readable run config (with `strict`,
    `DamagedFile` saying why when the folder holds a run's files)."""
    try:
        return _read_record(Path(path))
    except DamagedFile:
        if strict:
            raise
        return None


def _read_record(path: Path) -> RunRecord | None:
    """`read_run`, raising `DamagedFile` for an unreadable config.yaml in a run's folder."""
    try:
        values = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
        config = from_dict(values)
    except Exception as error:  # foreign or damaged folders are not runs
        if any((path / name).exists() for name in RUN_FILES):
            reason = error_line(error, with_type=False)
            raise DamagedFile(f"{path / CONFIG_FILE} is damaged ({reason})") from None
        return None
    summary, damaged = None, None
    if (path / SUMMARY_FILE).exists():
        try:
            summary = read_summary(path)
        except DamagedFile as error:
            damaged = str(error)
    return RunRecord(path=path, config=config, summary=summary, damaged=damaged)


FINISHED = ("done", "diverged")
# What each field of a summary.json holds (degradation/training/summary.py writes them); a
# field may be missing (summaries of older versions hold fewer), never of another type. A
# number is finite: JSON's NaN is damage, never a result.
SUMMARY_SCHEMA = {
    "status": "text", "arch": "text", "depth": "integer", "shortcut": "text or null",
    "seed": "integer", "iterations": "integer", "iterations_done": "integer or null",
    "final_test_error": "number or null", "final_test_loss": "number or null",
    "final_train_error": "number or null", "final_train_loss": "number or null",
    "best_test_error": "number or null", "best_test_iteration": "integer or null",
    "eval_set": "text", "data": "text or null", "data_fingerprint": "text or null",
    "parameters": "integer or null", "wall_time_s": "number or null",
    "device": "text or null", "versions": "object", "code_version": "text or null",
    "diverged": "object or null", "finished_at": "text", "fused_with": "list",
}


def _is_kind(value: Any, kind: str) -> bool:
    """Whether `value` (read from JSON) is of `kind`, a value of `SUMMARY_SCHEMA`."""
    if value is None:
        return kind.endswith(" or null")
    if isinstance(value, bool):  # a JSON true is no number
        return False
    checks = {"text": str, "integer": int, "number": (int, float), "object": dict,
              "list": list}
    wanted = checks[kind.removesuffix(" or null")]
    return isinstance(value, wanted) and not (isinstance(value, float) and not math.isfinite(
        value))


def summary_problem(summary: dict[str, Any]) -> str | None:
    """Why a summary.json's fields do not fit `SUMMARY_SCHEMA`; None when they do."""
    for key, kind in SUMMARY_SCHEMA.items():
        if key in summary and not _is_kind(summary[key], kind):
            value = summary[key]
            if isinstance(value, float) and not math.isfinite(value):
                return f"{key}={value} is not a finite number"  # nan, inf: never a result
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{key}={value!r} is not {article} {kind}"
    status = summary.get("status", "done")
    if status not in FINISHED:
        return f"status {status!r}, expected one of: {', '.join(FINISHED)}"
    return None


def read_summary(folder: Path) -> dict[str, Any]:
    """A finished run's summary.json, or `DamagedFile` naming what is wrong with it (JSON that
    does not parse, or fields that do not fit `SUMMARY_SCHEMA`)."""
    path = Path(folder) / SUMMARY_FILE
    try:
        summary = read_json(path)
    except (OSError, ValueError) as error:  # JSON and UTF-8 errors are ValueErrors
        raise DamagedFile(f"{path} is damaged ({error_line(error, with_type=False)})") from None
    if not isinstance(summary, dict):
        raise DamagedFile(f"{path} is damaged (it holds a JSON {type(summary).__name__}, not "
                          "an object)")
    problem = summary_problem(summary)
    if problem is not None:
        raise DamagedFile(f"{path} is damaged ({problem})")
    return summary


def last_line(path: Path) -> str | None:
    """The last non-empty line of a text file (None when there is none, or no file)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flat_config(config: Config) -> dict[str, Any]:
    """Every setting of `config` under its dotted key (`train.lr`, `data.root`)."""
    return _flatten(config.to_dict())
