"""`hydra/sweeper=degrade`: Hydra's basic sweep, planned once, minus the runs that need no job.

The overrides (and a preset's `hydra.sweeper.params`) are expanded exactly as Hydra's basic
sweeper does and handed to `degradation.launch.session.run_sweep`, which composes each job
once, keeps one job per distinct run folder (`arch=plain,resnet shortcut=A,B` is 3 runs:
plain nets have no shortcut), drops finished runs (a rerun sweep launches nothing) and, with
`trainer.fuse=k`, makes runs that differ only in seed one job of up to k runs trained as one
fused model. The planned jobs go to the configured launcher in one batch, which gets each
job's configuration as planned (no second composition) and each run's validated config with
its task; a failed job is recorded in its runs' error.txt instead of stopping the sweep.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from degradation.errors import error_line, one_line
from hydra_plugins.degrade_launcher._core import JobFailed, JobInterrupted

if TYPE_CHECKING:
    from degradation.launch.plan import LaunchJob

log = logging.getLogger(__name__)


class DegradeSweeper(Sweeper):
    """Expands like BasicSweeper, then launches only the distinct runs not yet finished."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        # Imported here, not at the top: Hydra's plugin scan imports this module in every
        # command, and training's modules (torch) are needed only by a sweep.
        from degradation.launch.run import PlannedTask

        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None
        self.planned: dict[tuple[str, ...], DictConfig] = {}  # job overrides -> its config
        self.task = PlannedTask()
        self.results: list[JobReturn] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        """Keep the sweep's config and instantiate its launcher (Hydra's Sweeper API), with a
        config loader that hands it the planned configurations and the planned task."""
        self.config = config
        self.hydra_context = hydra_context
        planned_context = HydraContext(
            config_loader=_PlannedLoader(hydra_context.config_loader, self.planned),
            callbacks=hydra_context.callbacks)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=planned_context, task_function=self.task, config=config)

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        """Plan, launch what needs training, and record why failed jobs failed."""
        from degradation.launch import compose, session

        assert self.config is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        params = OmegaConf.to_container(OmegaConf.create(self.params), resolve=True)
        jobs = compose.sweep_jobs(params, arguments, OverridesParser.create(loader))
        session.run_sweep(jobs, lambda job: loader.load_sweep_config(self.config, job),
                          self._launch, here=self._jobs_run_here())
        return [self.results] if self.results else []

    def _jobs_run_here(self) -> bool:
        """Whether the launcher runs its jobs on this machine (what it lacks, they lack)."""
        return isinstance(self.launcher, BasicLauncher) or bool(
            getattr(self.launcher, "JOBS_RUN_HERE", False))

    def _launch(self, jobs: list[LaunchJob]) -> list[str | None]:
        """Launch the planned jobs; for each, why it failed (None: it did not)."""
        assert self.config is not None and self.launcher is not None
        _record_sweep(self.config)
        for job in jobs:
            if job.tree is not None:
                self.planned[tuple(job.overrides)] = job.tree
            self.task.add(job.runs[0].folder, job.config)
        self.results = list(self.launcher.launch([job.overrides for job in jobs],
                                                 initial_job_idx=0))
        return [None if result.status == JobStatus.COMPLETED
                else _failure(result._return_value) for result in self.results]


class _PlannedLoader:
    """The config loader a sweep's launcher gets: the configuration of a planned job is the
    one its plan composed (copied, with the sweep's resolver cache, as Hydra's loader
    does); anything else is Hydra's loader's."""

    def __init__(self, loader: Any, planned: Mapping[tuple[str, ...], DictConfig]) -> None:
        self.loader = loader
        self.planned = planned

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]
                          ) -> DictConfig:
        """The planned job's configuration, else Hydra's composition of it."""
        tree = self.planned.get(tuple(sweep_overrides))
        if tree is None:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        tree = copy.deepcopy(tree)
        OmegaConf.copy_cache(from_config=master_config, to_config=tree)
        return tree

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("loader", "planned"):  # while being unpickled
            raise AttributeError(name)
        return getattr(self.loader, name)


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
