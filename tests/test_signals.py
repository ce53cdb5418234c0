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
