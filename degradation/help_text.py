"""How `degrade --help` reads: docstrings as paragraphs, flags without a value type.

Typer builds each command's help from its docstring and shows `<bool>` after a flag; the
classes here are the Click command and group `degrade` uses instead (degradation/cli.py).
`overrides_help` names the keys of conf/config.yaml a command's KEY=VALUE may set.
"""

from __future__ import annotations

import inspect
import re

import typer

from degradation.package import config_keys

_LIST_OR_BLOCK = re.compile(r"\s|[-*\u2022]\s|\d+[.)]\s")


# What `--info TOPIC` may show: Hydra's --info topics.
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def reflowed(text: str | None) -> str | None:
    """A docstring as `--help` should show it: each paragraph one line, for rich to wrap.

    The source's line breaks only keep it under the line limit; rich would print them as
    ragged lines. Blank lines still separate paragraphs, and a paragraph holding a list or an
    indented block keeps its lines.
    """
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        paragraph if any(_LIST_OR_BLOCK.match(line) for line in paragraph.splitlines()[1:])
        or paragraph.startswith("\b") else " ".join(paragraph.split("\n"))
        for paragraph in paragraphs)


def _without_flag_types(params: list) -> list:
    """Flags take no value, so their help shows no type (Typer's help would say `<bool>`)."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class _UntypedFlags:
    """Mixed into a Click command or group: its flags show no value type in `--help`."""

    def get_params(self, ctx) -> list:  # (Click's signature; typer may ship its own Click)
        return _without_flag_types(super().get_params(ctx))  # type: ignore[misc]


class Command(_UntypedFlags, typer.core.TyperCommand):
    """A command whose help reads as paragraphs and whose flags show no value type."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflowed(self.help)


class Group(_UntypedFlags, typer.core.TyperGroup):
    """`degrade` itself, whose flags (`--version`, ...) show no value type in `--help`."""


def overrides_help() -> str:
    """The keys of conf/config.yaml for `--help`: its top-level keys and its groups."""
    listed: list[str] = []
    for key in config_keys():
        name = f"{key.split('.')[0]}.*" if "." in key else key
        if name not in listed and name not in ("defaults", "hydra.*"):
            listed.append(name)
    return (f"Hydra overrides KEY=VALUE: {', '.join(listed)} (`--cfg job` shows every key "
            "and value), experiment=NAME, hydra/launcher=NAME.")
