"""Progress you can watch: every run of a sweep, and the sweep's done/total and ETA.

One renderer, two callers: the local launcher shows the runs it trains while they train,
and `degrade status --watch` shows runs started elsewhere (a cluster, another shell). Both
read only the run folders (config.yaml, metrics.csv, TensorBoard events, summary.json), so
what is shown is what is on disk. On a terminal the view is a table redrawn in place
(rich.live); otherwise (CI, nohup, SLURM logs) a plain line per run every interval.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from degradation.config import Config
from degradation.runs import (
    ERROR_FILE,
    METRICS_FILE,
    TENSORBOARD_DIR,
    RunRecord,
    data_name,
    last_line,
    network_name,
    read_run,
    run_dir,
    runs_count,
)
from degradation.storage import DamagedFile
from degradation.training.logs import format_duration, read_metrics

NOT_STARTED = "not started"
INCONSISTENT = "inconsistent"  # its folder, config.yaml and summary.json disagree
ENDED = ("done", "diverged")
PLAIN_EVERY_S = 60.0  # without a terminal: a line per run every minute keeps logs short
LIVE_EVERY_S = 2.0  # on a terminal: redraw this often (each redraw reads every run folder)
log = logging.getLogger("degrade")


@dataclass
class RunProgress:
    """Where a run stands, as `degrade status` shows it."""

    iteration: int
    total: int
    train_error: float | None  # the last logged training error (%)
    test_error: float | None  # the last evaluation's test (or validation) error (%)
    eta_s: float | None  # seconds left, for running runs whose speed is known
    error: str | None  # the last line of error.txt, for failed runs
    lr: float | None = None  # the last logged learning rate
    iterations_per_s: float | None = None  # running runs: the speed of the last log points


def run_progress(record: RunRecord, name_damage: bool = True) -> RunProgress:
    """Iteration, last errors, ETA (running runs) and error message (failed runs) of a run.

    `name_damage=False`: a damaged `metrics.csv` gives blank progress without a warning (for
    a caller, such as a resume, that names the damage itself)."""
    total = record.config.train.iterations
    state = record.state
    summary = record.summary
    if summary is not None:
        return RunProgress(summary.get("iterations_done", total), total,
                           summary.get("final_train_error"), summary.get("final_test_error"),
                           None, None)
    metrics_path = record.path / METRICS_FILE
    try:
        rows = read_metrics(metrics_path) if metrics_path.exists() else {}
    except DamagedFile as error:
        if name_damage:
            log.warning("warning: %s; its progress is left blank", error)
        rows = {}
    iteration = max(rows, default=0)
    last = {tag: rows[i][tag] for i in sorted(rows) for tag in rows[i]}  # latest value per tag
    speed = _speed(record.path) if state == "running" else None
    eta = None
    if speed is not None:
        rate, step, wall = speed
        eta = max(0.0, (total - step) / rate - (time.time() - wall))
    error = last_line(record.path / ERROR_FILE) if state == "failed" else None
    return RunProgress(iteration, total, last.get("error/train"), last.get("error/test"), eta,
                       error, last.get("lr"), speed[0] if speed else None)


def _speed(path: Path) -> tuple[float, int, float] | None:
    """(iterations/s, last step, its wall time) over the last logged points of the current
    process; None until two points are logged."""
    points = _train_points(path)[-20:]
    if len(points) < 2:
        return None
    (first_step, first_time), (step, wall) = points[0], points[-1]
    if step <= first_step or wall <= first_time:
        return None
    return (step - first_step) / (wall - first_time), step, wall


def _train_points(path: Path) -> list[tuple[int, float]]:
    """(iteration, wall time) of each training-error point in the newest TensorBoard file.

    A resumed run starts a new file, so the points belong to the process training now.
    """
    files = sorted((path / TENSORBOARD_DIR).glob("events.out.tfevents.*"),
                   key=lambda file: file.stat().st_mtime)
    if not files:
        return []
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    points = []
    try:
        for event in EventFileLoader(str(files[-1])).Load():
            if any(value.tag == "error/train" for value in event.summary.value):
                points.append((event.step, event.wall_time))
    except Exception:  # a file being written may end mid-record
        pass
    return points



@dataclass
class RunView:
    """One run as the progress view shows it."""

    name: str  # `resnet-56-A`
    seed: int
    state: str  # a run folder's state, or NOT_STARTED when its folder holds no run yet
    iteration: int
    total: int
    lr: float | None
    train_error: float | None
    test_error: float | None
    images_per_s: float | None
    iterations_per_s: float | None
    eta_s: float | None
    error: str | None
    path: Path
    data: str | None = None  # `official CIFAR-10`, `subset of N training images`, ...


def view_of(record: RunRecord) -> RunView:
    """What the run in `record`'s folder shows now."""
    where = run_progress(record)
    rate = where.iterations_per_s
    state, error = record.state, where.error
    errors = where.train_error, where.test_error
    if record.inconsistency is not None:  # whose numbers these are is not known
        state, error, errors = INCONSISTENT, record.inconsistency, (None, None)
    return RunView(network_name(record.config), record.config.seed, state, where.iteration,
                   where.total, where.lr, *errors,
                   None if rate is None else rate * record.config.train.batch_size, rate,
                   where.eta_s, error, record.path, data_name(record))


def view_of_config(config: Config) -> RunView:
    """The run `config` asks for: as its folder shows it, or not started when it has none."""
    record = read_run(run_dir(config))
    if record is not None:
        return view_of(record)
    return not_started(network_name(config), config.seed, config.train.iterations,
                       run_dir(config))


def not_started(name: str, seed: int, total: int, path: Path) -> RunView:
    """A run asked for whose folder holds no run yet."""
    return RunView(name, seed, NOT_STARTED, 0, total, None, None, None, None, None, None, None,
                   path)


def sweep_eta(views: Sequence[RunView]) -> float | None:
    """Seconds until every run has ended: the iterations left over the speed of the running
    runs together (as many runs at once as now); None while no speed is known."""
    rates = [view.iterations_per_s for view in views
             if view.state == "running" and view.iterations_per_s]
    if not rates:
        return None
    # A failed run does not go on: only a new command retries it.
    left = sum(view.total - view.iteration for view in views
               if view.state not in (*ENDED, "failed"))
    return left / sum(rates)


def sweep_line(views: Sequence[RunView]) -> str:
    """`sweep: 3/8 runs ended, 2 running, 3 not started; ETA 1h05m`."""
    ended = sum(view.state in ENDED for view in views)
    counts = {state: sum(view.state == state for view in views)
              for state in ("running", NOT_STARTED, "failed", "interrupted", "pending")}
    parts = [f"{count} {state}" for state, count in counts.items() if count]
    eta = sweep_eta(views)
    return (f"sweep: {ended}/{len(views)} runs ended" + "".join(f", {part}" for part in parts)
            + ("" if eta is None or ended == len(views) else f"; ETA {format_duration(eta)}"))


def status_line(views: Sequence[RunView]) -> str:
    """`6 runs: 1 done, 1 running, 4 not started`: the runs counted by state."""
    states = ("done", "diverged", "running", "failed", "interrupted", "pending", INCONSISTENT,
              NOT_STARTED)
    counts = {state: sum(view.state == state for view in views) for state in states}
    return f"{runs_count(len(views))}: " + ", ".join(f"{count} {state}"
                                                     for state, count in counts.items() if count)


def _percent(value: float | None) -> str:
    return "     -" if value is None else f"{value:5.2f}%"


def run_line(view: RunView) -> str:
    """One plain line: network, seed, state, iteration/total, errors, lr, img/s, folder, ETA."""
    errors = f"train {_percent(view.train_error)}  test {_percent(view.test_error)}"
    speed = "" if view.lr is None else f"  lr {view.lr:.4g}"
    if view.images_per_s is not None:
        speed += f"  {view.images_per_s:,.0f} img/s"
    note = ""
    if view.state == "running" and view.eta_s is not None:
        note = f"  ETA {format_duration(view.eta_s)}"
    elif view.state == INCONSISTENT:
        note = f"  {INCONSISTENT} ({view.error})"
    elif view.error:
        note = f"  error: {view.error}"
    data = "" if view.data is None else f"  [{view.data}]"
    return (f"{view.name:14} seed {view.seed:<3} {view.state:11} "
            f"{view.iteration:>6}/{view.total:<6} {errors}{speed}{data}  {view.path}{note}")


def table(views: Sequence[RunView]):
    """The same view as a rich table, for a terminal."""
    from rich.table import Table

    grid = Table(caption=sweep_line(views), caption_justify="left")
    for column in ("network", "seed", "state", "iter.", "lr", "train", "test", "img/s", "ETA"):
        grid.add_column(column, justify="left" if column in ("network", "state") else "right",
                        no_wrap=True)
    for view in views:
        grid.add_row(view.name, str(view.seed), view.state, f"{view.iteration}/{view.total}",
                     "-" if view.lr is None else f"{view.lr:.4g}",
                     _percent(view.train_error).strip(), _percent(view.test_error).strip(),
                     "-" if view.images_per_s is None else f"{view.images_per_s:,.0f}",
                     format_duration(view.eta_s) if view.eta_s is not None else
                     (view.error or "-") if view.state in ("failed", INCONSISTENT) else "-")
    return grid


class ProgressView:
    """Shows runs as they train: redrawn in place on a terminal, plain lines otherwise.

    `tick(snapshot)` is called as often as the caller likes; the folders are read
    (`snapshot()`) only when something is due: every `live_every_s` on a terminal, every
    `every_s` otherwise. `clock` is injectable so tests need not wait.
    """

    def __init__(self, stream: TextIO | None = None, every_s: float = PLAIN_EVERY_S,
                 live: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 live_every_s: float = LIVE_EVERY_S) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.every_s = live_every_s if self.live else every_s
        self.clock = clock
        self.last: float | None = None
        self._live = None

    def due(self) -> bool:
        """Whether the next `tick` shows anything."""
        return self.last is None or self.clock() - self.last >= self.every_s

    def tick(self, snapshot: Callable[[], Sequence[RunView]], force: bool = False) -> bool:
        """Show `snapshot()` if due (or `force`); whether it was shown."""
        if not (force or self.due()):
            return False
        self.last = self.clock()
        self.show(snapshot())
        return True

    def show(self, views: Sequence[RunView]) -> None:
        """Show `views` now."""
        if not self.live:
            for view in views:
                self.stream.write(run_line(view) + "\n")
            self.stream.write(sweep_line(views) + "\n")
            self.stream.flush()
            return
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(table(views), console=Console(file=self.stream,
                                                            force_terminal=True),
                              auto_refresh=False, transient=False)
            self._live.start()
            self._reroute_logging()
        self._live.update(table(views), refresh=True)

    def _reroute_logging(self) -> None:
        # Log lines written straight to the terminal would be drawn over by the next redraw:
        # while the table is live, console handlers write through rich's proxy (above it).
        self._rerouted = []
        proxy = next((stream for stream in (sys.stdout, sys.stderr)
                      if getattr(stream, "rich_proxied_file", None) is self.stream), None)
        if proxy is None:
            return
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                self._rerouted.append(handler)
                handler.setStream(proxy)

    def close(self) -> None:
        """Leave the last table on screen and give the terminal back."""
        if self._live is not None:
            for handler in self._rerouted:
                handler.setStream(self.stream)
            self._live.stop()
            self._live = None


def watch(snapshot: Callable[[], Sequence[RunView]], view: ProgressView,
          times: int | None = None, sleep: Callable[[float], None] = time.sleep,
          under_way: Callable[[], bool] = lambda: False) -> None:
    """Show `snapshot()` every `view.every_s` until nothing more will change (`settled`), or
    `times` shows; `under_way()`: whether a sweep that will train more runs is still going."""
    shown, watched_a_sweep = 0, False
    try:
        while True:
            going = under_way()  # before the runs are read: ended then, it ended before them
            watched_a_sweep |= going
            views = snapshot()
            view.last = view.clock()
            view.show(views)
            shown += 1
            if (not going and settled(views, watched_a_sweep)) or (
                    times is not None and shown >= times):
                return
            sleep(view.every_s)
    finally:
        view.close()


def settled(views: Sequence[RunView], sweep_ended: bool) -> bool:
    """Whether the runs will change no more, no sweep being under way: none trains and, unless
    the sweep watched has ended (what it left unstarted stays so), each has ended or failed.

    Without a sweep seen, a run not started, pending or interrupted may still be started (a
    queued or requeued cluster job): it is waited for.
    """
    if any(view.state == "running" for view in views):
        return False
    return sweep_ended or all(view.state in (*ENDED, "failed") for view in views)


def configs_views(configs: Iterable[Config]) -> Callable[[], list[RunView]]:
    """A snapshot function over the runs `configs` ask for (started or not)."""
    configs = list(configs)
    return lambda: [view_of_config(config) for config in configs]

