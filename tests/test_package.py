"""The package as a user installs it: a built wheel, away from the repository."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from degradation import package
from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "degradation", "hydra_plugins",
           "conf", "experiments")


def test_configuration_is_found_in_the_checkout() -> None:
    assert package.data_dir("conf") == REPO / "conf"
    assert package.data_dir("experiments") == REPO / "experiments"
    assert package.source_checkout() == REPO


def test_installed_wheel_prefers_its_own_configuration(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "site-packages" / "degradation"
    (installed / "conf").mkdir(parents=True)
    (tmp_path / "site-packages" / "pyproject.toml").write_text("")
    monkeypatch.setattr(package, "PACKAGE_DIR", installed)
    assert package.data_dir("conf") == installed / "conf"
    assert package.source_checkout() is None  # so no enclosing repository's commit is taken


def test_version_names_the_commit_of_a_pip_install_from_git(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    class Installed:
        def read_text(self, name: str) -> str | None:
            return '{"url": "https://x/degrade.git", "vcs_info": {"vcs": "git", ' \
                   '"commit_id": "0123abc"}}' if name == "direct_url.json" else None

    monkeypatch.setattr(package, "source_checkout", lambda: None)
    monkeypatch.setattr(package.metadata, "distribution", lambda name: Installed())
    assert package.code_version() == "0123abc"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built into a wheel and installed without dependencies into a folder."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy, so that building leaves no build/ in the repository
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    git = ["git", "-c", "user.name=degrade", "-c", "user.email=degrade@localhost"]
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "source"]):
        subprocess.run([*git, *command], cwd=source, check=True, capture_output=True)
    # The interpreter's setuptools builds the wheel when it can (>= 70.1 or `wheel`
    # installed); otherwise pip fetches a build backend from the configured index.
    can_build = (importlib.util.find_spec("wheel") is not None
                 or importlib.util.find_spec("setuptools.command.bdist_wheel") is not None)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(work / "dist"), str(source),
                            *(["--no-build-isolation"] if can_build else [])],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((work / "dist").glob("degrade-*.whl"))
    target = work / "target"
    done = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def installed_degrade(target: Path, *args: object, cwd: Path
                      ) -> subprocess.CompletedProcess[str]:
    """The installed console script, run from `cwd` with the installed package first."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run([str(target / "bin" / "degrade"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_wheel_works_from_any_folder(installed: Path, small_cifar_root: Path, tmp_path: Path
                                     ) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed)}
    where = subprocess.run(
        [sys.executable, "-c", "import degradation.config as c; print(c.CONF_DIR)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(installed / "degradation" / "conf"), where.stderr

    version = installed_degrade(installed, "--version", cwd=elsewhere)
    assert version.returncode == 0, version.stderr
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=installed.parent / "source",
                            capture_output=True, text=True, check=True).stdout.strip()
    assert version.stdout.strip() == f"degrade {package.version()} (commit {commit})"

    shown = installed_degrade(installed, "train", "--show-config", "experiment=fig6",
                              cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert "iterations: 64000" in shown.stdout and "arch:" in shown.stdout

    output = tmp_path / "outputs"
    overrides = tiny_overrides(small_cifar_root, output, **{
        "train.iterations": 2, "train.milestones": "[1]", "train.log_every": 1,
        "train.eval_every": 2, "train.compile": "false"})
    swept = installed_degrade(installed, "sweep", *overrides, cwd=elsewhere)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert "sweep finished: 1/1 runs ended" in swept.stdout
    assert len(list(output.rglob("summary.json"))) == 1
    assert not (elsewhere / "outputs").exists()


def _minimum_versions() -> dict[str, str]:
    """.ci/minimum-versions.txt: the versions `make test-min` installs, by package name."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / ".ci" / "minimum-versions.txt").read_text().splitlines():
        if line.split("#")[0].strip():
            requirement = Requirement(line.split("#")[0])
            (pin,) = requirement.specifier
            assert pin.operator == "==", line
            pins[canonicalize_name(requirement.name)] = pin.version
    return pins


def test_every_declared_floor_is_a_minimum_version_that_make_test_min_installs() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; test-min runs 3.10 without it
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [*project["dependencies"],
                *(line for extra in project["optional-dependencies"].values() for line in extra)]
    floors: dict[str, set[Version]] = {}
    for line in declared:
        requirement = Requirement(line)
        lower = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        assert len(lower) == 1, f"{line}: every dependency declares one floor (>=)"
        floors.setdefault(canonicalize_name(requirement.name), set()).update(lower)
    pins = {name: {Version(version)} for name, version in _minimum_versions().items()}
    assert floors == pins
    # What the code needs: typer that reads `str | None` and brings a click it works with
    # (0.12-0.15.3 pair with click >= 8.2 and break), and rich for the live table.
    assert min(floors["typer"]) >= Version("0.15.4") and "rich" in floors
    assert min(floors["torch"]) >= Version("2.3")  # SGD(fused=...), which make_sgd passes


def test_build_leftovers_are_ignored_by_git() -> None:
    # `pip install .` and `pip wheel .` leave build/ behind; stale files there would enter
    # the next wheel if they were ever committed.
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("build/lib/degradation/cli.py", ".venv-min/bin/python"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert ignored.returncode == 0, path


def test_the_readme_names_the_declared_floors() -> None:
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    install = readme.split("By hand:")[1].split("## ")[0]
    spelled = {name.lower(): name for name in ("PyYAML",)}
    assert [f"{name} {version}" for name, version in _minimum_versions().items()
            if f"{spelled.get(name, name)} {version}" not in install] == []
