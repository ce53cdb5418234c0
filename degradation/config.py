"""The one typed structure every part of `degrade` receives.

The values live in `conf/config.yaml` and the presets in `experiments/`; this module only
declares their types, checks them, and turns a composed Hydra config into a `Config`.
No default is written here: a field without a YAML value is reported as missing.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from degradation.console import shell_command
from degradation.errors import DegradeError
from degradation.models import ARCHS, SHORTCUTS, ModelConfigError, blocks_per_stage
from degradation.package import data_dir
from degradation.storage import path_refusal

CONF_DIR = data_dir("conf")
EXPERIMENTS_DIR = data_dir("experiments")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


class ConfigError(DegradeError, ValueError):
    """A configuration value that is not allowed; the message is one line."""


@dataclass
class DataConfig:
    """Where CIFAR-10 lives and which part of it is evaluated."""

    root: str
    download: bool
    val_split: int


@dataclass
class TrainConfig:
    """The optimisation recipe, counted in iterations as the paper does."""

    iterations: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    milestones: list[int]
    lr_decay: float
    warmup: bool | None
    warmup_lr: float
    warmup_until_error: float
    log_every: int
    eval_every: int
    eval_batch_size: int
    precision: str
    channels_last: bool | None
    compile: bool | None
    threads: int | None
    deterministic: bool


@dataclass
class TrainerConfig:
    """How many processes train one run (DistributedDataParallel when more than one)."""

    gpus: int
    sync_batchnorm: bool
    fuse: int
    fuse_with: list[int]


@dataclass
class Config:
    """One run: which network, on which data, trained how, written where."""

    arch: str
    depth: int
    shortcut: str
    seed: int
    device: str
    output_dir: str
    data: DataConfig
    train: TrainConfig
    trainer: TrainerConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, as stored in checkpoints and `config.yaml`."""
        return asdict(self)

    @property
    def network_shortcut(self) -> str | None:
        """The shortcut option the network has: None for a plain net, which has none (its
        `shortcut` key, `A` by default, is then ignored)."""
        return None if self.arch == "plain" else self.shortcut

    @property
    def warmup_enabled(self) -> bool:
        """Warm-up at lr 0.01 is the paper's choice for depth 110 and above unless set."""
        if self.train.warmup is None:
            return self.depth >= 110
        return self.train.warmup


def load_config(composed: DictConfig | dict[str, Any]) -> Config:
    """Type-check and validate a composed config (Hydra's node is dropped)."""
    if isinstance(composed, DictConfig):
        try:
            composed = OmegaConf.to_container(composed, resolve=True)
        except InterpolationResolutionError as error:
            raise ConfigError(describe_interpolation_error(composed, error)) from None
    composed = {key: value for key, value in composed.items() if key != "hydra"}
    try:
        typed = OmegaConf.merge(OmegaConf.structured(Config), composed)
        config = OmegaConf.to_object(typed)
    except OmegaConfBaseException as error:
        raise ConfigError(describe_omegaconf_error(error)) from None
    validate(config)
    return config


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a `Config` saved by `Config.to_dict()` (checkpoints, run folders).

    Keys added to `conf/config.yaml` after the run was made take their current values, so
    older run folders stay readable.
    """
    return load_config(OmegaConf.merge(yaml_defaults(), values))


def yaml_defaults() -> DictConfig:
    """The values of `conf/config.yaml` alone (no preset, no Hydra node)."""
    values = OmegaConf.load(CONF_DIR / "config.yaml")
    for key in ("defaults", "hydra"):
        values.pop(key, None)
    return values


def describe_omegaconf_error(error: OmegaConfBaseException) -> str:
    """One line for a type or key error found while merging into the schema."""
    key = getattr(error, "full_key", None) or "?"
    message = str(getattr(error, "msg", error)).splitlines()[0]
    if "not in" in message:
        return f"unknown config key '{key}' (`degrade train --show-config` lists the keys)"
    if "missing mandatory value" in message.lower():
        return f"config key '{key}' has no value"
    conversion = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", message)
    if conversion:
        value, kind = conversion.groups()
        return f"{key}={value!r} is not {_KINDS.get(kind, kind)}"
    return f"{key}: {message}"


_KINDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}


def describe_interpolation_error(composed: DictConfig,
                                 error: InterpolationResolutionError) -> str:
    """One line for a `${...}` value that cannot be resolved, naming the key and its value."""
    key = getattr(error, "full_key", None) or "?"
    node: Any = OmegaConf.to_container(composed, resolve=False)
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    value = f"{key}={node!r}" if isinstance(node, str) else key
    reason = str(getattr(error, "msg", error)).splitlines()[0]
    reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", reason)
    return (f"{value} cannot be resolved ({reason}); an interpolation names a config key, "
            "e.g. ${train.lr}, or a set environment variable, ${oc.env:NAME}")


def validate(config: Config) -> None:
    """Raise `ConfigError` for the first value outside what the study allows."""
    try:
        blocks_per_stage(config.depth)
        if config.arch not in ARCHS:
            raise ModelConfigError(f"arch={config.arch!r} is not one of: {', '.join(ARCHS)}")
        if config.shortcut not in SHORTCUTS:
            raise ModelConfigError(
                f"shortcut={config.shortcut!r} is not one of: {', '.join(SHORTCUTS)}"
            )
    except ModelConfigError as error:
        raise ConfigError(str(error)) from None
    _require(config.device in DEVICES, f"device={config.device!r} is not one of: "
             f"{', '.join(DEVICES)}")
    _require(config.seed >= 0, f"seed={config.seed} must be >= 0")
    _require(config.data.val_split >= 0, f"data.val_split={config.data.val_split} must be >= 0")
    train = config.train
    for key in ("lr", "warmup_lr", "momentum", "weight_decay", "lr_decay",
                "warmup_until_error"):
        value = getattr(train, key)
        _require(math.isfinite(value), f"train.{key}={value} must be a finite number")
    _require(train.iterations > 0, f"train.iterations={train.iterations} must be > 0")
    _require(train.batch_size > 0, f"train.batch_size={train.batch_size} must be > 0")
    _require(train.lr > 0, f"train.lr={train.lr} must be > 0")
    _require(train.warmup_lr > 0, f"train.warmup_lr={train.warmup_lr} must be > 0")
    _require(0 <= train.momentum < 1, f"train.momentum={train.momentum} must be in [0, 1)")
    _require(train.weight_decay >= 0, f"train.weight_decay={train.weight_decay} must be >= 0")
    _require(0 < train.lr_decay <= 1, f"train.lr_decay={train.lr_decay} must be in (0, 1]")
    _require(0 < train.warmup_until_error <= 100,
             f"train.warmup_until_error={train.warmup_until_error} must be in (0, 100]")
    _require(train.log_every > 0, f"train.log_every={train.log_every} must be > 0")
    _require(train.eval_every > 0, f"train.eval_every={train.eval_every} must be > 0")
    _require(train.eval_batch_size > 0,
             f"train.eval_batch_size={train.eval_batch_size} must be > 0")
    _require(train.precision in PRECISIONS,
             f"train.precision={train.precision!r} is not one of: {', '.join(PRECISIONS)}")
    _require(train.threads is None or train.threads > 0,
             f"train.threads={train.threads} must be > 0 (null: all cores this process may use)")
    _require(config.trainer.gpus >= 1, f"trainer.gpus={config.trainer.gpus} must be >= 1")
    _require(config.trainer.fuse >= 1, f"trainer.fuse={config.trainer.fuse} must be >= 1")
    _check_fusion(config)
    for key, path in (("output_dir", config.output_dir), ("data.root", config.data.root)):
        refusal = path_refusal(path)
        _require(refusal is None, f"{key}={path}: {refusal}")
    _require(train.batch_size % config.trainer.gpus == 0,
             f"train.batch_size={train.batch_size} must split evenly over "
             f"trainer.gpus={config.trainer.gpus} processes")
    milestones = train.milestones
    _require(all(later > earlier for earlier, later in pairwise(milestones)),
             f"train.milestones={milestones} must be strictly increasing")
    _require(all(0 < m < train.iterations for m in milestones),
             f"train.milestones={milestones} must lie between 0 and "
             f"train.iterations={train.iterations}{_milestone_hint(train.iterations)}")


def suggested_milestones(iterations: int) -> list[int]:
    """The paper's proportions (32k and 48k of 64k: 50% and 75%) for `iterations`."""
    return [iterations // 2, iterations * 3 // 4]


def _milestone_hint(iterations: int) -> str:
    suggestion = suggested_milestones(iterations)
    if not 0 < suggestion[0] < suggestion[1] < iterations:
        return ""  # too few iterations for two distinct drops
    return f"; did you mean {shell_command(f'train.milestones=[{suggestion[0]},{suggestion[1]}]')}?"


def _check_fusion(config: Config) -> None:
    seeds = [config.seed, *config.trainer.fuse_with]
    if len(seeds) == 1:
        return
    _require(all(seed >= 0 for seed in seeds),
             f"trainer.fuse_with={config.trainer.fuse_with} must hold seeds >= 0")
    _require(len(set(seeds)) == len(seeds), f"trainer.fuse_with={config.trainer.fuse_with} "
             f"must not repeat a seed (seed={config.seed} is trained already)")
    refusal = fusion_refusal(config)
    _require(refusal is None, f"trainer.fuse_with={config.trainer.fuse_with} {refusal}")


def fusion_refusal(config: Config) -> str | None:
    """Why the run cannot train fused with others (None: it can)."""
    if config.trainer.gpus != 1:
        return (f"needs trainer.gpus=1 (fused runs share one device), not "
                f"{config.trainer.gpus}")
    if config.warmup_enabled:
        # Warm-up ends at each run's own training error, so fused runs would need per-run rates.
        return (f"cannot fuse runs with warm-up (depth={config.depth}); set train.warmup=false "
                "or train them apart")
    return None


def device_refusal(config: Config, cuda: bool | None) -> str | None:
    """Why the run cannot train on the machine it will run on (None: it can, or unknown).

    `cuda` says whether that machine has a CUDA device; None when it is not known here (a
    cluster node), so that only what fails everywhere (`device=cpu`) is refused.
    """
    if config.device == "cuda" and cuda is False:
        return NO_CUDA
    on_cuda = {"cpu": False, "cuda": True}.get(config.device, cuda)
    if on_cuda is not False:
        return None
    return cpu_refusal(config.train, config.trainer)


NO_CUDA = "device='cuda' but no CUDA device is available (allowed here: auto, cpu)"


def cpu_refusal(train: TrainConfig, trainer: TrainerConfig | None = None) -> str | None:
    """What a run on the CPU cannot have (None: nothing): bf16, or SyncBatchNorm across
    processes (`trainer` None: a single process's recipe alone)."""
    if train.precision == "bf16":
        return "train.precision=bf16 needs a CUDA device; on the CPU use fp32"
    if trainer is not None and trainer.sync_batchnorm and trainer.gpus > 1:
        return ("trainer.sync_batchnorm=true needs GPUs (SyncBatchNorm has no CPU kernel); on "
                "the CPU each process keeps its own BN statistics")
    return None


def members(config: Config) -> list[Config]:
    """The run and the runs trained fused with it (`trainer.fuse_with`), in that order."""
    return [replace(config, seed=seed) for seed in (config.seed, *config.trainer.fuse_with)]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
