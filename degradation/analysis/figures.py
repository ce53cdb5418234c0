"""Figure 6 (error vs iterations), error against depth, the shortcut-option comparison, the
gradient norms, and Figure 7 (responses).

Usage: `degrade plot outputs/` writes `outputs/figures/figure6.{png,pdf}` (and
`shortcuts.*` when a sweep has several shortcut options, `figure7.*` when responses exist).

Figures are built as `matplotlib.figure.Figure` objects without pyplot, so the Agg canvas is
used, no global figure list grows, and tests can inspect axes and lines before saving.
Over 400 lines because the figures share their colours, axes and notes (one look for all).
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from degradation.analysis.gradients import gradient_iterations, gradient_norm_table
from degradation.analysis.measurements import read_responses
from degradation.analysis.results import (
    STATE_ORDER,
    AnalysisError,
    figures_dir,
    load_runs,
    network_label,
)
from degradation.analysis.scalars import GROUP, aggregate, scalars_of
from degradation.analysis.study import Study, final_errors, select_study, training_measure
from degradation.paper import (
    PAPER_FIGURE6_PLAIN,
    PAPER_ITERATIONS,
    PAPER_TABLE6,
    parse_paper_number,
)
from degradation.runs import PLAIN_SHORTCUT
from degradation.storage import atomic_write_bytes

ITERATION_UNIT = 1e4  # the paper's x-axis: "iter. (1e4)"
Y_MAX = 20.0  # Figure 6 shows 0-20%; plain-110 (above 60%) is off the chart in the paper
TRAIN_STYLE = {"linestyle": "--", "linewidth": 1.0}  # "dashed lines denote training error"
TEST_STYLE = {"linestyle": "-", "linewidth": 2.2}  # "bold lines denote testing error"
BAND = "min-max over seeds"
BAND_ALPHA = 0.15
# One colour per depth, the same in every panel and figure (Okabe-Ito, colour-blind safe).
DEPTH_COLOURS = {20: "#E69F00", 32: "#56B4E9", 44: "#009E73", 56: "#D55E00", 110: "#000000",
                 1202: "#CC79A7"}
OTHER_COLOURS = ("#0072B2", "#8C564B", "#7F3C8D", "#17BECF", "#BCBD22", "#666666")
SHORTCUT_COLOURS = {"A": "#0072B2", "B": "#E69F00", "C": "#009E73", PLAIN_SHORTCUT: "#999999"}
DEEPEST_MAIN_PANEL = 110  # deeper nets (1202) get the paper's third panel, beside ResNet-110


def depth_colour(depth: int) -> str:
    """The colour of a depth in every figure (paper depths fixed, others from a spare list)."""
    if depth in DEPTH_COLOURS:
        return DEPTH_COLOURS[depth]
    return OTHER_COLOURS[(depth // 6) % len(OTHER_COLOURS)]


def main_shortcut(scalars: pd.DataFrame) -> str | None:
    """The shortcut option Figure 6 draws, from the ResNet runs' options (`preferred_shortcut`)."""
    return preferred_shortcut(
        scalars.loc[scalars["arch"] == "resnet"].drop_duplicates("run")["shortcut"])


def preferred_shortcut(options: pd.Series) -> str | None:
    """The paper's option A when any ResNet run used it, else the most common option (or None
    for no ResNet runs): what Figures 6 and 7 both draw."""
    if options.empty:
        return None
    return "A" if (options == "A").any() else options.value_counts().index[0]


def figure6(scalars: pd.DataFrame, *, linear: bool = False,
            xmax_iterations: int | None = None) -> Figure:
    """Figure 6: training (dashed) and test (bold) error vs iterations, one panel per family."""
    shortcut = main_shortcut(scalars)
    chosen = scalars[(scalars["arch"] == "plain") | (scalars["shortcut"] == shortcut)]
    resnet = chosen["arch"] == "resnet"
    panels = [("plain", chosen[~resnet])]
    panels.append(("ResNet", chosen[resnet & (chosen["depth"] <= DEEPEST_MAIN_PANEL)]))
    deep = sorted(set(chosen.loc[resnet & (chosen["depth"] > DEEPEST_MAIN_PANEL), "depth"]))
    if deep:
        present = set(chosen.loc[resnet, "depth"])
        shown = [d for d in (DEEPEST_MAIN_PANEL, *deep) if d in present]
        title = " vs ".join(network_label("resnet", d) for d in shown)
        panels.append((title, chosen[resnet & chosen["depth"].isin(shown)]))
    panels = [(title, part) for title, part in panels if not part.empty]
    if not panels:
        raise AnalysisError("no training curves to plot yet (no run has logged an error)")
    option = "" if shortcut in (None, "A") else f" (shortcut {shortcut})"
    fig = _figure(len(panels))
    follow = follows_data(scalars, linear)
    for ax, (title, part) in zip(fig.axes, panels, strict=True):
        _curves(ax, part, lambda key: depth_colour(key[1]), linear or follow)
        ax.set_title(title + (option if title != "plain" else ""))
    _finish(fig, scalars, linear, xmax_iterations)
    return fig


def shortcut_figure(scalars: pd.DataFrame, *, linear: bool = False,
                    xmax_iterations: int | None = None) -> Figure | None:
    """Shortcut options A/B/C compared, one panel per depth (plain in grey); None if one option."""
    resnet = scalars[scalars["arch"] == "resnet"]
    if resnet["shortcut"].nunique() < 2:
        return None
    options = resnet.groupby("depth")["shortcut"].nunique()
    # Only depths trained with several options compare anything; else show every depth.
    depths = sorted(options.index[options > 1]) or sorted(options.index)
    fig = _figure(len(depths))
    follow = follows_data(scalars, linear)
    for ax, depth in zip(fig.axes, depths, strict=True):
        part = scalars[scalars["depth"] == depth]
        _curves(ax, part, lambda key: SHORTCUT_COLOURS.get(key[2], "#666666"), linear or follow,
                label=lambda key: network_label(key[0], key[1], key[2]) if key[0] == "plain"
                else f"ResNet-{key[1]} ({key[2]})")
        ax.set_title(f"depth {depth}: shortcut options")
    _finish(fig, scalars, linear, xmax_iterations)
    return fig


def _figure(panels: int) -> Figure:
    fig = Figure(figsize=(5.2 * panels, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    fig.subplots(1, panels, squeeze=False)
    return fig


def _curves(ax: Axes, part: pd.DataFrame, colour: Callable[[tuple], str], linear: bool,
            label: Callable[[tuple], str] | None = None) -> None:
    """Mean training and test error per network over seeds, with a min-max band when several."""
    label = label or (lambda key: network_label(key[0], key[1], key[2]))
    errors = part[part["metric"].isin(["error/train", "error/test"])]
    # Diverged runs are not averaged in (their ~90% would swamp the others); they are marked.
    healthy = errors[errors["state"] != "diverged"]
    stats = dict(tuple(aggregate(healthy).groupby(GROUP)))
    for key, runs in sorted(errors.groupby(GROUP), key=lambda item: item[0][1:]):
        name = label(key) + (f" [{key[3]}]" if key[3] else "") + _state_note(runs)
        mine = stats.get(key)
        for metric, style in (("error/train", TRAIN_STYLE), ("error/test", TEST_STYLE)):
            curve = mine[mine["metric"] == metric] if mine is not None else mine
            if curve is None or curve.empty:
                continue
            x = curve["iteration"].to_numpy() / ITERATION_UNIT
            y = _clip(curve["mean"].to_numpy(), linear)
            # clip_on=False: a curve held at the 20% edge stays visible over the axis frame.
            ax.plot(x, y, color=colour(key), clip_on=linear, gid=metric,
                    label=name if metric == "error/test" else "_nolegend_", **style)
            if curve["count"].max() > 1:
                ax.fill_between(x, _clip(curve["min"].to_numpy(), linear),
                                _clip(curve["max"].to_numpy(), linear), color=colour(key),
                                alpha=BAND_ALPHA, linewidth=0)
        # A network whose every run diverged has no curve: its marker carries the label.
        _mark_diverged(ax, runs, colour(key), linear, name if mine is None else "_nolegend_")


def _state_note(runs: pd.DataFrame) -> str:
    per_run = runs.drop_duplicates("run")
    seeds = len(per_run)
    counts = per_run["state"].value_counts()
    parts = [f"{seeds} seeds"] if seeds > 1 else []
    parts += [f"{counts[state]} {state}" for state in STATE_ORDER[1:] if state in counts]
    return f" ({', '.join(parts)})" if parts else ""


def _mark_diverged(ax: Axes, runs: pd.DataFrame, colour: str, linear: bool, label: str) -> None:
    # A diverged run ends where it stopped: an x at its last test (else training) error.
    for index, (_, run) in enumerate(runs[runs["state"] == "diverged"].groupby("run")):
        tests = run[run["metric"] == "error/test"]
        last = (tests if not tests.empty else run).sort_values("iteration").iloc[-1]
        ax.plot([last["iteration"] / ITERATION_UNIT], _clip(np.array([last["value"]]), linear),
                marker="x", markersize=9, markeredgewidth=2, color=colour, linestyle="none",
                clip_on=False, gid="diverged", label=label if index == 0 else "_nolegend_")


def _clip(values: np.ndarray, linear: bool) -> np.ndarray:
    # Values above the 0-20% window are drawn on its top edge rather than left out.
    return values if linear else np.minimum(values, Y_MAX)


def follows_data(scalars: pd.DataFrame, linear: bool) -> bool:
    """Whether the error axis follows the data: the paper's 0-20% would hide every curve
    (short runs, all of whose errors are still above 20%)."""
    errors = scalars.loc[scalars["metric"].isin(["error/train", "error/test"]), "value"]
    return not linear and not errors.empty and bool((errors > Y_MAX).all())


def iteration_unit(iterations: float) -> float:
    """The x-axis unit for runs of `iterations`: the paper's 1e4, 1e3 or single iterations,
    so the tick labels stay short numbers at any run length."""
    return next((unit for unit in (ITERATION_UNIT, 1e3) if iterations >= unit), 1.0)


def _finish(fig: Figure, scalars: pd.DataFrame, linear: bool, xmax_iterations: int | None) -> None:
    errors = scalars[scalars["metric"].isin(["error/train", "error/test"])]
    last = int(errors["iteration"].max()) if not errors.empty else PAPER_ITERATIONS
    xmax = max(xmax_iterations or 0, last) / ITERATION_UNIT
    follow = follows_data(scalars, linear)
    bottom, top = 0.0, Y_MAX
    if linear or follow:
        top = max(10.0, float(np.ceil(errors["value"].max() / 10) * 10))
    if follow:
        bottom = float(np.floor(errors["value"].min() / 10) * 10)
    clipped = not linear and not follow and (errors["value"] > Y_MAX).any()
    unit = iteration_unit(xmax * ITERATION_UNIT)
    # Curves are drawn in units of 1e4 iterations; only the labels change for short runs.
    ticks = FuncFormatter(lambda x, _: f"{x * ITERATION_UNIT / unit:g}")
    for ax in fig.axes:
        ax.set_xlim(0, xmax)
        ax.set_ylim(bottom, top)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.xaxis.set_major_formatter(ticks)
        ax.set_xlabel("iter." if unit == 1 else f"iter. ({unit:.0e})".replace("+0", ""))
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
        handles = [h for h in ax.get_lines() if not h.get_label().startswith("_")]
        if handles:
            ax.legend(handles=handles, loc="upper right", fontsize="small")
    note = "dashed: training error, bold: " + _error_name(scalars)
    if errors.groupby(GROUP)["seed"].nunique().max() > 1:
        note += f"; shaded: {BAND}, line: mean"
    if clipped:
        note += f"; values above {Y_MAX:g}% drawn at the top edge"
    if follow:
        note += (f"; error axis {bottom:g}-{top:g}%: every error is above the paper's "
                 f"0-{Y_MAX:g}% range")
    # Wrapped to the figure's width so a one-panel figure does not cut the note off.
    fig.suptitle(textwrap.fill(note, width=int(fig.get_figwidth() * 15)), fontsize="medium")


def _error_name(scalars: pd.DataFrame) -> str:
    return "/".join(sorted(set(scalars["eval_set"]))) + " error"


def figure7(responses: Sequence[dict[str, Any]]) -> Figure:
    """Figure 7: std of each 3x3 layer's response, in network order (top) and sorted (bottom)."""
    # As in Figure 6: plain nets and the ResNets of the paper's option A (else the commonest).
    shortcut = preferred_shortcut(pd.Series(
        [item["shortcut"] for item in responses if item["arch"] == "resnet"], dtype=object))
    groups: dict[tuple, list[list[float]]] = {}
    for item in responses:
        chosen = item["arch"] == "plain" or item["shortcut"] == shortcut
        if chosen and item["depth"] <= DEEPEST_MAIN_PANEL:
            # Runs of another recipe (`variant`) are a curve of their own, never averaged in.
            key = (item["arch"], item["depth"], item.get("shortcut") or PLAIN_SHORTCUT,
                   item.get("variant", ""))
            groups.setdefault(key, []).append(item["std"])
    if not groups:
        raise AnalysisError("no layer responses to plot (run `degrade responses` first)")
    fig = Figure(figsize=(8, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1)
    order = sorted(groups, key=lambda k: (k[0] != "plain", k[1], k[2], k[3]))
    for key in order:
        runs = np.array(groups[key], dtype=np.float64)
        mean = runs.mean(axis=0)  # over seeds, per layer
        layers = np.arange(1, len(mean) + 1)
        name = (network_label(*key[:3]) + (f" [{key[3]}]" if key[3] else "")
                + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""))
        # Plain nets dashed, ResNets solid: colour is already taken by depth.
        style = {"color": depth_colour(key[1]), "linestyle": "--" if key[0] == "plain" else "-",
                 "linewidth": 1.4, "marker": ".", "markersize": 3}
        top.plot(layers, mean, label=name, **style)
        bottom.plot(layers, np.sort(mean)[::-1], label=name, **style)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper right")
    pooling = responses[0].get("pooling", "")
    eval_set = responses[0].get("eval_set", "test")
    title = (f"Responses of each 3x3 layer (after BN, before ReLU/addition) on the {eval_set} "
             f"set. Pooling: {pooling}; mean over seeds")
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 14)), fontsize="medium")
    return fig


DEGRADATION_STYLE = {"error/train": ("training error", "#0072B2", "--", "o"),
                     "error/test": ("test error", "#D55E00", "-", "s"),
                     "error/train_clean": ("clean training error (eval mode, whole set)",
                                           "#009E73", ":", "^")}


def _bars_label(counts: Sequence[int]) -> str:
    """What the error bars of a series are: `bars: min-max over 2 seeds` (or 1-3 seeds)."""
    low, high = min(counts), max(counts)
    if high <= 1:
        return "one seed, no bars"
    seeds = f"{low}-{high}" if low != high else f"{high}"
    return f"mean; bars: min-max over {seeds} seeds"


def degradation_figure(study: Study) -> Figure:
    """Final training and test error against depth, plain and ResNet side by side: mean over
    seeds with min-max bars (the legend says over how many), the clean training error of
    `degrade evaluate` where every run of a panel has it, the paper's values as hollow markers."""
    errors = final_errors(study)
    if errors.empty:
        raise AnalysisError("no finished runs to plot error against depth yet")
    panels = [arch for arch in ("plain", "resnet") if (errors["arch"] == arch).any()]
    fig = _figure(len(panels))
    top = 0.0
    for ax, arch in zip(fig.axes, panels, strict=True):
        part = errors[errors["arch"] == arch].sort_values("depth")
        depths = part["depth"].to_numpy()
        paper = _paper_errors(arch, int(depths.min()), int(depths.max()))
        series = [("error/train", "train_error"), ("error/test", "test_error")]
        networks = [(arch, int(depth)) for depth in depths]
        if training_measure(study, networks) == "clean_train_error":
            series.append(("error/train_clean", "clean_train_error"))
        for metric, column in series:
            name, colour, linestyle, marker = DEGRADATION_STYLE[metric]
            mean = part[f"{column}_mean"].to_numpy()
            spread = np.vstack([mean - part[f"{column}_min"].to_numpy(),
                                part[f"{column}_max"].to_numpy() - mean])
            ax.errorbar(depths, mean, yerr=spread, color=colour, linestyle=linestyle,
                        marker=marker, linewidth=TEST_STYLE["linewidth"] if metric ==
                        "error/test" else 1.4, capsize=3,
                        label=f"ours: {name} ({_bars_label(part['n'].tolist())})", gid=metric)
            points = paper.get(metric, {})
            if points:
                ax.plot(list(points), list(points.values()), linestyle="none", marker="D",
                        markersize=8, markerfacecolor="none", markeredgecolor=colour,
                        markeredgewidth=1.5, label=f"paper: {name}", gid=f"paper {metric}")
            top = max(top, float(np.nanmax(part[f"{column}_max"])),
                      max(points.values(), default=0.0))
        ax.set_xscale("log")
        ticks = sorted(set(depths) | {d for points in paper.values() for d in points})
        ax.set_xticks(ticks, [str(d) for d in ticks])
        ax.minorticks_off()
        ax.set_title("plain" if arch == "plain" else "ResNet (shortcut A)")
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel("final error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in fig.axes:
        ax.set_ylim(0, top * 1.08 + 0.5)
    note = ("Final error against depth: mean over seeds, bars min-max over seeds; hollow "
            "diamonds: the paper (Table 6 for ResNets, Figure 6 read-offs for plain nets)")
    if study.short:
        note += f"; ours on a {study.schedule_note()}"
    fig.suptitle(textwrap.fill(note, width=int(fig.get_figwidth() * 12)), fontsize="medium")
    return fig


def _paper_errors(arch: str, low: int, high: int) -> dict[str, dict[int, float]]:
    """The paper's final errors within [low, high] layers: midpoints of the published cells."""
    points: dict[str, dict[int, float]] = {"error/train": {}, "error/test": {}}
    if arch == "plain":
        for depth, (test, train) in PAPER_FIGURE6_PLAIN.items():
            if low <= depth <= high:
                points["error/test"][depth] = float(np.mean(parse_paper_number(test)))
                points["error/train"][depth] = float(np.mean(parse_paper_number(train)))
    else:
        points["error/test"] = {d: e for d, e in PAPER_TABLE6.items() if low <= d <= high}
    return points


def gradients_figure(norms: pd.DataFrame, iterations: int) -> Figure:
    """Per-layer gradient norms in network order at a few iterations, one panel per depth:
    plain dashed, ResNet solid, one colour per iteration (mean over seeds)."""
    if norms.empty:
        raise AnalysisError("no gradient logs (grad_norms.csv) to plot")
    chosen = gradient_iterations(norms["iteration"].unique().tolist(), iterations)
    depths = sorted(norms["depth"].unique())
    fig = _figure(len(depths))
    colours = {it: GRADIENT_COLOURS[i % len(GRADIENT_COLOURS)] for i, it in enumerate(chosen)}
    for ax, depth in zip(fig.axes, depths, strict=True):
        part = norms[(norms["depth"] == depth) & norms["iteration"].isin(chosen)]
        means = part.groupby(["arch", "iteration", "layer"])["grad_norm"].agg(["mean", "count"])
        for (arch, iteration), curve in means.groupby(level=["arch", "iteration"]):
            layers = curve.index.get_level_values("layer").to_numpy() + 1
            seeds = int(curve["count"].max())
            label = f"{network_label(arch, depth)}, it {iteration:,}" + (
                f" ({seeds} seeds)" if seeds > 1 else "")
            ax.plot(layers, curve["mean"].to_numpy(), color=colours[iteration],
                    linestyle="--" if arch == "plain" else "-", marker=".", markersize=3,
                    linewidth=1.3, label=label, gid=f"{arch} {iteration}")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"depth {depth}: gradient norm per conv layer")
        ax.set_xlabel("conv layer (network order)")
        ax.set_ylabel("L2 norm of the weight gradient")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small")
    fig.suptitle("Gradient norm of each conv layer's weight at iterations "
                 + ", ".join(f"{it:,}" for it in chosen)
                 + "; dashed: plain, solid: ResNet; mean over seeds", fontsize="medium")
    return fig


# One colour per iteration shown, early to late (Okabe-Ito, as the depth colours).
GRADIENT_COLOURS = ("#56B4E9", "#009E73", "#E69F00", "#CC79A7", "#000000")


def save_figure(fig: Figure, folder: Path, name: str) -> list[Path]:
    """Write `name.png` and `name.pdf` into `folder`, each atomically (a full disk leaves
    the previous file, never half of one); return both paths."""
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    for path in paths:
        image = io.BytesIO()
        fig.savefig(image, format=path.suffix[1:], dpi=150)
        atomic_write_bytes(path, image.getvalue())
    return paths


def plot_command(path: Path, out: Path | None, linear: bool, recursive: bool = False
                 ) -> list[Path]:
    """`degrade plot`: Figure 6, the shortcut figure and Figure 7 (when measured); the paths."""
    records = load_runs(Path(path), recursive)
    scalars = scalars_of(records, Path(path))
    folder = figures_dir(path, out)
    planned = max(record.config.train.iterations for record in records)
    written = save_figure(figure6(scalars, linear=linear, xmax_iterations=planned), folder,
                          "figure6")
    shortcuts = shortcut_figure(scalars, linear=linear, xmax_iterations=planned)
    if shortcuts is not None:
        written += save_figure(shortcuts, folder, "shortcuts")
    responses = read_responses(records)
    if responses:
        written += save_figure(figure7(responses), folder, "figure7")
    study = select_study(records, Path(path))
    if not study.finals.empty:
        written += save_figure(degradation_figure(study), folder, "degradation")
    return written


def gradients_command(path: Path, out: Path | None, recursive: bool = False) -> list[Path]:
    """`degrade gradients`: the per-layer gradient norms figure; no paths when no run logged
    gradients (runs trained before gradient logging have none)."""
    study = select_study(load_runs(Path(path), recursive), Path(path))
    norms = gradient_norm_table(study)
    if norms.empty:
        return []
    return save_figure(gradients_figure(norms, study.iterations), figures_dir(path, out),
                       "gradients")

