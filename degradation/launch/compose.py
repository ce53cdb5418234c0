"""Hydra composition: the configuration a command line asks for, before anything runs.

    degrade train --cfg job depth=56          # what `show_config` prints
    degrade sweep experiment=fig6 --dry-run   # `expand_for_launch`: every run of the sweep

Presets (`experiment=NAME`), the run-folder resolver and our Hydra plugins are registered
here; overrides are expanded exactly as Hydra's basic sweeper does, and each job composed
into the typed `Config`. Nothing here trains or launches (plan.py does).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import math
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from degradation.config import (
    CONF_DIR,
    Config,
    ConfigError,
    describe_interpolation_error,
    load_config,
)
from degradation.errors import LauncherError, one_line
from degradation.hardware import check_sharing
from degradation.package import presets
from degradation.runs import (
    run_path,
)

# Installed packages name their Hydra plugins under this entry-point group (pyproject.toml):
# the package finds its sweeper and launchers there, never by their module's name.
PLUGIN_ENTRY_POINTS = "degrade.hydra_plugins"


# Hydra decides these from output_dir and the run's identity; set elsewhere, a run's files
# would be split between two folders.
RUN_FOLDER_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")


def experiments(config_dir: Path | None = None) -> list[str]:
    """Names of the presets in `experiments/` (and in the user's `config_dir`)."""
    return sorted(presets(config_dir))


def register(config_dir: Path | None = None) -> None:
    """Make `experiment=NAME`, the run-folder resolver and our plugins known to Hydra.

    Idempotent. Hydra finds plugins by scanning the `hydra_plugins` namespace package, which
    an editable install (PEP 660 import hooks) hides from the scan, so the plugins installed
    packages declare under `PLUGIN_ENTRY_POINTS` are registered as well (Hydra's documented
    `Plugins.register`).
    """
    store = ConfigStore.instance()
    store.repo.pop("experiment", None)  # a preset of an earlier call's config_dir is gone
    for name, path in presets(config_dir).items():
        node = OmegaConf.load(path)
        store.store(group="experiment", name=name, node=node, package="_global_")
    _register_resolver()
    for plugin in declared_plugins():
        Plugins.instance().register(plugin)


def declared_plugins() -> list[type]:
    """The Hydra plugin classes installed packages declare (`PLUGIN_ENTRY_POINTS`): each entry
    point is a function that returns them."""
    return [plugin for entry in importlib.metadata.entry_points(group=PLUGIN_ENTRY_POINTS)
            for plugin in entry.load()()]


def _register_resolver() -> None:
    if not OmegaConf.has_resolver("degrade_run_path"):
        OmegaConf.register_new_resolver("degrade_run_path", _run_path_resolver)


def _run_path_resolver(*, _root_: DictConfig) -> str:
    return run_path(config_of(_root_))


def compose_config(overrides: list[str], config_dir: Path | None = None) -> Config:
    """The validated `Config` for one run's overrides (no sweep syntax)."""
    return load_config(compose_tree(overrides, with_hydra=False, config_dir=config_dir))


def expand(overrides: list[str], config_dir: Path | None = None) -> list[list[str]]:
    """Every run's overrides for a sweep, in Hydra's basic-sweeper order."""
    return sweep_jobs(check_sweep(overrides, config_dir), overrides)


def check_sweep(overrides: list[str], config_dir: Path | None = None) -> dict[str, Any]:
    """Refuse, in one line, what would stop a sweep before its first run is planned: a bad
    value among the overrides that are not swept, a launcher setting that cannot work, or
    more than `MAX_SWEEP_RUNS` runs. Returns the preset's grid (`hydra.sweeper.params`).

    One composition for the whole sweep, as Hydra's own before it starts the sweeper.
    """
    try:
        tree = compose_tree(fixed_overrides(overrides), with_hydra=True, config_dir=config_dir)
        params = tree.hydra.sweeper.get("params")
        preset = OmegaConf.to_container(params, resolve=True) if params else {}
        _check_local_launcher(tree)
    except (HydraException, OverrideParseException) as error:
        raise ConfigError(describe_hydra_error(error)) from None
    check_sweep_size(preset, overrides)
    return preset


def _check_local_launcher(tree: DictConfig) -> None:
    """Refuse settings of `hydra/launcher=local` that cannot work, before any run starts."""
    launcher = tree.hydra.launcher
    if "parallel_runs" not in launcher:
        return  # another launcher
    try:
        check_sharing(launcher.runs_per_gpu, launcher.parallel_runs)
    except InterpolationResolutionError as error:
        raise ConfigError(describe_interpolation_error(tree, error)) from None
    except LauncherError as error:
        raise ConfigError(str(error)) from None


def fixed_overrides(overrides: list[str]) -> list[str]:
    """The overrides that are not sweeps (`depth=56`, not `depth=20,56`)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        raise ConfigError(describe_hydra_error(error)) from None
    return [o.input_line for o in parsed if not o.is_sweep_override()]


def override_key(override: str) -> str:
    """The key an override sets: `output_dir` of `output_dir=x`, `+output_dir=x`, `~output_dir`."""
    return override.split("=", 1)[0].lstrip("+~")


def refuse_run_folder_overrides(overrides: list[str]) -> None:
    """Refuse `hydra.run.dir` and the like: the run folder comes from `output_dir`."""
    for override in overrides:
        key = override_key(override)
        if key in RUN_FOLDER_KEYS:
            raise ConfigError(
                f"{key} cannot be set: a run's folder is output_dir/runs/<network>/"
                "seed-<seed>-<hash>/, so set output_dir=DIR instead")


def show_config(overrides: list[str], part: str, resolve: bool = False,
                package: str | None = None, config_dir: Path | None = None) -> str:
    """Hydra's `--cfg job|hydra|all` [`--resolve`] [`--package KEY`] as YAML.

    Unlike Hydra's own, `--cfg hydra --resolve` works: the run folder (`hydra.run.dir`)
    refers to job keys, so the whole config is resolved before its `hydra` node is picked.
    """
    composed = compose_tree(overrides, with_hydra=True, config_dir=config_dir)
    HydraConfig.instance().set_config(composed)  # `${hydra:...}` resolves against it
    composed = OmegaConf.create(OmegaConf.to_container(composed, resolve=False))  # writable
    for key in ("help", "hydra_help"):  # as Hydra's --cfg: its --help texts are noise
        composed.hydra.pop(key, None)
    if resolve:
        try:
            OmegaConf.resolve(composed)
        except OmegaConfBaseException as error:
            raise ConfigError(f"--resolve: {one_line(error)}") from None
    if part == "job":
        composed.pop("hydra")
    elif part == "hydra":
        composed = OmegaConf.create({"hydra": composed.hydra})
    if package in (None, "", "_global_"):
        return OmegaConf.to_yaml(composed)
    selected = OmegaConf.select(composed, package)
    if selected is None:
        raise ConfigError(f"--package {package!r} is not in the config (--cfg {part})")
    if not isinstance(selected, DictConfig | ListConfig):
        return f"{selected}\n"
    return f"# @package {package}\n" + OmegaConf.to_yaml(selected)


def config_of(composed: DictConfig) -> Config:
    """The `Config` of a composed Hydra config that still holds its `hydra` node."""
    values = OmegaConf.to_container(composed, resolve=False)
    values.pop("hydra", None)  # resolved only by Hydra, inside the job
    return load_config(OmegaConf.create(values))


# Our slurm launcher configs build on these, which hydra-submitit-launcher registers when
# installed (pyproject.toml's `slurm` extra); without it Hydra cannot load them.
SUBMITIT_CONFIGS = re.compile(r"Could not load 'hydra/launcher/submitit_")
SLURM_EXTRA = "degrade[slurm]"


def describe_hydra_error(error: Exception) -> str:
    """One line for an error Hydra raised while parsing or composing overrides; an unknown
    value of a config group (experiment, hydra/launcher, ...) lists the available ones."""
    text = str(error).strip()
    if SUBMITIT_CONFIGS.search(text):
        return ("hydra/launcher=slurm and slurm_local need hydra-submitit-launcher, which is "
                f"not installed: pip install '{SLURM_EXTRA}' (in a checkout: pip install -e "
                "'.[slurm]')")
    missing = isinstance(error, MissingConfigException) and error.missing_cfg_file
    if missing and error.options is not None:
        group, _, bad = missing.rpartition("/")
        return f"{group}={bad!r} is not one of: {', '.join(error.options)}"
    unknown = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text)
    if unknown:
        return (f"unknown config key '{unknown.group(1)}' "
                "(`degrade train --show-config` lists the keys)")
    return text.splitlines()[0]


def compose_tree(overrides: list[str], with_hydra: bool, config_dir: Path | None = None
                 ) -> DictConfig:
    """The composed configuration tree, unvalidated; with the `hydra` node if `with_hydra`."""
    register(config_dir)
    if config_dir:  # as Hydra's --config-dir does for `launch`
        overrides = [*overrides, f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=with_hydra)
    except (HydraException, OverrideParseException, ValueError) as error:
        raise ConfigError(describe_hydra_error(error)) from None


@contextlib.contextmanager
def patched_argv(argv: list[str]) -> Iterator[None]:
    """Hydra reads its arguments from sys.argv; the CLI hands them over only here."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


# The most runs one sweep may ask for. Each run is composed and checked before any starts
# (about 0.1 s each), so a sweep of 1000 takes minutes to plan; `seed='range(100000)'` would
# take hours and is a typo far more often than a plan (the paper's largest grid is 25 runs).
MAX_SWEEP_RUNS = 1000


def sweep_jobs(params: Mapping[str, Any], overrides: list[str],
               parser: OverridesParser | None = None) -> list[list[str]]:
    """Hydra's basic-sweeper expansion of `hydra.sweeper.params` (presets) and `overrides`.

    A sweep of more than `MAX_SWEEP_RUNS` runs is a `ConfigError`, found from the parsed
    overrides alone, before any run is expanded or composed.
    """
    parsed = check_sweep_size(params, overrides, parser)
    try:
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except ValueError as error:  # a sweep that cannot be listed
        raise ConfigError(_unlistable_sweep(parsed, error)) from None


def check_sweep_size(params: Mapping[str, Any], overrides: list[str],
                     parser: OverridesParser | None = None) -> list[Override]:
    """The parsed overrides of a sweep (preset grid first), refused in one line when they ask
    for more than `MAX_SWEEP_RUNS` runs."""
    from_preset = [f"{key}={value}" for key, value in params.items()]
    try:
        parsed = (parser or OverridesParser.create()).parse_overrides(from_preset + overrides)
    except OverrideParseException as error:
        raise ConfigError(describe_hydra_error(error)) from None
    size = sweep_size(parsed)
    if size > MAX_SWEEP_RUNS:
        raise ConfigError(f"the sweep asks for {size} runs; at most {MAX_SWEEP_RUNS} runs in "
                          "one sweep (split it into several sweeps, e.g. by seed ranges)")
    return parsed


def _unlistable_sweep(parsed: list[Override], error: ValueError) -> str:
    """One line naming the sweep override that Hydra cannot list, and why."""
    for override in parsed:
        if override.is_sweep_override():
            try:
                list(override.sweep_string_iterator())
            except ValueError as culprit:
                error = culprit
                break
    else:
        return f"the sweep cannot be listed: {one_line(error)}"
    return (f"{override.input_line} cannot be listed: {one_line(error)} (a sweep is values "
            "a,b,c or range(start, stop[, step]) with a step other than 0)")


def sweep_size(parsed: list[Override]) -> int:
    """How many jobs Hydra's basic sweeper makes of `parsed`: the product of each key's
    number of values (a key given twice counts as its last value, as the sweeper takes it).

    Exact up to `MAX_SWEEP_RUNS`; above it, exact for lists and integer ranges, and at least
    `MAX_SWEEP_RUNS + 1` otherwise (a float range is never enumerated further).
    """
    counts = {override.get_key_element(): _values_count(override) for override in parsed}
    return math.prod(counts.values())


def _values_count(override: Override) -> int:
    """How many values one override sweeps over (1 when it is no discrete sweep)."""
    if not (override.is_sweep_override() and override.is_discrete_sweep()):
        return 1
    value = override.value()
    if isinstance(value, RangeSweep):
        try:
            values = value.range()
        except ValueError as error:  # range(0,10,0)
            raise ConfigError(_unlistable_sweep([override], error)) from None
        if isinstance(values, range):
            return len(values)  # `range(10**9)` is counted, never listed
    return sum(1 for _ in itertools.islice(override.sweep_string_iterator(),
                                           MAX_SWEEP_RUNS + 1))


# Every process that resolves a run folder needs the resolver, including launcher workers
# that only unpickle `run_task` (submitit's, ours): importing this module (plan.py imports it) is
# enough.
_register_resolver()
