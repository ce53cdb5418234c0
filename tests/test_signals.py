"""The stop signals: noted while inside, passed on when asked, handlers restored after."""

from __future__ import annotations

import os
import signal
import threading

from degradation.training.signals import STOP_SIGNALS, noting_stop_signals


def test_stop_signals_are_noted_passed_on_and_then_restored() -> None:
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    passed: list[int] = []
    with noting_stop_signals(also=passed.append) as received:
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)
    assert received == ["SIGUSR2", "SIGTERM"]  # noted, and the process is still here
    assert passed == [signal.SIGUSR2, signal.SIGTERM]
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before


def test_outside_the_main_thread_signals_are_left_alone() -> None:
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    seen: list[object] = []

    def enter() -> None:
        with noting_stop_signals() as received:
            seen.append(received)
            seen.append({sig: signal.getsignal(sig) for sig in STOP_SIGNALS})

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert seen == [[], before]


def test_the_parent_watcher_thread_runs_only_where_the_kernel_sends_no_signal(
        monkeypatch) -> None:
    from degradation.training import signals

    watched: list[int] = []
    monkeypatch.setattr(signals, "_watch_parent", watched.append)
    previous = signal.getsignal(signals.PARENT_ENDED)
    try:
        for kernel in (True, False):
            monkeypatch.setattr(signals, "_ask_for_parent_death_signal",
                                lambda _signum, kernel=kernel: kernel)
            signals.stop_with_parent(os.getppid())
    finally:
        signal.signal(signals.PARENT_ENDED, previous)
    for thread in threading.enumerate():
        if thread.name == "degrade-parent-watch":
            thread.join()
    assert watched == [os.getppid()]  # once: for the system without the kernel's signal


def test_a_parent_gone_before_the_kernel_was_asked_stops_the_worker_at_once(
        monkeypatch) -> None:
    import time

    from degradation.training import signals

    monkeypatch.setattr(signals, "_ask_for_parent_death_signal", lambda _signum: True)
    monkeypatch.setattr(signals, "_exit_after", lambda _seconds: None)  # not this test process
    noted: list[str] = []
    previous = signal.getsignal(signals.PARENT_ENDED)
    try:
        with noting_stop_signals() as received:
            # This process's own pid is not its parent's: as if the parent had ended already.
            signals.stop_with_parent(os.getpid(), lambda: noted.append("parent ended"))
            deadline = time.monotonic() + 60  # a guard against a hang only
            while not received and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        signal.signal(signals.PARENT_ENDED, previous)
    assert noted == ["parent ended"] and received == ["SIGTERM"]
