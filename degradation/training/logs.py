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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from degradation.config import Config
from degradation.errors import error_line
from degradation.events import event_files, read_events
from degradation.runs import GRAD_NORMS_FILE, METRICS_FILE, PLAIN_SHORTCUT, TENSORBOARD_DIR
from degradation.storage import DamagedFile, atomic_write_text, set_aside_damaged

if TYPE_CHECKING:  # pandas is imported only by the readers, not by every training process
    import pandas as pd

TAGS = ("lr", "error/train", "loss/train", "error/test", "loss/test")
GRAD_NORM_COLUMNS = ("iteration", "layer", "name", "grad_norm")
GRAD_NORM_TAG = "grad_norm/"  # + `<layer, 3 digits>_<name>`: TensorBoard's copy of the norms
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
        if resume_from is not None:
            self.rows, damaged = _resumed_rows(self.csv_path, read_metrics_prefix, resume_from)
            if damaged:  # repaired at once: a run stopped before its next log leaves none
                self._write_csv()
            self.grad_norms, damaged = _resumed_rows(
                self.grad_norms_path, read_grad_norm_prefix, resume_from,
                lambda: _grad_norms_from_events(run_dir))
            if damaged:
                self._write_grad_norms()
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
            self.writer.add_scalar(f"{GRAD_NORM_TAG}{layer:03d}_{name}", norm, iteration)
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


def _resumed_rows(path: Path, read_prefix: Callable[[Path], tuple[dict[int, Any], str | None]],
                  resume_from: int, recover: Callable[[], dict[int, Any]] | None = None
                  ) -> tuple[dict[int, Any], bool]:
    """A log's rows up to the checkpoint's iteration `resume_from`, from its longest valid
    prefix. A damaged log is named in a `warning:` and set aside as `<name>.damaged` (the
    caller writes the repaired one; True says so), so no damaged row is read back as a value;
    the rows it lost up to the checkpoint are taken from `recover` where that holds them.
    """
    if not path.exists():
        return {}, False
    rows, damage = read_prefix(path)
    kept = {iteration: row for iteration, row in rows.items() if iteration <= resume_from}
    if damage is None:
        return kept, False
    read_to = max(rows, default=-1)
    note = ""
    if read_to < resume_from:
        found = {iteration: row for iteration, row in (recover() if recover else {}).items()
                 if read_to < iteration <= resume_from}
        kept.update(found)
        note = (f"; it reads only up to iteration {read_to}" if rows else
                "; none of its rows reads") + (
            f", and {len(found)} log points up to the checkpoint's {resume_from} are taken "
            "from the TensorBoard events" if found else f", short of the checkpoint's "
            f"{resume_from}")
    aside = set_aside_damaged(path)
    log.warning("warning: %s; kept its valid log points up to iteration %d%s (the damaged "
                "file is kept as %s)", damage, resume_from, note, aside)
    return dict(sorted(kept.items())), True


def _grad_norms_from_events(run_dir: Path) -> dict[int, dict[str, float]]:
    """The gradient norms in a run's TensorBoard events ({iteration: {layer name: norm}}, the
    layers in network order): exactly grad_norms.csv's values, both are float32. Read only to
    repair a damaged grad_norms.csv."""
    def damaged(error: DamagedFile) -> None:  # its points are missing, said by the caller
        log.debug("no gradient norms recovered from it: %s", error)

    found: dict[int, dict[tuple[int, str], float]] = {}
    for step, tag, value in read_events(event_files(run_dir / TENSORBOARD_DIR), damaged,
                                        keep=lambda tag: tag.startswith(GRAD_NORM_TAG)):
        layer, _, name = tag.removeprefix(GRAD_NORM_TAG).partition("_")
        if layer.isdigit():
            found.setdefault(step, {})[int(layer), name] = value
    layers = max(map(len, found.values()), default=0)  # a point cut short is no point
    return {iteration: {name: norm for (_, name), norm in sorted(norms.items())}
            for iteration, norms in found.items() if len(norms) == layers}


def read_metrics(path: Path) -> dict[int, dict[str, float]]:
    """Rows of a `metrics.csv`, keyed by iteration, blank cells left out; `DamagedFile` when
    any of it is not such a file (an `OSError` when it cannot be read at all)."""
    rows, damage = read_metrics_prefix(path)
    if damage is not None:
        raise DamagedFile(damage)
    return rows


def read_metrics_prefix(path: Path) -> tuple[dict[int, dict[str, float]], str | None]:
    """The rows of a `metrics.csv` up to its first damaged line, and what is wrong there
    (`<path> is damaged (line N: ...)`; None when the whole file is good).

    Strict, because a damaged row must never pass as a value: a row cut to `15,0.0` would
    otherwise read as lr = 0.0 at iteration 15. A row has exactly the header's fields, an
    iteration above the row before, numbers or blanks in the other cells, and its line
    break (the writer ends every row with one: a last line without it was cut short).
    """
    rows: dict[int, dict[str, float]] = {}
    header: tuple[str, ...] = ()
    for number, fields, damage in _csv_lines(path):
        if damage is None and number == 1:
            header = tuple(fields)
            if header[:1] != ("iteration",) or not set(header[1:]) <= set(TAGS) \
                    or len(set(header)) < len(header):
                damage = (f"its header is {','.join(header)!r}, not iteration and columns "
                          f"of {','.join(TAGS)}")
        elif damage is None:
            damage = _field_count(fields, len(header))
            if damage is None:
                try:
                    iteration = int(fields[0])
                    values = {tag: float(cell) for tag, cell in zip(header[1:], fields[1:],
                                                                    strict=True) if cell}
                except ValueError as error:
                    damage = error_line(error, with_type=False)
                else:
                    damage = _order(iteration, max(rows, default=None))
        if damage is not None:
            return rows, f"{path} is damaged (line {number}: {damage})"
        if number > 1:
            rows[iteration] = values
    return rows, None


def read_grad_norm_prefix(path: Path) -> tuple[dict[int, dict[str, float]], str | None]:
    """A `grad_norms.csv` as {iteration: {layer name: norm}} (layers in network order) up to
    its first damaged line, and what is wrong there (None when the whole file is good).

    Strict as `read_metrics_prefix`, and whole log points only: every iteration lists the
    same layers as the first, in order (a point cut short at a line break is damage too).
    """
    rows: dict[int, dict[str, float]] = {}
    layers: list[str] = []  # the first log point's layers: every point has them all
    current: dict[str, float] = {}
    iteration = None
    for number, fields, damage in _csv_lines(path):
        if damage is None and number == 1 and tuple(fields) != GRAD_NORM_COLUMNS:
            damage = f"its header is {','.join(fields)!r}, not {','.join(GRAD_NORM_COLUMNS)}"
        if damage is None and number > 1:
            damage = _field_count(fields, len(GRAD_NORM_COLUMNS))
        if damage is None and number > 1:
            try:
                at, layer, name = int(fields[0]), int(fields[1]), fields[2]
                norm = float(fields[3])
            except ValueError as error:
                damage = error_line(error, with_type=False)
        if damage is None and number > 1 and at != iteration:  # a new log point begins
            damage = _whole_point(current, layers)
            if damage is None and current:
                rows[iteration] = current
                layers = layers or list(current)
            damage = damage or _order(at, iteration)
            iteration, current = at, {}
        due = len(current)  # the layer this row must be, named as in the first point
        expected = layers[due] if due < len(layers) else None
        if damage is None and number > 1 and (layer != due or not name or name in current
                                              or (layers and name != expected)):
            damage = f"layer {layer} ({name!r}) where layer {due}" + (
                f" ({expected!r})" if expected else "") + " was due"
        if damage is not None:
            return rows, f"{path} is damaged (line {number}: {damage})"
        if number > 1:
            current[name] = norm
    damage = _whole_point(current, layers)
    if damage is not None:
        return rows, f"{path} is damaged (iteration {iteration}, its last: {damage})"
    if current:
        rows[iteration] = current
    return rows, None


def _csv_lines(path: Path) -> Iterator[tuple[int, list[str], str | None]]:
    """(line number, fields, None) for each line of a CSV file as its writer wrote it, or
    (line number, [], why) for a line that is not text or lacks its line break; `OSError`
    when the file cannot be read. The writer's cells are numbers and module names: no quotes,
    no commas, no line breaks inside a cell."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if not data:
        yield 1, [], "it is empty"
        return
    for number, line in enumerate(lines[:-1], start=1):
        try:
            text = line.decode("utf-8")
            fields = next(csv.reader([text])) if text else []
        except UnicodeDecodeError:
            yield number, [], "not UTF-8 text"
            return
        except csv.Error as error:  # Python < 3.11 refuses a NUL byte, for one
            yield number, [], f"not CSV ({error})"
            return
        yield number, fields, None
    if lines[-1]:
        yield len(lines), [], "cut short (no line break at its end)"


def _field_count(fields: list[str], expected: int) -> str | None:
    """Why a row does not have the header's `expected` fields; None when it has."""
    if len(fields) == expected:
        return None
    return f"{len(fields)} fields where the header has {expected}"


def _order(iteration: int, previous: int | None) -> str | None:
    """Why `iteration` cannot follow `previous` in a log (rows go up); None when it can."""
    if iteration < 0 or (previous is not None and iteration <= previous):
        return f"iteration {iteration} after iteration {previous}"
    return None


def _whole_point(norms: dict[str, float], layers: list[str]) -> str | None:
    """Why a log point's layers differ from the first point's; None when they match."""
    if not norms or not layers or list(norms) == layers:
        return None
    return f"{len(norms)} of its {len(layers)} layers"


def _read_grad_norm_rows(path: Path) -> dict[int, dict[str, float]]:
    """A `grad_norms.csv` as {iteration: {layer name: norm}}; `DamagedFile` for any damage."""
    rows, damage = read_grad_norm_prefix(path)
    if damage is not None:
        raise DamagedFile(damage)
    return rows

# `grad_norms.csv`, one row per (iteration, conv layer): `layer` is the conv's 0-based index
# in network order, `name` its qualified module name, `grad_norm` the L2 norm of the gradient
# of its weight at that iteration. Runs trained before gradient logging have no file.
_GRAD_NORM_DTYPES = {"iteration": "int64", "layer": "int64", "name": object,
                     "grad_norm": "float64"}


def read_grad_norms(folder: Path) -> pd.DataFrame:
    """A run's `grad_norms.csv` (columns `GRAD_NORM_COLUMNS`); an empty frame when it has none;
    `DamagedFile` when any of it is damaged (`read_grad_norm_prefix`)."""
    import pandas as pd

    path = Path(folder) / GRAD_NORMS_FILE
    if not path.exists():
        return pd.DataFrame(columns=list(GRAD_NORM_COLUMNS)).astype(_GRAD_NORM_DTYPES)
    frame = _whole_grad_norms(path)
    if frame is not None:
        return frame
    rows = _read_grad_norm_rows(path)  # damaged, or written otherwise: says where, or reads
    records = [(iteration, layer, name, norm) for iteration, norms in rows.items()
               for layer, (name, norm) in enumerate(norms.items())]
    return pd.DataFrame(records, columns=list(GRAD_NORM_COLUMNS)).astype(_GRAD_NORM_DTYPES)


def _whole_grad_norms(path: Path) -> pd.DataFrame | None:
    """A `grad_norms.csv` exactly as the writer writes it, read by pandas (8x faster than
    `read_grad_norm_prefix` on a 64k-iteration ResNet-110's 70k rows, BENCHMARKS.md), or
    None when any rule of `read_grad_norm_prefix` might be broken."""
    import pandas as pd

    with path.open("rb") as file:
        head = file.readline()
        if not head:  # empty: the strict reader names it
            return None
        file.seek(-1, 2)
        if head != (",".join(GRAD_NORM_COLUMNS) + "\n").encode() or file.read(1) != b"\n":
            return None
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[], encoding="utf-8",
                            skip_blank_lines=False, dtype={"name": object}, engine="c")
    except (ValueError, pd.errors.ParserError):  # UTF-8 errors are ValueErrors
        return None
    kinds = [str(dtype) for dtype in frame.dtypes]
    if list(frame.columns) != list(GRAD_NORM_COLUMNS) or kinds != [
            "int64", "int64", "object", "float64"] or frame.empty:
        return None
    iterations, layers = frame["iteration"], frame["layer"]
    point = iterations.ne(iterations.shift()).cumsum()  # one number per log point
    first = frame["name"][point == 1].tolist()
    whole = (iterations.is_monotonic_increasing and iterations.iloc[0] >= 0
             and layers.eq(frame.groupby(point).cumcount()).all()
             and frame.groupby(point).size().eq(len(first)).all()
             and frame["name"].eq(pd.Series(first * (len(frame) // len(first)))).all()
             and len(set(first)) == len(first) and "" not in first)
    return frame.astype(_GRAD_NORM_DTYPES) if whole else None


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
              "shortcut": config.network_shortcut or PLAIN_SHORTCUT,
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
