"""`hydra/sweeper=degrade`: Hydra's basic sweep, minus the runs that need no job.

The overrides (and a preset's `hydra.sweeper.params`) are expanded exactly as Hydra's basic
sweeper does, each job is composed, and `degradation.launch.plan.plan_jobs` keeps one job per
distinct run folder (`arch=plain,resnet shortcut=A,B` is 3 runs: plain nets have no shortcut)
and drops finished runs, so a rerun sweep launches nothing. With `trainer.fuse=k`, runs that
differ only in seed become one job of up to k runs trained as one fused model. The jobs go
to the configured launcher in one batch; a failed job is listed at the end instead of
stopping the sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from degradation.errors import error_line, one_line
from hydra_plugins.degrade_launcher._core import JobFailed, JobInterrupted

log = logging.getLogger(__name__)


class DegradeSweeper(Sweeper):
    """Expands like BasicSweeper, then launches only the distinct runs not yet finished."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        """Keep the sweep's config and instantiate its launcher (Hydra's Sweeper API)."""
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        """Plan, launch what needs training, and record why failed jobs failed."""
        from degradation.launch import compose, plan

        assert self.config is not None and self.hydra_context is not None
        assert self.launcher is not None
        _record_sweep(self.config)
        loader = self.hydra_context.config_loader
        params = OmegaConf.to_container(OmegaConf.create(self.params), resolve=True)
        jobs = compose.sweep_jobs(params, arguments, OverridesParser.create(loader))
        # The data is fetched here, once, before any job starts (the CLI has done it already
        # when the sweep came through `degrade sweep`).
        planned = plan.plan_jobs(
            jobs, lambda job: compose.config_of(loader.load_sweep_config(self.config, job)),
            fetch=True)
        todo = plan.to_launch(planned)
        busy = sum(run.action == "running" for run in planned)
        elsewhere = f"{busy} being trained elsewhere, " if busy else ""
        log.info(f"Sweep of {len(jobs)} jobs: {len(planned)} distinct runs, "
                 f"{len(planned) - len(todo) - busy} finished (skipped), {elsewhere}"
                 f"{len(todo)} to launch")
        if not todo:
            return []
        jobs = plan.fuse_runs(todo)
        if len(jobs) < len(todo):
            log.info(f"{len(todo)} runs in {len(jobs)} jobs: runs that differ only in seed "
                     "train fused (trainer.fuse)")
        results = self.launcher.launch([plan.job_overrides(job) for job in jobs],
                                       initial_job_idx=0)
        for job, result in zip(jobs, results, strict=True):
            if result.status != JobStatus.COMPLETED:
                message = _failure(result._return_value)
                if message is not None:
                    for run in job:
                        plan.record_failure(run.folder, message)
        return [list(results)]


def _record_sweep(config: DictConfig) -> None:
    """Hydra's record of a sweep, as its basic sweeper writes it: the sweep's whole config in
    `hydra.sweep.dir`/multirun.yaml (output_dir; the latest sweep's)."""
    from degradation.storage import atomic_write_text

    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(config))


def _failure(error: object) -> str | None:
    """The line error.txt gets for a failed job; None for a run stopped by a signal."""
    if isinstance(error, JobInterrupted):
        return None  # it resumes from its checkpoint: interrupted, not failed
    if isinstance(error, JobFailed) or not isinstance(error, BaseException):
        return one_line(error)
    return error_line(error)
