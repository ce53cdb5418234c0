"""One self-contained HTML page: the figures, Table 6 beside the paper, and every run.

Usage: `degrade report outputs/` writes `outputs/figures/report.html` (images embedded, so the
page can be mailed or archived alone; the PNG and PDF files are written beside it too).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.figure import Figure

from degradation.analysis import claims, figures
from degradation.analysis.gradients import gradient_norm_table
from degradation.analysis.measurements import read_responses
from degradation.analysis.results import (
    AnalysisError,
    data_line,
    eval_set_of,
    figures_dir,
    load_runs,
    network_label,
    run_label,
    shortcut_of,
    variants,
)
from degradation.analysis.scalars import scalars_of
from degradation.analysis.study import select_study
from degradation.analysis.table import results_table, table_cells
from degradation.paper import REPRODUCTIONS
from degradation.runs import RunRecord, data_name
from degradation.storage import atomic_write_text

REPORT_FILE = "report.html"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state-done { color: #1a7f37; } .state-diverged, .state-failed { color: #b42318; }
.state-running { color: #0b61a4; } .note { color: #555; font-size: 0.9em; }
.verdict-reproduced { color: #1a7f37; } .verdict-not-reproduced { color: #b42318; }
.verdict-not-enough-runs { color: #8a6d00; } .verdict-inconclusive { color: #5b5b9e; }
pre { background: #f7f7f7; padding: 0.6em; font-size: 0.85em; }
"""


def write_report(path: Path, out_dir: Path | None = None, recursive: bool = False) -> Path:
    """Write `report.html` (figures embedded, table, runs) and return its path."""
    path = Path(path)
    records = load_runs(path, recursive)
    scalars = scalars_of(records, path)
    folder = figures_dir(path, out_dir)
    planned = max(record.config.train.iterations for record in records)
    body = [f"<h1>Degradation study: plain vs residual nets on CIFAR-10</h1>"
            f"<p class='note'>{len(records)} runs under <code>{html.escape(str(path))}</code>. "
            "He et al. 2016, Sec. 4.2: Figure 6, Table 6 and Figure 7.</p>"]

    study = select_study(records, path)
    verdicts = claims.judge(study)
    body.append("<h2 id='claims'>The claims of Sec. 4.2</h2>"
                f"<p><strong>{html.escape(claims.verdict_counts(verdicts))}</strong></p>"
                f"<p class='note'>{html.escape(claims.header(study))}</p>"
                + _html_table(["#", "claim", "paper", "ours", "verdict", "note"],
                              [[str(c.number), c.claim, c.paper, c.ours,
                                _verdict(c.verdict, c.verdict_text), c.note] for c in verdicts]))
    if not study.finals.empty:
        body.append(_figure_section(
            "Error against depth", figures.degradation_figure(study), folder, "degradation",
            "In the paper, plain error rises with depth and ResNet error falls. Final errors, "
            "mean over seeds with min-max bars; hollow diamonds: the paper."))
    try:
        fig6 = figures.figure6(scalars, xmax_iterations=planned)
    except AnalysisError as error:
        body.append(f"<h2>Figure 6</h2><p>{html.escape(str(error))}</p>")
    else:
        body.append(_figure_section("Figure 6: training and test error", fig6, folder, "figure6",
                                    "Dashed: training error; bold: test error. The paper's "
                                    "Figure 6 shows the same axes (0-20%, 1e4 iterations)."))
    shortcuts = figures.shortcut_figure(scalars, xmax_iterations=planned)
    if shortcuts is not None:
        body.append(_figure_section("Shortcut options A / B / C", shortcuts, folder, "shortcuts",
                                    "The paper compares the options on ImageNet only; these "
                                    "CIFAR-10 curves have no published counterpart."))
    headers, rows, notes = table_cells(results_table(records))
    body.append("<h2>Table 6: ours beside the paper</h2>" + _html_table(headers, rows)
                + "".join(f"<p class='note'>{html.escape(note)}</p>"
                          for note in [*notes, data_line(records)]))
    body.append("<h3>Independent reproductions (test error %, for context)</h3>"
                + _html_table(REPRODUCTIONS[0], REPRODUCTIONS[1:]))
    responses = read_responses(records)
    if responses:
        body.append(_figure_section("Figure 7: layer responses", figures.figure7(responses),
                                    folder, "figure7", "Top: network order; bottom: sorted."))

    norms = gradient_norm_table(study)
    if not norms.empty:
        body.append(_figure_section("Gradient norms per layer", figures.gradients_figure(
            norms, study.iterations), folder, "gradients", "The L2 norm of each conv layer's "
            "weight gradient, in network order, at a few iterations (claim 8)."))
    body.append("<h2>Runs</h2>" + _runs_table(records, scalars, path))

    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>degrade report</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    report = folder / REPORT_FILE
    atomic_write_text(report, page)
    return report


def _figure_section(title: str, fig: Figure, folder: Path, name: str, caption: str) -> str:
    png, pdf = figures.save_figure(fig, folder, name)
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f"<h2>{html.escape(title)}</h2><img alt='{name}' src='data:image/png;base64,{data}'>"
            f"<p class='note'>{html.escape(caption)} Files: <a href='{png.name}'>{png.name}</a>, "
            f"<a href='{pdf.name}'>{pdf.name}</a>.</p>")


def _verdict(verdict: str, text: str | None = None) -> _Html:
    css = verdict.replace(" ", "-")
    return _Html(f"<strong class='verdict-{css}'>{html.escape(text or verdict)}</strong>")


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Html(str):
    """A cell that is already HTML, built from escaped parts."""


def _cell(value: object) -> str:
    text = str(value)
    if isinstance(value, _Html):
        return f"<td>{text}</td>"
    numeric = text.replace(".", "", 1).replace("+", "", 1).replace("-", "", 1).isdigit()
    return f"<td class='num'>{html.escape(text)}</td>" if numeric else \
        f"<td>{html.escape(text)}</td>"


def _runs_table(records: Sequence[RunRecord], scalars: pd.DataFrame, root: Path) -> str:
    labels = variants(records)
    latest = (scalars.sort_values("iteration").groupby(["run", "metric"])[["iteration", "value"]]
              .last() if not scalars.empty else None)
    show_variant = any(labels.values())  # one recipe for all runs: no variant column
    headers = ["network", *(["variant"] if show_variant else []), "seed", "state", "iterations",
               "test error", "train error", "best test error (iteration)", "data", "wall time",
               "device", "code version", "folder", "config"]
    rows = []
    for record in sorted(records, key=lambda r: (r.config.arch, r.config.depth,
                                                 shortcut_of(r), r.config.seed)):
        run = run_label(record, root)
        summary = record.summary or {}
        test = _final_or_latest(summary.get("final_test_error"), latest, run, "error/test")
        train = _final_or_latest(summary.get("final_train_error"), latest, run, "error/train")
        done = summary.get("iterations_done")
        if done is None and latest is not None and run in latest.index.get_level_values(0):
            done = int(latest.loc[run]["iteration"].max())
        best = summary.get("best_test_error")
        state = record.state
        if state == "diverged" and summary.get("diverged"):
            state += f" at {summary['diverged'].get('iteration')}"
        config_yaml = html.escape(yaml.safe_dump(record.config.to_dict(), sort_keys=False))
        rows.append([
            network_label(record.config.arch, record.config.depth, shortcut_of(record)),
            *([labels[record.path]] if show_variant else []), str(record.config.seed),
            _Html(f"<span class='state-{record.state}'>{html.escape(state)}</span>"),
            f"{done if done is not None else 0} / {record.config.train.iterations}",
            test + ("" if eval_set_of(record) == "test" else " (validation)"), train,
            f"{best:.2f} ({summary.get('best_test_iteration')})" if best is not None else "",
            data_name(record), _duration(summary.get("wall_time_s")),
            str(summary.get("device") or ""),
            _code_version(summary.get("code_version")),
            _Html(html.escape(run).replace("/", "/<wbr>")),  # long paths break at slashes
            _Html(f"<details><summary>config</summary><pre>{config_yaml}</pre></details>"),
        ])
    return _html_table(headers, rows)


def _code_version(version: str | None) -> _Html:
    # A commit hash is 40 characters: show 12 and keep the whole in the tooltip.
    if not version:
        return _Html("")
    short = version[:12] + ("+dirty" if version.endswith("+dirty") else "")
    return _Html(f"<span title='{html.escape(version)}'>{html.escape(short)}</span>")


def _final_or_latest(final: float | None, latest: pd.DataFrame | None, run: str,
                     metric: str) -> str:
    if final is not None:
        return f"{final:.2f}"
    if latest is not None and (run, metric) in latest.index:
        point = latest.loc[(run, metric)]
        return f"{point['value']:.2f} (latest, at {int(point['iteration'])})"
    return ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes = round(seconds / 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{seconds / 60:.1f} min"


def report_command(path: Path, out: Path | None, recursive: bool = False) -> Path:
    """`degrade report`: write the HTML report and return its path."""
    return write_report(Path(path), out, recursive)
