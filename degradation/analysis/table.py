"""Table 6: what the runs measured per network, over seeds, beside the paper's numbers.

Usage: `degrade table outputs/` writes `outputs/figures/table6.md` and `table6.csv`; from
Python, `results_table(load_runs(Path("outputs")))` is the table as a DataFrame and
`render_markdown` its Markdown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from degradation.analysis.results import (
    data_line,
    describe_states,
    eval_set_of,
    figures_dir,
    load_runs,
    network_label,
    shortcut_of,
    variants,
)
from degradation.analysis.stats import LEVEL, mean_interval
from degradation.paper import (
    PAPER_FIGURE6_PLAIN,
    PAPER_TABLE6,
    PAPER_TABLE6_BEST,
    PAPER_TABLE6_NOTES,
    PAPER_TABLE6_RUNS,
    PAPER_TABLE6_STD,
    REPRODUCTIONS,
)
from degradation.runs import PLAIN_SHORTCUT, RunRecord, data_name, identity
from degradation.storage import atomic_write_text

BEST_OF = f" (best of {PAPER_TABLE6_RUNS[110]})"  # the only depth with a best run printed


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
        best = [_number(row.paper_best_test_error) + (BEST_OF if not math.isnan(
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
        f"ResNet-110 it prints the best of {PAPER_TABLE6_RUNS[110]} runs "
        f"({PAPER_TABLE6_BEST[110]}) and their mean ({PAPER_TABLE6[110]} ± "
        f"{PAPER_TABLE6_STD[110]}): our mean is compared with its mean, and our best seed's "
        "final error with its best run.",
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
