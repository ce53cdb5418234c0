"""`degrade status`: every run under an output folder, every run a sweep's overrides ask for
and every run of a sweep under way there, one line each, once or refreshed until none can
change (`--watch`). What each line shows, and the refreshing, is `analysis/watch.py`'s;
which runs overrides or a sweep under way name is the launch side's (compose.py, sweeps.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TextIO

from degradation.analysis import watch
from degradation.analysis.results import AnalysisError, load_runs
from degradation.analysis.watch import RunView, not_started, run_line, status_line, view_of
from degradation.config import Config
from degradation.console import override
from degradation.launch import compose, sweeps
from degradation.package import config_default
from degradation.runs import run_dir
from degradation.storage import StorageError, path_refusal


class Status:
    """What `degrade status` shows, read anew at each `snapshot()`.

    `path`: the folder to search for runs (default: that of the overrides, else outputs);
    `overrides`: a sweep's KEY=VALUE, whose runs are listed too, as not started while their
    folder holds no run yet. So are the runs of a sweep under way there (`launch.sweeps`).
    Bad overrides raise the launchers' errors (`launch.plan.USER_ERRORS`), a path that
    cannot name a folder a StorageError.
    """

    def __init__(self, path: Path | None, overrides: list[str], recursive: bool = False
                 ) -> None:
        refusal = path_refusal(path) if path is not None else None
        if refusal is not None:  # before the sweeps' folder under it is looked at
            raise StorageError(f"{path} cannot be read: {refusal}")
        if path is not None and overrides and not any(
                compose.override_key(word) == "output_dir" for word in overrides):
            # The runs asked for are PATH's (quoted for Hydra: `out,v2` is one folder).
            overrides = [*overrides, override("output_dir", str(path))]
        self.configs: list[Config] = []
        if overrides:
            self.configs = [compose.compose_config(job) for job in compose.expand(overrides)]
            for config in self.configs:  # a run's folder names its data: damaged data fails here
                run_dir(config)
        self.root = path if path is not None else Path(
            self.configs[0].output_dir if self.configs else config_default("output_dir"))
        self.recursive = recursive
        self._asked = watch.configs_views(self.configs)
        self._planned: dict[Path, RunView] = {}  # kept once seen: what a sweep leaves unstarted
        self._sweeps: list[list[sweeps.RecordedRun]] | None = None

    def under_way(self) -> bool:
        """Whether a sweep is under way in the folder; the snapshot that follows (as
        `watch.watch` asks) lists its runs as read here, without reading them again."""
        self._sweeps = sweeps.live_sweeps(self.root)
        return bool(self._sweeps)

    def snapshot(self) -> list[RunView]:
        """Every run, each once: those on disk, then those asked for or planned by a sweep
        whose folder holds no run yet. Raises AnalysisError when there is none to show."""
        live = self._sweeps if self._sweeps is not None else sweeps.live_sweeps(self.root)
        self._sweeps = None  # the next snapshot reads them anew, unless under_way does first
        try:
            views = [view_of(record) for record in load_runs(self.root, self.recursive,
                                                             inconsistent=True)]
        except AnalysisError:
            if not self.configs and not live:
                raise
            views = []
        for sweep in live:
            for run in sweep:
                self._planned.setdefault(run.folder, not_started(run.network, run.seed,
                                                                 run.iterations, run.folder))
        # One row per folder: plain nets under several shortcuts are one run, and a run on
        # disk is the one asked for (its path may be written another way).
        shown = {view.path.resolve() for view in views}
        for view in [*self._asked(), *self._planned.values()]:
            if view.path.resolve() not in shown:
                shown.add(view.path.resolve())
                views.append(view)
        return views


def status_command(path: Path | None, overrides: list[str], recursive: bool = False,
                   watching: bool = False, every_s: float = 5.0, times: int | None = None,
                   stream: TextIO | None = None) -> str | None:
    """`degrade status`: the lines to print; with `watching`, the runs are shown on `stream`
    every `every_s` until no run can change (or `times` shows, or Ctrl-C) and None returned."""
    status = Status(path, overrides, recursive)
    if not watching:
        views = status.snapshot()
        return "\n".join([*map(run_line, views), status_line(views)])
    view = watch.ProgressView(every_s=every_s, live_every_s=every_s, stream=stream)
    with contextlib.suppress(KeyboardInterrupt):  # stops watching; the runs go on
        watch.watch(status.snapshot, view, times=times, under_way=status.under_way)
    return None
