"""`hydra/launcher=slurm` and `slurm_local`: hydra-submitit-launcher, with requeued runs.

Each run is one SLURM job (an array task). SLURM sends SIGUSR2 `signal_delay_s` before the
job's time limit, and on preemption where the cluster sets
`SlurmctldParameters=preempt_send_user_signal`. `degrade`'s training loop catches it, writes a
checkpoint and stops; this launcher then hands the signal back to submitit, whose handler
calls `checkpoint()` (resubmit the same job) and requeues it. The requeued job composes the
same config, lands in the same run folder and resumes from the checkpoint. Time-limit
requeues are counted against `max_num_timeout`, preemptions are not. SIGTERM (`scancel`)
also checkpoints, but ends the job without a requeue: a later `degrade sweep` resumes it.

`slurm_local` is the same code on submitit's local executor: the requeue path without a
cluster (the tests use it). Both need hydra-submitit-launcher (`pip install degrade[slurm]`);
without it this module defines nothing and the configs fail to compose with a clear message.
"""

from __future__ import annotations

import logging
import re
import signal
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from degradation.errors import one_line

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _submitit
except ImportError:  # the optional `slurm` extra is not installed
    _submitit = None

log = logging.getLogger(__name__)


class _Requeueing:
    """Mixin for submitit's launchers: a run stopped by the preemption signal is requeued."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Run one job inside the submitit process; requeue it if it was preempted."""
        try:
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        except SystemExit as stop:  # `degrade` exits 130 after a signal and a checkpoint
            stopped_by = interrupting_signal(stop)
            if stopped_by is None:
                raise
        import submitit

        preemption = "SIG" + submitit.JobEnvironment.USR_SIG
        if stopped_by == preemption:
            log.warning(f"Run stopped by {stopped_by} after a checkpoint: requeueing the job")
            try:
                # The training loop has put submitit's handler back; let it checkpoint this
                # callable (same arguments, same run folder) and requeue the job. It exits.
                signal.raise_signal(getattr(signal, preemption))
            except Exception as error:  # out of requeues (UncompletedJobError), scontrol failed
                return _failed(f"not requeued: {one_line(error)}")
        return _failed(f"stopped by {stopped_by} after a checkpoint (not requeued: only "
                       f"{preemption} requeues); the next sweep resumes it")


def interrupting_signal(error: BaseException) -> str | None:
    """The signal named by the `degradation.training.loop.Interrupted` behind `error`, if any."""
    from degradation.errors import Interrupted

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, Interrupted):
            found = re.search(r"\bSIG[A-Z0-9]+\b", str(seen))
            return found.group(0) if found else "a signal"
        seen = seen.__context__
    return None


def _failed(message: str) -> JobReturn:
    from hydra_plugins.degrade_launcher._core import JobInterrupted

    ret = JobReturn(status=JobStatus.FAILED)
    ret.return_value = JobInterrupted(message)
    return ret


if _submitit is not None:

    class SlurmLauncher(_Requeueing, _submitit.SlurmLauncher):
        """`hydra/launcher=slurm`: one requeue-able SLURM job per run."""

    class SlurmLocalLauncher(_Requeueing, _submitit.LocalLauncher):
        """`hydra/launcher=slurm_local`: the same on submitit's local executor."""

        JOBS_RUN_HERE = True  # what this machine lacks (CUDA), the jobs lack too


def available() -> list[type]:
    """The launcher classes defined here (none without hydra-submitit-launcher)."""
    return [] if _submitit is None else [SlurmLauncher, SlurmLocalLauncher]
