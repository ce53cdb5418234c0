"""One job of `hydra/launcher=local`, in its own interpreter.

    python -m hydra_plugins.degrade_launcher._worker SPEC RESULT CORES PARENT

SPEC is a pickle of the task function and the job's composed config; the job runs through
Hydra's `run_job` exactly as in the basic launcher, and RESULT receives its status. CORES
(`0,1,2`, may be empty) is the CPU affinity, set before anything else is imported. PARENT is
the launching process's pid: when it ends, even killed, the job stops as SIGTERM stops it.
The name starts with `_` so that Hydra's plugin scan does not import it.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from pathlib import Path
from typing import Any

from degradation.errors import INTERRUPTED_EXIT, error_line, one_line
from degradation.hardware import parse_cores, pin_to
from degradation.training.signals import stop_with_parent


def main(spec_path: str, result_path: str, cores: str, parent: str) -> int:
    """Run the job; write {'status', 'value' | 'message'} to `result_path`; exit status."""
    pin_to(parse_cores(cores))
    stop_with_parent(int(parent))  # the sweep was killed: checkpoint and stop, as on SIGTERM
    result: dict[str, Any] = {"status": "FAILED"}
    try:
        result = _run(pickle.loads(Path(spec_path).read_bytes()))
    except SystemExit as stop:  # `degrade` exits 130 after a signal and a checkpoint
        code = stop.code if isinstance(stop.code, int) else 1
        status = "INTERRUPTED" if code == INTERRUPTED_EXIT else "FAILED"
        result = {"status": status, "message": _context_line(stop) or f"exited with code {code}"}
    except BaseException as error:  # reported through RESULT, never lost
        traceback.print_exc()
        result = {"status": "FAILED", "message": error_line(error)}
    _write(Path(result_path), result)
    return {"COMPLETED": 0, "INTERRUPTED": INTERRUPTED_EXIT}.get(result["status"], 1)


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import JobRuntime, JobStatus, run_job, setup_globals
    from hydra.types import HydraContext

    config = spec["config"]
    setup_globals()
    JobRuntime.instance().set("name", config.hydra.job.name)
    context = HydraContext(config_loader=None, callbacks=Callbacks(config))
    ret = run_job(hydra_context=context, task_function=spec["task"], config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    if ret.status == JobStatus.COMPLETED:
        return {"status": "COMPLETED", "value": ret.return_value}
    error = ret._return_value
    traceback.print_exception(type(error), error, error.__traceback__)  # into the run's log
    return {"status": "FAILED", "message": error_line(error)}


def _write(path: Path, result: dict[str, Any]) -> None:
    try:
        data = pickle.dumps(result)
    except Exception:  # a return value that does not pickle: keep the status
        data = pickle.dumps({key: value for key, value in result.items() if key != "value"})
    path.write_bytes(data)


def _context_line(stop: SystemExit) -> str | None:
    """The error a SystemExit was raised in place of (`raise SystemExit(...) from None`)."""
    context = stop.__context__
    return None if context is None else one_line(context) or None


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
