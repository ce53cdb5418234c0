"""Launching runs through Hydra: one run, or a sweep (Hydra multirun) over any launcher.

    degrade train depth=56 arch=plain
    degrade sweep depth=20,56 arch=plain,resnet           # 4 runs
    degrade sweep experiment=fig6                          # the Figure 6 grid

Hydra owns composition, sweeping and launchers. Before anything starts, the overrides are
expanded exactly as Hydra's basic sweeper does (compose.py) and every resulting run is
composed and validated, so a bad value is reported in one line before any run begins. The
same plan runs inside the sweep (`hydra/sweeper=degrade`, the default): one job per distinct
run folder, and none for a finished run. Jobs go to `hydra/launcher=local` (parallel on this
machine, the default), `slurm` or any other Hydra launcher (hydra_plugins/degrade_launcher/).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from degradation.config import (
    CONF_DIR,
    Config,
    ConfigError,
    device_refusal,
    fusion_refusal,
    load_config,
    members,
)
from degradation.data.cifar import DataError, check_batch_size, check_split, ensure_cifar10
from degradation.errors import FAILED_EXIT, INTERRUPTED_EXIT, Interrupted, error_line, one_line
from degradation.launch.compose import (
    compose_config,
    expand_for_launch,
    patched_argv,
    refuse_run_folder_overrides,
    register,
)
from degradation.models import ModelConfigError
from degradation.runs import (
    CHECKPOINT,
    ERROR_FILE,
    SUMMARY_FILE,
    SUMMARY_RECOVERY,
    RunRecord,
    data_of,
    identity_hash,
    last_line,
    network_name,
    read_run,
    read_summary,
    run_dir,
)
from degradation.storage import (
    DamagedFile,
    RunLock,
    RunLocked,
    StorageError,
    atomic_write_text,
    check_writable,
)
from degradation.training.loop import train_all
from degradation.training.summary import Outcome

USER_ERRORS = (ConfigError, DataError, ModelConfigError, StorageError)

log = logging.getLogger("degrade")


@dataclass
class PlannedRun:
    """One run a command asked for: its overrides, config, folder and what will happen."""

    overrides: list[str]
    config: Config
    folder: Path
    action: str  # start, resume, skip (finished), retrain (finished, --force), running
    here: bool = True  # trained on this machine (False: the launcher sends it to a cluster)


def plan(overrides: list[str], sweep: bool, force: bool = False, fetch: bool = False,
         config_dir: Path | None = None) -> list[PlannedRun]:
    """Expand, compose and validate every run asked for, one entry per distinct folder.

    With `fetch`, missing data is downloaded here, once, before anything is launched.
    """
    refuse_run_folder_overrides(overrides)
    jobs, here = expand_for_launch(overrides, config_dir) if sweep else ([overrides], True)
    cuda = torch.cuda.is_available() if here else None  # what the runs' machine has
    planned = plan_jobs(jobs, lambda job: compose_config(job, config_dir), force, fetch=fetch,
                        cuda=cuda)
    return [replace(run, here=here) for run in planned]


def plan_jobs(jobs: list[list[str]], compose: Callable[[list[str]], Config],
              force: bool = False, fetch: bool = False, cuda: bool | None = None
              ) -> list[PlannedRun]:
    """Compose each job with `compose`, keep the first job of each run folder, and say what
    happens to it: start, resume (a checkpoint is there), skip (finished) or retrain (--force).

    Everything a run would otherwise find out once started is refused here, before any
    folder exists: missing data (downloaded first with `fetch`), a split or batch the data
    cannot hold, and settings the machine cannot train (`cuda`: whether the runs' machine has
    CUDA; None: not known here).
    """
    planned: dict[Path, PlannedRun] = {}
    ensured: set[tuple[str, bool]] = set()
    composed = [(job, compose(job)) for job in jobs]  # every bad value before any download
    for job, config in composed:
        source = (config.data.root, config.data.download)
        # One download, in this process, for every run; without `fetch` only missing data
        # that may not be downloaded is refused.
        if source not in ensured and (fetch or not config.data.download):
            ensure_cifar10(Path(config.data.root), config.data.download)
            ensured.add(source)
        folder = run_dir(config)
        if folder in planned:  # e.g. plain nets under several shortcut options
            continue
        check_writable(folder)  # Hydra creates the folder before any run code could check
        if RunLock(folder).holder() is not None:
            action = "running"  # another process trains it; launching it again would collide
        elif (folder / SUMMARY_FILE).exists():
            if not force:
                _check_summary(folder)
            action = "retrain" if force else "skip"
        else:
            action = "resume" if (folder / CHECKPOINT).exists() else "start"
        if action not in ("skip", "running"):
            check_trainable(config, cuda)
        planned[folder] = PlannedRun(job, config, folder, action)
    return list(planned.values())


def check_trainable(config: Config, cuda: bool | None) -> None:
    """Refuse a run that could only fail once started: its split and batch against its data,
    its precision and BN options against the machine (`device_refusal`)."""
    train_images = data_of(config).train_images
    check_split(config.data.val_split, train_images)
    check_batch_size(config.train.batch_size, train_images - config.data.val_split)
    refusal = device_refusal(config, cuda)
    if refusal is not None:
        raise ConfigError(refusal)


def _check_summary(folder: Path) -> None:
    """Refuse a finished run whose summary.json is damaged, saying how to recover it."""
    try:
        read_summary(folder)
    except DamagedFile as error:
        raise DamagedFile(f"{error}: {SUMMARY_RECOVERY}") from None


def to_launch(planned: list[PlannedRun]) -> list[PlannedRun]:
    """The runs a sweep launches: all but the finished and those trained elsewhere."""
    return [run for run in planned if run.action not in ("skip", "running")]


def fuse_runs(planned: list[PlannedRun]) -> list[list[PlannedRun]]:
    """The jobs that train `planned`: runs that differ only in seed share a job, up to
    `trainer.fuse` of them (one fused model, `degradation.training.fused`); every other run is a job
    of its own. Jobs keep the order of their first run."""
    jobs: list[list[PlannedRun]] = []
    open_jobs: dict[tuple[Path, str], list[PlannedRun]] = {}
    for run in planned:
        config = run.config
        if config.trainer.fuse == 1 or not fusable(config):
            jobs.append([run])
            continue
        # The folder of its runs but for the seed: output_dir and network, then the recipe.
        key = (run_dir(config).parent, identity_hash(config))
        job = open_jobs.get(key)
        if job is None or len(job) == config.trainer.fuse:
            job = open_jobs[key] = []
            jobs.append(job)
        job.append(run)
    return jobs


def fusable(config: Config) -> bool:
    """Whether a sweep may fuse the run with others: it can be, and names no partners itself."""
    return fusion_refusal(config) is None and not config.trainer.fuse_with


def job_overrides(job: list[PlannedRun]) -> list[str]:
    """The overrides of a job: its first run's, naming the other runs' seeds when fused."""
    first, others = job[0], [run.config.seed for run in job[1:]]
    if not others:
        return first.overrides
    return [*first.overrides, f"trainer.fuse_with=[{','.join(map(str, others))}]"]


def member_folders(config: Config) -> list[Path]:
    """The folders of the run and of the runs trained fused with it (`trainer.fuse_with`)."""
    return [run_dir(member) for member in members(config)]


# How a sweep reports a run it found another live process training (a sweep started at the
# same moment took it first): not a failure, and not trained twice.
LEFT_TO_OTHER = "being trained by another process, left to it"


def describe_run(folder: Path) -> str | None:
    """How the run in `folder` ended, in one line (final errors, or its error); None when
    `folder` holds no run."""
    record = read_run(folder)
    if record is None:
        return None
    if record.summary is not None:
        return finished_line(record, record.summary.get("status", "done"))
    if record.state == "running":  # its job has ended: the lock is another process's
        return f"{_title(record.config)}: {LEFT_TO_OTHER} ({folder})"
    reason = last_line(folder / ERROR_FILE)
    return f"{_title(record.config)}: {record.state}" + (f": {reason}" if reason else "") \
        + f" ({folder})"


def record_failure(folder: Path, message: str) -> None:
    """Leave `message` in the run's error.txt unless the run already explained itself there."""
    if folder.is_dir() and not (folder / ERROR_FILE).exists() \
            and not (folder / SUMMARY_FILE).exists():
        atomic_write_text(folder / ERROR_FILE, f"{message}\n")


def set_aside(folder: Path) -> Path:
    """Move a finished run out of the way before retraining it (never deleted)."""
    target = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(folder), str(target))
    return target


def launch(overrides: list[str], sweep: bool, config_dir: Path | None = None,
           hydra_flags: list[str] | None = None) -> None:
    """Hand the overrides to Hydra: a single run, or a multirun through its launcher.

    `hydra_flags` are Hydra's own command-line flags (`--info`); `config_dir` goes onto
    Hydra's search path (`--config-dir`).
    """
    register(config_dir)
    argv = ["degrade", *(["--multirun"] if sweep else []), *(hydra_flags or []),
            *(["--config-dir", str(Path(config_dir).resolve())] if config_dir else []),
            *overrides]
    main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(
        run_task)
    with patched_argv(argv):
        main()


def run_task(composed: DictConfig) -> None:
    """Hydra's task: train one run (with `trainer.fuse_with`, several fused); in a sweep a
    failure is recorded and the sweep goes on.

    A mistake or a file problem is one `error:` line (exit 1 for a single run); a signal
    stops after a checkpoint (exit 130, and a sweep stops too); a diverged run is a result.
    """
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    with contextlib.ExitStack() as member_logs:
        folders = [Path(HydraConfig.get().runtime.output_dir)]
        try:
            config = load_config(composed)
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
            if not in_sweep:
                _record_error(error, folders, in_sweep)
            # A sweep started at the same moment took the run first: it is left to that one.
            log.info("%s: %s", _title(config), LEFT_TO_OTHER)
            return
        except USER_ERRORS as error:
            _record_error(error, folders, in_sweep)
            return
        except Exception as error:  # a bug or a broken install: its traceback follows
            for folder in folders:
                if folder.is_dir() and not (folder / SUMMARY_FILE).exists():
                    with contextlib.suppress(StorageError, OSError):
                        atomic_write_text(folder / ERROR_FILE, f"{error_line(error)}\n")
            raise
        for outcome in outcomes:  # one per run: fused runs each have their own
            _report(outcome, replace(config, seed=outcome.summary["seed"]))


def _record_error(error: Exception, folders: list[Path], in_sweep: bool) -> None:
    """One `error:` line, in each run's error.txt too; exit 1 unless in a sweep."""
    message = one_line(error)
    # The folder belongs to the process holding its lock; a full disk takes this file too.
    if not isinstance(error, RunLocked):
        for folder in folders:
            with contextlib.suppress(StorageError, OSError):
                atomic_write_text(folder / ERROR_FILE, f"{message}\n")
    log.error("error: %s", message)
    if not in_sweep:
        raise SystemExit(FAILED_EXIT) from None


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
                    "are kept (%s)", _title(config), where.get("iteration"), where.get("lr"),
                    outcome.run_dir)
        return
    log.info("%s", finished_line(read_run(outcome.run_dir), outcome.status))


def skipped_line(run: PlannedRun) -> str:
    """What `train` says of a finished run it leaves alone: its errors, or, when its folder
    cannot be read back, which file is damaged and how."""
    try:
        record = read_run(run.folder, strict=True)
    except DamagedFile as error:
        return f"{_title(run.config)}: already finished, but {error} ({run.folder})"
    return finished_line(record, "skipped")


def finished_line(record: RunRecord | None, status: str) -> str:
    """`resnet-20-A seed 0: done, test error 8.61%, training error 0.71% (path)`."""
    if record is None or record.summary is None:
        return f"{status}"
    summary = record.summary
    errors = _errors_text(summary)
    what = "already finished" if status == "skipped" else summary["status"]
    return f"{_title(record.config)}: {what}{errors} ({record.path})"


def _title(config: Config) -> str:
    return f"{network_name(config)} seed {config.seed}"


def _errors_text(summary: dict[str, Any]) -> str:
    test, train_error = summary.get("final_test_error"), summary.get("final_train_error")
    if test is None or train_error is None:
        return ""
    return f", test error {test:.2f}%, training error {train_error:.2f}%"
