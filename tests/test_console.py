"""Console logging follows sys.stdout/sys.stderr, so nothing logs into a stream closed since."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from degradation.console import ConsoleHandler
from degradation.launch.compose import compose_tree


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("degrade", logging.WARNING, __file__, 1, message, None, None)


@pytest.mark.parametrize("to", ["stdout", "stderr"])
def test_the_console_handler_writes_to_the_stream_of_the_moment(
        monkeypatch: pytest.MonkeyPatch, to: str) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, to, first)
    handler = ConsoleHandler(to=to)
    handler.emit(record("one"))
    first.close()  # as Typer's runner and pytest's capture close theirs
    monkeypatch.setattr(sys, to, second)
    monkeypatch.setattr(logging, "raiseExceptions", True)
    handler.emit(record("two"))  # a plain StreamHandler: "I/O operation on closed file"
    assert second.getvalue() == "two\n"


def test_hydras_console_handlers_are_ours() -> None:
    hydra = compose_tree([], with_hydra=True).hydra
    for part, stream in (("hydra_logging", "stdout"), ("job_logging", "stderr")):
        console = hydra[part].handlers.console
        assert console["class"] == "degradation.console.ConsoleHandler", part
        assert console.get("to", "stderr") == stream, part
