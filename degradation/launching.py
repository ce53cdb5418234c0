"""Launching runs through Hydra: one run, or a sweep (Hydra multirun) over any launcher.

    degrade train depth=56 arch=plain
    degrade sweep depth=20,56 arch=plain,resnet           # 4 runs
    degrade sweep experiment=fig6                          # the Figure 6 grid

Hydra owns composition, sweeping and launchers. Before anything starts, the overrides are
expanded here exactly as Hydra's basic sweeper does and every resulting run is composed and
validated, so a bad value is reported in one line before any run begins.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from degradation.config import CONF_DIR, EXPERIMENTS_DIR, Config, ConfigError, load_config
from degradation.data import DataError, ensure_cifar10
from degradation.models import ModelConfigError
from degradation.runs import SUMMARY_FILE, RunRecord, family, read_run, run_dir, run_path
from degradation.storage import StorageError, atomic_write_text
from degradation.train import Interrupted, train

ERROR_FILE = "error.txt"
USER_ERRORS = (ConfigError, DataError, ModelConfigError, StorageError)

log = logging.getLogger("degrade")


@dataclass
class PlannedRun:
    """One run a command asked for: its overrides, config, folder and what will happen."""

    overrides: list[str]
    config: Config
    folder: Path
    action: str  # start, resume, skip (finished), retrain (finished, --force)


def experiments() -> list[str]:
    """Names of the presets in `experiments/`."""
    return sorted(path.stem for path in EXPERIMENTS_DIR.glob("*.yaml"))


def register() -> None:
    """Make `experiment=NAME` and the run-folder resolver known to Hydra (idempotent)."""
    store = ConfigStore.instance()
    for name in experiments():
        node = OmegaConf.load(EXPERIMENTS_DIR / f"{name}.yaml")
        store.store(group="experiment", name=name, node=node, package="_global_")
    if not OmegaConf.has_resolver("degrade_run_path"):
        OmegaConf.register_new_resolver("degrade_run_path", _run_path_resolver)


def _run_path_resolver(*, _root_: DictConfig) -> str:
    values = OmegaConf.to_container(_root_, resolve=False)
    values.pop("hydra", None)
    return run_path(load_config(OmegaConf.create(values)))


def compose_config(overrides: list[str]) -> Config:
    """The validated `Config` for one run's overrides (no sweep syntax)."""
    return load_config(_compose(overrides, with_hydra=False))


def expand(overrides: list[str]) -> list[list[str]]:
    """Every run's overrides for a sweep, in Hydra's basic-sweeper order."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        preset = _compose(fixed, with_hydra=True).hydra.sweeper.get("params") or {}
        from_preset = [f"{key}={value}" for key, value in preset.items()]
        combined = parser.parse_overrides(from_preset + overrides)
        return [job for batch in BasicSweeper.split_arguments(combined, None) for job in batch]
    except (HydraException, OverrideParseException) as error:
        raise ConfigError(describe_hydra_error(error)) from None


def plan(overrides: list[str], sweep: bool, force: bool = False) -> list[PlannedRun]:
    """Expand, compose and validate every run asked for, one entry per distinct folder."""
    jobs = expand(overrides) if sweep else [overrides]
    planned: dict[Path, PlannedRun] = {}
    for job in jobs:
        config = compose_config(job)
        if not config.data.download:
            ensure_cifar10(Path(config.data.root), download=False)  # fail before any run starts
        folder = run_dir(config)
        if folder in planned:  # e.g. plain nets under several shortcut options
            continue
        if (folder / SUMMARY_FILE).exists():
            action = "retrain" if force else "skip"
        else:
            action = "resume" if (folder / "checkpoint.pt").exists() else "start"
        planned[folder] = PlannedRun(job, config, folder, action)
    return list(planned.values())


def set_aside(folder: Path) -> Path:
    """Move a finished run out of the way before retraining it (never deleted)."""
    target = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(folder), str(target))
    return target


def launch(overrides: list[str], sweep: bool) -> None:
    """Hand the overrides to Hydra: a single run, or a multirun through its launcher."""
    register()
    argv = ["degrade", *(["--multirun"] if sweep else []), *overrides]
    main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(
        run_task)
    with _argv(argv):
        main()


def run_task(composed: DictConfig) -> None:
    """Hydra's task: train one run; in a sweep a failure is recorded and the sweep goes on."""
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        config = load_config(composed)
        outcome = train(config)
    except (*USER_ERRORS, Interrupted) as error:
        folder = Path(HydraConfig.get().runtime.output_dir)
        if not isinstance(error, Interrupted):
            atomic_write_text(folder / ERROR_FILE, f"{error}\n")
        log.error("error: %s", error)
        if not in_sweep or isinstance(error, Interrupted):
            raise SystemExit(1 if not isinstance(error, Interrupted) else 130) from None
        return
    (outcome.run_dir / ERROR_FILE).unlink(missing_ok=True)
    log.info("%s", finished_line(read_run(outcome.run_dir), outcome.status))


def finished_line(record: RunRecord | None, status: str) -> str:
    """`resnet-20-A seed 0: done, test error 8.61%, training error 0.71% (path)`."""
    if record is None or record.summary is None:
        return f"{status}"
    summary = record.summary
    errors = _errors_text(summary)
    what = "already finished" if status == "skipped" else summary["status"]
    return f"{_title(record.config)}: {what}{errors} ({record.path})"


def describe_hydra_error(error: Exception) -> str:
    """One line for an error Hydra raised while parsing or composing overrides."""
    text = str(error).strip()
    if isinstance(error, MissingConfigException) and "experiment/" in text:
        name = re.search(r"experiment/([^'\s]+)", text)
        bad = name.group(1) if name else "?"
        return f"experiment={bad!r} is not one of: {', '.join(experiments())}"
    unknown = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text)
    if unknown:
        return (f"unknown config key '{unknown.group(1)}' "
                "(`degrade train --show-config` lists the keys)")
    return text.splitlines()[0]


def _compose(overrides: list[str], with_hydra: bool) -> DictConfig:
    register()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=with_hydra)
    except (HydraException, OverrideParseException, ValueError) as error:
        raise ConfigError(describe_hydra_error(error)) from None


def _title(config: Config) -> str:
    return f"{family(config)} seed {config.seed}"


def _errors_text(summary: dict[str, Any]) -> str:
    test, train_error = summary.get("final_test_error"), summary.get("final_train_error")
    if test is None or train_error is None:
        return ""
    return f", test error {test:.2f}%, training error {train_error:.2f}%"


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    """Hydra reads its arguments from sys.argv; the CLI hands them over only here."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved
