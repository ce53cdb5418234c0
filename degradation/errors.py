"""The errors `degrade` reports, how an error becomes one line, and the exit codes.

Every error a user can cause or meet derives from `DegradeError`; the subclasses live with
the module that raises them (`ConfigError` in config.py, `DataError` in data/cifar.py, ...) and
keep the built-in type they always had (ValueError, RuntimeError) so callers that catch those
still do.
"""

from __future__ import annotations

FAILED_EXIT = 1  # a run or a command failed
BAD_INPUT_EXIT = 2  # the command line or the configuration asked for something impossible
INTERRUPTED_EXIT = 130  # a signal stopped a run after its checkpoint (128 + SIGINT)


class DegradeError(Exception):
    """An error `degrade` tells the user in one line, without a traceback."""


class LauncherError(DegradeError, RuntimeError):
    """A launcher setting that cannot work on this machine; the message is one line."""


class Interrupted(DegradeError, RuntimeError):
    """Training stopped by a signal after writing a checkpoint."""


def one_line(text: object) -> str:
    """A message with its line breaks and runs of spaces folded: one line of a log or file."""
    return " ".join(str(text).split())


def error_line(error: BaseException, with_type: bool = True) -> str:
    """An error in one line: `Type: message`, or the message alone without `with_type`; the
    type's name alone when there is no message."""
    text = one_line(error)
    if not text:
        return type(error).__name__
    return f"{type(error).__name__}: {text}" if with_type else text
