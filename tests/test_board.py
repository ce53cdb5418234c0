"""TensorBoard on the study: HParams per run and the Figure 6 custom-scalars layout, read
back with TensorBoard's own readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from degradation.analysis.board import STUDY_DIR
from degradation.analysis.scalars import read_run_scalars, read_scalars
from degradation.runs import TENSORBOARD_DIR
from degradation.training.logs import HPARAMS_METRICS, MetricsLog, write_hparams
from tests.analysis_fixtures import curves, make_config, make_summary, write_run, write_study
from tests.conftest import degrade_here


def accumulator(folder: Path) -> EventAccumulator:
    loaded = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    loaded.Reload()
    return loaded


def read_hparams(run_folder: Path) -> dict[str, Any]:
    """The run's HParams session as TensorBoard decodes it: hparams, metric tags and values."""
    events = accumulator(run_folder / TENSORBOARD_DIR)
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content[hparams_metadata.EXPERIMENT_TAG]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content[hparams_metadata.SESSION_START_INFO_TAG]).session_start_info
    values = {}
    for name, value in start.hparams.items():
        values[name] = value.string_value if value.HasField("string_value") \
            else value.number_value
    return {"declared": sorted(info.name for info in experiment.hparam_infos),
            "metrics": sorted(info.name.tag for info in experiment.metric_infos),
            "hparams": values,
            "scalars": {tag: events.Scalars(tag)[-1].value
                        for tag in events.Tags()["scalars"] if tag in HPARAMS_METRICS}}


def finish_run(folder: Path, config: Any, summary: dict[str, Any]) -> None:
    """What training does as a run ends: its own writer writes the HParams session."""
    metrics = MetricsLog(folder, resume_from=summary.get("iterations_done"))
    write_hparams(metrics.writer, config, summary)
    metrics.close()


def test_a_finished_run_compares_in_the_hparams_tab(tmp_path: Path) -> None:
    recipe = {"arch": "plain", "depth": 56, "seed": 3, "train.iterations": 4000,
              "train.milestones": [2000, 3000]}
    config = make_config(tmp_path, recipe)
    summary = make_summary(config, final_test_error=12.5, final_train_error=4.25,
                           best_test_error=12.0)
    folder = write_run(tmp_path, recipe, scalars=curves(56, "plain", 3, 4000), summary=summary)
    before = read_run_scalars(folder)
    finish_run(folder, config, summary)
    board = read_hparams(folder)
    assert board["declared"] == ["arch", "depth", "seed", "shortcut"]
    assert board["hparams"] == {"arch": "plain", "depth": 56.0, "shortcut": "-", "seed": 3.0}
    assert board["metrics"] == ["best/test_error", "error/test", "error/train",
                                "final/test_error", "final/train_error"]
    assert board["scalars"] == {"final/test_error": 12.5, "final/train_error": 4.25,
                                "best/test_error": 12.0}
    # The run's curves are unchanged: the session's final numbers are not read as points.
    assert read_run_scalars(folder).equals(before)


def test_a_diverged_run_without_a_test_error_still_declares_every_metric(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"arch": "resnet", "shortcut": "B"})
    summary = {**make_summary(config, "diverged"), "final_test_error": None,
               "best_test_error": None}
    folder = write_run(tmp_path, {"arch": "resnet", "shortcut": "B"}, summary=summary)
    finish_run(folder, config, summary)
    board = read_hparams(folder)
    assert board["hparams"]["shortcut"] == "B"
    assert len(board["metrics"]) == 5 and list(board["scalars"]) == ["final/train_error"]


@pytest.mark.slow
def test_plot_writes_the_figure6_layout_and_mean_curves(tmp_path: Path) -> None:
    write_study(tmp_path, iterations=4000)  # plain and resnet-A, depths 20 and 56, 2 seeds
    result = degrade_here("plot", str(tmp_path))
    assert result.exit_code == 0, result.output
    study = tmp_path / STUDY_DIR
    assert result.output.splitlines()[-1] == f"{study} (TensorBoard: tensorboard --logdir " \
        f"{tmp_path})"
    events = accumulator(study)
    tensor = events.Tensors(custom_scalar_metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
    layout = layout_pb2.Layout.FromString(tensor.string_val[0])
    (category,) = layout.category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert category.title == "Figure 6"
    assert charts == {
        "plain: training error": [r"^plain-\d+/error/train$"],
        "plain: test error": [r"^plain-\d+/error/test$"],
        "ResNet (A): training error": [r"^resnet-\d+-A/error/train$"],
        "ResNet (A): test error": [r"^resnet-\d+-A/error/test$"],
    }
    tags = set(events.Tags()["scalars"])
    assert tags == {f"{net}/error/{part}" for net in ("plain-20", "plain-56", "resnet-20-A",
                                                      "resnet-56-A") for part in ("train", "test")}
    # Each curve is the mean over the seeds, at every logged iteration.
    points = read_scalars(tmp_path)
    mine = points[(points["arch"] == "plain") & (points["depth"] == 56)
                  & (points["metric"] == "error/test")]
    expected = mine.groupby("iteration")["value"].mean()
    curve = {event.step: event.value for event in events.Scalars("plain-56/error/test")}
    assert sorted(curve) == list(expected.index)
    assert list(curve.values()) == pytest.approx(list(expected.sort_index()), rel=1e-6)

    # Written again, the folder is replaced: no second copy of every point.
    degrade_here("plot", str(tmp_path))
    assert len(accumulator(study).Scalars("plain-56/error/test")) == len(expected)
