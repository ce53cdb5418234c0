"""`degrade evaluate`: each finished run's final weights on a whole split, in eval mode
(BatchNorm's running statistics), without augmentation, in fp32.

Usage: `degrade evaluate outputs/ --split train` writes `evaluation.json` into every finished
run's folder and prints one row per run; `degrade claims` then judges claim 1 on it.

The curves' training error is the running error of the mini-batches under augmentation and
train-mode BatchNorm, as the paper plots it. Whether a deep plain net fits its training set
worse is answered most cleanly by the final weights on the whole training set at test time:
torchvision's reference trainer offers the same measurement as `--test-only`. An evaluation is
keyed by the checkpoint's SHA-256 and the split, so it is made once per checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from degradation.analysis.measurements import EVALUATION_FILE, file_sha256, stored_evaluation
from degradation.analysis.responses import cached_splits
from degradation.analysis.results import AnalysisError, load_runs, run_label
from degradation.data.cifar import TEST_FILE, ensure_cifar10, read_batch
from degradation.models import build_model
from degradation.runs import RunRecord, network_name
from degradation.storage import write_json
from degradation.training.checkpoint import newest_checkpoint
from degradation.training.device import resolve_device
from degradation.training.step import evaluate

SPLITS = ("train", "test", "val")
MODE = "eval mode (BatchNorm running statistics), no augmentation, fp32"


@dataclass
class Row:
    """What `degrade evaluate` did with one run: measured, found already measured, or not."""

    run: str
    network: str
    seed: int
    split: str
    entry: dict[str, Any] | None = None
    cached: bool = False
    skipped: str = ""  # why the run was not evaluated

    def text(self) -> str:
        """One printed line: `plain-20  seed 0  train error 74.12%  loss 2.0051  ...`."""
        head = f"{self.network:<14} seed {self.seed:<3}"
        if self.entry is None:
            return f"{head} {self.split} not evaluated ({self.skipped})  {self.run}"
        entry = self.entry
        return (f"{head} {self.split} error {entry['error']:6.2f}%  loss {entry['loss']:.4f}  "
                f"({entry['images']:,} images, iteration {entry['iteration']:,}"
                f"{', already evaluated' if self.cached else ''})  {self.run}")


def split_data(record: RunRecord, split: str, data_root: Path | None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """(uint8 images, labels, the training per-pixel mean) of the run's `split`: `train` the
    images it trained on, `val` its held-out part (data.val_split > 0), `test` the test set."""
    data = record.config.data
    root = Path(data_root or data.root)
    splits = cached_splits(root, data.download, data.val_split)
    if split == "train":
        return splits.train_images, splits.train_labels, splits.mean
    if split == "val":
        if data.val_split == 0:
            raise AnalysisError(f"{record.path} holds out no validation split "
                                "(data.val_split=0); --split val needs one")
        return splits.eval_images, splits.eval_labels, splits.mean
    if splits.eval_set == "test":
        return splits.eval_images, splits.eval_labels, splits.mean
    images, labels = read_batch(ensure_cifar10(root, data.download) / TEST_FILE)
    return images, labels, splits.mean


def evaluate_run(record: RunRecord, split: str, device: torch.device,
                 data_root: Path | None = None) -> tuple[dict[str, Any], bool]:
    """The final checkpoint's error and loss on `split`, and whether it was measured before
    (same checkpoint SHA-256, same split: not measured again); stored in evaluation.json."""
    if record.state != "done":
        raise AnalysisError(f"{record.path} is {record.state}: only finished runs are evaluated")
    path, state, notes = newest_checkpoint(record.path)
    if state is None or path is None:
        raise AnalysisError(f"{record.path} has no readable checkpoint"
                            + (f" ({notes[0]})" if notes else ""))
    digest = file_sha256(path)  # hashed once: the stored one is compared with this digest
    stored = stored_evaluation(record)
    if stored is None or stored["sha256"] != digest or stored["checkpoint"] != path.name:
        stored = {"checkpoint": path.name, "sha256": digest, "splits": {}}
    if split in stored["splits"]:
        return stored["splits"][split], True
    config = record.config
    model = build_model(config.arch, config.depth, config.shortcut)
    model.load_state_dict(state["model"])
    model.to(device)
    images, labels, mean = split_data(record, split, data_root)
    loss_sum, wrong = evaluate(model, images.to(device), labels.to(device), mean,
                               config.train.eval_batch_size, "fp32", torch.contiguous_format)
    count = len(images)
    entry = {"error": 100.0 * int(wrong) / count, "loss": float(loss_sum) / count,
             "images": count, "wrong": int(wrong), "iteration": int(state["iteration"]),
             "mode": MODE, "device": str(device),
             "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}
    stored["splits"][split] = entry
    write_json(record.path / EVALUATION_FILE, stored)
    return entry, False


def evaluate_command(path: Path, split: str, device: str, recursive: bool = False,
                     data_root: Path | None = None) -> list[Row]:
    """`degrade evaluate`: evaluate every finished run under `path` on `split`; one row each
    (a run that cannot be evaluated says why in its row)."""
    if split not in SPLITS:
        raise AnalysisError(f"--split {split!r} is not a split (allowed: {', '.join(SPLITS)})")
    target = resolve_device(device)
    path = Path(path)
    rows = []
    for record in load_runs(path, recursive):
        row = Row(run_label(record, path), network_name(record.config), record.config.seed,
                  split)
        if record.state != "done":
            row.skipped = f"{record.state}: only finished runs are evaluated"
            rows.append(row)
            continue
        try:
            row.entry, row.cached = evaluate_run(record, split, target, data_root)
        except AnalysisError as error:  # no checkpoint, no val split: the others still count
            row.skipped = str(error).replace(f"{record.path} ", "", 1)
        rows.append(row)
    return rows
