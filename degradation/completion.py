"""Shell completion in bash, where `=` splits words: `degrade --install-completion` writes
this module's script for bash; zsh and fish keep Typer's, which see `key=value` whole.

Bash splits the command line at the characters of COMP_WORDBREAKS, `=` and `:` among them,
so `experiment=fi` reaches a completion function as three words, and a reply replaces only
what follows the last `=`. Typer's bash script passes bash's words on, and bash adds a space
after a completed word. The script below sends the line up to the cursor instead, split at
blanks as `degrade` reads it, trims each reply to the part bash replaces, and adds no space
after a key (`experiment=`), whose value follows.

`complete_override` is what every shell is offered for KEY=VALUE: the keys of
conf/config.yaml, the presets after `experiment=`, the launchers after `hydra/launcher=`.
"""

from __future__ import annotations

import typer  # (Typer reads the completion function's annotations)

# Filled in by Typer as its own template is (`%%` is a literal `%`).
BASH_SCRIPT = r"""
%(complete_func)s() {
    local line=${COMP_LINE:0:COMP_POINT}
    local -a words
    read -ra words <<< "$line"
    local cword=${#words[@]} cur=""
    if [[ $line != *[[:blank:]] && $cword -gt 0 ]]; then
        cword=$((cword - 1))
        cur=${words[cword]}
    fi
    local IFS=$'\n'
    COMPREPLY=( $( env COMP_WORDS="$line" COMP_CWORD="$cword" \
                   %(autocomplete_var)s=complete_bash "$1" ) )
    if [[ $cur == *[=:]* ]]; then
        local head=${cur%%"${cur##*[=:]}"}
        COMPREPLY=( "${COMPREPLY[@]#"$head"}" )
    fi
    local reply
    for reply in "${COMPREPLY[@]}"; do
        if [[ $reply == *= ]]; then
            compopt -o nospace
            break
        fi
    done
    return 0
}

complete -o default -F %(complete_func)s %(prog_name)s
"""


def use_bash_script() -> None:
    """Make Typer's `--install-completion` and `--show-completion` write BASH_SCRIPT for
    bash. Typer keeps its templates in a private table; tests/test_completion.py fails if
    that ever stops working."""
    from typer import _completion_classes, _completion_shared

    _completion_shared._completion_scripts["bash"] = BASH_SCRIPT
    _completion_classes.BashComplete.source_template = BASH_SCRIPT


def complete_override(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of KEY=VALUE: config keys, and the names of presets and launchers."""
    from degradation.package import config_keys, data_dir, presets

    key, equals, _ = incomplete.partition("=")
    choices = {"experiment": list(presets(ctx.params.get("config_dir"))),
               "hydra/launcher": [path.stem for path in
                                  sorted((data_dir("conf") / "hydra" / "launcher").glob("*.yaml"))]}
    before = ctx.params.get("overrides") or []
    if not equals and len(before) >= 2 and before[-1] == "=":
        # bash splits `experiment=f` at `=` (COMP_WORDBREAKS): complete the value alone
        return [value for value in choices.get(before[-2], []) if value.startswith(incomplete)]
    if equals:
        return [f"{key}={value}" for value in choices.get(key, [])
                if f"{key}={value}".startswith(incomplete)]
    # Not `defaults` nor `hydra.*`: Hydra's own keys, which `degrade` refuses.
    keys = [*(key for key in config_keys() if key != "defaults" and not key.startswith("hydra.")),
            *choices]
    return [f"{name}=" for name in keys if name.startswith(incomplete)]
