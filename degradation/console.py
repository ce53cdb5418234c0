"""The console handler of `degrade`'s logging (conf/hydra/job_logging/degrade.yaml)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO


class ConsoleHandler(logging.StreamHandler):
    """A StreamHandler on whatever `sys.stderr` is when a record is written.

    Hydra installs the job's handlers on the root logger and leaves them there after the
    job. A plain StreamHandler keeps the stream it was made with, which a caller that swaps
    sys.stderr for a while (Typer's test runner, pytest's capture) may have closed since.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        """The current sys.stderr."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """Ignored: the handler always writes to the current sys.stderr."""
