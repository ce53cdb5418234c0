"""One base error, one way to fold an error into a line, the exit codes."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import degradation
from degradation.errors import (
    BAD_INPUT_EXIT,
    FAILED_EXIT,
    INTERRUPTED_EXIT,
    DegradeError,
    error_line,
    one_line,
)


def test_every_error_the_package_defines_is_a_degrade_error() -> None:
    found = []
    for module in pkgutil.walk_packages(degradation.__path__, "degradation."):
        if module.name.endswith(("__main__", ".worker")):
            continue  # entry points: they run a command when imported
        for _, value in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("degradation"):
                found.append(value)
    assert len(found) >= 10  # the walk reached the modules
    assert [error.__name__ for error in found if not issubclass(error, DegradeError)] == []


@pytest.mark.parametrize(("error", "line", "message"), [
    (ValueError("bad\n  value"), "ValueError: bad value", "bad value"),
    (OSError(), "OSError", "OSError"),  # no message: the type alone
])
def test_an_error_is_one_line(error: BaseException, line: str, message: str) -> None:
    assert error_line(error) == line
    assert error_line(error, with_type=False) == message
    assert one_line("a\n\tb  c") == "a b c"


def test_the_exit_codes() -> None:
    assert (FAILED_EXIT, BAD_INPUT_EXIT, INTERRUPTED_EXIT) == (1, 2, 130)
