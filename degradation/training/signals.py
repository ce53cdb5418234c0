"""The signals that ask a run to checkpoint and stop.

SIGINT (Ctrl-C), SIGTERM (`kill`, `scancel`) and SIGUSR2 (what SLURM sends before a time limit
or a preemption) never kill a run mid-step: they are noted, and the training loop checkpoints
and stops at the next step.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


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
