"""What `degrade responses` and `degrade evaluate` stored in a run's folder, read back and
checked: `responses.json` (Figure 7's layer responses) and `evaluation.json` (the final
weights on whole splits).

Usage: `read_responses(records)` gives each run's stored responses; `clean_error(record,
"train")` the error `degrade evaluate` measured with the run's current checkpoint (or NaN).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from degradation.analysis.results import variants
from degradation.errors import error_line
from degradation.runs import RunRecord
from degradation.storage import DamagedFile, read_json

RESPONSES_FILE = "responses.json"
EVALUATION_FILE = "evaluation.json"  # `degrade evaluate`: the final weights on whole splits
log = logging.getLogger("degrade")


def read_responses(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """The Figure 7 measurements (`responses.json`) already stored in the given runs, each
    with its run's `variant`; a damaged one is named in a `warning:` line and left out."""
    labels = variants(records)
    found = []
    for record in records:
        path = record.path / RESPONSES_FILE
        if path.exists():
            try:
                found.append({**read_responses_file(path), "variant": labels[record.path]})
            except DamagedFile as error:
                log.warning("warning: %s; left out (`degrade responses` measures it again)",
                            error)
    return found


def read_responses_file(path: Path) -> dict[str, Any]:
    """One run's `responses.json`, or `DamagedFile` naming what is wrong with it."""
    try:
        measured = read_json(path)
    except (OSError, ValueError) as error:
        raise DamagedFile(f"{path} is damaged ({error_line(error, with_type=False)})") from None
    valid = (isinstance(measured, dict) and measured.get("arch") in ("plain", "resnet")
             and isinstance(measured.get("depth"), int) and isinstance(measured.get("std"), list)
             and all(isinstance(value, int | float) for value in measured["std"]))
    if not valid:
        raise DamagedFile(f"{path} is damaged (not the arch, depth and per-layer std "
                          "`degrade responses` writes)")
    return measured


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (a checkpoint can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_evaluation(record: RunRecord) -> dict[str, Any] | None:
    """The run's `evaluation.json` if it measured the checkpoint the run holds now (its
    SHA-256 matches), else None; a damaged one is named in a `warning:` line."""
    stored = stored_evaluation(record)
    if stored is None:
        return None
    checkpoint = record.path / stored["checkpoint"]
    if not checkpoint.is_file() or file_sha256(checkpoint) != stored["sha256"]:
        return None
    return stored


def stored_evaluation(record: RunRecord) -> dict[str, Any] | None:
    """The run's `evaluation.json` whichever checkpoint it measured (its `checkpoint` and
    `sha256` say which), else None; a damaged one is named in a `warning:` line."""
    path = record.path / EVALUATION_FILE
    if not path.exists():
        return None
    try:
        stored = read_json(path)
        record.path / stored["checkpoint"]  # a name that makes no path is damage too
        valid = isinstance(stored["sha256"], str) and isinstance(stored["splits"], dict)
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("warning: %s is damaged (%s); left out (`degrade evaluate` measures it "
                    "again)", path, error_line(error, with_type=False))
        return None
    return stored if valid else None


def clean_error(record: RunRecord, split: str) -> float:
    """The error (%) `degrade evaluate` measured on `split` with the run's current checkpoint,
    or NaN where it has not."""
    stored = read_evaluation(record)
    entry = stored["splits"].get(split) if stored else None
    return float(entry["error"]) if isinstance(entry, dict) and "error" in entry else math.nan

