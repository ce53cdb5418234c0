"""`degrade check`: is this machine ready? Every path a user's runs take, on tiny data.

    degrade check                  # on CUDA when present, else on the CPU
    degrade check --device cpu     # the CPU part (`make test` runs it)

Each check runs the installed command as a user types it (`python -m degradation ...` in a
subprocess) on a generated data set in a temporary folder: depth 8, a dozen iterations.
A check passes when the command exits as a user's would and leaves the runs it should; it
fails with one line, the command's own `error:` line where it printed one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from degradation.errors import INTERRUPTED_EXIT, DegradeError, error_line, one_line
from degradation.hardware import visible_gpus
from degradation.runs import CHECKPOINT, PREVIOUS_CHECKPOINT, SUMMARY_FILE, find_runs, last_line

# One command may compile (CUDA: torch.compile of a few graphs); nothing here should take longer.
COMMAND_TIMEOUT_S = 900
ITERATIONS = 12  # checkpoints at 6 and 12: a rewound run resumes from 6
# Long enough that Ctrl-C, pressed at the first checkpoint (iteration 4), lands mid-run.
SIGNAL_ITERATIONS = {"cpu": 48, "cuda": 480}


class CheckFailed(DegradeError):
    """A check's failure, in one line."""


@dataclass(frozen=True)
class Row:
    """One line of the table: the check, passed/failed/skipped, and why (failed, skipped)."""

    name: str
    result: str
    line: str = ""
    seconds: float = 0.0

    def format(self) -> str:
        """The row as printed: name, result, seconds, and the reason if any."""
        seconds = " " * 6 if self.result == "skipped" else f"{self.seconds:5.0f}s"
        return f"{self.name:<{NAME_WIDTH}}  {self.result:<7} {seconds}  {self.line}".rstrip()


class Workspace:
    """The temporary folder the checks of one device share: the data, an output folder each."""

    def __init__(self, root: Path, device: str) -> None:
        self.root, self.device = root, device
        self.data = root / "data"
        self._lone: Path | None = None

    def degrade(self, *args: object, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
        """Run `degrade ARGS` as a user would; CheckFailed unless it exits 0."""
        command = [sys.executable, "-m", "degradation", *map(str, args)]
        try:
            result = subprocess.run(command, cwd=self.root, capture_output=True, text=True,
                                    timeout=COMMAND_TIMEOUT_S, env=_environment(env))
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"`degrade {args[0]}` did not end within {COMMAND_TIMEOUT_S} s"
                              ) from None
        if result.returncode != 0:
            raise CheckFailed(f"`degrade {args[0]}` exited {result.returncode}: "
                              f"{_reason(result.stderr, result.stdout)}")
        return result

    def overrides(self, output: str, **extra: object) -> list[str]:
        """A depth-8 run of ITERATIONS iterations on the generated data, into root/output."""
        values: dict[str, object] = {
            "arch": "resnet", "depth": 8, "device": self.device,
            "output_dir": self.root / output, "data.root": self.data, "data.download": "false",
            "train.iterations": ITERATIONS, "train.milestones": "[6,9]",
            "train.batch_size": 16, "train.log_every": 2, "train.eval_every": 6,
            "train.eval_batch_size": 32, **extra}
        return [f"{key}={value}" for key, value in values.items()]

    def lone(self) -> Path:
        """The output folder of one finished run with the defaults (trained once, then shared)."""
        if self._lone is None:
            self.degrade("train", *self.overrides("lone"))
            self._lone = self.root / "lone"
        expect_done(self._lone, 1)
        return self._lone


@dataclass(frozen=True)
class Check:
    """A named check: a function of the workspace that raises on failure."""

    name: str
    run: Callable[[Workspace], None]
    devices: tuple[str, ...] = ("cpu", "cuda")
    gpus: int = 1  # on CUDA: the GPUs it needs


def expect_done(output: Path, count: int) -> None:
    """CheckFailed unless `output` holds exactly `count` runs, all finished."""
    records = find_runs(output)
    states = sorted(record.state for record in records)
    if states != ["done"] * count:
        raise CheckFailed(f"expected {count} finished run(s) under {output}, found "
                          f"{', '.join(states) or 'none'}")
    for record in records:
        done = record.summary.get("iterations_done")
        if done != record.config.train.iterations:
            raise CheckFailed(f"{record.path} stopped at iteration {done} of "
                              f"{record.config.train.iterations}")


def rewind(output: Path, seed: int = 0) -> Path:
    """Make a finished run of `output` look killed after its first checkpoint; its folder."""
    folder = next((record.path for record in find_runs(output) if record.config.seed == seed),
                  None)
    if folder is None or not (folder / PREVIOUS_CHECKPOINT).exists():
        raise CheckFailed(f"no run of seed {seed} with two checkpoints under {output}")
    (folder / SUMMARY_FILE).unlink()
    os.replace(folder / PREVIOUS_CHECKPOINT, folder / CHECKPOINT)
    return folder


def expect_resumed(folder: Path) -> None:
    """CheckFailed unless the run in `folder` resumed (not restarted) and finished."""
    log = (folder / "train.log").read_text(errors="replace")
    if "resumed from iteration" not in log:
        raise CheckFailed(f"{folder} did not resume from its checkpoint: "
                          f"{last_line(folder / 'train.log')}")
    expect_done(folder, 1)


# --- the checks ------------------------------------------------------------------------------


def generate_data(space: Workspace) -> None:
    """`degrade generate-data`: 80 training and 32 test images in CIFAR-10's format."""
    space.degrade("generate-data", space.data, "--train-per-batch", 16, "--test-size", 32)


def lone_run(space: Workspace) -> None:
    """One run with the device's defaults (CUDA: compiled, channels_last, fused SGD)."""
    space.lone()


def bf16_run(space: Workspace) -> None:
    """One run under bf16 autocast."""
    space.degrade("train", *space.overrides("bf16", **{"train.precision": "bf16"}))
    expect_done(space.root / "bf16", 1)


def fused_seeds(space: Workspace) -> None:
    """Seeds 0 and 1 trained as one fused model, each into its own folder."""
    space.degrade("train", *space.overrides("fused", **{"trainer.fuse_with": "[1]"}))
    expect_done(space.root / "fused", 2)


def packed_sweep(space: Workspace) -> None:
    """A sweep of two runs at once: both on one GPU, or side by side on the cores."""
    packing = ("hydra.launcher.runs_per_gpu=2" if space.device == "cuda"
               else "hydra.launcher.parallel_runs=2")
    space.degrade("sweep", "seed=0,1", *space.overrides("sweep"), packing)
    expect_done(space.root / "sweep", 2)


def fused_then_lone(space: Workspace) -> None:
    """A fused run's checkpoint resumed by a lone run."""
    space.degrade("train", *space.overrides("fused-lone", **{"trainer.fuse_with": "[1]"}))
    folder = rewind(space.root / "fused-lone", seed=1)
    space.degrade("train", *space.overrides("fused-lone", seed=1))
    expect_resumed(folder)


def across_devices(saved_on: str, resumed_on: str) -> Callable[[Workspace], None]:
    """A run checkpointed on one device and resumed on the other."""
    def check(space: Workspace) -> None:
        output = f"{saved_on}-{resumed_on}"
        space.degrade("train", *space.overrides(output, device=saved_on))
        folder = rewind(space.root / output)
        space.degrade("train", *space.overrides(output, device=resumed_on))
        expect_resumed(folder)
    return check


def more_gpus_visible(space: Workspace) -> None:
    """A checkpoint saved with two GPUs visible, resumed with one."""
    first, second = _gpus()[:2]
    space.degrade("train", *space.overrides("visible"),
                  env={"CUDA_VISIBLE_DEVICES": f"{first},{second}"})
    folder = rewind(space.root / "visible")
    space.degrade("train", *space.overrides("visible"), env={"CUDA_VISIBLE_DEVICES": second})
    expect_resumed(folder)


def interrupted(gpus: int = 1) -> Callable[[Workspace], None]:
    """Ctrl-C (SIGINT to the command's process group) mid-run, then the same command again."""
    def check(space: Workspace) -> None:
        output, iterations = f"sigint-{gpus}", SIGNAL_ITERATIONS[space.device]
        args = ["train", *space.overrides(output, **{
            "trainer.gpus": gpus, "train.iterations": iterations,
            "train.milestones": f"[{iterations // 2},{iterations * 3 // 4}]",
            "train.eval_every": 4})]
        _interrupt(space, args, space.root / output)
        space.degrade(*args)
        expect_resumed(find_runs(space.root / output)[0].path)
    return check


def distributed(**extra: object) -> Callable[[Workspace], None]:
    """One run over two processes (DDP: NCCL on GPUs, gloo on the CPU)."""
    def check(space: Workspace) -> None:
        output = "ddp" + ("-sync" if extra else "")
        space.degrade("train", *space.overrides(output, **{"trainer.gpus": 2, **extra}))
        expect_done(space.root / output, 1)
    return check


def responses(space: Workspace) -> None:
    """`degrade responses` (Figure 7) over a finished run."""
    output = space.lone()
    space.degrade("responses", output, "--device", space.device)
    if not (output / "figures" / "figure7.png").exists():
        raise CheckFailed(f"degrade responses wrote no {output / 'figures' / 'figure7.png'}")


def bench(space: Workspace) -> None:
    """`degrade bench`: one row, ours against the conventional pipeline."""
    # On the CPU the compile a bench of a 64k-iteration run would do takes minutes on a few
    # cores: the check times eager steps there (the CUDA check keeps the default, compiled).
    eager = ["train.compile=false"] if space.device == "cpu" else []
    result = space.degrade(
        "bench", "--depth", 8, "--batch-size", 16, "--device", space.device, "--steps", 2,
        "--warmup-steps", 1, "--repeats", 1, "--images", 256, "--eval-steps", 1,
        "--workers", 1, "train.eval_batch_size=32", *eager)
    if "| resnet-8-A " not in result.stdout:
        raise CheckFailed(f"degrade bench printed no row for resnet-8-A: "
                          f"{_reason(result.stdout, result.stderr)}")


CHECKS: list[Check] = [
    Check("generate-data", generate_data),
    Check("train: one run, defaults (channels_last)", lone_run, ("cpu",)),
    Check("train: one run, defaults (compiled, channels_last, fused SGD)", lone_run, ("cuda",)),
    Check("train: bf16", bf16_run, ("cuda",)),
    Check("train: 2 seeds fused (trainer.fuse_with)", fused_seeds, ("cpu",)),
    Check("train: 2 seeds fused, compiled (trainer.fuse_with)", fused_seeds, ("cuda",)),
    Check("sweep: 2 runs side by side (parallel_runs=2)", packed_sweep, ("cpu",)),
    Check("sweep: 2 runs on one GPU (runs_per_gpu=2)", packed_sweep, ("cuda",)),
    Check("resume: a fused run's checkpoint, alone", fused_then_lone),
    Check("resume: a CPU checkpoint on CUDA", across_devices("cpu", "cuda"), ("cuda",)),
    Check("resume: a CUDA checkpoint on the CPU", across_devices("cuda", "cpu"), ("cuda",)),
    Check("resume: saved with 2 GPUs visible, resumed with 1", more_gpus_visible, ("cuda",),
          gpus=2),
    Check("SIGINT, then resume", interrupted()),
    Check("responses (Figure 7)", responses),
    Check("bench", bench),
    # On the CPU one DDP check covers both: the run trains in two gloo processes to the end.
    Check("DDP: trainer.gpus=2 (gloo), SIGINT, then resume", interrupted(gpus=2), ("cpu",)),
    Check("DDP: trainer.gpus=2 (NCCL)", distributed(), ("cuda",), gpus=2),
    Check("DDP: trainer.gpus=2 with SyncBatchNorm", distributed(**{
        "trainer.sync_batchnorm": "true"}), ("cuda",), gpus=2),
    Check("DDP: trainer.gpus=2, SIGINT, then resume", interrupted(gpus=2), ("cuda",), gpus=2),
]


NAME_WIDTH = max(len(check.name) for check in CHECKS)


# --- running them ----------------------------------------------------------------------------


def plan(checks: Sequence[Check], device: str, gpus: int) -> list[tuple[Check, str | None]]:
    """The checks for `device` (cpu or cuda), each with why it is skipped (None: it runs)."""
    return [(check, f"needs {check.gpus} GPUs, {gpus} visible"
             if device == "cuda" and check.gpus > gpus else None)
            for check in checks if device in check.devices]


def run_checks(device: str, checks: Sequence[Check] | None = None) -> Iterator[Row]:
    """Run the checks for `device` (cpu or cuda) in a temporary folder, one row as each ends."""
    gpus = len(_gpus()) if device == "cuda" else 0
    with tempfile.TemporaryDirectory(prefix="degrade-check-") as root:
        space = Workspace(Path(root), device)
        for check, skipped in plan(CHECKS if checks is None else checks, device, gpus):
            if skipped:
                yield Row(check.name, "skipped", skipped)
                continue
            started = time.perf_counter()
            try:
                check.run(space)
            except CheckFailed as error:
                yield Row(check.name, "failed", one_line(error), time.perf_counter() - started)
            except Exception as error:  # a defect the check ran into: a row too, with its type
                yield Row(check.name, "failed", error_line(error),
                          time.perf_counter() - started)
            else:
                yield Row(check.name, "passed", seconds=time.perf_counter() - started)


def _gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries for its children."""
    import torch

    return visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())


def _environment(extra: dict[str, str] | None) -> dict[str, str] | None:
    return None if extra is None else {**os.environ, **extra}


def _reason(*outputs: str) -> str:
    """The command's `error:` line if it printed one, else its last line."""
    lines = [line.strip() for output in outputs for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error: " in line]
    return (errors or lines or ["no output"])[-1]


def _interrupt(space: Workspace, args: list[str], output: Path) -> None:
    """Start `degrade ARGS`, press Ctrl-C once its first checkpoint is written, expect exit 130."""
    command = [sys.executable, "-m", "degradation", *args]
    # A session of its own: SIGINT reaches every process of the command, as Ctrl-C does.
    process = subprocess.Popen(command, cwd=space.root, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while not list(output.glob(f"runs/*/*/{CHECKPOINT}")):
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        else:
            os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != INTERRUPTED_EXIT or "stopped by SIGINT" not in stderr + stdout:
        raise CheckFailed(f"Ctrl-C mid-run: `degrade train` exited {process.returncode}, not "
                          f"{INTERRUPTED_EXIT}: {_reason(stderr, stdout)}")
