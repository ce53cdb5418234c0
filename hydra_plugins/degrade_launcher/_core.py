"""The jobs the local launcher tracks, kept apart from the plugin modules.

Hydra's plugin scan executes every public module under `hydra_plugins` again (new copies of
their classes), and before registering it in sys.modules (which breaks dataclasses with
postponed annotations). Modules whose name starts with `_` are never scanned: the jobs and
exceptions here stay the same objects for everyone who imports them. The machine's slots,
cores and GPUs are the package's (degradation/hardware.py).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from degradation.errors import DegradeError
from degradation.hardware import Slot


class JobFailed(DegradeError, RuntimeError):
    """A job that ended without completing (its message is the error's last line)."""


class JobInterrupted(JobFailed):
    """A job stopped by a signal; its run resumes from its checkpoint when launched again."""


@dataclass
class Job:
    """One job of a local launch, from its composed config to its end."""

    number: int  # 1-based, within this launch
    overrides: list[str]
    config: DictConfig  # the job's whole config, `hydra` node included
    folder: Path  # its output folder (the run folder)
    log_file: Path
    spec: Path
    result: Path
    slot: Slot | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
