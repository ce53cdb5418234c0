"""The arithmetic of training: the learning rate at an iteration, one SGD step, the
gradient norms, and an evaluation over a whole set.

These run on the device and read nothing back to the host (no `.item()`, no `float()`), so
that on CUDA the CPU queues steps ahead of the GPU; the loop reads results at log points.
A fused network's batches and results carry one leading dimension per member.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from degradation.config import TrainConfig
from degradation.data.stream import eval_batches


def learning_rate(iteration: int, train: TrainConfig, warming_up: bool = False) -> float:
    """The rate for the step taken at `iteration` (0-based): divided at each milestone passed."""
    if warming_up:
        return train.warmup_lr
    passed = sum(iteration >= milestone for milestone in train.milestones)
    # Divide rather than multiply so 0.1 -> 0.01 -> 0.001 exactly, as the paper writes them.
    return train.lr / (1 / train.lr_decay) ** passed


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor,
               labels: Tensor, lr: float, precision: str,
               memory_format: torch.memory_format) -> tuple[Tensor, Tensor]:
    """One SGD step on a batch: its mean loss (fp32) and error count, left on the device.

    A fused model (degradation/training/fused.py) takes a (K, B, ...) batch, one per member, and
    answers (K, B, classes): the loss and count are then one per member, and the loss
    minimised is their sum, whose gradient for each member is that of its own mean loss.
    Nothing here reads a value back to the host, so on CUDA the CPU queues steps ahead of
    the GPU; the caller accumulates the two tensors and reads them at log points.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    images = images.contiguous(memory_format=memory_format)
    with _autocast(images.device, precision):
        outputs = model(images)
        loss = _cross_entropy(outputs, labels, "mean")
    optimizer.zero_grad(set_to_none=True)
    # Fused: the sum of the members' losses. A lone loss is a scalar already: no extra kernel.
    (loss.sum() if loss.dim() else loss).backward()
    optimizer.step()
    with torch.no_grad():
        wrong = (outputs.argmax(dim=-1) != labels).sum(dim=-1)
    return loss.detach().float(), wrong


def gradient_norms(model: nn.Module, layers: list[str], members: int = 1) -> Tensor:
    """(members, layers): the L2 norm of each layer's weight gradient left by the last step,
    one row per member of a fused model (a lone model is one member). Stays on the device."""
    with torch.no_grad():
        return torch.stack([
            model.get_parameter(f"{layer}.weight").grad.reshape(members, -1).norm(dim=1)
            for layer in layers], dim=1)


def evaluate(model: nn.Module, images_u8: Tensor, labels: Tensor, mean: Tensor,
             batch_size: int, precision: str,
             memory_format: torch.memory_format) -> tuple[Tensor, Tensor]:
    """Summed loss (fp64) and error count over a whole set with BN's running statistics.

    Batches are cut on the images' device (keep the set there to copy nothing per evaluation)
    and run under inference mode; the results stay on the device. A fused model sees the
    same batches with every member and gets one sum and one count per member.
    """
    device = images_u8.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    wrong = torch.zeros((), device=device, dtype=torch.int64)
    training = model.training
    model.eval()  # "running statistics at test time"
    try:
        with torch.inference_mode(), _autocast(device, precision):
            for images, batch_labels in eval_batches(images_u8, labels, mean, batch_size,
                                                     device):
                outputs = model(images.contiguous(memory_format=memory_format))
                batch_labels = batch_labels.expand(outputs.shape[:-1])  # fused: each member's
                # Out of place: the sums take the members' shape at the first batch.
                loss_sum = loss_sum + _cross_entropy(outputs.float(), batch_labels, "sum")
                wrong = wrong + (outputs.argmax(dim=-1) != batch_labels).sum(dim=-1)
    finally:
        model.train(training)
    return loss_sum, wrong


def _cross_entropy(outputs: Tensor, labels: Tensor, reduction: str) -> Tensor:
    """Cross-entropy reduced over the batch (the last dimension of `labels`): a scalar for a
    lone model's (B, classes) outputs, one per member for a fused model's (K, B, classes)."""
    if outputs.dim() == 2:
        return F.cross_entropy(outputs, labels, reduction=reduction)
    # Classes second, as cross_entropy wants them for (K, classes, B) inputs.
    losses = F.cross_entropy(outputs.movedim(-1, 1), labels, reduction="none")
    return losses.mean(dim=-1) if reduction == "mean" else losses.sum(dim=-1)


@contextlib.contextmanager
def _autocast(device: torch.device, precision: str) -> Iterator[None]:
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
