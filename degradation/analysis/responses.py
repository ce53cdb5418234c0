"""Figure 7: the standard deviation of each 3x3 layer's response on the evaluation set.

Usage: `degrade responses outputs/` measures every finished run once (cached in its
`responses.json`) and draws `outputs/figures/figure7.{png,pdf}`.

A layer's response is its output after BN and before the ReLU or the addition (Sec. 4.2).
The paper does not say how the standard deviation is pooled; here it is `POOLING`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from degradation.analysis.figures import figure7, save_figure
from degradation.analysis.measurements import RESPONSES_FILE, read_responses_file
from degradation.analysis.results import AnalysisError, figures_dir, load_runs, variants
from degradation.data.cifar import CifarSplits, load_cifar10
from degradation.data.stream import eval_batches
from degradation.models import build_model, response_modules
from degradation.runs import RunRecord, network_name
from degradation.storage import DamagedFile, write_json
from degradation.training.checkpoint import load_checkpoint
from degradation.training.device import resolve_device

log = logging.getLogger("degrade")
POOLING = ("std of each channel over all images and positions (population, ddof=0), "
           "then the mean over the layer's channels")


class _ChannelMoments:
    """Count, mean and sum of squared deviations per channel, merged batch by batch (Chan).

    float64 and pairwise merging keep the variance exact to ~1e-12 over millions of values
    without storing the activations, and without the cancellation of sum(x^2) - n*mean^2.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, output: Tensor) -> None:
        values = output.detach().transpose(0, 1).reshape(output.shape[1], -1).double()
        n = values.shape[1]
        mean = values.mean(dim=1)
        m2 = ((values - mean[:, None]) ** 2).sum(dim=1)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def pooled_std(self) -> float:
        if self.m2 is None:
            raise AnalysisError("no batches were given to measure responses on")
        return float((self.m2 / self.count).sqrt().mean())


def layer_responses(model: nn.Module, batches: Iterable[Any]) -> list[float]:
    """Per response layer, in network order: see `POOLING`; eval mode, no gradients."""
    modules = response_modules(model)
    moments = [_ChannelMoments() for _ in modules]
    hooks = [module.register_forward_hook(lambda _m, _i, out, acc=acc: acc.update(out))
             for module, acc in zip(modules, moments, strict=True)]
    was_training = model.training
    model.eval()  # BN with its running statistics, as at test time
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [acc.pooled_std() for acc in moments]


@lru_cache(maxsize=2)
def cached_splits(root: Path, download: bool, val_split: int) -> CifarSplits:
    """`load_cifar10`, read once per command: many runs share one data set."""
    return load_cifar10(root, download=download, val_split=val_split)


def compute_run_responses(record: RunRecord, data_root: Path | None, device: str) -> dict:
    """Measure a finished run's final checkpoint on its evaluation set; cached in responses.json."""
    if record.state != "done":
        raise AnalysisError(f"{record.path} is {record.state}: responses are measured only on "
                            "finished runs")
    state, notes = load_checkpoint(record.path)
    if state is None:
        raise AnalysisError(f"{record.path} has no readable checkpoint"
                            + (f" ({notes[0]})" if notes else ""))
    cached = record.path / RESPONSES_FILE
    if cached.exists():
        try:
            previous = read_responses_file(cached)
            if (previous.get("checkpoint_iteration") == state["iteration"]
                    and previous.get("pooling") == POOLING):
                return previous
        except DamagedFile:
            pass  # measured again and rewritten below
    config = record.config
    model = build_model(config.arch, config.depth, config.shortcut)
    model.load_state_dict(state["model"])
    target = resolve_device(device)
    model.to(target)
    splits = cached_splits(Path(data_root or config.data.root), config.data.download,
                     config.data.val_split)
    batches = eval_batches(splits.eval_images, splits.eval_labels, splits.mean,
                           config.train.eval_batch_size, target)
    names = {module: name for name, module in model.named_modules()}
    result = {
        "family": network_name(config), "arch": config.arch, "depth": config.depth,
        "shortcut": config.network_shortcut, "seed": config.seed,
        "checkpoint_iteration": state["iteration"], "eval_set": splits.eval_set,
        "images": len(splits.eval_images), "pooling": POOLING,
        "layers": [names[module] for module in response_modules(model)],
        "std": layer_responses(model, batches),
    }
    write_json(cached, result)
    return result


def responses_command(path: Path, out: Path | None, data_root: Path | None,
                      device: str, recursive: bool = False) -> list[Path]:
    """`degrade responses`: measure every finished run, draw Figure 7; the paths written."""
    finished = [record for record in load_runs(Path(path), recursive) if record.state == "done"]
    if not finished:
        raise AnalysisError(f"no finished runs under {path}: Figure 7 measures final networks")
    labels = variants(finished)
    results, written = [], []
    for record in finished:
        try:
            results.append({**compute_run_responses(record, data_root, device),
                            "variant": labels[record.path]})
        except AnalysisError as error:  # e.g. no readable checkpoint: the others still count
            log.warning("warning: %s; left out of Figure 7", error)
            continue
        written.append(record.path / RESPONSES_FILE)
    if not results:
        raise AnalysisError(f"no finished run under {path} could be measured (see the "
                            "warnings above)")
    return written + save_figure(figure7(results), figures_dir(path, out), "figure7")
