"""The signals that ask a run to checkpoint and stop.

SIGINT (Ctrl-C), SIGTERM (`kill`, `scancel`) and SIGUSR2 (what SLURM sends before a time limit
or a preemption) never kill a run mid-step: they are noted, and the training loop checkpoints
and stops at the next step. A worker process (a sweep's run, a rank of a multi-process run)
gets SIGTERM when the process that started it ends, however it ends (`stop_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

from degradation.errors import INTERRUPTED_EXIT

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

# What tells a worker that the process that started it has ended: the kernel sends it (Linux's
# parent-death signal), or, where the kernel cannot, the worker's own watcher thread does. Its
# handler logs why and raises SIGTERM, which stops the run at its next step with a checkpoint.
PARENT_ENDED = signal.SIGUSR1
# How often the watcher looks whether the parent is still there, and how long the worker
# then has to checkpoint and stop (a step, perhaps an evaluation) before it ends without.
PARENT_POLL_S = 1.0
STOP_GRACE_S = 300.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

log = logging.getLogger("degrade")


@contextlib.contextmanager
def noting_stop_signals(also: Callable[[int], None] | None = None) -> Iterator[list[str]]:
    """Yield a list that gets the name of each stop signal received while inside (`also` is
    called with its number too); outside the main thread, signals are left to the caller."""
    received: list[str] = []

    def note(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        if also is not None:
            also(signum)

    try:
        previous = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield received
        return
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_with_parent(parent_pid: int, on_parent_death: Callable[[], None] | None = None
                     ) -> None:
    """Stop this worker as SIGTERM stops it (a checkpoint, then exit) once `parent_pid`, the
    process that started it, has ended, even by SIGKILL: no run trains on as an orphan that
    holds its folder's lock. Call it from the main thread, as the worker starts.

    `on_parent_death` is called first (e.g. to log into a file instead of the parent's pipe);
    if the worker has not stopped `STOP_GRACE_S` later, it exits without a new checkpoint.
    """
    ended = threading.Event()

    def parent_ended(_signum: int, _frame: object) -> None:
        if ended.is_set():  # the kernel's signal and the watcher's: one stop
            return
        ended.set()
        if on_parent_death is not None:
            with contextlib.suppress(Exception):  # a note must not keep the run from stopping
                on_parent_death()
        log.warning("warning: the process that started this one (pid %d) has ended; stopping "
                    "with a checkpoint (run the same command to resume)", parent_pid)
        threading.Thread(target=_exit_after, args=(STOP_GRACE_S,), daemon=True).start()
        signal.raise_signal(signal.SIGTERM)  # to whatever handles SIGTERM now

    signal.signal(PARENT_ENDED, parent_ended)
    if _ask_for_parent_death_signal(PARENT_ENDED):
        # The kernel signals from now on, not for a parent that ended before it was asked:
        # then this worker's parent pid has changed already (as the watcher would see).
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), PARENT_ENDED)
        return
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="degrade-parent-watch").start()


def _ask_for_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send `signum` when the parent ends; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    return prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def _watch_parent(parent_pid: int) -> None:
    """Where the kernel sends no signal (not Linux): an orphan is adopted by init (or a
    subreaper), so its parent pid changes."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), PARENT_ENDED)


def _exit_after(seconds: float) -> None:
    time.sleep(seconds)
    log.error("error: still running %.0f s after its launching process ended; exiting "
              "without a new checkpoint", seconds)
    os._exit(INTERRUPTED_EXIT)
