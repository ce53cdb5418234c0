"""Shell completion as an interactive bash does it: keys typed at a prompt, Tab pressed, the
line read back from the terminal (bash splits words at `=`, which a direct call of the
completion function never shows)."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
PROMPT = "READY> "


class Bash:
    """An interactive `bash --norc` in a pseudo-terminal with degrade's completion sourced."""

    def __init__(self, folder: Path) -> None:
        # `degrade` on the PATH is this checkout run by this interpreter, as tests run it,
        # under the name the completion script is written for.
        command = folder / "bin" / "degrade"
        command.parent.mkdir()
        command.write_text(f"#!{sys.executable}\nfrom degradation.cli import main\nmain()\n")
        command.chmod(0o755)
        env = {"PATH": f"{command.parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(folder),
               "TERM": "dumb", "PS1": PROMPT, "PYTHONPATH": str(PROJECT), "INPUTRC": "/dev/null",
               "COLUMNS": "200", "LINES": "50"}
        script = subprocess.run([command, "--show-completion", "bash"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert script.returncode == 0, script.stderr
        assert "COMP_LINE" in script.stdout  # degrade's script, not Typer's
        (folder / "completion.bash").write_text(script.stdout)
        self.unread = b""
        self.fd, terminal = pty.openpty()
        self.process = subprocess.Popen(["bash", "--norc", "--noprofile", "-i"], stdin=terminal,
                                        stdout=terminal, stderr=terminal, env=env, cwd=folder,
                                        start_new_session=True)
        os.close(terminal)
        # The quotes keep the typed line from holding the text the output is waited for.
        self.send(f"source {folder / 'completion.bash'}; echo sourced''-script\n")
        self.read_until(f"sourced-script\r\n{PROMPT}")

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def read_until(self, text: str, timeout: float = 120.0) -> str:
        """What the terminal shows up to the end of `text`; what follows is kept for the next
        read (the timeout only guards a hang)."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.unread:
            assert time.monotonic() < deadline, f"no {text!r} in {self.unread!r}"
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if ready:
                self.unread += os.read(self.fd, 4096)
        seen, _, self.unread = self.unread.partition(text.encode())
        return (seen + text.encode()).decode(errors="replace")

    def line_after(self, keys: str) -> str:
        """The command line once `keys` are typed (Tabs included): the line is sent to `echo`,
        with `]END` after its end, so the spaces completion added show."""
        self.send(keys)
        self.send("\x01echo LINE:\x05]END\n")  # Ctrl-A: start of line; Ctrl-E: its end
        shown = self.read_until("]END\r\n" + PROMPT)
        return shown.rsplit("LINE:", 1)[1].split("]END")[0]

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self.fd)


@pytest.fixture
def bash(tmp_path: Path):
    shell = Bash(tmp_path)
    yield shell
    shell.close()


@pytest.mark.slow
def test_bash_completes_a_key_then_its_value_in_one_word(bash: Bash) -> None:
    # No space after `experiment=`: the value follows; one after the value.
    assert bash.line_after("degrade train exp\t") == "degrade train experiment="
    assert bash.line_after("degrade train exp\tfi\t") == "degrade train experiment=fig6 "
    assert bash.line_after("degrade sweep depth=20,56 hydra/launcher=lo\t") == \
        "degrade sweep depth=20,56 hydra/launcher=local "
    # slurm and slurm_local: the common part, and no space, as bash does for any word.
    assert bash.line_after("degrade sweep hydra/launcher=sl\t") == \
        "degrade sweep hydra/launcher=slurm"


@pytest.mark.slow
def test_bash_lists_presets_after_the_equals_sign_and_no_hydra_keys(bash: Bash) -> None:
    # Two Tabs list the candidates in order (the last one is waited for), then bash shows
    # the prompt and the line again.
    bash.send("degrade train experiment=\t\t")
    listed = bash.read_until("table6") + bash.read_until(f"{PROMPT}degrade train experiment=")
    assert {"fig6", "table6", "quick", "smoke"} <= set(listed.split())
    assert "train.lr=" not in listed
    bash.send("\x15degrade train d\t\t")  # Ctrl-U clears the line first
    listed = bash.read_until("device=") + bash.read_until(f"{PROMPT}degrade train d")
    assert {"depth=", "device=", "data.root="} <= set(listed.split())
    assert "defaults=" not in listed


def test_conf_config_yaml_is_read_once_for_defaults_and_completion(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from degradation import package
    from degradation.completion import complete_override

    read, load = [], OmegaConf.load
    monkeypatch.setattr(OmegaConf, "load", lambda *args: read.append(args) or load(*args))
    for cached in (package.config_default, package._config_yaml):
        cached.cache_clear()
    context = SimpleNamespace(params={})
    assert "train.lr=" in complete_override(context, "train.l")
    assert "depth=" in complete_override(context, "d")  # each Tab, and each key once
    assert package.config_default("data.root") is not None
    assert package.config_default("output_dir") is not None
    assert len(read) == 1
