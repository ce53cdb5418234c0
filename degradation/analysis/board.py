"""TensorBoard opened on the study: `tensorboard --logdir outputs` shows Figure 6 and HParams.

- Each finished run writes its HParams session into its own `<run>/tensorboard/` events
  (`training.logs.write_hparams`), so the HParams tab compares every run, each listed once.
- `degrade plot` and the end of `degrade sweep` write `<output_dir>/study/`: each network's
  error curves averaged over seeds (`plain-20/error/train`, ...) and a custom-scalars layout
  with Figure 6's panels, one chart per family for training error and one for test error.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from torch.utils.tensorboard import SummaryWriter

from degradation.analysis.scalars import aggregate, read_scalars

log = logging.getLogger("degrade")

STUDY_DIR = "study"
FIGURE6 = "Figure 6"
ERRORS = {"error/train": "training error", "error/test": "test error"}


def study_tag(arch: str, depth: int, shortcut: str, metric: str) -> str:
    """`plain-20/error/train`, `resnet-56-A/error/test`: a network's mean curve."""
    network = f"plain-{depth}" if arch == "plain" else f"{arch}-{depth}-{shortcut}"
    return f"{network}/{metric}"


def figure6_layout(networks: pd.DataFrame) -> dict[str, dict[str, list]]:
    """Figure 6's panels as a custom-scalars layout: per family (plain, ResNet with each
    shortcut) one chart of training error and one of test error, every depth in it."""
    charts: dict[str, list] = {}
    families = networks[["arch", "shortcut"]].drop_duplicates().sort_values(["arch", "shortcut"])
    for arch, shortcut in families.itertuples(index=False):
        name = "plain" if arch == "plain" else f"ResNet ({shortcut})"
        prefix = "plain-\\d+" if arch == "plain" else f"{arch}-\\d+-{re.escape(shortcut)}"
        for metric, words in ERRORS.items():
            charts[f"{name}: {words}"] = ["Multiline", [f"^{prefix}/{re.escape(metric)}$"]]
    return {FIGURE6: charts}


def write_study(output_dir: Path, scalars: pd.DataFrame) -> Path | None:
    """`<output_dir>/study/`: mean error curves per network (the common recipe's runs) and
    the Figure 6 layout; replaced as a whole each time. None when there is nothing to show."""
    errors = scalars[scalars["metric"].isin(list(ERRORS)) & (scalars["variant"] == "")
                     & (scalars["state"] != "diverged")]
    if errors.empty:
        return None
    means = aggregate(errors).reset_index()
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{STUDY_DIR}-", dir=output_dir))
    except OSError as error:  # a read-only tree: the figures may still go elsewhere (--out)
        log.warning("warning: no TensorBoard view of the study: cannot write into %s (%s)",
                    output_dir, error.strerror or error)
        return None
    writer = SummaryWriter(log_dir=str(staging))
    writer.add_custom_scalars(figure6_layout(means))
    for row in means.itertuples(index=False):
        writer.add_scalar(study_tag(row.arch, row.depth, row.shortcut, row.metric),
                          float(row.mean), int(row.iteration))
    writer.close()
    target = output_dir / STUDY_DIR
    shutil.rmtree(target, ignore_errors=True)  # derived from the runs: rewritten whole
    staging.rename(target)
    return target


def study_command(path: Path) -> Path | None:
    """Write `<path>/study/` from every run under `path`; its folder (None: nothing yet)."""
    return write_study(path, read_scalars(path))
