"""What `degrade train` and `degrade sweep` do, from the plan to the last line.

    degrade train depth=56 arch=plain            # train: plan one run, then Hydra runs it
    degrade sweep depth=20,56 arch=plain,resnet  # sweep: Hydra's multirun, planned inside it

A sweep is planned once, inside Hydra's sweep, by `run_sweep`, which `hydra/sweeper=degrade`
calls with Hydra's composition and its launcher: the runs are composed there exactly as the
launcher hands them to the jobs, so the plan `--dry-run` prints is the plan that runs. The
command's own options (`--force`, `--dry-run`) reach it through the `SweepRequest` that
`sweep` hands over for the length of the multirun.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from degradation.config import ConfigError
from degradation.console import override
from degradation.errors import BAD_INPUT_EXIT, DegradeError
from degradation.help_text import INFO_TOPICS
from degradation.launch import compose
from degradation.launch.compose import check_sweep, refuse_run_folder_overrides
from degradation.launch.estimate import estimate_warning
from degradation.launch.plan import (
    RETRAIN,
    RUNNING,
    SKIP,
    USER_ERRORS,
    LaunchJob,
    Plan,
    member_folders,
    plan,
    plan_runs,
    set_aside,
    sweep_plan,
    to_launch,
)
from degradation.launch.run import (
    LEFT_TO_OTHER,
    PlannedTask,
    launch,
    skipped_line,
    write_error,
)
from degradation.launch.sweeps import recorded
from degradation.runs import ERROR_FILE, SUMMARY_FILE, last_line, read_run
from degradation.storage import RunLock
from degradation.training.device import resolve_device

log = logging.getLogger("degrade")
Echo = Callable[..., None]  # `typer.echo`: echo(text, err=False)


class CommandFailed(DegradeError, RuntimeError):
    """A command that ran and failed: exit 1, its message (if any) on stderr."""


def inspect(overrides: list[str], sweep: bool, cfg: str | None, resolve: bool,
            package: str | None, info: bool, config_dir: Path | None, echo: Echo) -> bool:
    """Hydra's inspection flags: print what `--cfg` or `--info [TOPIC]` asks for; False when
    neither was given. A sweep's `--cfg` is one YAML document per run."""
    if cfg is not None and cfg not in ("job", "hydra", "all"):
        raise ConfigError(f"--cfg {cfg!r} is not one of: job, hydra, all")
    if cfg is None and (resolve or package is not None):  # Hydra refuses --resolve alone too
        raise ConfigError(f"{'--resolve' if resolve else '--package'} goes only with --cfg "
                          "job, hydra or all (it says what to print, it runs nothing)")
    if cfg is None and not info:
        return False
    # An override always has `=`, so a bare word among them is --info's topic.
    topic = next((word for word in overrides if word in INFO_TOPICS), "all")
    overrides = [word for word in overrides if word != topic]
    if cfg is not None:
        jobs = compose.expand(overrides, config_dir) if sweep else [overrides]
        echo("---\n".join(compose.show_config(job, cfg, resolve, package, config_dir)
                         for job in jobs), nl=False)
        return True
    fixed = compose.fixed_overrides(overrides)  # Hydra's --info shows one config
    compose.show_config(fixed, "job", config_dir=config_dir)  # a bad value: one line
    launch(fixed, sweep=False, config_dir=config_dir, hydra_flags=["--info", topic])
    return True


def validated_yaml(overrides: list[str], config_dir: Path | None) -> str:
    """The validated configuration of one run as YAML (`train --show-config`)."""
    import yaml

    refuse_run_folder_overrides(overrides)
    config = compose.compose_config(overrides, config_dir)
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def train(overrides: list[str], force: bool, config_dir: Path | None, echo: Echo) -> None:
    """Train one run: refused if another process trains it, left alone if finished (unless
    `force`, which keeps the old folder beside it), resumed if interrupted."""
    planned = plan(overrides, sweep=False, force=force, fetch=True, config_dir=config_dir)[0]
    if planned.action == RUNNING:
        lock = RunLock(planned.folder)
        raise CommandFailed(str(lock.refusal(lock.holder() or "unknown")))
    resolve_device(planned.config.device)  # checked here only: sweeps may run elsewhere
    if planned.action == SKIP and not planned.config.trainer.fuse_with:
        # (With fuse_with the runs fused with it may be unfinished: training skips each
        # finished one and says so.)
        echo(skipped_line(planned) + "; --force retrains it")
        return
    _warn_if_long([planned], echo)
    if force:  # the runs fused with it (trainer.fuse_with) are retrained too
        for folder in member_folders(planned.config):
            if (folder / SUMMARY_FILE).exists():
                echo(f"previous run kept in {set_aside(folder)}")
    # Hydra gets the folder the plan named, so neither its run folder nor its job is
    # validated again (`hydra.run.dir` would otherwise validate to name the folder).
    launch([*overrides, override("hydra.run.dir", str(planned.folder))], sweep=False,
           config_dir=config_dir,
           task=PlannedTask().add(planned.folder, planned.config))


@dataclass
class SweepRequest:
    """What `degrade sweep` asks of the sweep it starts, and what the sweep leaves for it."""

    force: bool = False
    dry_run: bool = False
    echo: Echo = print
    plan: Plan | None = None  # set once the sweep is planned
    error: Exception | None = None  # a refusal while planning (the sweep then exits 2)


_request: SweepRequest | None = None  # the sweep `degrade sweep` runs in this process now


def sweep(overrides: list[str], force: bool, dry_run: bool, config_dir: Path | None,
          echo: Echo) -> None:
    """Plan the sweep once and, unless `dry_run`, launch it; then say how its runs ended.

    A bad value is a USER_ERRORS exception before any run starts; runs that failed make it
    a `CommandFailed` once every run has ended.
    """
    global _request
    refuse_run_folder_overrides(overrides)
    check_sweep(overrides, config_dir)  # before Hydra starts, which would not say it in a line
    request = SweepRequest(force, dry_run, echo)
    _request = request
    try:
        launch(overrides, sweep=True, config_dir=config_dir)
    except SystemExit:
        if request.error is None:
            raise
    finally:
        _request = None
    if request.error is not None:
        raise request.error
    if not dry_run and request.plan is not None and request.plan.jobs:
        _tally(request.plan, echo)


def run_sweep(jobs: list[list[str]], compose: Callable[[list[str]], DictConfig],
              launch_jobs: Callable[[list[LaunchJob]], Sequence[str | None]],
              here: bool) -> Plan:
    """The sweep, inside Hydra: plan `jobs` (each composed once by `compose`), print the plan,
    and unless it is a dry run launch its jobs with `launch_jobs`, which returns for each
    job why it failed (None: it did not). `here`: whether the jobs run on this machine.
    """
    request = _request or SweepRequest()
    try:
        runs = plan_runs(jobs, compose, request.force, fetch=not request.dry_run,
                         cuda=torch.cuda.is_available() if here else None, here=here)
    except USER_ERRORS as error:  # said in one line by `sweep`, after Hydra has stopped
        request.error = error
        raise SystemExit(BAD_INPUT_EXIT) from None
    planned = request.plan = sweep_plan(runs)
    todo = to_launch(runs)
    request.echo(planned.summary())
    busy = planned.count(RUNNING)
    log.info(f"Sweep of {len(jobs)} jobs: {len(runs)} distinct runs, "
             f"{len(runs) - len(todo) - busy} finished (skipped), "
             + (f"{busy} being trained elsewhere, " if busy else "") + f"{len(todo)} to launch")
    _warn_if_long(todo, request.echo)
    if request.dry_run:
        for line in planned.listing():
            request.echo(line)
        return planned
    for run in runs:
        if run.action == RETRAIN:
            set_aside(run.folder)
    if not planned.jobs:
        return planned
    if len(planned.jobs) < len(todo):
        log.info(f"{len(todo)} runs in {len(planned.jobs)} jobs: runs that differ only in "
                 "seed train fused (trainer.fuse)")
    with recorded([(run.config, run.folder) for run in runs]):  # for `degrade status`
        failures = launch_jobs(planned.jobs)
    for job, failure in zip(planned.jobs, failures, strict=True):
        if failure is not None:
            write_error([run.folder for run in job.runs], failure, keep_existing=True)
    return planned


def _warn_if_long(runs: Sequence, echo: Echo) -> None:
    """Say, before they start, when the runs would take over an hour on this machine's CPU."""
    warning = estimate_warning(list(runs))
    if warning:
        echo(warning, err=True)


def _tally(planned: Plan, echo: Echo) -> None:
    """How the sweep's runs ended; its TensorBoard study view; `CommandFailed` if any failed."""
    runs = planned.runs
    _write_study(runs)
    records = [read_run(run.folder) for run in runs]
    states = [record.state if record else "failed" for record in records]
    done = sum(state in ("done", "diverged") for state in states)
    others = [run for run, state in zip(runs, states, strict=True) if state == "running"]
    echo(f"sweep finished: {done}/{len(runs)} runs ended "
         f"({states.count('diverged')} diverged)"
         + (f", {len(others)} being trained by another process" if others else ""))
    for run in others:  # every job of this sweep has ended: the lock is another process's
        echo(f"  {run.folder}: {LEFT_TO_OTHER}")
    failed = [run for run, state in zip(runs, states, strict=True)
              if state not in ("done", "diverged", "running")]
    for run in failed:
        # error.txt as far as it reads: a binary file or a folder in its place is no reason
        # to end in a traceback
        reason = last_line(run.folder / ERROR_FILE) or "did not finish"
        echo(f"  failed: {run.folder}: {reason}", err=True)
    if failed:
        raise CommandFailed("")


def _write_study(runs: Sequence) -> None:
    """The study's TensorBoard view (Figure 6 layout, mean curves) for each output folder."""
    from degradation.analysis.board import study_command
    from degradation.analysis.results import AnalysisError

    for output_dir in dict.fromkeys(Path(run.config.output_dir) for run in runs):
        with contextlib.suppress(AnalysisError):  # no run has logged yet: nothing to show
            study_command(output_dir)
