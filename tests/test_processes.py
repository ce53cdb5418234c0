"""The processes of runs and sweeps: no orphans, no false failures, no hangs.

A sweep too large to plan is refused before anything is composed; workers whose launching
process died stop with a checkpoint; a sweep that finds its runs trained by another process
leaves them to it; a compile that fails falls back to eager training.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from degradation.launch.compose import MAX_SWEEP_RUNS, compose_config, sweep_jobs, sweep_size
from degradation.runs import CHECKPOINT, SUMMARY_FILE, run_dir
from degradation.storage import LOCK, read_json
from degradation.training.checkpoint import load_checkpoint
from tests.conftest import PROJECT, degrade, degrade_here, tiny_overrides


def test_sweep_size_is_the_count_of_hydras_jobs() -> None:
    overrides = ["depth=20,56", "arch=plain,resnet", "seed=range(3)", "depth=20,32,44"]
    parsed = OverridesParser.create().parse_overrides(overrides)
    assert sweep_size(parsed) == len(sweep_jobs({}, overrides)) == 18


def test_a_sweep_too_large_to_plan_is_refused_before_composing(generated: Path,
                                                                tmp_path: Path) -> None:
    # Composing 100000 runs took minutes without a word; the size is known from the
    # overrides alone.
    result = degrade_here("sweep", "--dry-run", "seed=range(100000)",
                          *tiny_overrides(generated, tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: the sweep asks for 100000 runs; at most "
                                     f"{MAX_SWEEP_RUNS} runs in one sweep (split it into "
                                     "several sweeps, e.g. by seed ranges)")
    assert not (tmp_path / "out").exists()
    zero_step = degrade_here("sweep", "--dry-run", "seed=range(0,10,0)",
                             *tiny_overrides(generated, tmp_path / "out"))
    assert zero_step.exit_code == 2
    assert zero_step.output.strip() == (
        "error: seed=range(0,10,0) cannot be listed: range() arg 3 must not be zero (a sweep "
        "is values a,b,c or range(start, stop[, step]) with a step other than 0)")

    assert f"at most {MAX_SWEEP_RUNS} runs" in (PROJECT / "README.md").read_text()  # as said


# --- no orphans: workers stop when their launching process is killed ----------------------

# Long enough never to end before the test kills it, short enough to finish on resume.
LONG_RUN = {"train.iterations": 60, "train.milestones": "[30,45]", "train.batch_size": 8,
            "train.eval_every": 10}
# Bounds a wait that should take seconds, so that a regression fails instead of hanging.
DEADLINE_S = 300


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (an orphan's may be left unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def start_and_kill_when_checkpointed(args: list[str], folder: Path) -> list[int]:
    """Start `degrade ARGS`, SIGKILL it once the run has a checkpoint; its worker pids."""
    launcher = subprocess.Popen([sys.executable, "-m", "degradation", *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.time() + DEADLINE_S
        while not ((folder / CHECKPOINT).exists() and (folder / LOCK).exists()):
            assert launcher.poll() is None and time.time() < deadline, "no checkpoint"
            time.sleep(0.05)
        workers = children(launcher.pid)
    finally:
        launcher.kill()
        launcher.wait()
    assert workers
    return workers


def wait_gone(pids: list[int]) -> None:
    deadline = time.time() + DEADLINE_S
    while any(alive(pid) for pid in pids):
        assert time.time() < deadline, f"still running after their launcher was killed: {pids}"
        time.sleep(0.2)


linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


# A worker in miniature: notes stop signals as the training loop does, watches its parent.
# With `watcher only`, the kernel is not asked for a signal: the fallback of other systems.
WORKER = """
import sys, time
from pathlib import Path
from degradation.training import signals
out = Path(sys.argv[2])
if sys.argv[4] == "watcher only":
    signals._ask_for_parent_death_signal = lambda signum: False
with signals.noting_stop_signals() as received:
    signals.stop_with_parent(int(sys.argv[1]), lambda: out.write_text("parent ended; "))
    Path(sys.argv[3]).write_text("ready")
    deadline = time.time() + 300
    while not received and time.time() < deadline:
        time.sleep(0.01)
out.write_text(out.read_text() + f"stopped by {received[0]}")
"""
LAUNCHER = """
import os, subprocess, sys
subprocess.run([sys.executable, "-c", sys.argv[1], str(os.getpid()), *sys.argv[2:]])
"""


@pytest.mark.parametrize("how", ["kernel and watcher", "watcher only"])
def test_a_worker_is_stopped_as_by_sigterm_when_its_parent_is_killed(how: str, tmp_path: Path
                                                                     ) -> None:
    out, ready = tmp_path / "out", tmp_path / "ready"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, WORKER, str(out), str(ready),
                                 how], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + DEADLINE_S
        while not ready.exists():
            assert launcher.poll() is None and time.time() < deadline
            time.sleep(0.01)
    finally:
        launcher.kill()  # SIGKILL: no handler of its own can pass anything on
        launcher.wait()
    deadline = time.time() + DEADLINE_S
    while not (out.exists() and "stopped" in out.read_text()):
        assert time.time() < deadline, "the worker trained on as an orphan"
        time.sleep(0.05)
    assert out.read_text() == "parent ended; stopped by SIGTERM"


@linux_only
@pytest.mark.slow
def test_a_killed_sweeps_workers_stop_with_a_checkpoint_and_resume(
        small_cifar_root: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(small_cifar_root, tmp_path, **LONG_RUN)
    folder = run_dir(compose_config(overrides))
    workers = start_and_kill_when_checkpointed(["sweep", *overrides], folder)
    wait_gone(workers)  # before: re-parented to init, training on, holding the run's lock
    state, _ = load_checkpoint(folder)
    assert state["iteration"] < LONG_RUN["train.iterations"]
    assert not (folder / SUMMARY_FILE).exists()
    log = (folder / "train.log").read_text()
    assert "has ended; stopping with a checkpoint" in log
    assert f"stopped by SIGTERM at iteration {state['iteration']}" in log

    again = degrade("sweep", *overrides)  # not "being trained elsewhere"
    assert again.returncode == 0, again.stderr
    assert "1 to resume" in again.stdout
    assert f"resumed from iteration {state['iteration']}" in (folder / "train.log").read_text()
    assert read_json(folder / SUMMARY_FILE)["iterations_done"] == LONG_RUN["train.iterations"]


@linux_only
@pytest.mark.slow
def test_a_killed_multi_process_launchers_ranks_stop_with_a_checkpoint_and_resume(
        small_cifar_root: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(small_cifar_root, tmp_path, **LONG_RUN, **{"trainer.gpus": 2})
    folder = run_dir(compose_config(overrides))
    ranks = start_and_kill_when_checkpointed(["train", *overrides], folder)
    assert len(ranks) == 2
    wait_gone(ranks)
    state, _ = load_checkpoint(folder)
    assert state["iteration"] < LONG_RUN["train.iterations"]
    # Rank 0 logged its stop into the run's log itself: the process relaying it is gone.
    log = (folder / "train.log").read_text()
    assert "has ended; stopping with a checkpoint" in log
    assert f"error: stopped by SIGTERM at iteration {state['iteration']}" in log

    again = degrade("train", *overrides)
    assert again.returncode == 0, again.stderr
    summary = read_json(folder / SUMMARY_FILE)
    assert summary["status"] == "done"
    assert summary["iterations_done"] == LONG_RUN["train.iterations"]


# --- two identical sweeps at once: each run trained once, no false failure --------------

# Every process that takes a run's lock first waits until as many have come as the barrier
# folder asks for: both sweeps have planned the run as theirs to start before either takes it.
BOTH_SWEEPS_PLANNED = """
import os, pathlib, time
barrier = os.environ.get("TEST_LOCK_BARRIER")
if barrier:
    import degradation.storage as storage
    acquire = storage.RunLock.acquire
    def waiting_acquire(self):
        folder = pathlib.Path(barrier)
        (folder / str(os.getpid())).touch()
        deadline = time.time() + 300
        while len(list(folder.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.05)
        acquire(self)
    storage.RunLock.acquire = waiting_acquire
"""


@pytest.mark.slow
def test_of_two_identical_sweeps_started_at_once_one_trains_the_other_leaves_it(
        small_cifar_root: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(small_cifar_root, tmp_path / "outputs")
    hook, barrier = tmp_path / "hook", tmp_path / "barrier"
    hook.mkdir()
    barrier.mkdir()
    (hook / "sitecustomize.py").write_text(BOTH_SWEEPS_PLANNED)
    env = {**os.environ, "TEST_LOCK_BARRIER": str(barrier), "PYTHONPATH": os.pathsep.join(
        [str(hook), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    sweeps = [subprocess.Popen([sys.executable, "-m", "degradation", "sweep", *overrides],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env) for _ in range(2)]
    outputs = [sweep.communicate(timeout=DEADLINE_S)[0] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    assert all("1 run: 1 to start" in output for output in outputs), outputs
    folder = run_dir(compose_config(overrides))
    left = [output for output in outputs if "left to it" in output]
    assert len(left) == 1, outputs  # before: "failed: ...: did not finish", exit 1
    assert f"  {folder}: being trained by another process, left to it" in left[0]
    assert "failed" not in left[0]
    # Trained once: one process wrote its logs, and its log holds no error.
    assert read_json(folder / SUMMARY_FILE)["status"] == "done"
    assert len(list((folder / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert "ERROR" not in (folder / "train.log").read_text()


# --- a compiler that fails: eager training, never a traceback ---------------------------


def no_compiler(_graph: object, _inputs: object) -> None:
    """A compile backend that fails as inductor does without a working C++ compiler."""
    from torch._inductor.exc import InvalidCxxCompiler

    raise InvalidCxxCompiler()


def test_a_run_whose_compiler_fails_trains_eagerly_exactly_as_an_eager_run(
        cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: (
        compile_module(self, *args, **{**kwargs, "backend": no_compiler})))
    compiled = tiny_overrides(cifar_root, tmp_path / "compiled", **{"train.compile": "true"})
    result = degrade_here("train", *compiled)
    assert result.exit_code == 0, result.output  # before: a traceback, and no error.txt
    folder = run_dir(compose_config(compiled))
    log = (folder / "train.log").read_text()
    assert log.count("warning: compiling failed (InvalidCxxCompiler: No working C++ compiler "
                     "found") == 1, log
    assert "training eagerly" in log
    eager = tiny_overrides(cifar_root, tmp_path / "eager", **{"train.compile": "false"})
    assert degrade_here("train", *eager).exit_code == 0
    other = run_dir(compose_config(eager))
    assert (folder / "metrics.csv").read_text() == (other / "metrics.csv").read_text()
    weights, expected = load_checkpoint(folder)[0]["model"], load_checkpoint(other)[0]["model"]
    assert all(torch.equal(weights[name], value) for name, value in expected.items())


def test_an_unexpected_error_in_a_run_leaves_error_txt(
        cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import degradation.training.loop as loop

    def broken_step(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug in the step")

    monkeypatch.setattr(loop, "train_step", broken_step)
    overrides = tiny_overrides(cifar_root, tmp_path)
    result = degrade_here("train", *overrides)
    assert result.exit_code != 0
    folder = run_dir(compose_config(overrides))
    assert (folder / "error.txt").read_text() == "RuntimeError: a bug in the step\n"


def test_a_fused_network_whose_compiler_fails_turns_eager(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import torch

    from degradation.config import TrainConfig
    from degradation.models import build_model
    from degradation.training.device import compile_failure
    from degradation.training.fused import FusedNetwork

    compile_function = torch.compile
    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: compile_function(
        function, **{**kwargs, "backend": no_compiler}))
    models = [build_model("resnet", 8, "A") for _ in range(2)]
    recipe = compose_config([]).train
    assert isinstance(recipe, TrainConfig)
    network = FusedNetwork(models, [{}, {}], recipe, torch.device("cpu"), compile_model=True)
    assert network.compiled
    images = torch.zeros(2, 4, 3, 32, 32)
    with pytest.raises(Exception) as failed:
        network.trained(images)
    assert compile_failure(failed.value).startswith("InvalidCxxCompiler: No working C++")
    network.eager()
    assert not network.compiled and network.trained(images).shape == (2, 4, 10)
    assert compile_failure(RuntimeError("not a compiler's")) is None
