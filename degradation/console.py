"""The console handlers of `degrade`'s logging (conf/hydra/job_logging/degrade.yaml,
conf/hydra/hydra_logging/degrade.yaml, and `warnings_to_stderr` for the commands that run
in `degrade`'s own process), and the commands `degrade` prints for a user to paste.

Every such command is built by `shell_command` (each word quoted for the shell) from
overrides built by `override` (each string value quoted for Hydra), so a folder named
`x $(touch PWN)` reaches `degrade` as itself, never a shell.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import sys
from collections.abc import Iterator
from typing import TextIO

STREAMS = ("stderr", "stdout")


class ConsoleHandler(logging.StreamHandler):
    """A StreamHandler on whatever `sys.stderr` (or, with `to="stdout"`, `sys.stdout`) is
    when a record is written.

    Hydra installs its handlers on the root logger and leaves them there after a run. A plain
    StreamHandler keeps the stream it was made with, which a caller that swaps sys.stderr or
    sys.stdout for a while (Typer's test runner, pytest's capture) may have closed since.
    """

    def __init__(self, to: str = "stderr") -> None:
        if to not in STREAMS:
            raise ValueError(f"to={to!r} is not one of: {', '.join(STREAMS)}")
        self.to = to
        super().__init__()

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        """The current sys.stderr or sys.stdout."""
        return getattr(sys, self.to)

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """Ignored: the handler always writes to the current stream it was made for."""


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Print the `degrade` logger's warnings on stderr, each distinct line once."""
    logger = logging.getLogger("degrade")
    if any(isinstance(handler, _StderrWarnings) for handler in logger.handlers):
        yield  # already printing them (a command that runs several steps)
        return
    handler = _StderrWarnings(sys.stderr)  # the stream of this call (tests swap it)
    handler.setLevel(logging.WARNING)
    handler.addFilter(_Once())
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # a handler a training run left on the root would print twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved


class _StderrWarnings(logging.StreamHandler):
    """The handler `warnings_to_stderr` installs."""


class _Once(logging.Filter):
    """Lets each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


# A value Hydra may read back as the same string without quotes: no whitespace, no `$`, `~`,
# quote, comma, bracket, brace, parenthesis or `=` (its grammar gives each a meaning).
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_/.:@%+-]+")
_NOT_STRINGS = ("true", "false", "null", "inf", "nan")  # what Hydra reads as other types


def shell_command(*words: object) -> str:
    """A command for a user to paste into a POSIX shell: each word quoted where it needs it
    (`shlex.quote`), so a word holding spaces, `$(...)` or quotes stays one word, run nowhere."""
    return " ".join(shlex.quote(str(word)) for word in words)


def override(key: str, value: object) -> str:
    """`key=value` that Hydra reads back as `value`: a string that Hydra would read as
    something else is put in Hydra's quotes (other values are written as they are)."""
    text = str(value)
    if isinstance(value, str) and not _reads_as_itself(text):
        # In Hydra's quotes a backslash is literal except in a run before a quote or at the
        # end; OmegaConf then reads `${` as an interpolation unless a backslash escapes it.
        text = "'" + re.sub(r"(\\*)('|\$\{|$)",
                            lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), text) + "'"
    return f"{key}={text}"


def _reads_as_itself(text: str) -> bool:
    """Whether Hydra reads `text`, unquoted, as this string."""
    if not _PLAIN_VALUE.fullmatch(text) or text.lower().lstrip("+-") in _NOT_STRINGS:
        return False
    try:
        float(text)
    except ValueError:
        return True
    return False  # a number
