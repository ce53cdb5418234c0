"""Build hook: a wheel records the git commit it was built from (`degrade --version`).

Everything else is in pyproject.toml.
"""

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

COMMIT_FILE = "_commit.txt"  # read by degradation.package.code_version


class BuildPyWithCommit(build_py):
    """build_py, plus degradation/_commit.txt when the source is a git checkout."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "degradation" / COMMIT_FILE
        if getattr(self, "editable_mode", False) or not target.parent.is_dir():
            return  # an editable install reads the commit from its checkout
        source = Path(__file__).resolve().parent
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=source, capture_output=True, text=True,
                                   timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return  # not a git checkout (an sdist): the version says "commit unknown"
        target.write_text(commit + ("+dirty" if dirty else "") + "\n")


setup(cmdclass={"build_py": BuildPyWithCommit})
