"""Figures drawn as the paper draws them: axes, units, styles, colours, clipping, bands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex

from degradation.analysis import figures
from degradation.analysis.results import PLAIN_SHORTCUT, AnalysisError
from degradation.analysis.scalars import COLUMNS
from tests.analysis_fixtures import write_study

STEPS = np.arange(1000, 64001, 1000)


def run(arch, depth, seed=0, shortcut="A", state="done", train=None, test=None, steps=STEPS):
    """Tidy rows of one run; `train`/`test` are the error values per step (default: a decay)."""
    shortcut = PLAIN_SHORTCUT if arch == "plain" else shortcut
    decay = 5 + 85 * np.exp(-steps / 4000)
    rows = []
    for metric, values in (("error/train", train if train is not None else decay - 4),
                           ("error/test", test if test is not None else decay + depth / 100)):
        for step, value in zip(steps, np.broadcast_to(values, steps.shape), strict=True):
            rows.append({"arch": arch, "depth": depth, "shortcut": shortcut, "variant": "",
                         "seed": seed, "run": f"{arch}-{depth}-{shortcut}/seed-{seed}",
                         "state": state, "eval_set": "test", "iteration": int(step),
                         "metric": metric, "value": float(value)})
    return rows


def frame(*runs):
    return pd.DataFrame([row for rows in runs for row in rows], columns=COLUMNS)


def lines(ax, metric=None):
    return [line for line in ax.get_lines() if metric is None or line.get_gid() == metric]


def legend_texts(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


@pytest.fixture
def study():
    return frame(*(run("plain", d) for d in (20, 56)),
                 *(run("resnet", d) for d in (20, 56, 110, 1202)))


def test_figure6_has_the_papers_panels_axes_and_units(study):
    fig = figures.figure6(study, xmax_iterations=64000)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["plain", "ResNet", "ResNet-110 vs ResNet-1202"]
    for ax in fig.axes:
        assert ax.get_xlabel() == "iter. (1e4)" and ax.get_ylabel() == "error (%)"
        assert ax.get_xlim() == (0, 6.4)
        assert ax.get_ylim() == (0, 20)
        np.testing.assert_allclose(lines(ax, "error/test")[0].get_xdata(), STEPS / 1e4)
    assert legend_texts(fig.axes[0]) == ["plain-20", "plain-56"]
    assert legend_texts(fig.axes[1]) == ["ResNet-20", "ResNet-56", "ResNet-110"]
    assert legend_texts(fig.axes[2]) == ["ResNet-110", "ResNet-1202"]
    assert "dashed: training error, bold: test error" in fig._suptitle.get_text()


def test_training_dashed_test_solid_and_bold(study):
    fig = figures.figure6(study)
    for ax in fig.axes:
        train, test = lines(ax, "error/train"), lines(ax, "error/test")
        assert train and len(train) == len(test)
        assert {line.get_linestyle() for line in train} == {"--"}
        assert {line.get_linestyle() for line in test} == {"-"}
        assert min(t.get_linewidth() for t in test) > 2 * max(t.get_linewidth() for t in train)


def test_one_colour_per_depth_across_panels(study):
    fig = figures.figure6(study)
    colours = {}
    for ax in fig.axes:
        for line in lines(ax, "error/test"):
            depth = int(line.get_label().split("-")[1])
            colours.setdefault(depth, set()).add(to_hex(line.get_color()))
    assert all(len(c) == 1 for c in colours.values())  # plain-20 = ResNet-20, 110 twice
    assert len({c.pop() for c in colours.values()}) == len(colours)  # depths differ
    assert colours.keys() == {20, 56, 110, 1202}


def test_values_above_20_are_clipped_visibly_and_linear_shows_them():
    high = np.full(len(STEPS), 45.0)
    df = frame(run("plain", 20, test=high), run("resnet", 20))
    fig = figures.figure6(df)
    test_line = lines(fig.axes[0], "error/test")[0]
    assert max(test_line.get_ydata()) == 20.0  # held at the top edge, not dropped
    assert len(test_line.get_ydata()) == len(STEPS)
    assert not test_line.get_clip_on()
    assert "above 20% drawn at the top edge" in fig._suptitle.get_text()

    linear = figures.figure6(df, linear=True)
    assert max(lines(linear.axes[0], "error/test")[0].get_ydata()) == 45.0
    assert linear.axes[0].get_ylim() == (0, 80)  # the highest point, 71%, rounded up to 10s
    assert "top edge" not in linear._suptitle.get_text()


def test_x_axis_ends_at_the_last_iteration_of_a_short_schedule():
    steps = np.arange(100, 2001, 100)
    fig = figures.figure6(frame(run("resnet", 20, steps=steps)))
    assert fig.axes[0].get_xlim() == (0, 0.2)
    assert [ax.get_title() for ax in fig.axes] == ["ResNet"]


def test_seed_band_is_min_max_and_the_line_the_mean():
    low, high = np.full(len(STEPS), 8.0), np.full(len(STEPS), 10.0)
    df = frame(run("resnet", 56, seed=0, test=low), run("resnet", 56, seed=1, test=high),
               run("resnet", 56, seed=2, test=np.full(len(STEPS), 9.5)))
    fig = figures.figure6(df)
    ax = fig.axes[0]
    np.testing.assert_allclose(lines(ax, "error/test")[0].get_ydata(), (8 + 10 + 9.5) / 3)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # training and test
    test_band = bands[1].get_paths()[0].vertices[:, 1]
    assert test_band.min() == 8.0 and test_band.max() == 10.0
    assert legend_texts(ax) == ["ResNet-56 (3 seeds)"]
    assert "shaded: min-max over seeds" in fig._suptitle.get_text()
    one = figures.figure6(frame(run("resnet", 56)))
    assert not one.axes[0].collections and "shaded" not in one._suptitle.get_text()


def test_diverged_and_running_runs_are_labelled_not_averaged():
    df = frame(run("plain", 56, seed=0, test=np.full(len(STEPS), 12.0)),
               run("plain", 56, seed=1, state="diverged", test=np.full(len(STEPS), 90.0)),
               run("plain", 56, seed=2, state="running", test=np.full(len(STEPS), 14.0)),
               run("plain", 110, state="diverged", steps=STEPS[:20]))
    ax = figures.figure6(df).axes[0]
    test_lines = lines(ax, "error/test")
    assert len(test_lines) == 1  # plain-110 has no healthy run to draw
    np.testing.assert_allclose(test_lines[0].get_ydata(), 13.0)
    marks = lines(ax, "diverged")
    assert len(marks) == 2 and {mark.get_marker() for mark in marks} == {"x"}
    assert list(marks[0].get_ydata()) == [20.0] and list(marks[0].get_xdata()) == [6.4]
    assert list(marks[1].get_xdata()) == [2.0]
    assert legend_texts(ax) == ["plain-56 (3 seeds, 1 running, 1 diverged)",
                                "plain-110 (1 diverged)"]


def test_figure6_draws_option_a_and_the_shortcut_figure_compares_options():
    df = frame(run("plain", 56), *(run("resnet", 56, shortcut=s) for s in "ABC"),
               run("resnet", 20))
    fig6 = figures.figure6(df)
    assert legend_texts(fig6.axes[1]) == ["ResNet-20", "ResNet-56"]
    fig = figures.shortcut_figure(df)
    assert [ax.get_title() for ax in fig.axes] == ["depth 56: shortcut options"]
    ax = fig.axes[0]
    assert legend_texts(ax) == ["plain-56", "ResNet-56 (A)", "ResNet-56 (B)", "ResNet-56 (C)"]
    colours = [to_hex(line.get_color()) for line in lines(ax, "error/test")]
    assert len(set(colours)) == 4
    assert figures.shortcut_figure(frame(run("resnet", 20), run("plain", 20))) is None


def test_figure6_without_curves_says_so():
    with pytest.raises(AnalysisError, match="no training curves"):
        figures.figure6(frame())


def _response(arch, depth, seed, scale):
    layers = depth - 1
    return {"arch": arch, "depth": depth, "shortcut": None if arch == "plain" else "A",
            "seed": seed, "eval_set": "test", "pooling": "POOLING TEXT",
            "std": list(scale * (1 + np.sin(np.arange(layers)) ** 2))}


def test_figure7_network_order_on_top_sorted_below():
    items = [_response("plain", 20, 0, 2.0), _response("resnet", 20, 0, 1.0),
             _response("resnet", 20, 1, 3.0), _response("resnet", 56, 0, 0.5),
             _response("resnet", 1202, 0, 0.1),
             {**_response("resnet", 56, 0, 9.0), "shortcut": "B"}]
    fig = figures.figure7(items)
    top, bottom = fig.axes
    assert top.get_xlabel() == "layer index (original)"
    assert bottom.get_xlabel() == "layer index (sorted by magnitude)"
    # Option A only (as Figure 6), and no 1202 (as the paper's Figure 7).
    assert legend_texts(top) == ["plain-20", "ResNet-20 (2 seeds)", "ResNet-56"]
    resnet20 = top.get_lines()[1].get_ydata()
    np.testing.assert_allclose(resnet20, 2.0 * (1 + np.sin(np.arange(19)) ** 2))  # seed mean
    np.testing.assert_allclose(bottom.get_lines()[1].get_ydata(), np.sort(resnet20)[::-1])
    assert list(top.get_lines()[0].get_xdata()) == list(range(1, 20))
    assert top.get_lines()[0].get_linestyle() == "--" and top.get_lines()[1].get_linestyle() == "-"
    assert to_hex(top.get_lines()[0].get_color()) == to_hex(top.get_lines()[1].get_color())
    assert "POOLING TEXT" in fig._suptitle.get_text()


@pytest.mark.slow
def test_plot_command_writes_png_and_pdf(tmp_path):
    write_study(tmp_path, depths=(20,), seeds=(0,), iterations=4000)
    written = figures.plot_command(tmp_path, None, linear=False)
    assert written == [tmp_path / "figures" / f"{name}.{kind}"
                       for name in ("figure6", "degradation") for kind in ("png", "pdf")]
    assert written[0].read_bytes()[:4] == b"\x89PNG" and written[1].read_bytes()[:4] == b"%PDF"
    out = figures.plot_command(tmp_path, tmp_path / "elsewhere", linear=True)
    assert all(path.parent == tmp_path / "elsewhere" for path in out)


def test_short_runs_above_20_get_a_data_range_and_say_so():
    steps = np.arange(20, 201, 20)
    high = np.linspace(85.0, 42.0, len(steps))
    fig = figures.figure6(frame(run("plain", 20, steps=steps, train=high - 5, test=high),
                                run("resnet", 20, steps=steps, train=high - 9, test=high - 1)))
    for ax in fig.axes:
        assert ax.get_ylim() == (30, 90)  # 33% .. 85%, to the tens around them
        assert max(lines(ax, "error/test")[0].get_ydata()) >= 84.0  # not held at 20%
        assert ax.get_xlabel() == "iter."
        labels = [tick.get_text() for tick in ax.get_xticklabels()]
        assert "200" in labels and len(labels) <= 8
    text = fig._suptitle.get_text().replace("\n", " ")
    assert "error axis 30-90%: every error is above the paper's 0-20% range" in text
    assert "top edge" not in text


def test_long_runs_keep_the_papers_range_and_1e4_ticks():
    fig = figures.figure6(frame(run("plain", 20), run("resnet", 20)))
    assert all(ax.get_ylim() == (0, 20) for ax in fig.axes)
    assert "error axis" not in fig._suptitle.get_text()
    labels = [tick.get_text() for tick in fig.axes[0].get_xticklabels()]
    assert fig.axes[0].get_xlabel() == "iter. (1e4)" and "6" in labels and len(labels) <= 8


def test_a_2000_iteration_schedule_is_labelled_in_thousands():
    fig = figures.figure6(frame(run("resnet", 20, steps=np.arange(100, 2001, 100))))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "iter. (1e3)"
    assert [tick.get_text() for tick in ax.get_xticklabels()][-1] == "2"
