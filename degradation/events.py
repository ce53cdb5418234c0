"""A run's TensorBoard event files read back as scalars, merged as TensorBoard shows them
after restarts; the one reader both training (to repair a damaged log) and analysis use.

Usage: `read_events(event_files(run_dir / "tensorboard"), on_damaged=print)` gives every
(iteration, tag, value) once, the value written last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from degradation.errors import error_line
from degradation.storage import DamagedFile

EVENT_FILES = "events.out.tfevents.*"  # the names SummaryWriter gives its files

Point = tuple[float, int, str, float]  # wall time, iteration (step), tag, value


def event_files(folder: Path) -> list[Path]:
    """The event files SummaryWriter wrote into `folder`, in name order."""
    return sorted(Path(folder).glob(EVENT_FILES))


def read_event_file(path: Path, keep: Callable[[str], bool] = lambda tag: True) -> list[Point]:
    """The scalars of one event file whose tag `keep` accepts, or `DamagedFile` naming what
    is wrong with it (a file cut off after its first records is read up to the cut)."""
    from tensorboard.backend.event_processing.event_accumulator import (
        STORE_EVERYTHING_SIZE_GUIDANCE,
        EventAccumulator,
    )

    # One file at a time and purge_orphaned_data=False: `read_events` decides what a restart
    # supersedes. Size 0 keeps every point (the default keeps a random 10,000 per tag).
    try:
        accumulator = EventAccumulator(str(path), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE,
                                       purge_orphaned_data=False).Reload()
    except Exception as error:  # any failure of the reader means the file is damaged
        raise DamagedFile(f"{path} is damaged ({error_line(error, with_type=False)})") from None
    # Every event file opens with its format version: a file with bytes but without it is
    # not an event file (a file cut off later just ends early, which is read as it is).
    if accumulator.file_version is None and path.stat().st_size > 0:
        raise DamagedFile(f"{path} is damaged (no TensorBoard events in it)")
    return [(event.wall_time, event.step, tag, event.value)
            for tag in accumulator.Tags()["scalars"] if keep(tag)
            for event in accumulator.Scalars(tag)]


def read_events(files: Sequence[Path], on_damaged: Callable[[DamagedFile], None],
                keep: Callable[[str], bool] = lambda tag: True) -> list[tuple[int, str, float]]:
    """The (iteration, tag, value) of a run's event files, sorted by tag and iteration, merged
    as TensorBoard shows them after restarts; each damaged file is given to `on_damaged` and
    left out.

    A resumed run restarts from its last checkpoint: a file that starts at step s supersedes
    everything written earlier at steps >= s (what SummaryWriter's purge_step means), even if
    the writer did not purge. Files are taken in the order they were written. `keep` must
    leave out any tag that is no curve (written once as a run ends), as the first step of a
    file decides what it supersedes.
    """
    per_file = []
    for path in files:
        try:
            points = read_event_file(path, keep)
        except DamagedFile as error:
            on_damaged(error)
            continue
        if points:
            per_file.append(points)
    per_file.sort(key=lambda points: min(point[0] for point in points))
    kept: list[Point] = []
    for points in per_file:
        start = min(point[1] for point in points)
        kept = [point for point in kept if point[1] < start] + points
    # A (tag, step) written twice keeps the value written last.
    latest = {(tag, step): value for _, step, tag, value in sorted(kept, key=lambda p: p[0])}
    return [(step, tag, value) for (tag, step), value in sorted(latest.items())]
