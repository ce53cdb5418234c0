"""What the runs measured, put beside the paper: training curves, seed aggregates, Table 6.

Usage: `degrade table outputs/` writes `outputs/figures/table6.md` and `table6.csv`;
from Python, `read_scalars(Path("outputs"))` gives every logged point as a tidy DataFrame.

Runs are told apart by network (`plain-20`, `resnet-56-A`), seed and *variant*: the settings
other than arch/depth/shortcut/seed in which a run differs from the most common recipe under
the path (empty for a sweep that shares one recipe), so a short smoke run is never averaged
with a full 64k-iteration one.

Over 400 lines because reading runs back (scalars, summaries, damaged files, variants) and
Table 6, which only aggregates what was read, change together; figures, reports and exports
build on both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from degradation.analysis.stats import LEVEL, mean_interval
from degradation.errors import DegradeError, error_line
from degradation.runs import (
    METRICS_FILE,
    PLAIN_SHORTCUT,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    RunRecord,
    data_description,
    data_name,
    find_runs,
    hashed_identity,
    identity,
    network_name,
)
from degradation.storage import DamagedFile, atomic_write_text, path_refusal, read_json
from degradation.training.logs import HPARAMS_METRICS, TAGS, read_metrics_prefix

PAPER_ITERATIONS = 64000  # He et al. 2016: "terminate training at 64k iterations"

# He et al. 2016, Table 6: ResNet test error (%) on CIFAR-10, all with shortcut option A.
# For most depths the paper prints one number, which our mean is compared with; for ResNet-110
# it prints the best of 5 runs and their mean ± std: mean is compared with mean, best with best.
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.61, 1202: 7.93}
PAPER_TABLE6_STD = {110: 0.16}
PAPER_TABLE6_BEST = {110: 6.43}
PAPER_TABLE6_NOTES = {110: "mean ± std of 5 runs"}
# Plain nets have no Table 6 entry; these are read off Figure 6 at 64k iterations (test, train).
PAPER_FIGURE6_PLAIN = {20: ("≈9.6", "≈1"), 32: ("≈10", "≈1"), 44: ("≈11-12", "≈3"),
                       56: ("≈13", "≈6")}

# PAPER.md, "What independent reproductions measured": context for our numbers, not a target.
REPRODUCTIONS = (
    ("source", "schedule", "R-20", "R-32", "R-44", "R-56", "R-110", "P-20", "P-56"),
    ("akamaster/pytorch_resnet_cifar10", "200 epochs, best", "8.27", "7.37", "6.90", "6.61",
     "6.32", "", ""),
    ("its users' reruns (issue 18, 6 runs of R-56, best)", "200 epochs, best", "", "", "",
     "6.89-8.42", "", "", ""),
    ("gcr/torch-residual-networks", "Torch", "8.29", "7.63", "7.14", "6.94", "6.73", "", ""),
    ("nabla0001/resnet, 5 seeds, 45k/5k split", "paper", "8.51 ± 0.22", "", "", "7.40 ± 0.27",
     "7.14 ± 0.20", "9.78 ± 0.13", "12.95 ± 0.22"),
    ("a-martyn/resnet, best", "paper", "8.0", "7.51", "7.38", "7.33", "", "9.5", "12.76"),
)

FIGURES_DIR = "figures"
RESPONSES_FILE = "responses.json"
EVALUATION_FILE = "evaluation.json"  # `degrade evaluate`: the final weights on whole splits
STATE_ORDER = ("done", "running", "interrupted", "pending", "failed", "diverged")
COLUMNS = ["arch", "depth", "shortcut", "variant", "seed", "run", "state", "eval_set",
           "iteration", "metric", "value"]
GROUP = ["arch", "depth", "shortcut", "variant"]
_DTYPES = {"depth": "int64", "seed": "int64", "iteration": "int64", "value": "float64"}


log = logging.getLogger("degrade")


class AnalysisError(DegradeError, ValueError):
    """Nothing to analyse, or nothing of the kind asked for; the message is one line."""


def load_runs(path: Path, recursive: bool = False, inconsistent: bool = False
              ) -> list[RunRecord]:
    """Every run of the output tree `path`, each once (`find_runs`, `distinct_runs`), or
    `AnalysisError` saying why there is none.

    A run whose folder, config.yaml and summary.json disagree (`RunRecord.inconsistency`) is
    named in a `warning:` line and left out, so no table, figure, verdict or export files its
    numbers under another run's name; with `inconsistent` it is kept (`degrade status`
    lists it as such).
    """
    path = Path(path)
    refusal = path_refusal(path)
    if refusal is not None:
        raise AnalysisError(f"{path} cannot be read: {refusal}")
    if not path.exists():
        raise AnalysisError(f"{path} does not exist")
    found = find_runs(path, recursive)
    apart = [record for record in found if record.inconsistency is not None]
    records = distinct_runs([record for record in found if record.inconsistency is None], path)
    if inconsistent:  # in the order found, never counted as a copy of a consistent run
        order = {id(record): index for index, record in enumerate(found)}
        records = sorted(records + apart, key=lambda record: order[id(record)])
    for record in [] if inconsistent else apart:
        log.warning("warning: %s is inconsistent (%s); that run is left out", record.path,
                    record.inconsistency)
    if not records:
        raise AnalysisError(f"no runs under {path} (no run folder with a config.yaml written "
                            "by `degrade train`"
                            + (")" if recursive else "; --recursive searches the output "
                               "trees nested inside it too)"))
    return records


def data_line(records: Iterable[RunRecord]) -> str:
    """`Data: official CIFAR-10 (4 runs)`: what the runs trained and were evaluated on."""
    counts = Counter(data_name(record) for record in records)
    return "Data: " + "; ".join(f"{name} ({count} run{'s' if count > 1 else ''})"
                                for name, count in counts.items())


def distinct_runs(records: Sequence[RunRecord], root: Path) -> list[RunRecord]:
    """One record per run: the same identity and seed in several folders (a backup, a copy
    synced from a cluster) is one run, named in a `warning:` line; the newest finished copy
    is kept (else the one training now, else the newest)."""
    copies: dict[str, list[RunRecord]] = {}
    for record in records:
        key = json.dumps(identity(record.config), sort_keys=True, default=str)
        copies.setdefault(key, []).append(record)
    kept = []
    for group in copies.values():
        chosen = max(group, key=_recency)
        if len(group) > 1:
            others = [run_label(record, root) for record in group if record is not chosen]
            log.warning("warning: %s seed %d is in %d folders; counted once, from %s "
                        "(not from %s)", network_name(chosen.config), chosen.config.seed,
                        len(group), run_label(chosen, root), ", ".join(others))
        kept.append(chosen)
    order = {id(record): index for index, record in enumerate(records)}
    return sorted(kept, key=lambda record: order[id(record)])


def _recency(record: RunRecord) -> tuple[int, float]:
    """Which copy of a run to keep: finished before running before the rest, then newest."""
    rank = {"done": 2, "diverged": 2, "running": 1}.get(record.state, 0)
    return rank, _finished_at(record) if rank == 2 else _newest_file_time(record.path)


def _finished_at(record: RunRecord) -> float:
    # The time written into the summary survives a copy that resets file times.
    stamp = (record.summary or {}).get("finished_at")
    try:
        return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    except (TypeError, ValueError):
        return _newest_file_time(record.path, (SUMMARY_FILE,))


def _newest_file_time(folder: Path, names: Iterable[str] | None = None) -> float:
    paths = [folder / name for name in names] if names else list(folder.iterdir())
    return max((path.stat().st_mtime for path in paths if path.exists()), default=0.0)


def shortcut_of(record: RunRecord) -> str:
    """The run's shortcut option, or `PLAIN_SHORTCUT` for a plain net."""
    return record.config.network_shortcut or PLAIN_SHORTCUT


def network_label(arch: str, depth: int, shortcut: str | None = None) -> str:
    """`plain-20`, `ResNet-56`, or `ResNet-56 (B)` for a shortcut other than the paper's A."""
    if arch == "plain":
        return f"plain-{depth}"
    suffix = "" if shortcut in (None, "A", PLAIN_SHORTCUT) else f" ({shortcut})"
    return f"ResNet-{depth}{suffix}"


def eval_set_of(record: RunRecord) -> str:
    """`test`, or `validation` when the run held out part of the training set."""
    if record.summary and record.summary.get("eval_set"):
        return record.summary["eval_set"]
    return "validation" if record.config.data.val_split > 0 else "test"


def variants(records: Sequence[RunRecord]) -> dict[Path, str]:
    """For each run, the settings in which it differs from the most common recipe ('' if none)."""
    # Runs on other data are another variant: never averaged with the rest, and named.
    recipes = {record.path: {**hashed_identity(record.config), "data": data_description(record)}
               for record in records}
    keys = {path: json.dumps(rest, sort_keys=True) for path, rest in recipes.items()}
    reference = json.loads(Counter(keys.values()).most_common(1)[0][0]) if keys else {}
    result = {}
    for path, rest in recipes.items():
        differing = sorted(set(rest) | set(reference))
        result[path] = ", ".join(f"{key}={rest.get(key)}" for key in differing
                                 if rest.get(key) != reference.get(key))
    return result


def read_scalars(path: Path, recursive: bool = False) -> pd.DataFrame:
    """Every logged scalar of every run under `path` as a tidy frame (columns `COLUMNS`)."""
    path = Path(path)
    return scalars_of(load_runs(path, recursive), path)


def scalars_of(records: Sequence[RunRecord], root: Path) -> pd.DataFrame:
    """`read_scalars` for runs already found; `run` is each folder relative to `root`."""
    labels = variants(records)
    frames = []
    for record in records:
        points = read_run_scalars(record.path)
        if points.empty:
            continue
        run = run_label(record, root)
        points = points.assign(
            arch=record.config.arch, depth=record.config.depth, shortcut=shortcut_of(record),
            variant=labels[record.path], seed=record.config.seed, run=run,
            state=record.state, eval_set=eval_set_of(record))
        frames.append(points[COLUMNS])
    if not frames:
        return pd.DataFrame({column: pd.Series(dtype=_dtype(column)) for column in COLUMNS})
    return pd.concat(frames, ignore_index=True).astype(_DTYPES)


def run_label(record: RunRecord, root: Path) -> str:
    """How the frames and tables name a run: its folder relative to `root` where it lies below."""
    if record.path.is_relative_to(root):
        return record.path.relative_to(root).as_posix()
    return str(record.path)


def read_run_scalars(run_dir: Path) -> pd.DataFrame:
    """One run's scalars (iteration, metric, value), from whichever of its two logs is complete.

    metrics.csv is the run's record and TensorBoard's events a copy (which alone holds the
    gradient norms). The events are read where they hold every point of metrics.csv; where
    they lack some (a damaged or cut event file, or events not yet flushed by a run in
    training) the CSV's points are; a damaged CSV gives only its valid rows, unless the events
    hold more. A damaged log of a finished run is named in a `warning:` line.
    """
    run_dir = Path(run_dir)
    files = sorted((run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    events = _read_events(files)
    path = run_dir / METRICS_FILE
    try:
        rows, damage = read_metrics_prefix(path)
    except OSError:  # no metrics.csv: a run from before it, or one that has logged nothing yet
        return events
    logged = _points(rows)
    in_events = set(zip(events["iteration"], events["metric"], strict=True))
    in_csv = set(zip(logged["iteration"], logged["metric"], strict=True))
    if in_csv <= in_events and (damage is None or len(_tags(in_events)) > len(in_csv)):
        if damage is not None:
            log.warning("warning: %s; its points are read from the TensorBoard events", damage)
        return events
    if damage is not None:
        log.warning("warning: %s; its points after that line are left out", damage)
    elif files and (run_dir / SUMMARY_FILE).exists():  # a finished run's events are whole
        where = files[0] if len(files) == 1 else run_dir / TENSORBOARD_DIR
        log.warning("warning: %s is damaged (its TensorBoard events hold %d of the %d points "
                    "of %s); the curves are read from %s", where, len(in_csv & in_events),
                    len(in_csv), METRICS_FILE, METRICS_FILE)
    others = events[~events["metric"].isin(TAGS)]  # the gradient norms: in the events only
    return pd.concat([logged, others], ignore_index=True).sort_values(
        ["metric", "iteration"], ignore_index=True)


def _tags(points: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """The points of `metrics.csv`'s metrics (`TAGS`) among `points`."""
    return {point for point in points if point[1] in TAGS}


def _read_events(files: Sequence[Path]) -> pd.DataFrame:
    """The scalars of a run's event files, merged as TensorBoard shows them after restarts."""
    per_file = [rows for rows in map(_read_event_file, files) if rows]
    # A resumed run restarts from its last checkpoint: a file that starts at step s supersedes
    # everything written earlier at steps >= s (what SummaryWriter's purge_step means), even if
    # the writer did not purge. Files are taken in the order they were written.
    per_file.sort(key=lambda rows: min(row[0] for row in rows))
    kept: list[tuple[float, int, str, float]] = []
    for rows in per_file:
        start = min(row[1] for row in rows)
        kept = [row for row in kept if row[1] < start] + rows
    frame = pd.DataFrame(kept, columns=["wall_time", "iteration", "metric", "value"])
    # A (tag, step) written twice keeps the value written last.
    frame = frame.sort_values("wall_time", kind="stable")
    frame = frame.drop_duplicates(["metric", "iteration"], keep="last")
    return frame.sort_values(["metric", "iteration"]).drop(columns="wall_time").astype(
        _POINT_DTYPES)


def _read_event_file(path: Path) -> list[tuple[float, int, str, float]]:
    # One file at a time and purge_orphaned_data=False: the merge above decides what a restart
    # supersedes. Size 0 keeps every point (the default keeps a random 10,000 per tag).
    try:
        accumulator = EventAccumulator(str(path), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE,
                                       purge_orphaned_data=False).Reload()
    except Exception as error:  # a damaged event file must not stop the analysis
        log.warning("warning: %s is damaged (%s); its points are left out", path,
                    error_line(error, with_type=False))
        return []
    # Every event file opens with its format version: a file with bytes but without it is
    # not an event file (a file cut off later just ends early, which is read as it is).
    if accumulator.file_version is None and path.stat().st_size > 0:
        log.warning("warning: %s is damaged (no TensorBoard events in it); its points are "
                    "left out", path)
        return []
    # The HParams session's final numbers (summary.json's) are no curve: written as a run
    # ends, they must not count as the points a resumed run's file starts with.
    return [(event.wall_time, event.step, tag, event.value)
            for tag in accumulator.Tags()["scalars"] if tag not in HPARAMS_METRICS
            for event in accumulator.Scalars(tag)]


_POINT_DTYPES = {"iteration": "int64", "metric": object, "value": "float64"}


def _points(rows: dict[int, dict[str, float]]) -> pd.DataFrame:
    """metrics.csv's rows as points (iteration, metric, value)."""
    points = [(iteration, metric, value) for iteration, values in rows.items()
              for metric, value in values.items()]
    return pd.DataFrame(points, columns=list(_POINT_DTYPES)).astype(_POINT_DTYPES)


def _dtype(column: str) -> str:
    return _DTYPES.get(column, "object")


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one seed), min, max and count over seeds per iteration."""
    keys = [*GROUP, "metric", "iteration"]
    stats = df.groupby(keys, sort=True)["value"].agg(["mean", "std", "min", "max", "count"])
    return stats.reset_index()


def read_responses(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """The Figure 7 measurements (`responses.json`) already stored in the given runs, each
    with its run's `variant`; a damaged one is named in a `warning:` line and left out."""
    labels = variants(records)
    found = []
    for record in records:
        path = record.path / RESPONSES_FILE
        if path.exists():
            try:
                found.append({**read_responses_file(path), "variant": labels[record.path]})
            except DamagedFile as error:
                log.warning("warning: %s; left out (`degrade responses` measures it again)",
                            error)
    return found


def read_responses_file(path: Path) -> dict[str, Any]:
    """One run's `responses.json`, or `DamagedFile` naming what is wrong with it."""
    try:
        measured = read_json(path)
    except (OSError, ValueError) as error:
        raise DamagedFile(f"{path} is damaged ({error_line(error, with_type=False)})") from None
    valid = (isinstance(measured, dict) and measured.get("arch") in ("plain", "resnet")
             and isinstance(measured.get("depth"), int) and isinstance(measured.get("std"), list)
             and all(isinstance(value, int | float) for value in measured["std"]))
    if not valid:
        raise DamagedFile(f"{path} is damaged (not the arch, depth and per-layer std "
                          "`degrade responses` writes)")
    return measured


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (a checkpoint can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_evaluation(record: RunRecord) -> dict[str, Any] | None:
    """The run's `evaluation.json` if it measured the checkpoint the run holds now (its
    SHA-256 matches), else None; a damaged one is named in a `warning:` line."""
    path = record.path / EVALUATION_FILE
    if not path.exists():
        return None
    try:
        stored = read_json(path)
        checkpoint = record.path / stored["checkpoint"]
        valid = isinstance(stored["sha256"], str) and isinstance(stored["splits"], dict)
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("warning: %s is damaged (%s); left out (`degrade evaluate` measures it "
                    "again)", path, error_line(error, with_type=False))
        return None
    if not valid or not checkpoint.is_file() or file_sha256(checkpoint) != stored["sha256"]:
        return None
    return stored


def clean_error(record: RunRecord, split: str) -> float:
    """The error (%) `degrade evaluate` measured on `split` with the run's current checkpoint,
    or NaN where it has not."""
    stored = read_evaluation(record)
    entry = stored["splits"].get(split) if stored else None
    return float(entry["error"]) if isinstance(entry, dict) and "error" in entry else math.nan


def results_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Table 6: one row per network (and variant), our errors over seeds beside the paper's."""
    labels = variants(records)
    # Pooled only when everything that decides a result but the seed is the same: the data
    # and the recipe as much as the network (`runs.identity` says what that is), and the data
    # the summary names (a folder made before the data entered the identity says "unknown").
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        settings = {key: value for key, value in identity(record.config).items()
                    if key != "seed"}
        settings["data"] = data_name(record)
        groups.setdefault(json.dumps(settings, sort_keys=True, default=str), []).append(record)
    arch_order = {"plain": 0, "resnet": 1}
    keys = {name: (first.config.arch, first.config.depth, shortcut_of(first),
                   labels[first.path]) for name, (first, *_) in groups.items()}
    rows = [_table_row(keys[name], groups[name]) for name in
            sorted(groups, key=lambda n: (arch_order.get(keys[n][0], 2), *keys[n][1:]))]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


TABLE_COLUMNS = [
    "network", "arch", "depth", "shortcut", "variant", "eval_set", "parameters", "runs", "n",
    "test_error_mean", "test_error_std", "test_error_ci_low", "test_error_ci_high",
    "test_error_min", "best_test_error",
    "train_error_mean", "paper_test_error", "paper_test_error_std", "paper_note",
    "paper_best_test_error", "paper_fig6_test", "paper_fig6_train", "reproductions",
    "difference", "best_difference",
]


def reproductions_of(arch: str, depth: int) -> str:
    """The independent reproductions' test errors for this network (PAPER.md), one per
    source: `pytorch_resnet_cifar10 8.27; ...`, or '' where none reports it."""
    column = f"{'R' if arch == 'resnet' else 'P'}-{depth}"
    header = REPRODUCTIONS[0]
    if column not in header:
        return ""
    index = header.index(column)
    return "; ".join(f"{row[0]}: {row[index]}" for row in REPRODUCTIONS[1:] if row[index])


def _table_row(key: tuple, records: list[RunRecord]) -> dict[str, Any]:
    arch, depth, shortcut, variant = key
    # Only finished runs enter the statistics; diverged and unfinished ones are counted in
    # `runs` (a diverged run's ~90% error would swamp the mean of the others).
    done = [r.summary for r in records if r.state == "done"
            and r.summary.get("final_test_error") is not None]
    final = pd.Series([s["final_test_error"] for s in done], dtype="float64")
    train = pd.Series([s.get("final_train_error") for s in done], dtype="float64")
    best = pd.Series([s.get("best_test_error") for s in done], dtype="float64")
    eval_set = eval_set_of(records[0])
    table6 = arch == "resnet" and shortcut == "A"
    paper = PAPER_TABLE6.get(depth) if table6 else None
    paper_best = PAPER_TABLE6_BEST.get(depth, math.nan) if table6 else math.nan
    fig6 = PAPER_FIGURE6_PLAIN.get(depth, (None, None)) if arch == "plain" else (None, None)
    mean = final.mean() if len(final) else math.nan
    lowest = final.min() if len(final) else math.nan
    low, high = mean_interval(final.tolist())
    # The paper's numbers are test-set numbers: a validation error is not compared.
    compared = eval_set == "test"
    return {
        "network": network_label(arch, depth, shortcut), "arch": arch, "depth": depth,
        "shortcut": shortcut, "variant": variant, "eval_set": eval_set,
        "parameters": _parameters(records), "runs": describe_states(records), "n": len(final),
        "test_error_mean": mean, "test_error_std": final.std() if len(final) > 1 else math.nan,
        "test_error_ci_low": low, "test_error_ci_high": high,
        "test_error_min": lowest,
        "best_test_error": best.min() if best.notna().any() else math.nan,
        "train_error_mean": train.mean() if train.notna().any() else math.nan,
        "paper_test_error": paper if paper is not None else math.nan,
        "paper_test_error_std": PAPER_TABLE6_STD.get(depth, math.nan) if table6 else math.nan,
        "paper_note": PAPER_TABLE6_NOTES.get(depth, "") if paper is not None else "",
        "paper_best_test_error": paper_best,
        "paper_fig6_test": fig6[0] or "", "paper_fig6_train": fig6[1] or "",
        "reproductions": reproductions_of(arch, depth) if shortcut in ("A", PLAIN_SHORTCUT)
        else "",
        "difference": mean - paper if paper is not None and compared else math.nan,
        # Best against best: our lowest final error over seeds against the paper's best run.
        "best_difference": lowest - paper_best if compared else math.nan,
    }


def describe_states(records: Iterable[RunRecord]) -> str:
    """`3 done, 1 running, 1 diverged`: how many runs are in each state."""
    counts = Counter(record.state for record in records)
    order = [s for s in STATE_ORDER if s in counts] + sorted(set(counts) - set(STATE_ORDER))
    return ", ".join(f"{counts[state]} {state}" for state in order)


_PARAMETER_CACHE: dict[tuple[str, int, str], int] = {}


def _parameters(records: list[RunRecord]) -> int:
    for record in records:
        if record.summary and record.summary.get("parameters"):
            return int(record.summary["parameters"])
    # No run has finished yet: count the parameters of the network it trains.
    from degradation.models import build_model, count_parameters

    config = records[0].config
    key = (config.arch, config.depth, config.shortcut)
    if key not in _PARAMETER_CACHE:
        _PARAMETER_CACHE[key] = count_parameters(build_model(*key))
    return _PARAMETER_CACHE[key]


def table_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, formatted rows and footnotes of Table 6, shared by Markdown and HTML."""
    show_variant = table["variant"].astype(bool).any()
    eval_sets = sorted(set(table["eval_set"]))
    error_name = "test error" if eval_sets == ["test"] else "/".join(eval_sets) + " error"
    show_best = table["paper_best_test_error"].notna().any()
    headers = ["network", *(["variant"] if show_variant else []), "params", "runs",
               f"{error_name} (%), final: mean ± std (n)", f"{LEVEL:.0%} CI of the mean",
               "best seed, final",
               "best, chosen on the test set", "train error (%), final: mean",
               "paper (Table 6): mean", "ours - paper: mean vs mean",
               *(["paper (Table 6): best run", "ours - paper: best seed vs best run"]
                 if show_best else []), "paper Fig. 6 (≈, test / train)",
               "independent reproductions (PAPER.md)"]
    rows = []
    for row in table.itertuples(index=False):
        fig6 = f"{row.paper_fig6_test} / {row.paper_fig6_train}" if row.paper_fig6_test else ""
        paper = _number(row.paper_test_error)
        if paper and not math.isnan(row.paper_test_error_std):
            paper += f" ± {row.paper_test_error_std:.2f}"
        if paper and row.paper_note:
            paper += f" ({row.paper_note})"
        best = [_number(row.paper_best_test_error) + (" (best of 5)" if not math.isnan(
            row.paper_best_test_error) else ""), _number(row.best_difference, signed=True)]
        rows.append([
            row.network, *([row.variant] if show_variant else []), f"{row.parameters:,}",
            row.runs, _mean_std(row.test_error_mean, row.test_error_std, row.n),
            f"{row.test_error_ci_low:.2f}-{row.test_error_ci_high:.2f}"
            if not math.isnan(row.test_error_ci_low) else "",
            _number(row.test_error_min), _number(row.best_test_error),
            _number(row.train_error_mean), paper, _number(row.difference, signed=True),
            *(best if show_best else []), fig6, row.reproductions,
        ])
    notes = [
        "Errors in %, at the end of training, over the runs that finished (`done`); unfinished "
        "and diverged runs are only counted in `runs`.",
        f"The {LEVEL:.0%} CI of the mean is the Student-t interval over the n seeds (mean ± "
        "t(n-1) · std / √n); one seed has none.",
        "\"best, chosen on the test set\" is the lowest test error seen at any evaluation of any "
        "seed: it flatters, and is shown only because some reproductions report it.",
        "Paper: He et al. 2016, Table 6 (ResNets, shortcut option A); plain nets have no Table 6 "
        "entry, their values are read off Figure 6 at 64k iterations.",
        "Where the paper prints one number for a depth it is compared with our mean. For "
        "ResNet-110 it prints the best of 5 runs (6.43) and their mean (6.61 ± 0.16): our mean "
        "is compared with its mean, and our best seed's final error with its best run.",
    ]
    if "validation" in eval_sets:
        notes.append("Runs with data.val_split > 0 are evaluated on the held-out validation "
                     "set and are not compared with the paper's test error.")
    return headers, rows, notes


def render_markdown(table: pd.DataFrame) -> str:
    """Table 6 as a Markdown table with its footnotes (no tabulate needed)."""
    headers, rows, notes = table_cells(table)
    return markdown_table(headers, rows) + "\n" + "".join(f"\n- {note}" for note in notes) + "\n"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table with columns padded to a common width, `|` escaped in cells."""
    cells = [[str(cell).replace("|", "\\|") for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _mean_std(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "-"
    if n == 1 or math.isnan(std):
        return f"{mean:.2f} ({n})"
    return f"{mean:.2f} ± {std:.2f} ({n})"


def figures_dir(path: Path, out: Path | None) -> Path:
    """Where figures and tables go: `out`, or `<path>/figures`."""
    return Path(out) if out is not None else Path(path) / FIGURES_DIR


def table_command(path: Path, out: Path | None, recursive: bool = False
                  ) -> tuple[str, list[Path]]:
    """`degrade table`: write table6.md and table6.csv; return the Markdown and the paths."""
    records = load_runs(Path(path), recursive)
    table = results_table(records)
    markdown = f"{render_markdown(table).rstrip()}\n\n{data_line(records)}\n"
    folder = figures_dir(path, out)
    written = [folder / "table6.md", folder / "table6.csv"]
    atomic_write_text(written[0], markdown)
    atomic_write_text(written[1], table.to_csv(index=False))
    return markdown, written
