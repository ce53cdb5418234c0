"""What a run reports as it trains: TensorBoard scalars, the same rows as CSV, progress lines.

The tag names are part of the interface (`error/train`, `error/test`, `loss/train`,
`loss/test`, `lr`), always with the iteration as the step, so the curves read like the
paper's Figure 6. Each log point also records the L2 norm of every 3x3 conv layer's weight
gradient (`grad_norm/<layer>_<name>` in TensorBoard, `grad_norms.csv` in long format): the
evidence for the paper's remark that plain nets' gradients keep "healthy norms".
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from degradation.config import Config
from degradation.errors import error_line
from degradation.runs import GRAD_NORMS_FILE, METRICS_FILE, PLAIN_SHORTCUT, TENSORBOARD_DIR
from degradation.storage import DamagedFile, atomic_write_text

if TYPE_CHECKING:  # pandas is imported only by the readers, not by every training process
    import pandas as pd

TAGS = ("lr", "error/train", "loss/train", "error/test", "loss/test")
GRAD_NORM_COLUMNS = ("iteration", "layer", "name", "grad_norm")
log = logging.getLogger("degrade")


class MetricsLog:
    """TensorBoard events and `metrics.csv` for one run, consistent with its checkpoint.

    On resume from iteration k, every point logged after k is dropped from both, so a
    restarted run never shows duplicated or stale points.
    """

    def __init__(self, run_dir: Path, resume_from: int | None = None):
        self.csv_path = run_dir / METRICS_FILE
        self.grad_norms_path = run_dir / GRAD_NORMS_FILE
        self.rows: dict[int, dict[str, float]] = {}
        self.grad_norms: dict[int, dict[str, float]] = {}
        if resume_from is not None and self.csv_path.exists():
            try:
                rows = read_metrics(self.csv_path)
            except DamagedFile as error:
                raise DamagedFile(f"{error}; move it away and run the same command again "
                                  "(the new metrics.csv starts at the checkpoint's iteration; "
                                  "the TensorBoard events keep every point)") from None
            self.rows = {it: row for it, row in rows.items() if it <= resume_from}
        if resume_from is not None and self.grad_norms_path.exists():
            self.grad_norms = {it: norms for it, norms in _read_grad_norm_rows(
                self.grad_norms_path).items() if it <= resume_from}
        purge_step = None if resume_from is None else resume_from + 1
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR),
                                    purge_step=purge_step, flush_secs=30)

    def log(self, iteration: int, values: dict[str, float]) -> None:
        """Record `values` (keys from TAGS) at `iteration`."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, iteration)
        self.rows.setdefault(iteration, {}).update(values)
        self._write_csv()

    def log_gradients(self, iteration: int, norms: dict[str, float]) -> None:
        """Record each layer's weight-gradient norm (layer name -> norm, network order)."""
        for layer, (name, norm) in enumerate(norms.items()):
            self.writer.add_scalar(f"grad_norm/{layer:03d}_{name}", norm, iteration)
        self.grad_norms[iteration] = dict(norms)

    def flush(self) -> None:
        """Push buffered TensorBoard events and the gradient norms to disk (done at every
        checkpoint, so both stay consistent with it)."""
        self.writer.flush()
        self._write_grad_norms()

    def log_hparams(self, config: Config, summary: dict[str, Any]) -> None:
        """The run's HParams session, written by the run's own writer (`write_hparams`)."""
        write_hparams(self.writer, config, summary)

    def close(self) -> None:
        """Flush and close the TensorBoard writer; write the gradient norms."""
        self.writer.close()
        self._write_grad_norms()

    def _write_grad_norms(self) -> None:
        # Written whole at checkpoints rather than at every log point: a run of 64k iterations
        # holds ~35k rows for ResNet-56, too many to rewrite 640 times.
        if not self.grad_norms:
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(GRAD_NORM_COLUMNS)
        for iteration in sorted(self.grad_norms):
            for layer, (name, norm) in enumerate(self.grad_norms[iteration].items()):
                writer.writerow((iteration, layer, name, _csv_cell(norm)))
        atomic_write_text(self.grad_norms_path, buffer.getvalue())

    def _write_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("iteration", *TAGS))
        for iteration in sorted(self.rows):
            row = self.rows[iteration]
            writer.writerow((iteration, *(_csv_cell(row.get(tag)) for tag in TAGS)))
        atomic_write_text(self.csv_path, buffer.getvalue())


def read_metrics(path: Path) -> dict[int, dict[str, float]]:
    """Rows of a `metrics.csv`, keyed by iteration, blank cells left out; `DamagedFile` when
    it is not such a file (an `OSError` when it cannot be read at all)."""
    rows = {}
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        try:
            for record in reader:
                values = {tag: float(record[tag]) for tag in TAGS if record.get(tag)}
                rows[int(record["iteration"])] = values
        except (ValueError, KeyError, TypeError, csv.Error) as error:  # UTF-8 errors too
            where = f"line {reader.line_num}: " if reader.line_num else ""
            raise DamagedFile(f"{path} is damaged ({where}{error_line(error)})") from None
    return rows


def _read_grad_norm_rows(path: Path) -> dict[int, dict[str, float]]:
    """A `grad_norms.csv` as {iteration: {layer name: norm}}, layers in network order."""
    rows: dict[int, dict[str, float]] = {}
    with path.open(newline="", encoding="utf-8") as file:
        for record in sorted(csv.DictReader(file),
                             key=lambda r: (int(r["iteration"]), int(r["layer"]))):
            rows.setdefault(int(record["iteration"]), {})[record["name"]] = float(
                record["grad_norm"])
    return rows


# `grad_norms.csv`, one row per (iteration, conv layer): `layer` is the conv's 0-based index
# in network order, `name` its qualified module name, `grad_norm` the L2 norm of the gradient
# of its weight at that iteration. Runs trained before gradient logging have no file.
_GRAD_NORM_DTYPES = {"iteration": "int64", "layer": "int64", "name": object,
                     "grad_norm": "float64"}


def read_grad_norms(folder: Path) -> pd.DataFrame:
    """A run's `grad_norms.csv` (columns `GRAD_NORM_COLUMNS`); an empty frame when it has none."""
    import pandas as pd

    path = Path(folder) / GRAD_NORMS_FILE
    if not path.exists():
        return pd.DataFrame({column: pd.Series(dtype=dtype)
                             for column, dtype in _GRAD_NORM_DTYPES.items()})
    frame = pd.read_csv(path, dtype={"name": str})
    missing = set(GRAD_NORM_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)} "
                         f"(expected {','.join(GRAD_NORM_COLUMNS)})")
    # A resumed run may log an iteration again: the row written last wins.
    frame = frame[list(GRAD_NORM_COLUMNS)].drop_duplicates(["iteration", "layer"], keep="last")
    return frame.astype(_GRAD_NORM_DTYPES).sort_values(["iteration", "layer"],
                                                       ignore_index=True)


def _csv_cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))


class Progress:
    """Iteration/total, lr, errors, throughput and ETA while a run trains.

    On a terminal one line is redrawn in place at every log point; otherwise (a log file,
    a cluster job) a plain line is logged at every evaluation, so logs stay short.
    """

    def __init__(self, name: str, total: int, batch_size: int, start: int,
                 stream: TextIO | None = None):
        self.name = name
        self.total = total
        self.batch_size = batch_size
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.last_time = time.perf_counter()
        self.last_iteration = start
        self.throughput = 0.0
        self.test_error: float | None = None

    def update(self, iteration: int, lr: float, train_error: float,
               test_error: float | None = None) -> None:
        """Report a log point; `test_error` is given at evaluation points."""
        now = time.perf_counter()
        if iteration > self.last_iteration and now > self.last_time:
            self.throughput = (iteration - self.last_iteration) * self.batch_size / (
                now - self.last_time)
        self.last_time, self.last_iteration = now, iteration
        if test_error is not None:
            self.test_error = test_error
        line = self.line(iteration, lr, train_error)
        if self.live:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
            if iteration >= self.total:
                self.stream.write("\n")
        elif test_error is not None:
            log.info(line)

    def line(self, iteration: int, lr: float, train_error: float) -> str:
        """The progress line for the current state."""
        remaining = (self.total - iteration) * self.batch_size / self.throughput \
            if self.throughput else float("nan")
        test = "-" if self.test_error is None else f"{self.test_error:5.2f}%"
        return (f"{self.name} it {iteration}/{self.total} lr {lr:.4g} "
                f"train err {train_error:5.2f}% test err {test} "
                f"{self.throughput:,.0f} img/s ETA {format_duration(remaining)}")


def format_duration(seconds: float) -> str:
    """`1h02m`, `3m05s`, `12s`; `?` when unknown."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def let_new_event_file_sort_last(tensorboard: Path) -> None:
    """Wait, if needed, until a new TensorBoard event file will sort after the existing ones.

    TensorBoard reads a run's event files in name order, and a name begins with the second
    the writer started. A resumed writer started within the same second as the one it
    replaces could sort first, and the stale points its purge marker drops would come back.
    """
    started = [int(part[3]) for part in (path.name.split(".") for path in
                                         tensorboard.glob("events.out.tfevents.*"))
               if len(part) > 3 and part[3].isdigit()]
    if started:
        time.sleep(max(0.0, max(started) + 1 - time.time()))


# The HParams tab's metrics: tag -> the summary.json entry its final value is read from.
HPARAMS_METRICS = {"final/test_error": "final_test_error",
                   "final/train_error": "final_train_error", "best/test_error": "best_test_error"}
# Declared too, so a trial in the HParams tab opens onto the run's error curves.
HPARAMS_CURVES = ("error/test", "error/train")
HPARAMS_DOMAINS = {"arch": ["plain", "resnet"], "shortcut": ["A", "B", "C", PLAIN_SHORTCUT]}


def write_hparams(writer: SummaryWriter, config: Config, summary: dict[str, Any]) -> None:
    """The run's hyperparameters (arch, depth, shortcut, seed) and final/best errors for
    TensorBoard's HParams tab, so `tensorboard --logdir outputs` compares every run.

    Written by the run's own `writer` into its own event folder (not `add_hparams`, which
    opens a sub-folder): TensorBoard then lists each run once, its HParams session beside
    its curves.
    """
    values = {"arch": config.arch, "depth": config.depth,
              "shortcut": PLAIN_SHORTCUT if config.arch == "plain" else config.shortcut,
              "seed": config.seed}
    # Every metric is declared, so runs that diverged before an evaluation still compare.
    metrics = dict.fromkeys([*HPARAMS_METRICS, *HPARAMS_CURVES], 0.0)
    experiment, start, end = hparams(values, metrics, HPARAMS_DOMAINS)
    for proto in (experiment, start, end):
        writer.file_writer.add_summary(proto)
    step = summary.get("iterations_done") or config.train.iterations
    for tag, key in HPARAMS_METRICS.items():
        if summary.get(key) is not None:
            writer.add_scalar(tag, float(summary[key]), step)
    writer.flush()
