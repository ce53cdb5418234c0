"""The training loop: the paper's CIFAR-10 recipe, counted in iterations.

    degrade train depth=56 arch=plain            # one run, the paper's full schedule
    degrade train experiment=smoke data.root=../shared/cifar10-subset

A run trains until `train.iterations`, evaluates every `train.eval_every` iterations and at
the end, and checkpoints at each evaluation. Started again, it resumes from its checkpoint;
finished, it is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from degradation import __version__
from degradation.config import Config, ConfigError, TrainConfig, from_dict
from degradation.data import CifarSplits, TrainBatches, eval_batches, load_cifar10
from degradation.logs import MetricsLog, Progress
from degradation.models import build_model, count_parameters
from degradation.runs import CONFIG_FILE, SUMMARY_FILE, family, identity, run_dir
from degradation.storage import (
    RunLock,
    atomic_write_text,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_json,
)

CHECKPOINT_FORMAT = 1
log = logging.getLogger("degrade")


class Interrupted(RuntimeError):
    """Training stopped by a signal after writing a checkpoint."""


@dataclass
class Outcome:
    """How a call to `train` ended."""

    status: str  # done, diverged, skipped (finished before)
    run_dir: Path
    summary: dict[str, Any]


def learning_rate(iteration: int, train: TrainConfig, warming_up: bool = False) -> float:
    """The rate for the step taken at `iteration` (0-based): divided at each milestone passed."""
    if warming_up:
        return train.warmup_lr
    passed = sum(iteration >= milestone for milestone in train.milestones)
    # Divide rather than multiply so 0.1 -> 0.01 -> 0.001 exactly, as the paper writes them.
    return train.lr / (1 / train.lr_decay) ** passed


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present; asking for CUDA without one is a `ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available (allowed here: auto, cpu)")
    return torch.device(name)


def train(config: Config, splits: CifarSplits | None = None) -> Outcome:
    """Train the run `config` describes in its own folder, resuming or skipping as needed."""
    folder = run_dir(config)
    if (folder / SUMMARY_FILE).exists():
        return Outcome("skipped", folder, read_json(folder / SUMMARY_FILE))
    with RunLock(folder), _checkpoint_on_signal() as stop:
        _write_config(folder, config)
        if splits is None:
            splits = load_cifar10(Path(config.data.root), config.data.download,
                                  config.data.val_split)
        return _Run(config, folder, splits, stop).run()


class _Run:
    """The state of one run between its start (or resume) and its end."""

    def __init__(self, config: Config, folder: Path, splits: CifarSplits, stop: list[str]):
        self.config, self.folder, self.splits, self.stop = config, folder, splits, stop
        self.device = resolve_device(config.device)
        self.recipe = config.train
        _seed_everything(config.seed)
        self.model = build_model(config.arch, config.depth, config.shortcut).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.recipe.lr, momentum=self.recipe.momentum,
            weight_decay=self.recipe.weight_decay)
        self.batches = TrainBatches(splits.train_images, splits.train_labels, splits.mean,
                                    self.recipe.batch_size, config.seed, self.device)
        self.iteration = 0
        self.warming_up = config.warmup_enabled
        self.best: dict[str, float] | None = None
        self.last_test: dict[str, float] = {}
        self.last_train: dict[str, float] = {}
        self.elapsed = 0.0
        self._reset_accumulators()
        resumed = self._resume()
        self.metrics = MetricsLog(folder, resume_from=self.iteration if resumed else None)
        self.progress = Progress(family(config), self.recipe.iterations, self.recipe.batch_size,
                                 start=self.iteration)

    def run(self) -> Outcome:
        """Train to the end (or divergence) and write the summary."""
        started = time.perf_counter()
        self.started = started
        try:
            while self.iteration < self.recipe.iterations:
                self._step()
                self.iteration += 1
                at_end = self.iteration == self.recipe.iterations
                logging_now = self.iteration % self.recipe.log_every == 0 or at_end
                if logging_now and not self._log_training():
                    return self._finish("diverged")
                if self.iteration % self.recipe.eval_every == 0 or at_end:
                    self._evaluate()
                    self._checkpoint()
                elif self.stop:
                    self._checkpoint()
                if self.stop:
                    raise Interrupted(f"stopped by {self.stop[0]} at iteration {self.iteration}; "
                                      f"checkpoint written, run the same command to resume")
            return self._finish("done")
        finally:
            self.metrics.close()

    def _step(self) -> None:
        images, labels = next(self.batches)
        lr = learning_rate(self.iteration, self.recipe, self.warming_up)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with _autocast(self.device, self.recipe.precision):
            outputs = self.model(images)
            loss = F.cross_entropy(outputs, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # Accumulated on the device and read only at log points: no host sync per step.
        with torch.no_grad():
            self.loss_sum += loss.detach().float() * labels.numel()
            self.wrong += (outputs.argmax(dim=1) != labels).sum()
            self.seen += labels.numel()

    def _log_training(self) -> bool:
        """Log the running training error since the last log point; False if diverged."""
        seen = int(self.seen)
        loss = float(self.loss_sum) / max(seen, 1)
        error = 100.0 * float(self.wrong) / max(seen, 1)
        lr = learning_rate(self.iteration - 1, self.recipe, self.warming_up)
        self._reset_accumulators()
        if not np.isfinite(loss):
            self.diverged = {"iteration": self.iteration, "lr": lr,
                             "last_train_error": self.last_train.get("error/train")}
            return False
        self.last_train = {"error/train": error, "loss/train": loss}
        self.metrics.log(self.iteration, {"lr": lr, **self.last_train})
        if self.warming_up and error < self.recipe.warmup_until_error:
            # Paper: 0.01 "until the training error is below 80%", then back to 0.1.
            self.warming_up = False
            log.info("%s warm-up ended at iteration %d (training error %.1f%%)",
                     family(self.config), self.iteration, error)
        self.progress.update(self.iteration, lr, error)
        return True

    def _evaluate(self) -> None:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        count = 0
        with torch.inference_mode(), _autocast(self.device, self.recipe.precision):
            for images, labels in eval_batches(self.splits.eval_images, self.splits.eval_labels,
                                               self.splits.mean, self.recipe.eval_batch_size,
                                               self.device):
                outputs = self.model(images)
                loss_sum += F.cross_entropy(outputs.float(), labels, reduction="sum")
                wrong += (outputs.argmax(dim=1) != labels).sum()
                count += labels.numel()
        self.model.train()
        error = 100.0 * float(wrong) / count
        self.last_test = {"error/test": error, "loss/test": float(loss_sum) / count}
        self.metrics.log(self.iteration, self.last_test)
        if self.best is None or error < self.best["error"]:
            self.best = {"error": error, "iteration": self.iteration}
        self.progress.update(self.iteration, learning_rate(self.iteration - 1, self.recipe,
                                                           self.warming_up),
                             self.last_train.get("error/train", float("nan")), error)

    def _checkpoint(self) -> None:
        self.metrics.flush()
        save_checkpoint(self.folder, {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.state_dict(),
            "rng": _rng_state(),
            "warming_up": self.warming_up,
            "best": self.best,
            "last_test": self.last_test,
            "last_train": self.last_train,
            "accumulators": (self.loss_sum, self.wrong, self.seen),
            "elapsed_s": self.elapsed + time.perf_counter() - self.started,
        })

    def _resume(self) -> bool:
        state, notes = load_checkpoint(self.folder, map_location=self.device)
        for note in notes:
            log.warning(note)
        if state is None:
            return False
        saved = identity(_config_of(state))
        if saved != identity(self.config):
            changed = sorted(k for k in saved.keys() | identity(self.config).keys()
                             if saved.get(k) != identity(self.config).get(k))
            raise ConfigError(f"the checkpoint in {self.folder} was made with different "
                              f"settings ({', '.join(changed)}); move it away to retrain")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        _set_rng_state(state["rng"])
        self.iteration = state["iteration"]
        self.warming_up = state["warming_up"]
        self.best, self.last_test = state["best"], state["last_test"]
        self.last_train = state["last_train"]
        self.loss_sum, self.wrong, self.seen = (
            value.to(self.device) for value in state["accumulators"])
        self.elapsed = state["elapsed_s"]
        log.info("%s resumed from iteration %d (%s)", family(self.config), self.iteration,
                 self.folder)
        return True

    def _finish(self, status: str) -> Outcome:
        summary = {
            "status": status,
            "arch": self.config.arch,
            "depth": self.config.depth,
            "shortcut": None if self.config.arch == "plain" else self.config.shortcut,
            "seed": self.config.seed,
            "iterations": self.recipe.iterations,
            "iterations_done": self.iteration,
            "final_test_error": self.last_test.get("error/test"),
            "final_test_loss": self.last_test.get("loss/test"),
            "final_train_error": self.last_train.get("error/train"),
            "final_train_loss": self.last_train.get("loss/train"),
            "best_test_error": None if self.best is None else self.best["error"],
            "best_test_iteration": None if self.best is None else self.best["iteration"],
            "eval_set": self.splits.eval_set,
            "parameters": count_parameters(self.model),
            "wall_time_s": self.elapsed + time.perf_counter() - self.started,
            "device": _device_name(self.device),
            "versions": {"degrade": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "code_version": code_version(),
            "diverged": getattr(self, "diverged", None),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(self.folder / SUMMARY_FILE, summary)
        return Outcome(status, self.folder, summary)

    def _reset_accumulators(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        self.seen = torch.zeros((), device=self.device, dtype=torch.int64)


def code_version() -> str | None:
    """The git commit of the code that ran, `+dirty` when it had uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=source,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _write_config(folder: Path, config: Config) -> None:
    atomic_write_text(folder / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))


def _config_of(state: dict[str, Any]) -> Config:
    return from_dict(state["config"])


@contextlib.contextmanager
def _autocast(device: torch.device, precision: str) -> Iterator[None]:
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


@contextlib.contextmanager
def _checkpoint_on_signal() -> Iterator[list[str]]:
    """SIGTERM/SIGINT/SIGUSR2 ask the loop to checkpoint and stop at the next step."""
    stop: list[str] = []
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
    try:
        previous = {sig: signal.signal(sig, lambda s, _f: stop.append(signal.Signals(s).name))
                    for sig in wanted}
    except ValueError:  # not the main thread: leave signals to the caller
        yield stop
        return
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"
