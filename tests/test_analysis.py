"""Reading the runs back: exact scalars, resumed runs, seed statistics and Table 6."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from degradation import runs
from degradation.analysis import results, scalars
from degradation.analysis.results import AnalysisError
from degradation.analysis.table import (
    markdown_table,
    render_markdown,
    results_table,
    table_command,
)
from degradation.storage import write_json
from tests.analysis_fixtures import make_config, make_summary, write_events, write_run, write_study

FAST = {"train.iterations": 2000, "train.milestones": [1000, 1500]}


def test_scalars_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    written = {tag: [(step, float(np.float32(v))) for step, v in
                     zip(range(100, 2001, 100), rng.uniform(0, 100, 20), strict=True)]
               for tag in ("error/train", "loss/train", "lr", "error/test", "loss/test")}
    folder = write_run(tmp_path, {"arch": "plain", "depth": 20, **FAST}, scalars=written)
    df = scalars.read_scalars(tmp_path)

    assert list(df.columns) == scalars.COLUMNS
    assert set(df["run"]) == {folder.relative_to(tmp_path).as_posix()}
    assert set(df["shortcut"]) == {results.PLAIN_SHORTCUT}
    assert set(df["state"]) == {"pending"}  # no checkpoint, no summary, no lock
    for tag, points in written.items():
        got = df[df["metric"] == tag].sort_values("iteration")
        assert list(got["iteration"]) == [step for step, _ in points]
        assert list(got["value"]) == [value for _, value in points]  # exact, float32 values


def test_every_point_is_read_beyond_tensorboards_default_10000(tmp_path):
    points = [(step, float(step % 97)) for step in range(1, 10_502)]
    write_run(tmp_path, FAST, scalars={"error/train": points})
    df = scalars.read_scalars(tmp_path)
    assert len(df) == 10_501
    assert df["iteration"].tolist() == list(range(1, 10_502))


def test_resumed_run_keeps_the_restarted_values(tmp_path):
    folder = write_run(tmp_path, FAST)
    # First process logs to 1500, checkpointed at 1000, crashed; the second resumes at 1000
    # and logs from 1100 on: its values replace the first process's 1100..1500.
    write_events(folder, {"error/train": [(s, 50.0) for s in range(100, 1501, 100)]}, 1.0e9)
    write_events(folder, {"error/train": [(s, 20.0) for s in range(1100, 1301, 100)]}, 2.0e9)
    got = scalars.read_run_scalars(folder).set_index("iteration")["value"]
    assert got.index.tolist() == list(range(100, 1301, 100))  # 1400, 1500 were orphaned
    assert (got.loc[:1000] == 50.0).all()
    assert (got.loc[1100:] == 20.0).all()


def test_a_point_written_twice_keeps_the_last(tmp_path):
    folder = write_run(tmp_path, FAST)
    write_events(folder, {"error/test": [(1000, 30.0), (2000, 12.0), (2000, 11.0)]})
    got = scalars.read_run_scalars(folder)
    assert got["value"].tolist() == [30.0, 11.0]


def test_metrics_csv_is_read_when_there_are_no_events(tmp_path):
    folder = write_run(tmp_path, FAST)
    (folder / "metrics.csv").write_text(
        "iteration,lr,error/train,loss/train,error/test,loss/test\n"
        "100,0.1,80.5,2.0,,\n200,0.1,70.25,1.5,60.0,1.2\n", encoding="utf-8")
    got = scalars.read_run_scalars(folder)
    assert sorted(got.itertuples(index=False, name=None)) == sorted([
        (100, "lr", 0.1), (100, "error/train", 80.5), (100, "loss/train", 2.0),
        (200, "lr", 0.1), (200, "error/train", 70.25), (200, "loss/train", 1.5),
        (200, "error/test", 60.0), (200, "loss/test", 1.2)])


def test_aggregate_over_seeds_matches_numpy(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 50, size=(3, 5)).astype(np.float32)
    for seed in range(3):
        points = [(step, float(values[seed, i])) for i, step in enumerate(range(400, 2001, 400))]
        write_run(tmp_path, {"seed": seed, "depth": 32, **FAST}, scalars={"error/test": points})
    stats = scalars.aggregate(scalars.read_scalars(tmp_path))

    assert len(stats) == 5
    assert set(stats["metric"]) == {"error/test"}
    v = values.astype(np.float64)
    np.testing.assert_allclose(stats["mean"], v.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], v.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_array_equal(stats["min"], v.min(axis=0))
    np.testing.assert_array_equal(stats["max"], v.max(axis=0))
    assert (stats["count"] == 3).all()


def test_a_different_recipe_is_a_separate_variant(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, {"seed": seed, **FAST}, scalars={"error/test": [(2000, 10.0)]})
    write_run(tmp_path, {"train.iterations": 500, "train.milestones": [200]},
              scalars={"error/test": [(500, 40.0)]})
    stats = scalars.aggregate(scalars.read_scalars(tmp_path))
    by_variant = stats.set_index("variant")
    assert by_variant.loc["", "count"] == 2
    assert by_variant.loc["train.iterations=500, train.milestones=[200]", "mean"] == 40.0


def _table_study(root):
    finals = {0: 8.5, 1: 9.0, 2: 9.4}
    for seed, final in finals.items():
        config = make_config(root, {"depth": 20, "seed": seed})
        write_run(root, {"depth": 20, "seed": seed},
                  summary=make_summary(config, final_test_error=final, final_train_error=1.0 + seed,
                                       best_test_error=final - 0.3 * (seed + 1)))
    # Unfinished and diverged runs of the same net are counted but do not enter the means.
    write_run(root, {"depth": 20, "seed": 3}, scalars={"error/test": [(1000, 50.0)]})
    diverged = make_config(root, {"depth": 20, "seed": 4})
    write_run(root, {"depth": 20, "seed": 4},
              summary=make_summary(diverged, "diverged", final_test_error=90.0,
                                   iterations_done=3000))
    plain = make_config(root, {"arch": "plain", "depth": 56})
    write_run(root, {"arch": "plain", "depth": 56},
              summary=make_summary(plain, final_test_error=13.2, final_train_error=6.1))
    return finals


def test_results_table_matches_the_summaries_and_the_paper(tmp_path):
    finals = _table_study(tmp_path)
    table = results_table(results.load_runs(tmp_path)).set_index("network")

    assert table.index.tolist() == ["plain-56", "ResNet-20"]
    resnet = table.loc["ResNet-20"]
    ours = np.array(list(finals.values()))
    assert resnet["n"] == 3
    assert resnet["test_error_mean"] == pytest.approx(ours.mean())
    assert resnet["test_error_std"] == pytest.approx(ours.std(ddof=1))
    assert resnet["test_error_min"] == 8.5
    assert resnet["best_test_error"] == pytest.approx(8.5 - 0.3)  # lowest of all seeds
    assert resnet["train_error_mean"] == pytest.approx(2.0)
    assert resnet["paper_test_error"] == 8.75
    assert resnet["difference"] == pytest.approx(ours.mean() - 8.75)
    assert resnet["runs"] == "3 done, 1 pending, 1 diverged"
    assert resnet["parameters"] == 269_722
    plain = table.loc["plain-56"]
    assert plain["shortcut"] == results.PLAIN_SHORTCUT
    assert np.isnan(plain["paper_test_error"]) and np.isnan(plain["difference"])
    assert (plain["paper_fig6_test"], plain["paper_fig6_train"]) == ("≈13", "≈6")
    assert plain["test_error_mean"] == pytest.approx(13.2)


def test_paper_values_are_table6(tmp_path):
    for depth in (32, 44, 56, 110):
        write_run(tmp_path, {"depth": depth})
    write_run(tmp_path, {"depth": 56, "shortcut": "B"})
    table = results_table(results.load_runs(tmp_path)).set_index("network")
    assert table.loc["ResNet-32", "paper_test_error"] == 7.51
    assert table.loc["ResNet-44", "paper_test_error"] == 7.17
    assert table.loc["ResNet-56", "paper_test_error"] == 6.97
    # ResNet-110: the paper's mean of 5 runs and, apart, its best run.
    assert table.loc["ResNet-110", "paper_test_error"] == 6.61
    assert table.loc["ResNet-110", "paper_test_error_std"] == 0.16
    assert table.loc["ResNet-110", "paper_best_test_error"] == 6.43
    assert np.isnan(table.loc["ResNet-56", "paper_best_test_error"])
    # Table 6 is option A only: B has no paper value, and nothing has finished (n = 0).
    assert np.isnan(table.loc["ResNet-56 (B)", "paper_test_error"])
    assert (table["n"] == 0).all() and (table["runs"] == "1 pending").all()
    assert table.loc["ResNet-56 (B)", "parameters"] > table.loc["ResNet-56", "parameters"]


def test_table_command_writes_markdown_and_csv(tmp_path):
    _table_study(tmp_path)
    markdown, written = table_command(tmp_path, None)
    assert [p.name for p in written] == ["table6.md", "table6.csv"]
    assert all(p.parent == tmp_path / "figures" for p in written)
    assert written[0].read_text(encoding="utf-8") == markdown
    lines = markdown.splitlines()
    assert lines[0].startswith("| network") and set(lines[1]) <= {"|", "-", " "}
    resnet_line = next(line for line in lines if line.startswith("| ResNet-20"))
    assert "8.97 ± 0.45 (3)" in resnet_line and "8.75" in resnet_line and "+0.22" in resnet_line
    assert "best, chosen on the test set" in lines[0]
    csv = pd.read_csv(written[1])
    assert csv["network"].tolist() == ["plain-56", "ResNet-20"]


def test_markdown_table_escapes_and_pads():
    text = markdown_table(["a", "long header"], [["x|y", "1"]])
    assert text.splitlines() == ["| a    | long header |", "| ---- | ----------- |",
                                 "| x\\|y | 1           |"]


def test_empty_or_missing_path_gives_one_line(tmp_path):
    with pytest.raises(AnalysisError, match="no runs under") as error:
        scalars.read_scalars(tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(AnalysisError, match="does not exist"):
        table_command(tmp_path / "nowhere", None)


def test_a_damaged_run_never_stops_the_analysis(tmp_path):
    write_study(tmp_path, depths=(20,), archs=("resnet",), seeds=(0,), iterations=4000)
    broken = write_run(tmp_path, {"seed": 7, "train.iterations": 4000,
                                  "train.milestones": [2000, 3000]})
    (broken / "tensorboard").mkdir()
    (broken / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"\x00garbage")
    (broken / "summary.json").write_text("{}", encoding="utf-8")
    df = scalars.read_scalars(tmp_path)
    assert set(df["seed"]) == {0}
    table = results_table(results.load_runs(tmp_path))
    assert table.loc[0, "n"] == 1 and table.loc[0, "runs"] == "2 done"


def test_runs_on_other_data_are_rows_of_their_own_and_the_table_names_the_data(tmp_path):
    for seed, data in ((0, "official CIFAR-10"), (1, "official CIFAR-10"),
                       (2, "subset of 3805 training images")):
        overrides = {"depth": 20, "seed": seed}
        summary = {**make_summary(make_config(tmp_path, overrides),
                                  final_test_error=8.0 + seed), "data": data}
        write_run(tmp_path, overrides, summary=summary)
    markdown, _ = table_command(tmp_path, None)
    rows = [line for line in markdown.splitlines() if line.startswith("| ResNet-20")]
    assert len(rows) == 2  # the subset's error is not averaged with the official runs'
    assert any("8.50 ± 0.71 (2)" in row for row in rows)
    assert any("data=subset of 3805 training images" in row and "10.00 (1)" in row
               for row in rows)
    assert markdown.splitlines()[-1] == (
        "Data: official CIFAR-10 (2 runs); subset of 3805 training images (1 run)")


def _resnet110_seeds(root, finals):
    for seed, final in enumerate(finals):
        overrides = {"depth": 110, "seed": seed}
        write_run(root, overrides, summary=make_summary(make_config(root, overrides),
                                                         final_test_error=final))


def test_resnet110_compares_mean_with_mean_and_best_with_best(tmp_path):
    finals = [6.9, 7.1, 7.3]
    _resnet110_seeds(tmp_path, finals)
    row = results_table(results.load_runs(tmp_path)).iloc[0]
    assert row["difference"] == pytest.approx(np.mean(finals) - 6.61)  # mean vs the mean
    assert row["best_difference"] == pytest.approx(min(finals) - 6.43)  # best vs the best
    markdown = render_markdown(results_table(results.load_runs(tmp_path)))
    header, _, line = markdown.splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in
                                                               line.split("|")], strict=True))
    assert cells["paper (Table 6): mean"] == "6.61 ± 0.16 (mean ± std of 5 runs)"
    assert cells["ours - paper: mean vs mean"] == f"{np.mean(finals) - 6.61:+.2f}"
    assert cells["paper (Table 6): best run"] == "6.43 (best of 5)"
    assert cells["ours - paper: best seed vs best run"] == f"{min(finals) - 6.43:+.2f}"


def _copy_run(folder, root, under):
    """A copy of a run folder at the same place below another output tree `under`."""
    import shutil

    target = under / folder.relative_to(root)
    shutil.copytree(folder, target)
    return target


def test_a_run_copied_into_a_nested_output_tree_is_ignored_without_recursive(tmp_path):
    overrides = {"depth": 20, **FAST}
    folder = write_run(tmp_path, overrides, summary=make_summary(
        make_config(tmp_path, overrides), final_test_error=8.5))
    _copy_run(folder, tmp_path, tmp_path / "old")  # outputs/old/runs/...: a backup
    records = results.load_runs(tmp_path)
    assert [record.path for record in records] == [folder]
    row = results_table(records).iloc[0]
    assert (row["runs"], row["n"]) == ("1 done", 1)


def test_a_run_found_twice_is_counted_once_with_a_warning(tmp_path, caplog):
    overrides = {"depth": 20, **FAST}
    config = make_config(tmp_path, overrides)
    older = write_run(tmp_path, overrides, summary={
        **make_summary(config, final_test_error=9.0), "finished_at": "2026-01-01T10:00:00+0000"})
    newer = _copy_run(older, tmp_path, tmp_path / "old")
    summary = {**make_summary(config, final_test_error=8.0),
               "finished_at": "2026-01-02T10:00:00+0000"}
    (newer / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="degrade"):
        records = results.load_runs(tmp_path, recursive=True)
    assert [record.path for record in records] == [newer]  # the newest finished copy
    table = results_table(records).iloc[0]
    assert (table["runs"], table["n"], table["test_error_mean"]) == ("1 done", 1, 8.0)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("warning: resnet-20-A seed 0 is in 2 folders")
    assert str(older.relative_to(tmp_path)) in warning
    assert str(newer.relative_to(tmp_path)) in warning


def test_a_finished_copy_wins_over_an_unfinished_one(tmp_path):
    overrides = {"depth": 20, **FAST}
    unfinished = write_run(tmp_path, overrides)
    finished = _copy_run(unfinished, tmp_path, tmp_path / "cluster")
    write_json(finished / "summary.json", make_summary(make_config(tmp_path, overrides)))
    assert [r.path for r in results.load_runs(tmp_path, recursive=True)] == [finished]


def test_a_nested_output_tree_is_read_with_recursive(tmp_path):
    write_run(tmp_path, {"depth": 20, **FAST})
    smoke = write_run(tmp_path / "smoke", {"depth": 56, "train.iterations": 40,
                                           "train.milestones": [20, 30]})
    assert len(results.load_runs(tmp_path)) == 1
    assert {r.path for r in results.load_runs(tmp_path, recursive=True)} >= {smoke}
    assert len(results.load_runs(tmp_path, recursive=True)) == 2
    # The nested tree itself, or its runs folder, is an output tree of its own.
    assert [r.path for r in results.load_runs(tmp_path / "smoke")] == [smoke]
    assert [r.path for r in results.load_runs(tmp_path / "smoke" / "runs")] == [smoke]
    assert [r.path for r in results.load_runs(smoke)] == [smoke]


def test_runs_of_different_recipes_are_never_pooled(tmp_path):
    for seed, final in ((0, 8.0), (1, 9.0)):
        overrides = {"depth": 20, "seed": seed, **FAST}
        write_run(tmp_path, overrides, summary=make_summary(make_config(tmp_path, overrides),
                                                            final_test_error=final))
    other = {"depth": 20, "seed": 0, **FAST, "train.weight_decay": 0.0005}
    write_run(tmp_path, other, summary=make_summary(make_config(tmp_path, other),
                                                    final_test_error=30.0))
    table = results_table(results.load_runs(tmp_path)).set_index("variant")
    assert table.loc["", "n"] == 2 and table.loc["", "test_error_mean"] == 8.5
    assert table.loc["train.weight_decay=0.0005", "test_error_mean"] == 30.0


def test_runs_on_different_data_are_not_pooled_once_the_identity_tells_them_apart(
        tmp_path, monkeypatch):
    # The table groups on `runs.identity`: whatever it comes to include (here the data
    # folder, which it leaves out today) splits the pool, with no list of keys of its own.
    monkeypatch.setattr(runs, "NOT_IDENTITY",
                        tuple(key for key in runs.NOT_IDENTITY if key != "data.root"))
    for seed, root in ((0, "cifar"), (1, "cifar"), (2, "subset")):
        overrides = {"depth": 20, "seed": seed, **FAST, "data.root": root}
        write_run(tmp_path, overrides, summary=make_summary(make_config(tmp_path, overrides),
                                                            final_test_error=8.0 + seed))
    table = results_table(results.load_runs(tmp_path))
    assert sorted(table["n"]) == [1, 2]
    assert sorted(table["test_error_mean"]) == [8.5, 10.0]


def test_table6_has_the_95_percent_interval_of_the_mean_and_the_reproductions(tmp_path):
    finals = [6.9, 7.1, 7.3]
    _resnet110_seeds(tmp_path, finals)
    table = results_table(results.load_runs(tmp_path))
    # t(0.975, 2) = 4.302653: 7.1 ± 4.302653 * 0.2 / sqrt(3) = 7.1 ± 0.4968.
    assert table.loc[0, "test_error_ci_low"] == pytest.approx(7.1 - 0.496828, abs=1e-6)
    assert table.loc[0, "test_error_ci_high"] == pytest.approx(7.1 + 0.496828, abs=1e-6)
    markdown = render_markdown(table)
    header, _, line = markdown.splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in
                                                               line.split("|")], strict=True))
    assert cells["test error (%), final: mean ± std (n)"] == "7.10 ± 0.20 (3)"
    assert cells["95% CI of the mean"] == "6.60-7.60"
    assert cells["best seed, final"] == "6.90"
    assert cells["independent reproductions (PAPER.md)"] == (
        "akamaster/pytorch_resnet_cifar10: 6.32; gcr/torch-residual-networks: 6.73; "
        "nabla0001/resnet, 5 seeds, 45k/5k split: 7.14 ± 0.20")


def test_table6_gives_one_seed_no_interval(tmp_path):
    _resnet110_seeds(tmp_path, [7.0])
    table = results_table(results.load_runs(tmp_path))
    assert math.isnan(table.loc[0, "test_error_ci_low"])
    header, _, line = render_markdown(table).splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in
                                                               line.split("|")], strict=True))
    assert cells["95% CI of the mean"] == "" and cells["test error (%), final: mean ± std (n)"] \
        == "7.00 (1)"
