"""Console logging follows sys.stdout/sys.stderr, so nothing logs into a stream closed since."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from degradation.console import ConsoleHandler
from degradation.launch.compose import compose_tree


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("degrade", logging.WARNING, __file__, 1, message, None, None)


@pytest.mark.parametrize("to", ["stdout", "stderr"])
def test_the_console_handler_writes_to_the_stream_of_the_moment(
        monkeypatch: pytest.MonkeyPatch, to: str) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, to, first)
    handler = ConsoleHandler(to=to)
    handler.emit(record("one"))
    first.close()  # as Typer's runner and pytest's capture close theirs
    monkeypatch.setattr(sys, to, second)
    monkeypatch.setattr(logging, "raiseExceptions", True)
    handler.emit(record("two"))  # a plain StreamHandler: "I/O operation on closed file"
    assert second.getvalue() == "two\n"


def test_hydras_console_handlers_are_ours() -> None:
    hydra = compose_tree([], with_hydra=True).hydra
    for part, stream in (("hydra_logging", "stdout"), ("job_logging", "stderr")):
        console = hydra[part].handlers.console
        assert console["class"] == "degradation.console.ConsoleHandler", part
        assert console.get("to", "stderr") == stream, part


# --- commands for a user to paste ---------------------------------------------------------------

AWKWARD = ["x $(touch PWN)", "it's", "a\\", "a\\b", "a\\'b", "a${b}", "a\\${b}", "~/data",
           "a,b", "[1,2]", "a=b", "true", "null", "123", "1e5", "-inf", "", " lead", "'",
           "x\ty", "C:\\data\\", "ünï", "/plain/path-1_2.3", "a:b"]


@pytest.mark.parametrize("value", AWKWARD)
def test_an_override_reads_back_as_its_value_after_the_shell_and_hydra(
        value: str, tmp_path) -> None:
    import subprocess

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from degradation.console import override, shell_command

    command = shell_command("printf", "%s\\0", override("output_dir", value))
    pasted = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True,
                            check=True).stdout.decode()
    assert list(tmp_path.iterdir()) == []  # nothing ran
    (word,) = pasted.split("\0")[:-1]
    parsed = OverridesParser.create().parse_override(word)
    assert parsed.key_or_group == "output_dir"
    assert OmegaConf.create({"value": parsed.value()}).value == value  # interpolations too


def test_plain_words_are_left_as_they_are() -> None:
    from degradation.console import override, shell_command

    assert shell_command("degrade", "sweep", "depth=20,56", override("output_dir", "outputs"),
                         "train.milestones=[1,2]") == (
        "degrade sweep depth=20,56 output_dir=outputs 'train.milestones=[1,2]'")


def test_warnings_reach_stderr_once_each_and_only_while_asked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from degradation.console import warnings_to_stderr

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    log = logging.getLogger("degrade")
    handlers = list(log.handlers)
    with warnings_to_stderr():
        log.warning("damaged: a.csv")
        with warnings_to_stderr():  # a step of a command that prints them already
            log.warning("damaged: a.csv")
            log.warning("damaged: b.csv")
        log.info("not a warning")
    assert stderr.getvalue() == "damaged: a.csv\ndamaged: b.csv\n"
    assert log.handlers == handlers and log.propagate  # as the command found them
