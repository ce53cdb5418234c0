"""The runs the claims of Sec. 4.2 and the depth figure are judged on: one recipe, plain nets
and ResNets with the paper's shortcut option A, and their final errors over seeds.

Usage: `study = select_study(load_runs(Path("outputs")), Path("outputs"))`;
`final_errors(study)` gives n and mean/min/max/std of each network's final errors, and
`run_command(study, [("plain", 56)])` the command that trains a missing network with the
study's recipe.

The recipe is the longest schedule among the finished runs (settings that differ only in
warm-up count as one recipe, as the paper warms up ResNet-110 alone).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from degradation.analysis.measurements import clean_error, read_responses
from degradation.analysis.results import eval_set_of
from degradation.analysis.stats import Floor
from degradation.config import Config, load_config, yaml_defaults
from degradation.console import override, shell_command
from degradation.package import config_default
from degradation.paper import PAPER_ITERATIONS
from degradation.runs import RunRecord, hashed_identity

# Warm-up is not part of a recipe here: the paper warms up ResNet-110 only (and not 1202).
_NOT_RECIPE = ("train.warmup", "train.warmup_lr", "train.warmup_until_error")


@dataclass
class Study:
    """The runs the claims are judged on: one recipe, plain nets and option-A ResNets."""

    root: Path
    records: list[RunRecord]
    finals: pd.DataFrame  # one row per finished run: arch, depth, seed, train/test error
    iterations: int
    reference: Config | None
    left_out: int = 0  # runs of other recipes or shortcut options
    responses: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    # The spread a one-seed network takes, per metric: pooled over all the study's networks,
    # so computed once per metric (`claims.floor_of`) and not for every ordering.
    floors: dict[str, Floor | None] = field(default_factory=dict, init=False, repr=False,
                                            compare=False)

    @property
    def diverged(self) -> Counter[tuple[str, int]]:
        """How many seeds of each network (arch, depth) diverged."""
        return Counter((record.config.arch, record.config.depth) for record in self.records
                       if record.state == "diverged")

    @property
    def short(self) -> bool:
        """Whether the schedule is shorter than the paper's 64k iterations."""
        return self.iterations < PAPER_ITERATIONS

    def schedule_note(self) -> str:
        """`short schedule (2,000 of the paper's 64,000 iterations)`, or '' for the full one."""
        if not self.short:
            return ""
        return (f"short schedule ({self.iterations:,} of the paper's {PAPER_ITERATIONS:,} "
                "iterations)")


# clean_train_error: `degrade evaluate --split train` (eval mode, no augmentation), NaN where
# the run's current checkpoint has not been evaluated.
FINAL_COLUMNS = ["arch", "depth", "seed", "run", "train_error", "test_error", "eval_set",
                 "clean_train_error"]


def _recipe_key(config: Config) -> str:
    rest = {key: value for key, value in hashed_identity(config).items() if key not in _NOT_RECIPE}
    return json.dumps(rest, sort_keys=True)


def _in_claims(record: RunRecord) -> bool:
    return record.config.network_shortcut in (None, "A")


def select_study(records: Sequence[RunRecord], root: Path) -> Study:
    """The recipe with the longest schedule among finished runs (else among all runs)."""
    candidates = [record for record in records if _in_claims(record)]
    groups: dict[str, list[RunRecord]] = {}
    for record in candidates:
        groups.setdefault(_recipe_key(record.config), []).append(record)
    if not groups:
        return Study(Path(root), [], pd.DataFrame(columns=FINAL_COLUMNS), PAPER_ITERATIONS, None,
                     len(records))

    def done(group: list[RunRecord]) -> int:
        return sum(record.state == "done" for record in group)

    def rank(key: str) -> tuple:
        group = groups[key]
        return (done(group) > 0, group[0].config.train.iterations, done(group), len(group))

    chosen = groups[max(groups, key=rank)]
    rows = []
    for record in chosen:
        summary = record.summary or {}
        if record.state == "done" and summary.get("final_test_error") is not None:
            rows.append({"arch": record.config.arch, "depth": record.config.depth,
                         "seed": record.config.seed, "run": str(record.path),
                         "train_error": summary.get("final_train_error", math.nan),
                         "test_error": summary["final_test_error"],
                         "eval_set": eval_set_of(record),
                         "clean_train_error": clean_error(record, "train")})
    finals = pd.DataFrame(rows, columns=FINAL_COLUMNS).astype(
        {"depth": "int64", "seed": "int64", "train_error": "float64", "test_error": "float64",
         "clean_train_error": "float64"})
    responses: dict[tuple[str, int], list[float]] = {}
    for record in chosen:
        for measured in read_responses([record]) if record.state == "done" else []:
            if measured.get("std"):
                responses.setdefault((record.config.arch, record.config.depth), []).append(
                    sum(measured["std"]) / len(measured["std"]))
    return Study(Path(root), chosen, finals, chosen[0].config.train.iterations,
                 chosen[0].config, len(records) - len(chosen), responses)


def final_errors(study: Study) -> pd.DataFrame:
    """Per network: n and mean/min/max/std of the final training and test error over seeds
    (and of the clean training error, NaN where it was not measured)."""
    table = study.finals.groupby(["arch", "depth"])[
        ["train_error", "test_error", "clean_train_error"]].agg(["mean", "min", "max", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table["n"] = study.finals.groupby(["arch", "depth"]).size()
    return table.reset_index()




def run_command(study: Study, networks: Sequence[tuple[str, int]], flags: str = "") -> str:
    """The `degrade` command(s) that train `networks` with the study's recipe, in its folder."""
    extra = _recipe_overrides(study.reference) if study.reference is not None else []
    # Where the study's runs were written (PATH may be a folder above or below that).
    output_dir = Path(study.reference.output_dir) if study.reference is not None else study.root
    if output_dir != Path(config_default("output_dir")):
        extra.append(override("output_dir", str(output_dir)))
    if study.reference is not None and study.reference.data.root != config_default("data.root"):
        extra.append(override("data.root", str(study.reference.data.root)))
    tail = [*extra, *([flags] if flags else [])]
    commands = []
    for arch in ("plain", "resnet"):
        depths = sorted(d for a, d in networks if a == arch and d != 1202)
        if depths:
            commands.append(shell_command("degrade", "sweep", f"arch={arch}",
                                          f"depth={','.join(map(str, depths))}", *tail))
    if ("resnet", 1202) in networks:
        commands.append(shell_command("degrade", "train", "experiment=resnet1202", *tail))
    return " and ".join(f"`{command}`" for command in commands)


def _recipe_overrides(config: Config) -> list[str]:
    defaults = hashed_identity(load_config(yaml_defaults()))
    ours = hashed_identity(config)
    overrides = []
    for key, value in ours.items():
        if key in _NOT_RECIPE or defaults.get(key) == value:
            continue
        if isinstance(value, list):  # a Hydra list, not a string to quote
            overrides.append(f"{key}=[{','.join(map(str, value))}]")
        else:
            overrides.append(override(key, value))
    return overrides


def training_measure(study: Study, networks: Sequence[tuple[str, int]]) -> str:
    """`clean_train_error` where every finished run of `networks` has one, else `train_error`:
    never a mix of the two measures in one comparison."""
    finals = study.finals
    chosen = finals[[(arch, depth) in networks for arch, depth in
                     zip(finals["arch"], finals["depth"], strict=True)]]
    if len(chosen) and chosen["clean_train_error"].notna().all():
        return "clean_train_error"
    return "train_error"
