"""The checkpoint format: what a run's checkpoint holds, its one writer and its one reader.

A checkpoint is self-describing, like torchvision's reference trainer's: the run's whole
config, the iteration, the model, the optimizer, the data stream's position, every random
generator, and the loop's own state (warm-up, best and last errors, the training-error sums
since the last log point, the time spent), so resuming needs nothing else. `checkpoint.pt` is
the newest and `checkpoint.prev.pt` the one before; each is verified (zip CRCs) before use.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from degradation.config import Config, ConfigError, from_dict
from degradation.errors import error_line
from degradation.runs import CHECKPOINT, PREVIOUS_CHECKPOINT, identity
from degradation.storage import (
    StorageError,
    atomic_write_bytes,
    keep_as_previous,
    set_aside_damaged,
)

FORMAT = 1  # the "format" entry; a checkpoint of another format is refused, never guessed at
KEYS = frozenset({
    "config", "iteration", "model", "optimizer", "batches", "rng", "warming_up", "best",
    "last_test", "last_train", "accumulators", "elapsed_s"})


class DamagedCheckpoint(StorageError):
    """A checkpoint file that was read but is truncated, corrupt or not a checkpoint."""


class RefusedCheckpoint(StorageError):
    """A checkpoint file whose pickle names something a checkpoint never holds (it could run
    code): refused, never set aside and replaced as a damaged one would be."""


def _numpy_globals() -> list[Any]:
    """What a checkpoint holds beyond tensors and plain data, for `weights_only` loading:
    NumPy's RNG state (`np.random.get_state()`), a uint32 array."""
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy 2
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write `state` as the newest checkpoint, keeping the previous one as a fallback.

    At every moment `checkpoint.pt` is a complete checkpoint (the old one is hard-linked to
    `checkpoint.prev.pt` rather than moved), so a crash anywhere in here loses nothing.
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    run_dir = Path(run_dir)
    newest = run_dir / CHECKPOINT
    if newest.exists():
        keep_as_previous(newest, run_dir / PREVIOUS_CHECKPOINT)
    atomic_write_bytes(newest, buffer.getvalue())


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest readable checkpoint (or None) and a one-line note for each damaged one skipped."""
    _, state, notes = newest_checkpoint(run_dir, map_location)
    return state, notes


def newest_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu",
                      set_aside: bool = False
                      ) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest readable checkpoint's path and state (None, None without one), and a
    one-line note for each damaged one skipped.

    The one reader of a run's checkpoints. A damaged one is skipped for the one before it;
    with `set_aside` (training, which holds the run's lock) it is also renamed
    `<name>.damaged`, kept for inspection and never loaded again. An I/O error is raised,
    never taken for damage: the file may be fine.
    """
    notes = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            return path, read_checkpoint(path, map_location), notes
        except DamagedCheckpoint as error:
            if set_aside:
                kept = set_aside_damaged(path)
                notes.append(f"{error}; kept as {kept.name}, using the checkpoint before it")
            else:
                notes.append(f"{error}; skipped")
    return None, None, notes


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """One checkpoint file, verified: `DamagedCheckpoint` when it is truncated, corrupt or
    not a checkpoint, and plain `StorageError` when it cannot be read at all (an I/O error)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise StorageError(f"checkpoint {path} cannot be read ({error.strerror})") from None
    # torch.load does not check the zip CRCs, so a flipped bit in a tensor would load silently.
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged or truncated "
                                f"({error_line(error, with_type=False)})") from None
    if bad is not None:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged (checksum mismatch in {bad})")
    # weights_only: the pickle may build tensors, plain data and NumPy's RNG state, nothing
    # else, so a crafted file cannot run code. Its CRCs hold, so a refusal is not damage.
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise DamagedCheckpoint(f"checkpoint {path} is damaged ({error_line(error)})"
                                    ) from None
        named = re.search(r"GLOBAL ([\w.]+)", str(error))  # torch's wording varies by version
        raise RefusedCheckpoint(f"checkpoint {path} is refused: it holds more than tensors, "
                                "plain data and NumPy's random state"
                                + (f" (it names {named[1]})" if named else "")
                                + "; loading it could run code, so it is never loaded") from None
    except Exception as error:  # an unpicklable payload can raise almost anything
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({error_line(error)})") from None
    if not (isinstance(state, dict) and "iteration" in state and "model" in state):
        raise DamagedCheckpoint(f"checkpoint {path} is not a degrade checkpoint")
    return state


def check_checkpoint(path: Path, state: dict[str, Any], config: Config) -> None:
    """Refuse a checkpoint of another format or another configuration, naming the values."""
    if state.get("format") != FORMAT:
        raise StorageError(f"checkpoint {path} has format {state.get('format')!r}; this "
                           f"version reads format {FORMAT}: move it away to retrain")
    missing = sorted(KEYS - state.keys())
    if missing:
        raise StorageError(f"checkpoint {path} has no {', '.join(missing)}: it was not "
                           "written by `degrade train`; move it away to retrain")
    try:
        saved = identity(from_dict(state["config"]))
    except ConfigError as error:
        raise StorageError(f"checkpoint {path} holds a configuration this version cannot "
                           f"read ({error}); move it away to retrain") from None
    wanted = identity(config)
    changed = [f"{key}={saved.get(key)!r} there, {wanted.get(key)!r} here"
               for key in sorted(saved.keys() | wanted.keys())
               if saved.get(key) != wanted.get(key)]
    if changed:
        raise ConfigError(f"checkpoint {path} was made with different settings "
                          f"({'; '.join(changed)}); move it away to retrain")
