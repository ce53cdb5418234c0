"""The network a training loop drives: one model (`LoneNetwork`, each DDP rank's replica
included) or several seeds as one (`FusedNetwork`, fused.py), behind one interface.

The loop calls `stack`, `trained`, `optimizer`, `module` (what is evaluated), `saved` and
`load` (a member's part of a checkpoint, in the lone format either way), `drop` (a diverged
member) and `parameters_per_member`, and never asks which kind it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from degradation.config import Config
from degradation.models import count_parameters, layer_names
from degradation.training import distributed
from degradation.training.device import (
    Speed,
    build_network,
    fit_optimizer_state,
    rng_state,
    seed_everything,
    set_rng_state,
    sgd_kernel,
)
from degradation.training.fused import FusedNetwork, build_fused


class LoneNetwork:
    """One model and its SGD; in a DDP process group, this rank's replica."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.SGD, device: torch.device,
                 speed: Speed):
        self.module = model  # what is checkpointed and evaluated (no DDP `module.` prefix)
        self.trained = distributed.wrap(model, device)  # DDP around it, sharing its weights
        self.optimizer = optimizer
        self.device = device
        self.memory_format = speed.memory_format
        self.layers = layer_names(model)
        self.compiled = speed.compile

    def eager(self) -> None:
        """Compute uncompiled from now on (compiling failed)."""
        # Undoes `nn.Module.compile` (which `build_network` called): calls go to the
        # module's own forward again, through DDP too.
        self.module._compiled_call_impl = None
        self.compiled = False

    @staticmethod
    def stack(batches: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The one member's batch."""
        return batches[0]

    @property
    def parameters_per_member(self) -> int:
        """The model's parameters."""
        return count_parameters(self.module)

    def saved(self, index: int) -> dict[str, Any]:
        """The model, optimizer and this process's RNG state, for the checkpoint."""
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state()}

    def load(self, index: int, state: dict[str, Any]) -> None:
        """Restore what `saved` saves (from a lone or a fused run's checkpoint)."""
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            # The checkpoint brought its kernel choice (a CUDA run's fused=True): use ours.
            group.update(sgd_kernel(self.device))
        set_rng_state(state["rng"])
        fit_optimizer_state(self.optimizer)

    def drop(self, index: int) -> None:
        """Nothing: the only member ended, and with it the training."""


def network_for(configs: Sequence[Config], device: torch.device, speed: Speed
                ) -> LoneNetwork | FusedNetwork:
    """The network `configs` (one run, or runs that differ only in seed) train, initialised
    as each lone run initialises its model."""
    if len(configs) > 1:
        return build_fused(configs, device, speed)
    seed_everything(configs[0].seed)
    model, optimizer = build_network(configs[0], device, speed)
    return LoneNetwork(model, optimizer, device, speed)
