"""The claims of Sec. 4.2, each checked against the runs: reproduced, not reproduced,
inconclusive (within the seeds' noise), or not enough runs (naming the runs that are missing
and the command that makes them).

Usage: `degrade claims outputs/` prints the verdicts and writes `outputs/figures/claims.md`
and `claims.csv`.

The claims are judged on one recipe: the longest schedule among the finished runs (settings
that differ only in warm-up count as one recipe, as the paper warms up ResNet-110 alone), plain
nets and ResNets with the paper's shortcut option A. Errors are means over the finished seeds;
a verdict judged on a schedule shorter than the paper's 64k iterations says so. Every ordering
a claim makes (claims 1, 2, 3, 5 and 6) is judged on the difference of the two means and its
interval over seeds (`stats.RULE`); a network with one seed takes a stated floor for its spread.

Over 400 lines because each of the paper's claims is a small judgement of its own (what it
compares, the runs it needs, the command that makes them) and they share the choice of runs;
kept together they read as the list of claims the paper makes.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from degradation.analysis import stats
from degradation.analysis.results import (
    PAPER_FIGURE6_PLAIN,
    PAPER_ITERATIONS,
    PAPER_TABLE6,
    PAPER_TABLE6_NOTES,
    REPRODUCTIONS,
    clean_error,
    describe_states,
    eval_set_of,
    figures_dir,
    load_runs,
    markdown_table,
    network_label,
    read_responses,
)
from degradation.config import Config, load_config, yaml_defaults
from degradation.console import override, shell_command
from degradation.errors import error_line
from degradation.package import config_default
from degradation.runs import RunRecord, hashed_identity
from degradation.storage import DamagedFile, atomic_write_text
from degradation.training.logs import read_grad_norms

REPRODUCED, NOT_REPRODUCED = stats.REPRODUCED, stats.NOT_REPRODUCED
INCONCLUSIVE, NOT_ENOUGH = stats.INCONCLUSIVE, stats.NOT_ENOUGH
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_ENOUGH)
RESNET_DEPTHS = (20, 32, 44, 56, 110)  # Figure 6 (middle) and Table 6 up to 110
PLAIN_110_ERROR = 60.0  # "plain-110 ... has error above 60%"
# Vanishing gradients would starve the first layers: the plain net's first-to-last layer
# gradient-norm ratio is called healthy when it is at least this fraction of the ResNet's of
# the same depth (identical layer shapes, so the parameter counts cancel out).
GRADIENT_FACTOR = 0.1
# The iterations the gradient figure and claim 8 look at, as fractions of the schedule: 1k,
# 16k, 48k and 64k of the paper's 64k.
GRADIENT_FRACTIONS = (1 / 64, 1 / 4, 3 / 4, 1.0)
# Warm-up is not part of a recipe here: the paper warms up ResNet-110 only (and not 1202).
_NOT_RECIPE = ("train.warmup", "train.warmup_lr", "train.warmup_until_error")
CLAIM_COLUMNS = ["number", "claim", "paper", "ours", "verdict", "note", "interval", "seeds"]
log = logging.getLogger("degrade")


@dataclass
class Claim:
    """One claim of the paper, our numbers beside it, and the verdict."""

    number: int
    claim: str
    paper: str
    ours: str
    verdict: str
    note: str = ""
    interval: str = ""  # each compared difference with its interval (`stats.RULE`)
    seeds: int | None = None  # the fewest seeds of a compared network

    @property
    def verdict_text(self) -> str:
        """The verdict, and `one seed` where it rests on single runs."""
        return f"{self.verdict} (one seed)" if self.seeds == 1 else self.verdict


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
    diverged: dict[tuple[str, int], int] = field(default_factory=dict)  # per network

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
    diverged: dict[tuple[str, int], int] = {}
    for record in chosen:
        if record.state == "diverged":
            key = (record.config.arch, record.config.depth)
            diverged[key] = diverged.get(key, 0) + 1
    return Study(Path(root), chosen, finals, chosen[0].config.train.iterations,
                 chosen[0].config, len(records) - len(chosen), responses, diverged)


def final_errors(study: Study) -> pd.DataFrame:
    """Per network: n and mean/min/max/std of the final training and test error over seeds
    (and of the clean training error, NaN where it was not measured)."""
    table = study.finals.groupby(["arch", "depth"])[
        ["train_error", "test_error", "clean_train_error"]].agg(["mean", "min", "max", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table["n"] = study.finals.groupby(["arch", "depth"]).size()
    return table.reset_index()


# --- the claims -------------------------------------------------------------------------------


def judge(study: Study) -> list[Claim]:
    """Every claim of Sec. 4.2, judged on `study`."""
    errors = final_errors(study).set_index(["arch", "depth"])
    claims = [
        _plain_deeper_worse(study, errors), _resnet_deeper_better(study, errors),
        _resnet_below_plain(study, errors), _table6(study, errors), _resnet_1202(study, errors),
        _responses(study), _plain_110(study, errors), _gradients(study),
    ]
    schedule = study.schedule_note()
    for claim in claims:
        if schedule and claim.verdict != NOT_ENOUGH:
            claim.note = _join(f"judged on a {schedule}", claim.note)
    return claims


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def _present(errors: pd.DataFrame, arch: str) -> list[int]:
    return sorted(depth for a, depth in errors.index if a == arch)


def _mean(errors: pd.DataFrame, arch: str, depth: int, metric: str) -> float:
    return float(errors.loc[(arch, depth), f"{metric}_mean"])


def _describe(errors: pd.DataFrame, arch: str, depth: int, metric: str) -> str:
    row = errors.loc[(arch, depth)]
    n = int(row["n"])
    text = f"{network_label(arch, depth)} {row[f'{metric}_mean']:.2f}"
    if n > 1:
        text += f" ({row[f'{metric}_min']:.2f}-{row[f'{metric}_max']:.2f}, n={n})"
    return text


def _missing(study: Study, errors: pd.DataFrame, wanted: Sequence[tuple[str, int]]) -> str:
    """'missing: plain-56 (1 running); make them with `...`' for the networks not finished."""
    absent = [(arch, depth) for arch, depth in wanted if (arch, depth) not in errors.index]
    if not absent:
        return ""
    names = []
    for arch, depth in absent:
        states = [r for r in study.records if (r.config.arch, r.config.depth) == (arch, depth)]
        names.append(network_label(arch, depth)
                     + (f" ({describe_states(states)})" if states else ""))
    return f"missing: {', '.join(names)}; train with {run_command(study, absent)}"


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


def _not_enough(number: int, claim: str, paper: str, note: str, ours: str = "") -> Claim:
    return Claim(number, claim, paper, ours or "-", NOT_ENOUGH, note)


# --- judging an ordering against the seeds' noise -----------------------------------------


METRIC_NAMES = {"train_error": "training error", "test_error": "test error",
                "clean_train_error": "clean training error", "response": "layer response"}
MEASURES = {
    "train_error": "the running training error of the last mini-batches, under augmentation "
                   "and train-mode BatchNorm, as the paper plots it",
    "clean_train_error": "the clean training error: the final weights on the whole training "
                         "set in eval mode, without augmentation (`degrade evaluate`)",
}


def training_measure(study: Study, networks: Sequence[tuple[str, int]]) -> str:
    """`clean_train_error` where every finished run of `networks` has one, else `train_error`:
    never a mix of the two measures in one comparison."""
    finals = study.finals
    chosen = finals[[(arch, depth) in networks for arch, depth in
                     zip(finals["arch"], finals["depth"], strict=True)]]
    if len(chosen) and chosen["clean_train_error"].notna().all():
        return "clean_train_error"
    return "train_error"


@dataclass
class Ordering:
    """One ordering a claim makes, judged: `b` is claimed `claimed` than `a` in `metric`."""

    a: tuple[str, int]
    b: tuple[str, int]
    metric: str
    result: stats.Comparison
    floor: stats.Floor | None = None  # the spread a one-seed side was given

    def label(self) -> str:
        """`plain-56 - plain-20 (training error)`."""
        return (f"{network_label(*self.b)} - {network_label(*self.a)} "
                f"({METRIC_NAMES[self.metric]})")


def _values(study: Study, network: tuple[str, int], metric: str) -> list[float]:
    """A network's finals over seeds, NaN for each diverged seed (left out, and named)."""
    if metric == "response":
        values = list(study.responses.get(network, []))
    else:
        finals = study.finals
        chosen = finals[(finals["arch"] == network[0]) & (finals["depth"] == network[1])]
        values = chosen[metric].astype(float).tolist()
    return values + [math.nan] * study.diverged.get(network, 0)


def floor_of(study: Study, metric: str) -> stats.Floor | None:
    """The spread a one-seed network is given: the pooled spread of the study's networks that
    have seeds, else the paper's ±0.16 (errors only: a layer response has no published one)."""
    if metric == "response":
        groups = list(study.responses.values())
    else:
        groups = [part[metric].astype(float).tolist()
                  for _, part in study.finals.groupby(["arch", "depth"])]
    pooled = stats.pooled_floor(groups, METRIC_NAMES[metric])
    if pooled is not None or metric == "response":
        return pooled
    return stats.PAPER_FLOOR


def order(study: Study, a: tuple[str, int], b: tuple[str, int], metric: str,
          claimed: str) -> Ordering:
    """Judge "`b`'s `metric` is `claimed` ("lower"/"higher") than `a`'s" by `stats.RULE`."""
    floor = floor_of(study, metric)
    result = stats.compare(_values(study, a, metric), _values(study, b, metric), claimed, floor)
    return Ordering(a, b, metric, result, floor)


def _ordered(study: Study, errors: pd.DataFrame, arch: str, depths: list[int], metric: str,
             deeper_higher: bool) -> tuple[list[str], list[Ordering]]:
    """(comparisons of the means as text, each pair judged) for every pair of depths present."""
    texts, judged = [], []
    for i, shallow in enumerate(depths):
        for deep in depths[i + 1:]:
            a, b = _mean(errors, arch, shallow, metric), _mean(errors, arch, deep, metric)
            sign = ">" if b > a else "<" if b < a else "="
            texts.append(f"{network_label(arch, deep)} {b:.2f} {sign} "
                         f"{network_label(arch, shallow)} {a:.2f}")
            judged.append(order(study, (arch, shallow), (arch, deep), metric,
                                "higher" if deeper_higher else "lower"))
    return texts, judged


def _judged_claim(number: int, claim: str, paper: str, ours: str, orderings: list[Ordering],
                  *notes: str) -> Claim:
    """A claim whose verdict is `stats.combine` of its orderings; the note says which fail,
    which are within the noise (and the seeds that would resolve them), and the floors used."""
    verdict = stats.combine(ordering.result.verdict for ordering in orderings)
    groups: dict[str, list[str]] = {}
    for ordering in orderings:
        groups.setdefault(ordering.result.verdict, []).append(_ordering_text(ordering))
    parts = [*notes,
             "fails: " + "; ".join(groups[NOT_REPRODUCED]) if NOT_REPRODUCED in groups else "",
             "within the noise: " + "; ".join(groups[INCONCLUSIVE])
             if INCONCLUSIVE in groups else "",
             "no finite value: " + "; ".join(groups[NOT_ENOUGH]) if NOT_ENOUGH in groups else "",
             _floor_note(orderings), _diverged_note(orderings)]
    seeds = min((min(o.result.a.n, o.result.b.n) for o in orderings), default=None)
    interval = "; ".join(f"{o.label()}: {o.result.interval()}" for o in orderings)
    rule = f"judged on the {stats.LEVEL:.0%} Welch t-interval of each difference over seeds"
    return Claim(number, f"{claim} ({rule})", paper, ours, verdict, _join(*parts), interval,
                 seeds)


def _ordering_text(ordering: Ordering) -> str:
    result = ordering.result
    text = f"{ordering.label()} {result.interval()}"
    if result.verdict == INCONCLUSIVE:
        text += (f", {result.seeds_needed} seeds per network would resolve a difference of "
                 "this size at this spread" if result.seeds_needed else
                 f", more than {stats.MAX_SEEDS} seeds per network would not resolve it")
    elif result.verdict == NOT_ENOUGH:
        text += ": no spread to judge it by (one seed each; a second seed gives one)" if (
            result.a.n and result.b.n) else ": every seed of a network diverged"
    return text


def _floor_note(orderings: list[Ordering]) -> str:
    """`one seed: plain-20, plain-56 take the training error floor ±0.16 (source)`."""
    floored: dict[tuple[str, stats.Floor], list[str]] = {}
    for ordering in orderings:
        floor = ordering.floor
        for network, side in ((ordering.a, ordering.result.a), (ordering.b, ordering.result.b)):
            if side.floored and floor is not None:
                names = floored.setdefault((METRIC_NAMES[ordering.metric], floor), [])
                if network_label(*network) not in names:
                    names.append(network_label(*network))
    return "; ".join(f"one seed: {', '.join(names)} take the {metric} floor ±{floor.std:.3g} "
                     f"({floor.source})" for (metric, floor), names in floored.items())


def _diverged_note(orderings: list[Ordering]) -> str:
    dropped = {}
    for ordering in orderings:
        for network, side in ((ordering.a, ordering.result.a), (ordering.b, ordering.result.b)):
            if side.dropped:
                dropped[network_label(*network)] = side.dropped
    return ("diverged, left out: " + ", ".join(f"{count} seed{'s' if count > 1 else ''} of "
                                               f"{name}" for name, count in dropped.items())
            if dropped else "")


def _plain_deeper_worse(study: Study, errors: pd.DataFrame) -> Claim:
    claim = ("Plain nets: the deeper net has the higher training error (each pair of depths, "
             "plain-56 against plain-20 in particular), so degradation is not overfitting")
    paper = "Fig. 6 (left), training error at 64k: " + ", ".join(
        f"plain-{depth} {values[1]}" for depth, values in PAPER_FIGURE6_PLAIN.items())
    missing = _missing(study, errors, [("plain", 20), ("plain", 56)])
    if missing:
        return _not_enough(1, claim, paper, missing)
    depths = _present(errors, "plain")
    metric = training_measure(study, [("plain", depth) for depth in depths])
    texts, judged = _ordered(study, errors, "plain", depths, metric, True)
    ours = f"{METRIC_NAMES[metric]} (%): " + "; ".join(texts)
    key = next(o for o in judged if (o.a, o.b) == (("plain", 20), ("plain", 56)))
    held = {REPRODUCED: "holds", NOT_REPRODUCED: "fails"}.get(key.result.verdict,
                                                              key.result.verdict)
    measured = f"measured on {MEASURES[metric]}"
    if metric == "train_error":
        measured += f"; `degrade evaluate {study.root} --split train` measures the clean one"
    return _judged_claim(1, claim, paper, ours, judged, f"key pair plain-56 vs plain-20 {held}",
                         measured)


def _resnet_deeper_better(study: Study, errors: pd.DataFrame) -> Claim:
    claim = "ResNets: the deeper net has the lower training and test error, up to 110 layers"
    paper = "Fig. 6 (middle); Table 6: " + ", ".join(
        f"ResNet-{d} {PAPER_TABLE6[d]}" for d in RESNET_DEPTHS)
    missing = _missing(study, errors, [("resnet", 20), ("resnet", 56)])
    if missing:
        return _not_enough(2, claim, paper, missing)
    depths = [d for d in _present(errors, "resnet") if d in RESNET_DEPTHS]
    train, train_judged = _ordered(study, errors, "resnet", depths, "train_error", False)
    test, test_judged = _ordered(study, errors, "resnet", depths, "test_error", False)
    ours = "training error (%): " + "; ".join(train) + ". test error (%): " + "; ".join(test)
    unchecked = [d for d in RESNET_DEPTHS if d not in depths]
    note = ("not checked: " + ", ".join(f"ResNet-{d}" for d in unchecked)
            + f" ({run_command(study, [('resnet', d) for d in unchecked])})") if unchecked else ""
    return _judged_claim(2, claim, paper, ours, train_judged + test_judged, note)


def _resnet_below_plain(study: Study, errors: pd.DataFrame) -> Claim:
    claim = "At equal depth, the ResNet's training error is below the plain net's"
    paper = "Fig. 6 (left vs middle)"
    depths = [d for d in _present(errors, "plain") if ("resnet", d) in errors.index]
    if not depths:
        wanted = [(arch, d) for d in (20, 56) for arch in ("plain", "resnet")]
        return _not_enough(3, claim, paper, _missing(study, errors, wanted)
                           or "no depth with both a plain net and a ResNet")
    texts, judged = [], []
    for depth in depths:
        plain = _mean(errors, "plain", depth, "train_error")
        resnet = _mean(errors, "resnet", depth, "train_error")
        texts.append(f"ResNet-{depth} {resnet:.2f} {'<' if resnet < plain else '>='} "
                     f"plain-{depth} {plain:.2f}")
        judged.append(order(study, ("plain", depth), ("resnet", depth), "train_error", "lower"))
    return _judged_claim(3, claim, paper, "training error (%): " + "; ".join(texts), judged)


def parse_paper_number(text: str) -> tuple[float, float] | None:
    """The (low, high) a published cell stands for: `8.51 ± 0.22`, `6.89-8.42`, `≈11-12`, `8.0`."""
    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]
    if not numbers:
        return None
    if "±" in text:
        return numbers[0] - numbers[1], numbers[0] + numbers[1]
    return min(numbers), max(numbers)


def published_range(depth: int) -> tuple[float, float] | None:
    """ResNet-`depth` test error (%): the span of the paper's value and spread and of the
    independent reproductions (PAPER.md)."""
    spans = []
    if depth in PAPER_TABLE6:
        spans.append((PAPER_TABLE6[depth], PAPER_TABLE6[depth]))
    mean = re.search(r"mean\s+([\d.]+\s*±\s*[\d.]+)", PAPER_TABLE6_NOTES.get(depth, ""))
    if mean:
        spans.append(parse_paper_number(mean.group(1)))
    header = REPRODUCTIONS[0]
    column = f"R-{depth}"
    if column in header:
        index = header.index(column)
        spans += [span for row in REPRODUCTIONS[1:] if (span := parse_paper_number(row[index]))]
    if not spans:
        return None
    return min(low for low, _ in spans), max(high for _, high in spans)


def _table6(study: Study, errors: pd.DataFrame) -> Claim:
    claim = ("ResNet test errors as in Table 6: within the paper's spread or the range of the "
             "independent reproductions, per depth")
    ranges = {d: published_range(d) for d in PAPER_TABLE6}
    paper = "; ".join(f"ResNet-{d} {PAPER_TABLE6[d]} (published {low:.2f}-{high:.2f})"
                      for d, (low, high) in ranges.items())
    depths = [d for d in _present(errors, "resnet") if d in PAPER_TABLE6]
    if not depths:
        return _not_enough(4, claim, paper, _missing(study, errors, [("resnet", 20),
                                                                     ("resnet", 56)]))
    if study.short:
        return _not_enough(4, claim, paper, "the paper's final numbers need its full schedule "
                           f"(these runs are a {study.schedule_note()}): `degrade sweep "
                           "experiment=table6`",
                           "; ".join(_describe(errors, "resnet", d, "test_error")
                                     for d in depths))
    finals = study.finals
    if set(finals.loc[finals["arch"] == "resnet", "eval_set"]) != {"test"}:
        return _not_enough(4, claim, paper, "these runs are evaluated on a validation split "
                           "(data.val_split > 0); Table 6 is on the test set")
    texts, failures, below = [], [], []
    for depth in depths:
        mean = _mean(errors, "resnet", depth, "test_error")
        low, high = ranges[depth]
        where = "above" if mean > high else "below" if mean < low else "within"
        texts.append(f"{_describe(errors, 'resnet', depth, 'test_error')}: {where} "
                     f"{low:.2f}-{high:.2f}")
        if where == "above":
            failures.append(f"ResNet-{depth}")
        elif where == "below":
            below.append(f"ResNet-{depth}")
    note = _join("above the published range: " + ", ".join(failures) if failures else "",
                 "below every published value (lower error): " + ", ".join(below)
                 if below else "")
    return Claim(4, claim, paper, "test error (%), mean over seeds: " + "; ".join(texts),
                 NOT_REPRODUCED if failures else REPRODUCED, note)


def _resnet_1202(study: Study, errors: pd.DataFrame) -> Claim:
    claim = ("ResNet-1202 has a lower training error than ResNet-110 but a higher test error "
             "(overfitting)")
    paper = (f"Fig. 6 (right): ResNet-1202 training error < 0.1%; test error "
             f"{PAPER_TABLE6[1202]} against {PAPER_TABLE6[110]}")
    missing = _missing(study, errors, [("resnet", 110), ("resnet", 1202)])
    if missing:
        return _not_enough(5, claim, paper, missing)
    ours = (f"training error: {_describe(errors, 'resnet', 1202, 'train_error')} vs "
            f"{_describe(errors, 'resnet', 110, 'train_error')}; test error: "
            f"{_describe(errors, 'resnet', 1202, 'test_error')} vs "
            f"{_describe(errors, 'resnet', 110, 'test_error')}")
    judged = [order(study, ("resnet", 110), ("resnet", 1202), "train_error", "lower"),
              order(study, ("resnet", 110), ("resnet", 1202), "test_error", "higher")]
    return _judged_claim(5, claim, paper, ours, judged)


def _responses(study: Study) -> Claim:
    claim = ("Figure 7: ResNets' layer responses are smaller than the plain nets', and smaller "
             "for deeper ResNets")
    paper = "Fig. 7: std of each 3x3 layer's response, plain-20/56 above ResNet-20/56/110"
    measured = {key: sum(values) / len(values) for key, values in study.responses.items()}
    wanted = [("plain", 20), ("plain", 56), ("resnet", 20), ("resnet", 56)]
    absent = [key for key in wanted if key not in measured]
    if absent:
        errors = final_errors(study).set_index(["arch", "depth"])
        untrained = [key for key in absent if key not in errors.index]
        note = _missing(study, errors, untrained) if untrained else ""
        if len(untrained) < len(absent):
            note = _join(note, "not measured yet: " + ", ".join(
                network_label(*key) for key in absent if key not in untrained)
                + f"; measure them with `{shell_command('degrade', 'responses', study.root)}`")
        return _not_enough(6, claim, paper, note)
    texts, judged = [], []
    for depth in sorted(d for a, d in measured if a == "plain"):
        if ("resnet", depth) in measured:
            plain, resnet = measured[("plain", depth)], measured[("resnet", depth)]
            texts.append(f"ResNet-{depth} {resnet:.3f} {'<' if resnet < plain else '>='} "
                         f"plain-{depth} {plain:.3f}")
            judged.append(order(study, ("plain", depth), ("resnet", depth), "response",
                                "lower"))
    resnets = sorted(d for a, d in measured if a == "resnet" and d in RESNET_DEPTHS)
    for shallow, deep in itertools.pairwise(resnets):
        a, b = measured[("resnet", shallow)], measured[("resnet", deep)]
        texts.append(f"ResNet-{deep} {b:.3f} {'<' if b < a else '>='} ResNet-{shallow} {a:.3f}")
        judged.append(order(study, ("resnet", shallow), ("resnet", deep), "response", "lower"))
    ours = "mean over layers of the response std (seeds averaged): " + "; ".join(texts)
    return _judged_claim(6, claim, paper, ours, judged)


def _plain_110(study: Study, errors: pd.DataFrame) -> Claim:
    claim = f"Plain-110 has an error above {PLAIN_110_ERROR:g}% (so the paper does not draw it)"
    paper = "Sec. 4.2: \"plain-110 ... has error above 60%\""
    missing = _missing(study, errors, [("plain", 110)])
    if missing:
        return _not_enough(7, claim, paper, missing)
    test = _mean(errors, "plain", 110, "test_error")
    ours = (f"test error: {_describe(errors, 'plain', 110, 'test_error')}; training error: "
            f"{_describe(errors, 'plain', 110, 'train_error')}")
    if study.short:
        return _not_enough(7, claim, paper, "the paper's final error needs its full schedule "
                           f"(these runs are a {study.schedule_note()}): `degrade sweep "
                           "experiment=fig6`", ours)
    return Claim(7, claim, paper, ours, REPRODUCED if test > PLAIN_110_ERROR else NOT_REPRODUCED)


# --- gradients --------------------------------------------------------------------------------


GRADIENT_COLUMNS = ["arch", "depth", "seed", "iteration", "layer", "name", "grad_norm"]


def gradient_norm_table(study: Study) -> pd.DataFrame:
    """The logged per-layer gradient norms of the study's finished runs (columns
    `GRADIENT_COLUMNS`); empty when no run has `grad_norms.csv`."""
    frames = []
    for record in study.records:
        if record.state != "done":
            continue
        try:
            norms = read_grad_norms(record.path)
        except (OSError, DamagedFile) as error:  # named, and must not stop the analysis
            log.warning("warning: %s; its gradient norms are left out",
                        error_line(error, with_type=False))
            continue
        if not norms.empty:
            frames.append(norms.assign(arch=record.config.arch, depth=record.config.depth,
                                       seed=record.config.seed))
    if not frames:
        return pd.DataFrame({column: pd.Series(dtype="int64" if column in (
            "depth", "seed", "iteration", "layer") else "float64" if column == "grad_norm"
            else object) for column in GRADIENT_COLUMNS})
    return pd.concat(frames, ignore_index=True)[GRADIENT_COLUMNS]


def gradient_iterations(logged: Sequence[int], iterations: int) -> list[int]:
    """The logged iterations nearest to `GRADIENT_FRACTIONS` of the schedule (1k, 16k, 48k,
    64k of 64k), without repeats."""
    logged = sorted(set(logged))
    if not logged:
        return []
    chosen = {min(logged, key=lambda it: (abs(it - fraction * iterations), it))
              for fraction in GRADIENT_FRACTIONS}
    return sorted(chosen)


def gradient_ratios(norms: pd.DataFrame) -> pd.DataFrame:
    """Per network and iteration: the first conv's gradient norm over the last conv's,
    geometric mean over seeds (columns arch, depth, iteration, ratio, seeds)."""
    if norms.empty:
        return pd.DataFrame(columns=["arch", "depth", "iteration", "ratio", "seeds"])
    keys = ["arch", "depth", "seed", "iteration"]
    first = norms.loc[norms.groupby(keys)["layer"].idxmin()].set_index(keys)["grad_norm"]
    last = norms.loc[norms.groupby(keys)["layer"].idxmax()].set_index(keys)["grad_norm"]
    per_run = (first / last).rename("ratio").reset_index()
    per_run["log"] = per_run["ratio"].map(lambda x: math.log(x) if x > 0 else -math.inf)
    grouped = per_run.groupby(["arch", "depth", "iteration"])
    result = grouped["log"].mean().map(math.exp).rename("ratio").to_frame()
    result["seeds"] = grouped.size()
    return result.reset_index()


def _gradients(study: Study) -> Claim:
    claim = ("Plain nets do not suffer from vanishing gradients: their gradients keep healthy "
             "norms down to the first layer (criterion: plain-56's first-to-last conv "
             f"gradient-norm ratio is at least {GRADIENT_FACTOR:g} of ResNet-56's at every "
             "compared iteration)")
    paper = ("Sec. 4.1: with BN \"the backward propagated gradients exhibit healthy norms\"; "
             "argued, not measured")
    errors = final_errors(study).set_index(["arch", "depth"])
    missing = _missing(study, errors, [("plain", 56), ("resnet", 56)])
    if missing:
        return _not_enough(8, claim, paper, missing)
    ratios = gradient_ratios(gradient_norm_table(study))
    have = set(zip(ratios["arch"], ratios["depth"], strict=True))
    lacking = [key for key in (("plain", 56), ("resnet", 56)) if key not in have]
    if lacking:
        return _not_enough(8, claim, paper, "no gradient logs (grad_norms.csv) in the runs of "
                           + ", ".join(network_label(*key) for key in lacking)
                           + ": they were trained before gradient logging; retrain them with "
                           + run_command(study, lacking, "--force"))
    table = ratios[ratios["depth"] == 56].pivot(index="iteration", columns="arch",
                                                values="ratio")
    logged = table.dropna().index.tolist()
    chosen = gradient_iterations(logged, study.iterations) if logged else []
    if not chosen:
        return _not_enough(8, claim, paper, "plain-56 and ResNet-56 logged gradients at no "
                           "common iteration")
    texts, failures = [], []
    for iteration in chosen:
        plain, resnet = table.loc[iteration, "plain"], table.loc[iteration, "resnet"]
        healthy = plain >= GRADIENT_FACTOR * resnet
        text = f"it {iteration:,}: plain-56 {plain:.3g}, ResNet-56 {resnet:.3g}"
        texts.append(text)
        if not healthy:
            failures.append(text)
    ours = "first-to-last conv gradient-norm ratio: " + "; ".join(texts)
    note = ("plain-56's first layers get under " f"{GRADIENT_FACTOR:g}x the ResNet's share at: "
            + "; ".join(failures)) if failures else ""
    return Claim(8, claim, paper, ours, NOT_REPRODUCED if failures else REPRODUCED, note)


# --- output -----------------------------------------------------------------------------------


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    """The claims as a frame (columns `CLAIM_COLUMNS`), for claims.csv."""
    frame = pd.DataFrame([asdict(claim) for claim in claims], columns=CLAIM_COLUMNS)
    return frame.astype({"seeds": "Int64"})  # whole numbers, empty where nothing is compared


def header(study: Study) -> str:
    """One line on what the verdicts rest on: how many runs, which schedule."""
    runs = len(study.finals)
    text = (f"Judged on {runs} finished run{'s' if runs != 1 else ''} of "
            f"{study.iterations:,} iterations (plain nets and ResNets with shortcut A; errors "
            "are means over seeds, spreads min-max)")
    if study.short:
        text += f": a {study.schedule_note()}"
    if study.left_out:
        text += f"; {study.left_out} runs of other recipes or shortcut options are left out"
    return (f"{text}. Each ordering a claim makes is judged by the {stats.RULE}; a network "
            "with one seed takes a stated floor for its spread.")


def verdict_counts(claims: Sequence[Claim]) -> str:
    """`2 reproduced, 1 inconclusive, 5 not enough runs`: each verdict counted apart."""
    counts = {verdict: sum(c.verdict == verdict for c in claims) for verdict in VERDICTS}
    return ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])


def claims_markdown(study: Study, claims: Sequence[Claim]) -> str:
    """The verdicts as a Markdown table under a one-line header."""
    summary = verdict_counts(claims)
    rows = [[str(c.number), c.claim, c.paper, c.ours, f"**{c.verdict_text}**", c.note]
            for c in claims]
    return (f"# The claims of Sec. 4.2: {summary}\n\n{header(study)}\n\n"
            + markdown_table(["#", "claim", "paper", "ours", "verdict", "note"], rows))


def claims_command(path: Path, out: Path | None, recursive: bool = False
                   ) -> tuple[str, list[Path]]:
    """`degrade claims`: judge every claim, write claims.md and claims.csv; the text, paths."""
    path = Path(path)
    study = select_study(load_runs(path, recursive), path)
    claims = judge(study)
    markdown = claims_markdown(study, claims)
    folder = figures_dir(path, out)
    written = [folder / "claims.md", folder / "claims.csv"]
    atomic_write_text(written[0], markdown)
    atomic_write_text(written[1], claims_frame(claims).to_csv(index=False))
    return markdown, written
