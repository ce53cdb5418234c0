"""The CSV logs read back strictly: a damaged row is never a value, whole files round-trip."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from degradation.runs import GRAD_NORMS_FILE, METRICS_FILE
from degradation.storage import DAMAGED_SUFFIX, DamagedFile
from degradation.training.logs import (
    MetricsLog,
    read_grad_norm_prefix,
    read_grad_norms,
    read_metrics,
    read_metrics_prefix,
)

HEADER = "iteration,lr,error/train,loss/train,error/test,loss/test\n"
GOOD = HEADER + "10,0.1,80.5,2.0,,\n20,0.1,70.25,1.5,60.0,1.2\n"


def written(tmp_path: Path, iterations: int = 30, layers: int = 3) -> Path:
    """A run folder whose logs are written by `MetricsLog`, as training writes them."""
    metrics = MetricsLog(tmp_path)
    for iteration in range(10, iterations + 1, 10):
        metrics.log(iteration, {"lr": 0.1, "error/train": 90.0 - iteration, "loss/train": 2.0})
        # float32 values, as training logs them (so TensorBoard's copy is exact)
        metrics.log_gradients(iteration, {f"conv{layer}": 0.5 + layer + iteration / 1024
                                          for layer in range(layers)})
    metrics.close()
    return tmp_path


def test_the_writers_files_read_back_whole(tmp_path: Path) -> None:
    folder = written(tmp_path)
    rows, damage = read_metrics_prefix(folder / METRICS_FILE)
    assert damage is None and sorted(rows) == [10, 20, 30]
    assert rows[30] == {"lr": 0.1, "error/train": 60.0, "loss/train": 2.0}
    norms, damage = read_grad_norm_prefix(folder / GRAD_NORMS_FILE)
    assert damage is None and list(norms) == [10, 20, 30]
    assert list(norms[20]) == ["conv0", "conv1", "conv2"] and norms[20]["conv1"] == 1.5 + 20 / 1024
    frame = read_grad_norms(folder)  # pandas, for a file exactly as the writer writes it
    assert frame.values.tolist() == [[iteration, layer, name, norm] for iteration, point in
                                     norms.items() for layer, (name, norm) in
                                     enumerate(point.items())]
    assert frame["grad_norm"].tolist()[:3] == [0.5 + 10 / 1024,
                                                                  1.5 + 10 / 1024,
                                                                  2.5 + 10 / 1024]


@pytest.mark.parametrize("text, rows, line", [
    (GOOD.replace("20,0.1,70.25,1.5,60.0,1.2\n", "15,0.0\n"), [10], 3),  # a row cut to 15,0.0
    (GOOD.replace("70.25", "70.2x"), [10], 3),  # a value that does not parse
    (GOOD.rstrip("\n"), [10], 3),  # the last row cut short: no line break
    (GOOD + "20,0.1,1,1,,\n", [10, 20], 4),  # an iteration again
    (GOOD.replace(",,\n", ",,,\n"), [], 2),  # a field too many
    (GOOD.replace("iteration", "step"), [], 1),  # not a metrics.csv
    (GOOD.replace("80.5", "\udcff").encode("utf-8", "surrogateescape"), [], 2),  # not text
])
def test_a_damaged_metrics_row_is_never_a_value(tmp_path: Path, text: str | bytes,
                                                rows: list[int], line: int) -> None:
    path = tmp_path / METRICS_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    read, damage = read_metrics_prefix(path)
    assert sorted(read) == rows
    assert damage is not None and damage.startswith(f"{path} is damaged (line {line}: ")
    with pytest.raises(DamagedFile, match="is damaged"):
        read_metrics(path)


def grad_norm_text(points: int = 3, layers: int = 3) -> str:
    return "iteration,layer,name,grad_norm\n" + "".join(
        f"{iteration},{layer},conv{layer},{0.5 + layer}\n"
        for iteration in range(10, 10 * points + 1, 10) for layer in range(layers))


@pytest.mark.parametrize("text, points", [
    (grad_norm_text().replace("30,2,conv2,2.5\n", "30,2,conv2,2.5"), [10, 20]),  # cut short
    (grad_norm_text().replace("30,2,conv2,2.5\n", ""), [10, 20]),  # a point cut at a line end
    (grad_norm_text().replace("20,1,conv1,1.5\n", "20,1,conv1\n"), [10]),  # a row cut
    (grad_norm_text().replace("20,1,conv1,1.5", "20,1,conv1,nope"), [10]),
    (grad_norm_text().replace("20,1,conv1", "20,2,conv1"), [10]),  # a layer out of order
    (grad_norm_text() + grad_norm_text(1).split("\n", 1)[1], [10, 20, 30]),  # 10 after 30
    ("\x00\x01garbage\n" + grad_norm_text(), []),
])
def test_a_damaged_grad_norms_row_is_never_a_value(tmp_path: Path, text: str,
                                                   points: list[int]) -> None:
    path = tmp_path / GRAD_NORMS_FILE
    path.write_text(text)
    read, damage = read_grad_norm_prefix(path)
    assert list(read) == points and all(len(norms) == 3 for norms in read.values())
    assert damage is not None and damage.startswith(f"{path} is damaged (")
    with pytest.raises(DamagedFile, match="is damaged"):
        read_grad_norms(tmp_path)


@pytest.mark.parametrize("name", [METRICS_FILE, GRAD_NORMS_FILE])
def test_a_resume_keeps_the_valid_rows_up_to_the_checkpoint_and_sets_the_damaged_file_aside(
        tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    folder = written(tmp_path, iterations=50)
    path = folder / name
    original = path.read_bytes()
    cut = original[: original.index(b"\n40,1," if name == GRAD_NORMS_FILE else b"\n40,") + 5]
    path.write_bytes(cut)  # cut mid-row, at iteration 40
    with caplog.at_level(logging.WARNING, logger="degrade"):
        MetricsLog(folder, resume_from=30).close()
    (warning,) = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"warning: {path} is damaged (")
    assert "kept its valid log points up to iteration 30 (the damaged" in warning
    assert "short of" not in warning  # every row up to the checkpoint read
    assert (folder / (name + DAMAGED_SUFFIX)).read_bytes() == cut
    rows = (read_metrics_prefix if name == METRICS_FILE else read_grad_norm_prefix)(path)
    assert rows[1] is None and list(rows[0]) == [10, 20, 30]  # repaired at once


@pytest.mark.parametrize("junk", [None, b"\x00" * 7 + b"not an event file", b""])
def test_grad_norms_lost_before_the_checkpoint_come_back_from_the_tensorboard_events(
        tmp_path: Path, junk: bytes | None, caplog: pytest.LogCaptureFixture) -> None:
    # The repair reads the events as the analysis does (`events.read_events`): a damaged or
    # empty event file beside the good one is left out, the others still give their points.
    from degradation.runs import TENSORBOARD_DIR

    folder = written(tmp_path, iterations=50)
    if junk is not None:
        (folder / TENSORBOARD_DIR / "events.out.tfevents.0.damaged").write_bytes(junk)
    path = folder / GRAD_NORMS_FILE
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.index(b"\n20,1,") + 5])  # cut at iteration 20
    with caplog.at_level(logging.WARNING, logger="degrade"):
        MetricsLog(folder, resume_from=40).close()
    (warning,) = [record.getMessage() for record in caplog.records]
    assert "it reads only up to iteration 10, and 3 log points up to the checkpoint's 40 are " \
        "taken from the TensorBoard events" in warning
    assert path.read_bytes() == whole[: whole.index(b"\n50,0,") + 1]  # byte for byte


def test_the_analysis_takes_a_cut_row_for_damage_not_for_lr_zero(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from degradation.analysis.scalars import read_run_scalars

    (tmp_path / METRICS_FILE).write_text(GOOD + "15,0.0\n")
    with caplog.at_level(logging.WARNING, logger="degrade"):
        points = read_run_scalars(tmp_path)
    assert sorted(set(points["iteration"])) == [10, 20]  # no point at iteration 15
    (warning,) = [record.getMessage() for record in caplog.records]
    assert warning == (f"warning: {tmp_path / METRICS_FILE} is damaged (line 4: 2 fields where "
                       "the header has 6); its points after that line are left out")


def test_an_empty_grad_norms_csv_is_named_as_damaged(tmp_path: Path) -> None:
    # A run killed just after creating its log leaves it empty: named, not an OS error.
    (tmp_path / GRAD_NORMS_FILE).write_bytes(b"")
    with pytest.raises(DamagedFile, match=r"grad_norms.csv is damaged \(line 1: it is empty\)"):
        read_grad_norms(tmp_path)
