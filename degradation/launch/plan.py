"""The plan of a command: every run it asks for, its folder and what will happen to it.

    degrade train depth=56 arch=plain
    degrade sweep depth=20,56 arch=plain,resnet           # 4 runs
    degrade sweep experiment=fig6 --dry-run                # the Figure 6 grid, planned only

A plan is made once. Each run is composed once (Hydra), validated once (`Config`) and its
data checked once, before any run starts: a bad value is one line and nothing is written.
In a sweep, the plan is made inside Hydra's sweep (`hydra/sweeper=degrade`) from the very
configurations its launcher will hand to the runs; `--dry-run` prints that plan and the
launch executes it (session.py). `degrade train` plans its run here, then hands Hydra's run
mode the planned folder and configuration: Hydra composes it again only to make the folder
and its logs. Nothing here starts a run.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from degradation.config import (
    Config,
    ConfigError,
    device_refusal,
    fusion_refusal,
    members,
)
from degradation.data.cifar import DataError, check_batch_size, check_split, ensure_cifar10
from degradation.launch.compose import compose_tree, config_of, refuse_run_folder_overrides
from degradation.models import ModelConfigError
from degradation.runs import (
    CHECKPOINT,
    SUMMARY_FILE,
    SUMMARY_RECOVERY,
    data_of,
    identity_hash,
    read_summary,
    run_dir,
    runs_count,
)
from degradation.storage import DamagedFile, RunLock, StorageError, check_writable

USER_ERRORS = (ConfigError, DataError, ModelConfigError, StorageError)

# What a plan decides for each run.
START, RESUME, SKIP, RETRAIN, RUNNING = "start", "resume", "skip", "retrain", "running"
ACTIONS = (START, RESUME, SKIP, RETRAIN, RUNNING)


@dataclass
class PlannedRun:
    """One run a command asked for: its overrides, config, folder and what will happen."""

    overrides: list[str]
    config: Config
    folder: Path
    action: str  # one of ACTIONS: skip is finished, retrain finished and --force, running
    # is trained by another process now
    here: bool = True  # trained on this machine (False: the launcher sends it to a cluster)
    # Hydra's composition of the run, with its `hydra` node when planned inside a sweep: the
    # very configuration its job gets.
    tree: DictConfig | None = field(default=None, repr=False, compare=False)


@dataclass
class LaunchJob:
    """One job of a sweep: a run, or runs that differ only in seed trained as one fused model."""

    runs: list[PlannedRun]
    overrides: list[str]  # the first run's, naming the others' seeds when fused
    config: Config  # the first run's, with `trainer.fuse_with` the others' seeds
    tree: DictConfig | None = field(default=None, repr=False, compare=False)


@dataclass
class Plan:
    """Every run a command asked for, one per distinct folder, and the jobs that train those
    to be trained."""

    runs: list[PlannedRun]
    jobs: list[LaunchJob]

    def count(self, action: str) -> int:
        """How many runs the plan gives `action`."""
        return sum(run.action == action for run in self.runs)

    def summary(self) -> str:
        """`4 runs: 2 to start, 1 to resume, 0 to retrain, 1 finished (skipped)`."""
        busy = self.count(RUNNING)
        return (f"{runs_count(len(self.runs))}: {self.count(START)} to start, "
                f"{self.count(RESUME)} to resume, {self.count(RETRAIN)} to retrain, "
                f"{self.count(SKIP)} finished (skipped)"
                + (f", {busy} being trained elsewhere" if busy else ""))

    def listing(self) -> list[str]:
        """One line per run: what happens to it, its folder, its overrides, its fused job."""
        fused_with = {job.runs[0].folder: [run.config.seed for run in job.runs[1:]]
                      for job in self.jobs if len(job.runs) > 1}
        lines = []
        for run in self.runs:
            seeds = fused_with.get(run.folder)
            lines.append(f"  {run.action:8} {run.folder}  [{' '.join(run.overrides)}]"
                         + (f"  (one fused job with seeds {seeds})" if seeds else ""))
        return lines


def plan(overrides: list[str], sweep: bool, force: bool = False, fetch: bool = False,
         config_dir: Path | None = None) -> list[PlannedRun]:
    """Expand, compose and validate every run asked for, one entry per distinct folder,
    outside Hydra's sweep (`degrade train`, `status`): a sweep plans inside it (`plan_runs`).

    With `fetch`, missing data is downloaded here, once, before anything is launched.
    """
    from degradation.launch.compose import expand

    refuse_run_folder_overrides(overrides)
    jobs = expand(overrides, config_dir) if sweep else [overrides]
    return plan_runs(jobs, lambda job: compose_tree(job, with_hydra=False,
                                                    config_dir=config_dir),
                     force, fetch=fetch, cuda=torch.cuda.is_available())


def plan_runs(jobs: list[list[str]], compose: Callable[[list[str]], DictConfig],
              force: bool = False, fetch: bool = False, cuda: bool | None = None,
              here: bool = True) -> list[PlannedRun]:
    """Compose each job once with `compose`, validate it once, keep the first job of each
    run folder, and say what happens to it: start, resume (a checkpoint is there), skip
    (finished), retrain (--force) or running (another process trains it).

    Everything a run would otherwise find out once started is refused here, before any
    folder exists: missing data (downloaded first with `fetch`; each data folder checked
    once), a split or batch the data cannot hold, and settings the machine cannot train
    (`cuda`: whether the runs' machine has CUDA; None: not known here).
    """
    planned: dict[Path, PlannedRun] = {}
    ensured: set[tuple[str, bool]] = set()
    composed = []
    for job in jobs:  # every bad value before any download
        tree = compose(job)
        composed.append((job, config_of(tree), tree))
    for job, config, tree in composed:
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
        action = _action(folder, force)
        if action not in (SKIP, RUNNING):
            check_trainable(config, cuda)
        planned[folder] = PlannedRun(job, config, folder, action, here, tree)
    return list(planned.values())


def _action(folder: Path, force: bool) -> str:
    """What happens to the run in `folder`."""
    if RunLock(folder).holder() is not None:
        return RUNNING  # another process trains it; launching it again would collide
    if (folder / SUMMARY_FILE).exists():
        if not force:
            _check_summary(folder)
        return RETRAIN if force else SKIP
    return RESUME if (folder / CHECKPOINT).exists() else START


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


def to_launch(planned: Sequence[PlannedRun]) -> list[PlannedRun]:
    """The runs a sweep launches: all but the finished and those trained elsewhere."""
    return [run for run in planned if run.action not in (SKIP, RUNNING)]


def sweep_plan(planned: list[PlannedRun]) -> Plan:
    """The plan of a sweep: its runs, and the jobs that train those to be trained."""
    return Plan(planned, [launch_job(job) for job in fuse_runs(to_launch(planned))])


def fuse_runs(planned: list[PlannedRun]) -> list[list[PlannedRun]]:
    """The jobs that train `planned`: runs that differ only in seed share a job, up to
    `trainer.fuse` of them (one fused model, `degradation.training.fused`); every other run
    is a job of its own. Jobs keep the order of their first run."""
    jobs: list[list[PlannedRun]] = []
    open_jobs: dict[tuple[Path, str], list[PlannedRun]] = {}
    for run in planned:
        config = run.config
        if config.trainer.fuse == 1 or not fusable(config):
            jobs.append([run])
            continue
        # The folder of its runs but for the seed: output_dir and network, then the recipe.
        key = (run.folder.parent, identity_hash(config))
        job = open_jobs.get(key)
        if job is None or len(job) == config.trainer.fuse:
            job = open_jobs[key] = []
            jobs.append(job)
        job.append(run)
    return jobs


def fusable(config: Config) -> bool:
    """Whether a sweep may fuse the run with others: it can be, and names no partners itself."""
    return fusion_refusal(config) is None and not config.trainer.fuse_with


def launch_job(runs: list[PlannedRun]) -> LaunchJob:
    """The job that trains `runs`: the first run's configuration, naming the others' seeds
    (`trainer.fuse_with`) when fused, with its run folder written out so that no job has to
    work it out again."""
    first, others = runs[0], [run.config.seed for run in runs[1:]]
    config, overrides = first.config, first.overrides
    if others:
        config = replace(config, trainer=replace(config.trainer, fuse_with=others))
        overrides = [*overrides, f"trainer.fuse_with=[{','.join(map(str, others))}]"]
    tree = None if first.tree is None else _job_tree(first, others, overrides)
    return LaunchJob(runs, overrides, config, tree)


def _job_tree(first: PlannedRun, others: list[int], overrides: list[str]) -> DictConfig:
    """The first run's composition as its job's: fused seeds set as their override would, and
    the run folder as a plain path (`hydra.sweep.subdir`, below `hydra.sweep.dir`)."""
    tree = copy.deepcopy(first.tree)
    with open_dict(tree):
        if others:
            OmegaConf.update(tree, "trainer.fuse_with", others)
            if "hydra" in tree:
                tree.hydra.overrides.task = overrides
        if "hydra" in tree:
            tree.hydra.sweep.dir = str(Path(first.config.output_dir))
            tree.hydra.sweep.subdir = str(first.folder.relative_to(first.config.output_dir))
    return tree


def job_overrides(job: list[PlannedRun]) -> list[str]:
    """The overrides of a job: its first run's, naming the other runs' seeds when fused."""
    return launch_job(job).overrides


def member_folders(config: Config) -> list[Path]:
    """The folders of the run and of the runs trained fused with it (`trainer.fuse_with`)."""
    return [run_dir(member) for member in members(config)]


def set_aside(folder: Path) -> Path:
    """Move a finished run out of the way before retraining it (never deleted)."""
    target = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(folder), str(target))
    return target
