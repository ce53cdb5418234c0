"""Runs that differ only in seed, trained as one fused model in one process (torch.func).

    degrade train seed=0 trainer.fuse_with=[1,2]        # seeds 0, 1 and 2 together

Small CIFAR nets leave a GPU mostly idle; K of them computed as one keep it busy. The K
members' weights are stacked (`torch.func.stack_module_state`) and the network is run once
for all of them with `torch.func.vmap(functional_call(...))`. Each member is still exactly
its lone run:

- its initial weights are drawn as its lone run draws them (seeded, then built);
- it sees its own data stream, the lone run's `TrainBatches` of its seed;
- its BN statistics are its own (stacked buffers, updated per member under vmap);
- the loss minimised is the sum of the members' mean losses, so each member's gradient is
  that of its own loss, and SGD with momentum and weight decay is elementwise, so one SGD
  over the stacked weights takes each member's own step.

A member converts to and from the lone format (`member_state_dict`,
`member_optimizer_state_dict` and their loaders), so its checkpoint resumes under a plain
`degrade train` and a lone run's checkpoint resumes fused. Outputs agree with a lone
model's to float rounding (the vmapped convolutions are grouped ones, summing in another
order), not bit for bit.

On the CPU fusing does not pay (BENCHMARKS.md: fused seeds on the CPU).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from degradation.config import Config, TrainConfig
from degradation.models import build_model, layer_names
from degradation.training.device import (
    Speed,
    fit_optimizer_state,
    make_sgd,
    rng_state,
    seed_everything,
    use_speed,
)


def build_fused(configs: Sequence[Config], device: torch.device, speed: Speed) -> FusedNetwork:
    """The runs of `configs` (the same network, other seeds) as one `FusedNetwork`, each
    member initialised as its lone run initialises it, and holding the state of the
    generators its lone run holds after that, which its checkpoints keep."""
    use_speed(device, speed)
    if device.type == "cuda":
        torch.cuda.init()  # so that each state taken below holds the CUDA generators too
    models, rngs = [], []
    for config in configs:
        # What a lone run does: seed everything, then build (initialisation draws on the CPU).
        seed_everything(config.seed)
        models.append(build_model(config.arch, config.depth, config.shortcut))
        rngs.append(rng_state())
    return FusedNetwork(models, rngs, configs[0].train, device, fused_compile(speed, device))


def fused_compile(speed: Speed, device: torch.device) -> bool:
    """Whether the fused network is compiled: as `speed` says on CUDA, never on the CPU."""
    # Compiling vmap(functional_call) works (outputs, gradients and BN statistics agree with
    # eager), but on the CPU the compiled step was slower, after a long compile
    # (BENCHMARKS.md). On CUDA it is unmeasured: no GPU was at hand.
    return speed.compile and device.type == "cuda"


class FusedNetwork:
    """K networks of one architecture, each with its own weights and BN statistics, computed
    as one: called like the lone module, on a (K, B, 3, 32, 32) batch (one batch per member)
    or a (B, 3, 32, 32) batch (the same for every member: evaluation); outputs (K, B, classes).

    `optimizer` is one SGD over the stacked weights, which equals K SGDs, one per member.
    """

    # The stacked inputs are 5-D, for which channels_last has no meaning; vmap turns each conv
    # into a grouped conv over the members whose layout follows from its reshapes. Forcing
    # channels_last layouts on the stacked inputs and weights was slower on the CPU
    # (BENCHMARKS.md).
    memory_format = torch.contiguous_format

    def __init__(self, models: Sequence[nn.Module], rngs: Sequence[dict[str, Any]],
                 recipe: TrainConfig, device: torch.device, compile_model: bool = False):
        self.rngs = list(rngs)  # each member's generators, as its lone run's checkpoint has them
        params, buffers = stack_module_state(list(models))
        self.params = {name: value.detach().to(device).requires_grad_()
                       for name, value in params.items()}
        self.buffers = {name: value.to(device) for name, value in buffers.items()}
        self.keys = list(models[0].state_dict())  # the lone module's keys, in its order
        # The architecture alone, without storage: functional_call gives it each member's state.
        self.base = copy.deepcopy(models[0]).to("meta")
        self.recipe, self.device = recipe, device
        self.optimizer = make_sgd(self.params.values(), recipe, device)
        self.eager()
        if compile_model:
            self._own, self._shared = (torch.compile(self._own, dynamic=False),
                                       torch.compile(self._shared, dynamic=False))
            self.compiled = True

    def eager(self) -> None:
        """Compute uncompiled (from now on, when compiling failed)."""
        self._own: Callable[..., Tensor] = vmap(self._call)  # a batch per member
        self._shared: Callable[..., Tensor] = vmap(self._call, in_dims=(0, 0, None))  # one for all
        self.compiled = False

    @property
    def module(self) -> FusedNetwork:
        """What is evaluated: this network (one output per member)."""
        return self

    @property
    def trained(self) -> FusedNetwork:
        """What a training step calls: this network."""
        return self

    @property
    def layers(self) -> list[str]:
        """The lone model's 3x3 conv layers, whose gradient norms are logged."""
        return layer_names(self.base)

    @staticmethod
    def stack(batches: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The members' (images, labels) batches as one (K, B, ...) batch and (K, B) labels."""
        return (torch.stack([images for images, _ in batches]),
                torch.stack([labels for _, labels in batches]))

    @property
    def size(self) -> int:
        """K, the members trained."""
        return len(next(iter(self.params.values())))

    @property
    def parameters_per_member(self) -> int:
        """The parameters of one member (those of its lone model)."""
        return sum(value[0].numel() for value in self.params.values())

    def get_parameter(self, name: str) -> Tensor:
        """The members' stacked parameter `name` (K, ...), as nn.Module.get_parameter."""
        return self.params[name]

    @property
    def training(self) -> bool:
        """Whether BN uses batch statistics (and updates the running ones), as nn.Module's."""
        return self.base.training

    def train(self, mode: bool = True) -> FusedNetwork:
        """Training mode (BN on batch statistics) or, with False, evaluation mode."""
        self.base.train(mode)
        return self

    def eval(self) -> FusedNetwork:
        """Evaluation mode: BN on each member's running statistics."""
        return self.train(False)

    def __call__(self, images: Tensor) -> Tensor:
        """(K, B, classes) outputs of (K, B, 3, H, W) or shared (B, 3, H, W) images."""
        forward = self._shared if images.dim() == 4 else self._own
        return forward(self.params, self.buffers, images)

    def _call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], images: Tensor
              ) -> Tensor:
        return functional_call(self.base, (params, buffers), (images,))

    def member_state_dict(self, index: int) -> dict[str, Tensor]:
        """Member `index`'s weights and BN buffers as its lone model's `state_dict()`."""
        stacked = {**self.params, **self.buffers}
        # Copies: a view would save the whole stack with the checkpoint.
        return {key: stacked[key][index].detach().clone() for key in self.keys}

    def load_member_state_dict(self, index: int, state: dict[str, Tensor]) -> None:
        """Set member `index` from a lone model's `state_dict()` (RuntimeError if it differs)."""
        stacked = {**self.params, **self.buffers}
        missing, unexpected = sorted(set(self.keys) - state.keys()), sorted(state.keys()
                                                                           - set(self.keys))
        if missing or unexpected:
            raise RuntimeError(f"Error(s) in loading state_dict: missing keys {missing}, "
                               f"unexpected keys {unexpected}")
        for key in self.keys:
            if state[key].shape != stacked[key].shape[1:]:
                raise RuntimeError(f"size mismatch for {key}: {tuple(state[key].shape)} in the "
                                   f"checkpoint, {tuple(stacked[key].shape[1:])} here")
        with torch.no_grad():
            for key in self.keys:
                stacked[key][index].copy_(state[key])

    def member_optimizer_state_dict(self, index: int) -> dict[str, Any]:
        """Member `index`'s SGD state as its lone run's `optimizer.state_dict()`: momentum
        buffers by parameter index, in the order of the lone model's parameters."""
        whole = self.optimizer.state_dict()
        return {"state": {number: {name: _member(value, index) for name, value in state.items()}
                          for number, state in whole["state"].items()},
                "param_groups": whole["param_groups"]}

    def load_member_optimizer_state_dict(self, index: int, state: dict[str, Any]) -> None:
        """Set member `index`'s SGD state from a lone run's (ValueError if it does not fit)."""
        params = list(self.params.values())
        numbers = [number for group in state["param_groups"] for number in group["params"]]
        if len(numbers) != len(params):
            raise ValueError(f"the saved optimizer holds {len(numbers)} parameters, this "
                             f"model {len(params)}")
        by_number = dict(zip(numbers, params, strict=True))
        for number, saved in state["state"].items():
            param = by_number[number]
            own = self.optimizer.state[param]
            for name, value in saved.items():
                if not (isinstance(value, Tensor) and value.shape == param.shape[1:]):
                    own[name] = value  # nothing per member (SGD keeps only momentum buffers)
                    continue
                if name not in own:  # the other members set theirs: all resume at one step
                    own[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
                own[name][index].copy_(value)

    def saved(self, index: int) -> dict[str, Any]:
        """Member `index`'s model, optimizer and RNG state, exactly as its lone run saves them."""
        return {"model": self.member_state_dict(index),
                "optimizer": self.member_optimizer_state_dict(index), "rng": self.rngs[index]}

    def load(self, index: int, state: dict[str, Any]) -> None:
        """Restore member `index` from what `saved` saves (a lone or a fused run's checkpoint)."""
        self.load_member_state_dict(index, state["model"])
        self.load_member_optimizer_state_dict(index, state["optimizer"])
        self.rngs[index] = state["rng"]
        fit_optimizer_state(self.optimizer)

    def drop(self, index: int) -> None:
        """Stop computing member `index` (a diverged one): the others are stacked again,
        their optimizer state with them, and member numbers above `index` move down by one."""
        keep = torch.tensor([k for k in range(self.size) if k != index], device=self.device)
        params = {name: value.detach()[keep].requires_grad_()
                  for name, value in self.params.items()}
        optimizer = make_sgd(params.values(), self.recipe, self.device)
        optimizer.param_groups[0]["lr"] = self.optimizer.param_groups[0]["lr"]
        for old, new in zip(self.params.values(), params.values(), strict=True):
            optimizer.state[new] = {name: value[keep] if isinstance(value, Tensor) else value
                                    for name, value in self.optimizer.state[old].items()}
        self.params, self.optimizer = params, optimizer
        self.buffers = {name: value[keep] for name, value in self.buffers.items()}
        del self.rngs[index]


def _member(value: Any, index: int) -> Any:
    """Member `index`'s part of a stacked optimizer-state value (a copy), or the value itself."""
    return value[index].clone() if isinstance(value, Tensor) and value.dim() > 0 else value
