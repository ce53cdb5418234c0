"""The runs under an output tree, each once, and how tables and figures name them.

Usage: `load_runs(Path("outputs"))` gives every run of the tree (a run copied into several
folders counted once); `variants(records)` says how each differs from the common recipe.

Runs are told apart by network (`plain-20`, `resnet-56-A`), seed and *variant*: the settings
other than arch/depth/shortcut/seed in which a run differs from the most common recipe under
the path (empty for a sweep that shares one recipe), so a short smoke run is never averaged
with a full 64k-iteration one. Their logged points are read by `scalars.py`, Table 6 is
`table.py`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from degradation.errors import DegradeError
from degradation.runs import (
    PLAIN_SHORTCUT,
    SUMMARY_FILE,
    RunRecord,
    data_description,
    data_name,
    find_runs,
    hashed_identity,
    identity,
    network_name,
)
from degradation.storage import path_refusal

FIGURES_DIR = "figures"
STATE_ORDER = ("done", "running", "interrupted", "pending", "failed", "diverged")

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


def run_label(record: RunRecord, root: Path) -> str:
    """How the frames and tables name a run: its folder relative to `root` where it lies below."""
    if record.path.is_relative_to(root):
        return record.path.relative_to(root).as_posix()
    return str(record.path)


def describe_states(records: Iterable[RunRecord]) -> str:
    """`3 done, 1 running, 1 diverged`: how many runs are in each state."""
    counts = Counter(record.state for record in records)
    order = [s for s in STATE_ORDER if s in counts] + sorted(set(counts) - set(STATE_ORDER))
    return ", ".join(f"{counts[state]} {state}" for state in order)


def figures_dir(path: Path, out: Path | None) -> Path:
    """Where figures and tables go: `out`, or `<path>/figures`."""
    return Path(out) if out is not None else Path(path) / FIGURES_DIR
