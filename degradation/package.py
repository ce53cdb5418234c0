"""Where the installed package keeps its configuration, and which version of the code it is.

`conf/` and `experiments/` live at the top of the repository; a wheel (`pip install .`,
`pip install git+URL`) ships them inside the package as `degradation/conf` and
`degradation/experiments` (pyproject.toml's package-dir). A source checkout or an editable
install reads them where they are.
"""

from __future__ import annotations

import functools
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
DISTRIBUTION = "degrade"
COMMIT_FILE = "_commit.txt"  # written into a wheel by setup.py's build hook


def data_dir(name: str) -> Path:
    """The folder `conf` or `experiments`: inside the installed package, else the checkout's."""
    packaged = PACKAGE_DIR / name
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / name


@functools.cache
def config_default(key: str) -> Any:
    """The value of a dotted key in conf/config.yaml (`output_dir`, `data.root`): the one
    place a default is written, read without importing torch."""
    from omegaconf import OmegaConf

    return OmegaConf.select(_config_yaml(), key, throw_on_missing=True)


def config_keys() -> list[str]:
    """Every key of conf/config.yaml, dotted (`train.lr`), read without importing torch."""
    from omegaconf import DictConfig

    def walk(node: DictConfig, prefix: str) -> list[str]:
        return [name for key, value in node.items_ex(resolve=False)
                for name in (walk(value, f"{prefix}{key}.") if isinstance(value, DictConfig)
                             else [f"{prefix}{key}"])]

    values = _config_yaml()
    return walk(values, "") if isinstance(values, DictConfig) else []


@functools.cache
def _config_yaml() -> Any:
    """conf/config.yaml as OmegaConf reads it, uncomposed: read once per process (`degrade`
    reads it for defaults, `--help` and shell completion before any command runs)."""
    from omegaconf import OmegaConf

    return OmegaConf.load(data_dir("conf") / "config.yaml")


def presets(config_dir: Path | None = None) -> dict[str, Path]:
    """The `experiment=NAME` presets: `experiments/*.yaml`, then the user's `config_dir/*.yaml`
    (a user's preset of the same name wins)."""
    folders = [data_dir("experiments"), *([Path(config_dir)] if config_dir else [])]
    return {path.stem: path for folder in folders for path in sorted(folder.glob("*.yaml"))}


def source_checkout() -> Path | None:
    """The repository the package is imported from (editable install, source tree), if any."""
    top = PACKAGE_DIR.parent
    if (PACKAGE_DIR / "conf").is_dir() or not (top / "pyproject.toml").is_file():
        return None  # an installed wheel: a git repository around site-packages is not ours
    return top


def code_version() -> str | None:
    """The git commit of the code that runs, `+dirty` when it had uncommitted changes.

    From the checkout the package is imported from, else the one the wheel was built from
    (setup.py writes it), else pip's record of a `pip install git+URL` (PEP 610
    direct_url.json); None when unknown.
    """
    top = source_checkout()
    if top is None:
        built = PACKAGE_DIR / COMMIT_FILE
        return built.read_text().strip() if built.is_file() else _installed_commit()
    try:
        found = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=top,
                               capture_output=True, text=True, timeout=5, check=True)
        root, commit = found.stdout.split()
        if Path(root).resolve() != top:
            return None  # the checkout was copied into another repository
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=PACKAGE_DIR,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def version() -> str:
    """The installed version of `degrade` (pyproject's, from the package metadata)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # imported from a source tree never installed
        from degradation import __version__

        return __version__


def _installed_commit() -> str | None:
    try:
        record = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not record:
        return None
    try:
        return json.loads(record).get("vcs_info", {}).get("commit_id")
    except (ValueError, AttributeError):
        return None
