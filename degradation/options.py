"""The arguments and options several commands share, declared once: the runs folder of the
analysis commands, and the overrides, `--force` and Hydra's flags of `train` and `sweep`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from degradation.completion import complete_override
from degradation.help_text import INFO_TOPICS, overrides_help
from degradation.package import config_default

RUNS_PATH = typer.Argument(Path(config_default("output_dir")), help="Folder to search for runs.")
OUT = typer.Option(None, "--out", help="Where to write (default PATH/figures).")
RECURSIVE = typer.Option(False, "--recursive", help="Also read the output trees nested inside "
                         "PATH (folders holding their own runs/, e.g. a backup copy); a run "
                         "found in several folders is still counted once.")
OVERRIDES = typer.Argument(None, help=overrides_help(), show_default=False,
                           autocompletion=complete_override)
CFG = typer.Option(None, "--cfg", "-c", help="Print the config instead of running: job, hydra "
                   "or all (Hydra's --cfg).", rich_help_panel="Hydra")
RESOLVE = typer.Option(False, "--resolve", help="With --cfg: resolve interpolations.",
                       rich_help_panel="Hydra")
PACKAGE = typer.Option(None, "--package", "-p", help="With --cfg: only this part of the config "
                       "(e.g. train).", rich_help_panel="Hydra")
INFO = typer.Option(False, "--info", "-i", help="Print Hydra's information and exit; a "
                    f"topic may follow: {', '.join(INFO_TOPICS)} (default all).",
                    rich_help_panel="Hydra")
CONFIG_DIR = typer.Option(None, "--config-dir", exists=True, file_okay=False,
                          help="Your own presets: DIR/NAME.yaml is experiment=NAME (as "
                          "experiments/); DIR is on Hydra's search path too (DIR/hydra/"
                          "launcher/NAME.yaml).", rich_help_panel="Hydra")
FORCE = typer.Option(False, "--force", help="Retrain what has already finished (each old run "
                     "folder is kept beside the new one as <folder>.replaced-<time>).")
