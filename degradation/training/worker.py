"""One rank of a run trained over several processes (DDP): `spawn.py` starts one per GPU as

    python -m degradation.training.worker SPEC ERROR_FILE CORES PARENT LOG_FILE

with torchrun's environment variables. It joins the process group, trains, leaves, and
writes its error (if any) to ERROR_FILE for the launching process, whose pid is PARENT and
which relays the lines it prints into the run's log. Should that process end (even killed),
the rank writes to LOG_FILE itself (when given) and stops as SIGTERM stops it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from degradation.errors import FAILED_EXIT, INTERRUPTED_EXIT
from degradation.hardware import parse_cores, pin_to
from degradation.training.signals import stop_with_parent

log = logging.getLogger("degrade")


def main(spec_path: str, error_path: str, cores: str, parent: str, log_file: str) -> int:
    """One rank: join the process group, train, leave; the error (if any) to `error_path`."""
    pin_to(parse_cores(cores))
    from degradation.config import from_dict
    from degradation.errors import Interrupted
    from degradation.training.device import resolve_device
    from degradation.training.loop import train

    index = int(os.environ["RANK"])
    logging.basicConfig(level=logging.INFO if index == 0 else logging.WARNING,
                        format="%(message)s" if index == 0 else f"rank {index}: %(message)s",
                        stream=sys.stdout)
    config = from_dict(pickle.loads(Path(spec_path).read_bytes()))
    stop_with_parent(int(parent), (lambda: _log_to(Path(log_file))) if log_file else None)
    try:
        device = resolve_device(config.device)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        # A client of the launching process's store (see `spawn`), not a server of its own.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              is_master=False)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store,
                                rank=index, world_size=int(os.environ["WORLD_SIZE"]))
        train(config)
        # Only after success: a failed rank leaves at once, and the launching process kills
        # the ranks waiting for it in a collective.
        dist.destroy_process_group()
    except BaseException as error:
        with contextlib.suppress(Exception):
            Path(error_path).write_bytes(pickle.dumps(error))
        if not isinstance(error, Interrupted):
            log.exception("training failed")
        elif os.getppid() != int(parent):  # no launching process is left to say it
            log.error("error: %s", error)
        return INTERRUPTED_EXIT if isinstance(error, Interrupted) else FAILED_EXIT
    return 0


def _log_to(path: Path) -> None:
    """Log into `path` instead of stdout: the process that relayed stdout is gone."""
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    for old in list(root.handlers):
        handler.setFormatter(old.formatter)
        root.removeHandler(old)
    root.addHandler(handler)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
