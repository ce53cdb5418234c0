"""The training loop: the paper's CIFAR-10 recipe, counted in iterations.

    degrade train depth=56 arch=plain            # one run, the paper's full schedule
    degrade train experiment=smoke data.root=../shared/cifar10-subset

    degrade train seed=0 trainer.fuse_with=[1,2]  # seeds 0, 1 and 2 as one fused model

A run trains until `train.iterations`, evaluates every `train.eval_every` iterations and at
the end, and checkpoints at each evaluation. Started again, it resumes from its checkpoint;
finished, it is left alone. Runs fused together (fused.py) each write exactly what they
would write alone, into their own folders.

The loop (`_Trainer.run`) reads top to bottom: step, log, evaluate, checkpoint. What a step
computes is in step.py, how the device is set up in device.py, the checkpoint's format in
checkpoint.py and the summary in summary.py. A fused or a DDP run differs only behind the
network (network.py) and the calls into distributed.py, which do nothing in a lone process.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import yaml
from torch import Tensor

from degradation.config import Config, members
from degradation.data.cifar import CifarSplits, DataError, load_cifar10
from degradation.data.stream import TrainBatches
from degradation.errors import Interrupted, error_line
from degradation.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    network_name,
    run_dir,
)
from degradation.storage import (
    StorageError,
    atomic_write_text,
    read_json,
    remove_temporaries,
)
from degradation.training import distributed
from degradation.training.checkpoint import (
    check_checkpoint,
    load_checkpoint,
    newest_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from degradation.training.device import compile_failure, resolve_device, resolve_speed
from degradation.training.logs import Progress, let_new_event_file_sort_last
from degradation.training.network import network_for
from degradation.training.signals import noting_stop_signals
from degradation.training.spawn import spawn
from degradation.training.step import evaluate, gradient_norms, learning_rate, train_step
from degradation.training.summary import Ending, Outcome, summary_of, write_summary

log = logging.getLogger("degrade")
_T = TypeVar("_T")


def train(config: Config, splits: CifarSplits | None = None) -> Outcome:
    """Train the run `config` describes in its own folder, resuming or skipping as needed.

    With `trainer.fuse_with` the runs of those seeds train along with it (`train_all`); the
    outcome returned is this run's own.
    """
    return train_all(config, splits)[0]


def train_all(config: Config, splits: CifarSplits | None = None) -> list[Outcome]:
    """Train `config` and the run of each seed in `trainer.fuse_with`: one outcome per run,
    `config`'s first. Finished runs are skipped; the others train as one fused model
    (fused.py) when their checkpoints stand at one iteration, else one by one.
    """
    configs = members(config)
    outcomes = {seed: Outcome("skipped", folder, read_json(folder / SUMMARY_FILE))
                for seed, folder in ((c.seed, run_dir(c)) for c in configs)
                if (folder / SUMMARY_FILE).exists()}
    todo = [c for c in configs if c.seed not in outcomes]
    if not todo:
        return [outcomes[c.seed] for c in configs]
    if distributed.launches_workers(config):  # trainer.gpus > 1: one DDP process per GPU
        return [spawn(config)]  # never fused (config.validate refuses it)
    with contextlib.ExitStack() as held:
        for member in todo:  # every member's lock before any is touched
            held.enter_context(distributed.run_lock(run_dir(member)))
        stop = held.enter_context(noting_stop_signals())
        groups = _training_groups(todo)
        for member in (member for group in groups for member in group):
            if distributed.is_writer():  # DDP: the other ranks wait for it in `resume`
                _write_config(run_dir(member), member)
        if splits is None:
            splits = load_cifar10(Path(config.data.root), config.data.download,
                                  config.data.val_split)
        for group in groups:
            outcomes.update((outcome.summary["seed"], outcome)
                            for outcome in _Trainer(group, splits, stop).run())
    return [outcomes[c.seed] for c in configs]


def _training_groups(configs: list[Config]) -> list[list[Config]]:
    """The runs trained together: all of them, each config's `trainer.fuse_with` naming the
    others; or, when their checkpoints stand at different iterations, each one alone."""
    seeds = [c.seed for c in configs]
    if len(configs) > 1:
        reached = [_checkpoint_iteration(run_dir(c)) for c in configs]
        if len(set(reached)) == 1:
            return [[replace(c, trainer=replace(c.trainer, fuse_with=[s for s in seeds
                                                                      if s != c.seed]))
                     for c in configs]]
        log.warning("warning: the runs of seeds %s have checkpoints at iterations %s; they are "
                    "trained one after another, not fused", seeds, reached)
    return [[replace(c, trainer=replace(c.trainer, fuse_with=[]))] for c in configs]


def _checkpoint_iteration(folder: Path) -> int:
    """The iteration a run would resume from: that of its newest readable checkpoint, or 0."""
    state, _ = load_checkpoint(folder)
    return 0 if state is None else state["iteration"]


class _Trainer:
    """Trains one network from its start (or checkpoint) to its end, for the runs it holds:
    one run (DDP over several processes included), or several that differ only in seed as
    one fused network. The network hides which (network.py); each run's own part (data
    stream, logs, checkpoint, summary) is a `_Run`, the same whether it trains alone or fused.
    """

    def __init__(self, configs: list[Config], splits: CifarSplits, stop: list[str]):
        self.pending, self.stop = stop, distributed.stop_list(stop)  # DDP: stop together
        self.recipe = configs[0].train
        self.device = resolve_device(configs[0].device)
        self.network = network_for(configs, self.device, resolve_speed(self.recipe,
                                                                       self.device))
        # The data set is copied to the device once, not for each run or each evaluation.
        splits = replace(splits, **{name: getattr(splits, name).to(self.device) for name in (
            "train_images", "train_labels", "eval_images", "eval_labels", "mean")})
        self.runs = [_Run(config, splits, self.device) for config in configs]
        self.everyone = list(self.runs)  # self.runs loses those that diverge
        self.eval_images, self.eval_labels = splits.eval_images, splits.eval_labels
        self.mean = splits.mean
        resumed = [run.resume(lambda state, index=index: self.network.load(index, state))
                   for index, run in enumerate(self.runs)]
        if len({run.iteration for run in self.runs}) > 1:  # checked before fusing
            raise StorageError("fused runs must resume from one iteration; train them apart")
        for run, cut in zip(self.runs, resumed, strict=True):
            run.open_logs(cut)
        # What a compiled network has not run yet: each compiles its graphs when first run.
        self.not_compiled_yet = {"step", "evaluation"} if self.network.compiled else set()

    @property
    def iteration(self) -> int:
        """The iteration every run still training has reached."""
        return self.runs[0].iteration

    def run(self) -> list[Outcome]:
        """Train to the end (or divergence) and write each run's summary."""
        started = time.perf_counter()
        for run in self.runs:
            run.started = started
        outcomes: list[Outcome] = []
        try:
            while self.runs and self.iteration < self.recipe.iterations:
                self._step()
                for run in self.runs:
                    run.iteration += 1
                at_end = self.iteration == self.recipe.iterations
                if self.iteration % self.recipe.log_every == 0 or at_end:
                    self._log_gradients()
                    outcomes += self._log_training()
                    if not self.runs:
                        break
                if self.iteration % self.recipe.eval_every == 0 or at_end:
                    self._evaluate()
                    self._checkpoint()
                elif self.stop:
                    self._checkpoint()
                if self.stop and not at_end:  # at the end, finishing is the quickest stop
                    raise Interrupted(f"stopped by {self.stop[0]} at iteration {self.iteration}; "
                                      f"checkpoint written, run the same command to resume")
            return outcomes + [self._finish(run, "done") for run in self.runs]
        finally:
            for run in self.everyone:
                run.metrics.close()

    def _step(self) -> None:
        batches = [distributed.shard(*next(run.batches))  # DDP: this rank's slice
                   for run in self.runs]
        distributed.agree_on_stop(self.iteration, self.pending, self.stop)
        images, labels = self.network.stack(batches)
        # Fusion refuses warm-up (config.validate), so the runs share one rate.
        lr = learning_rate(self.iteration, self.recipe, self.runs[0].warming_up)
        loss, wrong = self._eager_if_compiling_fails("step", lambda: train_step(
            self.network.trained, self.network.optimizer, images, labels, lr,
            self.recipe.precision, self.network.memory_format))
        for run, run_loss, run_wrong in zip(self.runs, loss.reshape(-1), wrong.reshape(-1),
                                            strict=True):
            run.add(run_loss, run_wrong, labels.shape[-1])

    def _log_gradients(self) -> None:
        """Log each run's per-layer weight-gradient norms of the step just taken."""
        # DDP: every rank holds the all-reduced gradients. One read back per log point, where
        # the training error is read back anyway.
        layers = self.network.layers
        norms = gradient_norms(self.network.module, layers, len(self.runs)).float().tolist()
        for run, row in zip(self.runs, norms, strict=True):
            run.metrics.log_gradients(self.iteration, dict(zip(layers, row, strict=True)))

    def _log_training(self) -> list[Outcome]:
        """Log each run's training error; those no longer finite end as diverged."""
        outcomes = []
        for run in [run for run in self.runs if not run.log_training()]:
            outcomes.append(self._finish(run, "diverged"))
            index = self.runs.index(run)
            del self.runs[index]
            if self.runs:  # its NaNs never reach the others; it simply stops being computed
                self.network.drop(index)
        return outcomes

    def _evaluate(self) -> None:
        loss_sum, wrong = self._eager_if_compiling_fails("evaluation", lambda: evaluate(
            self.network.module, self.eval_images, self.eval_labels, self.mean,
            self.recipe.eval_batch_size, self.recipe.precision, self.network.memory_format))
        for run, run_loss, run_wrong in zip(self.runs, loss_sum.reshape(-1), wrong.reshape(-1),
                                            strict=True):
            run.record_test(run_loss, run_wrong, len(self.eval_labels))

    def _eager_if_compiling_fails(self, what: str, compute: Callable[[], _T]) -> _T:
        """`compute()`. The first time a compiled network runs `what` (a step, an evaluation),
        it compiles: should the compiler fail (none installed, a broken one), the network
        turns eager, gets back the state it had before, and `compute` runs again, so the run
        goes on exactly as an eager run would. Any other error is the run's."""
        if what not in self.not_compiled_yet:
            return compute()
        # Only a step changes the state (an evaluation leaves weights and optimizer as they are).
        before = [copy.deepcopy(self.network.saved(index)) for index in range(len(self.runs))
                  ] if what == "step" else []
        try:
            result = compute()
        except Exception as error:
            reason = compile_failure(error)
            if reason is None:
                raise
            log.warning("warning: compiling failed (%s); training eagerly", reason)
            self.network.eager()
            self.not_compiled_yet.clear()
            for index, state in enumerate(before):  # a failed backward may follow a forward
                self.network.load(index, state)
            return compute()
        self.not_compiled_yet.discard(what)
        return result

    def _checkpoint(self) -> None:
        for index, run in enumerate(self.runs):  # DDP: every rank, rank 0 writes
            run.checkpoint(self.network.saved(index))

    def _finish(self, run: _Run, status: str) -> Outcome:
        return run.finish(status, self.network.parameters_per_member)


class _Run:
    """One run's own part of the training, whether it trains alone or fused with others:
    its data stream, accumulated training error, logs, best and last errors, checkpoint,
    resume and summary."""

    def __init__(self, config: Config, splits: CifarSplits, device: torch.device):
        self.config, self.folder, self.device = config, run_dir(config), device
        self.recipe = config.train
        self.eval_set = splits.eval_set
        self.batches = TrainBatches(splits.train_images, splits.train_labels, splits.mean,
                                    self.recipe.batch_size, config.seed, device)
        self.iteration = 0
        self.warming_up = config.warmup_enabled
        self.best: dict[str, float] | None = None
        self.last_test: dict[str, float] = {}
        self.last_train: dict[str, float] = {}
        self.diverged: dict[str, Any] | None = None
        self.elapsed = 0.0
        self.started = time.perf_counter()
        self._reset_accumulators()

    def open_logs(self, resumed: bool) -> None:
        """Open the logs, cut back to the iteration resumed from when `resumed`."""
        self.metrics = distributed.metrics_log(self.folder, self.iteration if resumed else None)
        fused = f" seed {self.config.seed}" if self.config.trainer.fuse_with else ""
        self.progress = Progress(network_name(self.config) + fused, self.recipe.iterations,
                                 self.recipe.batch_size, start=self.iteration)

    def add(self, loss: Tensor, wrong: Tensor, count: int) -> None:
        """Accumulate one step's mean loss and error count over `count` images."""
        # On the device, read only at log points: no host sync per step.
        self.loss_sum += loss * count
        self.wrong += wrong
        self.seen += count

    def log_training(self) -> bool:
        """Log the running training error since the last log point; False if diverged."""
        distributed.all_reduce_sum(self.loss_sum, self.wrong, self.seen)  # DDP: every rank's
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
                     network_name(self.config), self.iteration, error)
        self.progress.update(self.iteration, lr, error)
        return True

    def record_test(self, loss_sum: Tensor, wrong: Tensor, count: int) -> None:
        """Log an evaluation's summed loss and error count over `count` images."""
        error = 100.0 * float(wrong) / count
        self.last_test = {"error/test": error, "loss/test": float(loss_sum) / count}
        self.metrics.log(self.iteration, self.last_test)
        if self.best is None or error < self.best["error"]:
            self.best = {"error": error, "iteration": self.iteration}
        self.progress.update(self.iteration, learning_rate(self.iteration - 1, self.recipe,
                                                           self.warming_up),
                             self.last_train.get("error/train", float("nan")), error)

    def checkpoint(self, saved: dict[str, Any]) -> None:
        """Write the checkpoint: `saved` (model, optimizer, rng) and this run's own state.

        DDP: called on every rank at the same iteration; rank 0 writes.
        """
        # Every rank's training-error sums since the last log point, so that a run resumed
        # mid-interval counts each image once (rank 0 alone restores them).
        accumulators = distributed.summed(self.loss_sum, self.wrong, self.seen)
        if not distributed.is_writer():
            return
        self.metrics.flush()
        save_checkpoint(self.folder, {
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "model": saved["model"],
            "optimizer": saved["optimizer"],
            "batches": self.batches.state_dict(),
            "rng": saved["rng"],
            "warming_up": self.warming_up,
            "best": self.best,
            "last_test": self.last_test,
            "last_train": self.last_train,
            "accumulators": accumulators,
            "elapsed_s": self.elapsed + time.perf_counter() - self.started,
        })

    def resume(self, load: Callable[[dict[str, Any]], None]) -> bool:
        """Restore the newest good checkpoint, the network's part of it through `load`; True
        when logs must be cut back to its iteration.

        A damaged checkpoint is renamed `<name>.damaged` and the one before it used, saying so.
        With no usable checkpoint but logs of an earlier attempt, the run starts again from
        iteration 0 and True still asks for those logs to be cut (to nothing).
        DDP: rank 0 alone cleans up and picks the checkpoint, then every rank loads that one.
        """
        path, state = None, None
        if distributed.is_writer():
            remove_temporaries(self.folder)  # left by a writer killed mid-write; we hold the lock
            path, state, notes = newest_checkpoint(self.folder, self.device, set_aside=True)
            for note in notes:
                log.warning("warning: %s", note)
        chosen = distributed.from_writer(path)  # the other ranks wait for rank 0 here
        if state is None and chosen is not None:
            path, state = chosen, read_checkpoint(chosen, map_location=self.device)
        earlier_logs = (self.folder / METRICS_FILE).exists() or any(
            (self.folder / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
        if earlier_logs:
            let_new_event_file_sort_last(self.folder / TENSORBOARD_DIR)
        if state is None:
            if earlier_logs:
                log.info("%s: no checkpoint to resume from; starting again from iteration 0",
                         network_name(self.config))
            return earlier_logs
        check_checkpoint(path, state, self.config)
        try:
            load(state)
            self.batches.load_state_dict(state["batches"])
            self.iteration = int(state["iteration"])
            self.warming_up = bool(state["warming_up"])
            self.best, self.last_test = state["best"], state["last_test"]
            self.last_train = state["last_train"]
            if distributed.is_writer():  # every rank's sums (`checkpoint`): counted once
                self.loss_sum, self.wrong, self.seen = (
                    value.to(self.device) for value in state["accumulators"])
            self.elapsed = float(state["elapsed_s"])
        except DataError as error:  # one line already
            raise StorageError(f"checkpoint {path}: {error}") from None
        except Exception as error:  # a foreign or damaged state can fail in almost any way
            raise StorageError(f"checkpoint {path} does not fit this run "
                               f"({error_line(error, with_type=False)}); move it away to "
                               "retrain") from None
        log.info("%s resumed from iteration %d (%s)", network_name(self.config), self.iteration,
                 self.folder)
        return True

    def finish(self, status: str, parameters: int) -> Outcome:
        """Write the summary of a run that ended (`parameters`: its network's count)."""
        ending = Ending(status, self.iteration, self.last_train, self.last_test, self.best,
                        self.diverged, parameters,
                        self.elapsed + time.perf_counter() - self.started)
        summary = summary_of(self.config, ending, self.eval_set, self.device)
        if distributed.is_writer():
            write_summary(self.folder, summary)
            # After: a run killed before its summary resumes, and would log these twice.
            self.metrics.log_hparams(self.config, summary)
        return Outcome(status, self.folder, summary)

    def _reset_accumulators(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.wrong = torch.zeros((), device=self.device, dtype=torch.int64)
        self.seen = torch.zeros((), device=self.device, dtype=torch.int64)


def _write_config(folder: Path, config: Config) -> None:
    atomic_write_text(folder / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
