"""`hydra/launcher=local`: a sweep's runs in parallel subprocesses on this machine.

On a box with N GPUs, `runs_per_gpu` runs share each GPU, so N x k run at once; each job's
CUDA_VISIBLE_DEVICES names only its GPU(s) and is set in the environment the interpreter
starts with, so CUDA never sees the others. On a CPU-only box (or with `device=cpu`),
`parallel_runs` run at once with the cores divided among them (CPU affinity and
OMP_NUM_THREADS). Each job is Hydra's own `run_job` in a fresh interpreter (`_worker.py`), so
its config, logging and output folder are those the basic launcher would give it; what it
prints goes to its run folder's log file, and the console gets one line per run started and
one per run finished, and every run's progress (`degradation.analysis.watch`: a table redrawn
in place on a terminal, a plain line per run every minute otherwise). A failing run does not
stop the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from degradation.errors import INTERRUPTED_EXIT, LauncherError
from degradation.hardware import Slot, assign_slots, available_memory, usable_cores, visible_gpus
from hydra_plugins.degrade_launcher._core import Job, JobFailed, JobInterrupted

__all__ = ["JobFailed", "JobInterrupted", "LauncherError", "ParallelLauncher", "Slot",
           "assign_slots", "visible_gpus"]
log = logging.getLogger(__name__)
# The handler classes a job config may print to the console with.
CONSOLE_HANDLERS = ("logging.StreamHandler", "degradation.console.ConsoleHandler")


class ParallelLauncher(Launcher):
    """Runs jobs in parallel subprocesses, one per free GPU slot or CPU share."""

    JOBS_RUN_HERE = True  # what this machine lacks (CUDA), the jobs lack too

    # No defaults here: conf/hydra/launcher/local.yaml is their one home.
    def __init__(self, *, device: str, runs_per_gpu: int, gpus_per_run: int,
                 parallel_runs: int | None, gpus: Sequence[Any] | None, poll_s: float) -> None:
        self.device = device
        self.runs_per_gpu = runs_per_gpu
        self.gpus_per_run = gpus_per_run
        self.parallel_runs = parallel_runs
        self.gpus = None if gpus is None else [str(gpu) for gpu in gpus]
        self.poll_s = poll_s
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        """Keep what launching needs (Hydra's Launcher API)."""
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def slots(self, jobs: int | None = None) -> list[Slot]:
        """This machine's slots for the configured device and sharing, for `jobs` jobs."""
        return assign_slots(self._gpus(), usable_cores(), self.runs_per_gpu,
                            self.gpus_per_run, self.parallel_runs, jobs, available_memory())

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        """Run every job, as many at once as there are slots; results in job order."""
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        total = len(job_overrides)
        slots = self.slots(total)
        width = min(total, len(slots))
        log.info(f"Launching {total} run{'s' * (total != 1)}, {width} at a time: "
                 + "; ".join(slot.describe() for slot in slots[:width]))
        with tempfile.TemporaryDirectory(prefix="degrade-launch-") as scratch:
            jobs = [self._prepare(initial_job_idx + index, index + 1, list(overrides),
                                  Path(scratch)) for index, overrides in enumerate(job_overrides)]
            return _Scheduler(self, jobs, slots).run()

    def _gpus(self) -> list[str]:
        if self.device == "cpu":
            return []
        if self.gpus is not None:
            return self.gpus
        import torch  # counting GPUs puts no context on them; the jobs own their GPUs

        found = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
        if self.device == "cuda" and not found:
            raise LauncherError("device=cuda but this machine shows no GPU (use device=auto or "
                                "device=cpu)")
        return found

    def _prepare(self, idx: int, number: int, overrides: list[str], scratch: Path) -> Job:
        """Compose job `idx` as the basic launcher would and decide where its output goes."""
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = f"{idx}"
            config.hydra.job.num = idx
        _without_console(config.hydra.job_logging)
        with _hydra_config(config):  # the output folder may interpolate ${hydra:...}
            folder = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))) / str(
                OmegaConf.select(config, "hydra.sweep.subdir"))
        return Job(number, overrides, config, folder, folder / f"{config.hydra.job.name}.log",
                   scratch / f"job-{idx}.pkl", scratch / f"job-{idx}.result")

    def start(self, job: Job, slot: Slot) -> None:
        """Start `job` in a fresh interpreter confined to `slot`."""
        job.slot = slot
        job.folder.mkdir(parents=True, exist_ok=True)
        job.spec.write_bytes(pickle.dumps({"task": self.task_function, "config": job.config}))
        env = {**os.environ, **slot.env(),
               # The child imports what this process imports (as multiprocessing's spawn does).
               "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry)}
        command = [sys.executable, "-m", "hydra_plugins.degrade_launcher._worker",
                   str(job.spec), str(job.result), ",".join(map(str, slot.cores)),
                   str(os.getpid())]
        with job.log_file.open("ab") as output:
            job.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                           stdout=output, stderr=subprocess.STDOUT)

    def job_return(self, job: Job, exit_code: int) -> JobReturn:
        """The finished job's JobReturn, from the result its worker left (or its exit code)."""
        result: dict[str, Any] = {}
        with contextlib.suppress(OSError, pickle.UnpicklingError, EOFError):
            result = pickle.loads(job.result.read_bytes())
        status = result.get("status")
        ret = JobReturn(overrides=job.overrides, working_dir=str(job.folder),
                        task_name=str(job.config.hydra.job.name))
        if status == "COMPLETED":
            ret.status, ret.return_value = JobStatus.COMPLETED, result.get("value")
            return ret
        if status == "INTERRUPTED" or exit_code == INTERRUPTED_EXIT:
            error: JobFailed = JobInterrupted(result.get("message") or "stopped by a signal")
        else:
            error = JobFailed(result.get("message")
                              or f"worker exited with code {exit_code} (see {job.log_file})")
        ret.status, ret.return_value = JobStatus.FAILED, error
        return ret


class _Scheduler:
    """Starts jobs on free slots, collects them as they end, and stops cleanly on a signal."""

    def __init__(self, launcher: ParallelLauncher, jobs: list[Job], slots: list[Slot]) -> None:
        self.launcher, self.jobs, self.slots = launcher, jobs, slots
        self.free = list(slots)
        self.running: list[Job] = []
        self.returns: dict[int, JobReturn] = {}
        self.stopped_by: str | None = None
        self.progress = _progress(jobs, launcher.task_function)

    def run(self) -> list[JobReturn]:
        pending = list(self.jobs)
        with self._forwarding_signals():
            try:
                while pending or self.running:
                    while pending and self.free and self.stopped_by is None:
                        self._start(pending.pop(0))
                    if self.stopped_by is not None and not self.running:
                        break
                    time.sleep(self.launcher.poll_s)
                    self._collect()
                    self._show_progress()
                self._show_progress(force=True)
            finally:
                if self.progress is not None:
                    self.progress[0].close()
                for job in self.running:  # only after an error in this loop: leave no orphans
                    job.process.terminate()
                    job.process.wait()
        for job in pending:
            ret = JobReturn(overrides=job.overrides, status=JobStatus.FAILED)
            ret.return_value = JobInterrupted(f"not started: the sweep was stopped by "
                                              f"{self.stopped_by}")
            self.returns[job.number] = ret
        if self.stopped_by is not None:
            log.info(f"Stopped by {self.stopped_by}: {len(pending)} runs not started; running "
                     "runs wrote a checkpoint. Run the same command to resume.")
            raise SystemExit(INTERRUPTED_EXIT)
        return [self.returns[job.number] for job in self.jobs]

    def _start(self, job: Job) -> None:
        slot = self.free.pop(0)
        self.launcher.start(job, slot)
        self.running.append(job)
        log.info(f"[{job.number}/{len(self.jobs)}] started {_name(job)} on {slot.describe()} "
                 f"(log: {job.log_file})")
        log.debug(f"overrides: {' '.join(filter_overrides(job.overrides))}")

    def _show_progress(self, force: bool = False) -> None:
        """Every run's progress, read from the run folders when the view is due."""
        if self.progress is None:
            return
        view, snapshot = self.progress
        try:
            view.tick(snapshot, force=force)
        except Exception as error:  # a view that cannot be drawn must not stop the runs
            log.warning(f"progress view stopped: {error}")
            view.close()
            self.progress = None

    def _collect(self) -> None:
        for job in list(self.running):
            code = job.process.poll()
            if code is None:
                continue
            self.running.remove(job)
            self.free.append(job.slot)
            self.free.sort(key=self.slots.index)  # refill slots in their round-robin order
            ret = self.launcher.job_return(job, code)
            self.returns[job.number] = ret
            finished = len(self.returns)
            line = _describe(job.folder)
            if line is None:
                line = f"{_name(job)}: " + ("completed" if ret.status == JobStatus.COMPLETED
                                            else f"failed: {ret._return_value}")
            log.info(f"[{finished}/{len(self.jobs)} finished] {line}")

    @contextlib.contextmanager
    def _forwarding_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: start nothing more, pass the signal on, wait for the checkpoints."""

        def forward(signum: int, _frame: Any) -> None:
            self.stopped_by = signal.Signals(signum).name
            for job in self.running:
                with contextlib.suppress(ProcessLookupError):
                    job.process.send_signal(signum)

        wanted = (signal.SIGINT, signal.SIGTERM)
        try:
            previous = {sig: signal.signal(sig, forward) for sig in wanted}
        except ValueError:  # not the main thread: signals stay with the caller
            yield
            return
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _name(job: Job) -> str:
    """The job's output folder below the sweep folder (`runs/resnet-20-A/seed-0-1a2b3c4d`)."""
    sweep_dir = Path(str(OmegaConf.select(job.config, "hydra.sweep.dir")))
    with contextlib.suppress(ValueError):
        return str(job.folder.relative_to(sweep_dir))
    return str(job.folder)


def _progress(jobs: list[Job], task: Any) -> tuple[Any, Any] | None:
    """`degrade`'s progress view over the runs of `jobs` (fused members included) and the
    function that reads them, if the jobs are `degrade` runs. A planned sweep's task holds
    their validated configs; others are read from the jobs' configurations."""
    try:
        from degradation.analysis.watch import ProgressView, configs_views
        from degradation.config import members
        from degradation.launch.compose import config_of
    except ImportError:
        return None
    planned = getattr(task, "config_at", None)
    try:
        configs = [member for job in jobs for member in members(
            (planned and planned(job.folder)) or config_of(job.config))]
    except Exception:  # not a `degrade` config: no view, the launch goes on
        return None
    return ProgressView(sys.stdout), configs_views(configs)  # where Hydra logs the launch


def _describe(folder: Path) -> str | None:
    """`degrade`'s one-line account of a run (final errors, or its error), if it is one."""
    try:
        from degradation.launch.run import describe_run
    except ImportError:
        return None
    return describe_run(folder)


def _without_console(logging_config: DictConfig | None) -> None:
    """Drop a job's stream handlers: its output goes to its log file, not the console."""
    if not logging_config:
        return
    handlers = logging_config.get("handlers") or {}
    streams = {name for name, handler in handlers.items()
               if handler is not None and handler.get("class") in CONSOLE_HANDLERS}
    with open_dict(logging_config):
        for node in [logging_config.get("root"), *(logging_config.get("loggers") or {}).values()]:
            if node is not None and node.get("handlers"):
                node.handlers = [name for name in node.handlers if name not in streams]


@contextlib.contextmanager
def _hydra_config(config: DictConfig) -> Iterator[None]:
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = saved
