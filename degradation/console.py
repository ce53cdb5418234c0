"""The console handlers of `degrade`'s logging (conf/hydra/job_logging/degrade.yaml and
conf/hydra/hydra_logging/degrade.yaml)."""

from __future__ import annotations

import logging
import sys
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
