"""A run's job inside Hydra: train it, and say in one line how it ended.

Hydra calls `run_task` once per job: in this process for `degrade train`, in each launcher's
process (a subprocess, a SLURM node) for a sweep. Both hand each job the configuration their
plan validated (`PlannedTask`), so the run is not validated again where it trains.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from degradation.config import CONF_DIR, Config, load_config
from degradation.errors import FAILED_EXIT, INTERRUPTED_EXIT, Interrupted, error_line, one_line
from degradation.launch.compose import patched_argv, register
from degradation.launch.plan import USER_ERRORS, PlannedRun, member_folders
from degradation.runs import (
    ERROR_FILE,
    SUMMARY_FILE,
    RunRecord,
    last_line,
    network_name,
    read_run,
)
from degradation.storage import DamagedFile, RunLocked, StorageError, atomic_write_text
from degradation.training.loop import train_all
from degradation.training.summary import Outcome

log = logging.getLogger("degrade")

# How a sweep reports a run it found another live process training (a sweep started at the
# same moment took it first): not a failure, and not trained twice.
LEFT_TO_OTHER = "being trained by another process, left to it"


def launch(overrides: list[str], sweep: bool, config_dir: Path | None = None,
           hydra_flags: list[str] | None = None, task: Callable[[DictConfig], None] | None = None
           ) -> None:
    """Hand the overrides to Hydra: a single run, or a multirun through its sweeper.

    `hydra_flags` are Hydra's own command-line flags (`--info`); `config_dir` goes onto
    Hydra's search path (`--config-dir`); `task` is what Hydra runs (default `run_task`).
    """
    register(config_dir)
    argv = ["degrade", *(["--multirun"] if sweep else []), *(hydra_flags or []),
            *(["--config-dir", str(Path(config_dir).resolve())] if config_dir else []),
            *overrides]
    main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(
        task or run_task)
    with patched_argv(argv):
        main()


@dataclass
class PlannedTask:
    """Hydra's task for planned jobs (a sweep's, or `degrade train`'s one): each trains with
    the configuration its plan validated, found by its run folder (pickled with the job to
    wherever it runs); a job in a folder the plan did not name is validated where it runs."""

    configs: dict[str, Config] = field(default_factory=dict)  # resolved run folder -> config

    def __call__(self, composed: DictConfig) -> None:
        """Train the job Hydra started (`run_task`)."""
        run_task(composed, self.config_at(Path(HydraConfig.get().runtime.output_dir)))

    def add(self, folder: Path, config: Config) -> PlannedTask:
        """Plan the job whose run folder is `folder` to train with `config`; returns self."""
        self.configs[str(Path(folder).resolve())] = config
        return self

    def config_at(self, folder: Path) -> Config | None:
        """The validated config of the job whose run folder is `folder` (None: not planned)."""
        return self.configs.get(str(Path(folder).resolve()))


def run_task(composed: DictConfig, config: Config | None = None) -> None:
    """Hydra's task: train one run (with `trainer.fuse_with`, several fused); in a sweep a
    failure is recorded and the sweep goes on. `config` is `composed` already validated.

    A mistake or a file problem is one `error:` line (exit 1 for a single run); a signal
    stops after a checkpoint (exit 130, and a sweep stops too); a diverged run is a result.
    """
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    with contextlib.ExitStack() as member_logs:
        folders = [Path(HydraConfig.get().runtime.output_dir)]
        try:
            config = load_config(composed) if config is None else config
            folders = member_folders(config)
            member_logs.enter_context(_logging_also_to(folders[1:]))
            outcomes = train_all(config)
        except KeyboardInterrupt:  # Ctrl-C before training started: nothing to checkpoint yet
            log.error("error: interrupted before training started; nothing was lost")
            raise SystemExit(INTERRUPTED_EXIT) from None
        except Interrupted as error:
            log.error("error: %s", error)
            raise SystemExit(INTERRUPTED_EXIT) from None
        except RunLocked as error:
            # The folder is the lock holder's: nothing is written into it.
            if in_sweep:  # a sweep started at the same moment took the run first
                log.info("%s: %s", title(config), LEFT_TO_OTHER)
                return
            log.error("error: %s", one_line(error))
            raise SystemExit(FAILED_EXIT) from None
        except USER_ERRORS as error:
            write_error(folders, one_line(error), create=True)
            log.error("error: %s", one_line(error))
            if not in_sweep:
                raise SystemExit(FAILED_EXIT) from None
            return
        except Exception as error:  # a bug or a broken install: its traceback follows
            write_error(folders, error_line(error))
            raise
        for outcome in outcomes:  # one per run: fused runs each have their own
            _report(outcome, replace(config, seed=outcome.summary["seed"]))


def write_error(folders: list[Path], message: str, keep_existing: bool = False,
                create: bool = False) -> None:
    """Leave `message` in the error.txt of each run folder that has not finished: only where
    the folder exists unless `create`, and with `keep_existing` not where the run explained
    itself already. A full disk loses the file, never the error line already logged."""
    for folder in folders:
        if not (create or folder.is_dir()) or (folder / SUMMARY_FILE).exists():
            continue
        if keep_existing and (folder / ERROR_FILE).exists():
            continue
        with contextlib.suppress(StorageError, OSError):
            atomic_write_text(folder / ERROR_FILE, f"{message}\n")


@contextlib.contextmanager
def _logging_also_to(folders: list[Path]) -> Iterator[None]:
    """Log into each folder's train.log as Hydra logs into the job's own: the runs fused
    with the job's first run get the job's log too."""
    root = logging.getLogger()
    formatter = next((handler.formatter for handler in root.handlers
                      if isinstance(handler, logging.FileHandler)), None)
    handlers = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(folder / f"{HydraConfig.get().job.name}.log", delay=True)
        handler.setFormatter(formatter)
        handlers.append(handler)
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def _report(outcome: Outcome, config: Config) -> None:
    """Log how the run of `config` ended; an error.txt of an earlier attempt is removed."""
    (outcome.run_dir / ERROR_FILE).unlink(missing_ok=True)
    if outcome.status == "diverged":
        where = outcome.summary.get("diverged") or {}
        log.warning("%s: diverged at iteration %s (lr %s): the loss is not finite; its logs "
                    "are kept (%s)", title(config), where.get("iteration"), where.get("lr"),
                    outcome.run_dir)
        return
    log.info("%s", finished_line(read_run(outcome.run_dir), outcome.status))


def describe_run(folder: Path) -> str | None:
    """How the run in `folder` ended, in one line (final errors, or its error); None when
    `folder` holds no run."""
    record = read_run(folder)
    if record is None:
        return None
    if record.summary is not None:
        return finished_line(record, record.summary.get("status", "done"))
    if record.state == "running":  # its job has ended: the lock is another process's
        return f"{title(record.config)}: {LEFT_TO_OTHER} ({folder})"
    reason = last_line(folder / ERROR_FILE)
    return f"{title(record.config)}: {record.state}" + (f": {reason}" if reason else "") \
        + f" ({folder})"


def skipped_line(run: PlannedRun) -> str:
    """What `train` says of a finished run it leaves alone: its errors, or, when its folder
    cannot be read back, which file is damaged and how."""
    try:
        record = read_run(run.folder, strict=True)
    except DamagedFile as error:
        return f"{title(run.config)}: already finished, but {error} ({run.folder})"
    return finished_line(record, "skipped")


def finished_line(record: RunRecord | None, status: str) -> str:
    """`resnet-20-A seed 0: done, test error 8.61%, training error 0.71% (path)`."""
    if record is None or record.summary is None:
        return f"{status}"
    summary = record.summary
    errors = _errors_text(summary)
    what = "already finished" if status == "skipped" else summary["status"]
    return f"{title(record.config)}: {what}{errors} ({record.path})"


def title(config: Config) -> str:
    """`resnet-20-A seed 0`."""
    return f"{network_name(config)} seed {config.seed}"


def _errors_text(summary: dict[str, Any]) -> str:
    test, train_error = summary.get("final_test_error"), summary.get("final_train_error")
    if test is None or train_error is None:
        return ""
    return f", test error {test:.2f}%, training error {train_error:.2f}%"
