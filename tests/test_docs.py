"""What the README, the help texts and the Makefile promise a newcomer holds."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import degrade_here

ROOT = Path(__file__).resolve().parents[1]


def test_every_document_the_readme_or_the_report_cites_is_in_the_repository() -> None:
    cited = set()
    for source in (ROOT / "README.md", ROOT / "degradation" / "analysis" / "report.py",
                   ROOT / "PAPER.md"):
        text = source.read_text(encoding="utf-8")
        cited |= set(re.findall(r"\b([A-Z][A-Z0-9_]+\.md)\b", text))
        cited |= {link for link in re.findall(r"\]\(([^)#:]+)\)", text)}
    assert {"PAPER.md", "BENCHMARKS.md"} <= cited
    missing = sorted(name for name in cited if not (ROOT / name).exists())
    assert missing == []


def test_sweep_help_quotes_its_examples_as_a_shell_needs_them() -> None:
    result = degrade_here("sweep", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "seed='range(5)'" in result.stdout
    assert "seed=range(5)" not in result.stdout  # bash would refuse the bare parentheses


def test_make_smoke_writes_where_the_demo_plots_do_not_look() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    smoke = Path(re.search(r"^SMOKE_OUT\s*:=\s*(\S+)\s*$", makefile, re.MULTILINE).group(1))
    demo_plots = Path(re.search(r"degrade plot (\S+)\n", makefile.split("demo:")[1]).group(1))
    assert not smoke.is_relative_to(demo_plots), (smoke, demo_plots)
    assert f"/{smoke.as_posix()}/" in (ROOT / ".gitignore").read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The README's text under `## title` (or `### title`), up to the next heading."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.split(r"^#{2,3} ", readme.split(f"## {title}\n", 1)[1], flags=re.MULTILINE)[0]


def _make(*args: str) -> str:
    import subprocess

    return subprocess.run(["make", "-s", "--no-print-directory", *args], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def test_make_help_and_the_readme_list_every_target() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = re.search(r"^\.PHONY:(.*)$", makefile, re.MULTILINE).group(1).split()
    listed = re.findall(r"^  make (\S+)", _make("help"), re.MULTILINE)
    assert listed == [name for name in listed if name in targets]
    assert sorted(listed) == sorted(targets)
    development = _section("Development")
    assert [name for name in targets if f"`{name}`" not in development] == []


def test_make_demo_and_quick_read_a_local_copy_of_the_data() -> None:
    for target in ("demo", "quick"):
        sweep = next(line for line in _make("-n", target, "DATA=/copy/cifar10").splitlines()
                     if "degrade sweep" in line)
        assert f"experiment={target} data.root=/copy/cifar10 data.download=false" in sweep
        plain = next(line for line in _make("-n", target).splitlines() if "degrade sweep" in line)
        assert "data.root" not in plain  # without DATA: the default folder, downloaded once


def test_the_quick_start_puts_degrade_on_the_path_and_works_offline() -> None:
    quick_start = _section("Quick start")
    assert "source .venv/bin/activate" in quick_start and ".venv/bin/degrade" in quick_start
    offline = _section("Offline, or on a CPU: the degradation in about an hour")
    assert "make quick DATA=" in offline and "data.download=false" in offline
    assert "train.log_every=" in offline and "train.eval_every=" in offline


def test_the_readme_says_each_thing_once_and_where_it_is() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count("**Figure 7 pooling.**") == 1
    tree = _section("Where results go").split("```")[1]
    assert len(re.findall(r"^\s+grad_norms\.csv\s", tree, re.MULTILINE)) == 1
    assert "section below" not in readme  # every reference names its section
    # The suite's running time is stated once, where the tests are described.
    timed = [line for line in readme.splitlines()
             if re.search(r"\btest", line) and re.search(r"\bminutes?\b", line)]
    development = _section("Development")
    assert [line for line in timed if line not in development] == []
    # Example output says whose machine it came from, as it differs from one CPU to another.
    assert "2 cores of an AMD EPYC" in _section("Example output")


def test_help_shows_each_docstring_paragraph_as_one_flowing_text() -> None:
    # The docstrings break lines ("...with the\nrun's configuration..."); --help reflows them,
    # in the list of commands and in a command's later paragraphs alike.
    listing = degrade_here("--help", env={"COLUMNS": "200"})
    train = degrade_here("train", "--help", env={"COLUMNS": "200"})
    for result, broken, flowing in (
            (listing, "with the", "with the run's configuration"),
            (train, "with", "with config.yaml, TensorBoard events")):
        assert result.exit_code == 0, result.output
        lines = [line.strip(" │") for line in result.stdout.splitlines()]
        assert not any(line.endswith(f" {broken}") for line in lines)
        assert any(flowing in line for line in lines)


def test_reflowing_keeps_paragraph_breaks_and_lists() -> None:
    from degradation.help_text import reflowed

    text = "First\n    line.\n\n    Second\n    paragraph.\n\n    Items:\n    - one\n    - two\n"
    assert reflowed(text) == "First line.\n\nSecond paragraph.\n\nItems:\n- one\n- two"


def test_the_readme_table_of_defaults_says_what_conf_holds() -> None:
    import yaml
    from omegaconf import OmegaConf

    from degradation.config import yaml_defaults

    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Configuration")[1]
    section = section.split("\n## ")[0]
    rows = re.findall(r"^\| (`[^|]+`) \| (`[^|]+`) \|", section, flags=re.MULTILINE)
    assert len(rows) >= 20  # the table is found, not an empty match
    conf = OmegaConf.to_container(yaml_defaults())
    checked = 0
    for keys, values in rows:
        names = re.findall(r"`([^`]+)`", keys)
        said = [yaml.safe_load(value) for value in re.findall(r"`([^`]+)`", values)]
        said = said * len(names) if len(said) == 1 else said  # one value for all the keys
        assert len(said) == len(names), keys
        for name, value in zip(names, said, strict=True):
            node = conf
            for part in name.split("."):
                node = node[part]
            assert node == value, f"README says {name}: {value!r}; conf/config.yaml: {node!r}"
            checked += 1
    assert checked >= 25


def test_the_python_code_writes_no_default_folder_of_its_own() -> None:
    # outputs/ and data/ are conf/config.yaml's defaults (package.config_default reads them);
    # the paper's 64k iterations are defined once.
    import ast

    literals, definitions = [], []
    for source in [*(ROOT / "degradation").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("outputs", "outputs/"):
                literals.append(f"{source.name}:{node.lineno}")
            if isinstance(node, ast.Compare) and any(
                    isinstance(side, ast.Constant) and side.value == "data"
                    for side in node.comparators):
                literals.append(f"{source.name}:{node.lineno}")
            if isinstance(node, ast.Assign) and any(
                    isinstance(target, ast.Name) and target.id == "PAPER_ITERATIONS"
                    for target in node.targets):
                definitions.append(source.name)
    assert literals == []
    assert definitions == ["paper.py"]


def test_commands_and_groups_of_any_app_show_flags_without_a_value_type() -> None:
    # help_text's classes serve any Typer app, not only `degrade`'s: one reading of a flag.
    import typer
    from typer.testing import CliRunner

    from degradation.help_text import Command, Group

    app = typer.Typer(cls=Group)

    @app.callback()
    def _top(loud: bool = typer.Option(False, "--loud", help="Say more.")) -> None:
        """A group."""

    @app.command(cls=Command)
    def run(quick: bool = typer.Option(False, "--quick", help="Faster.")) -> None:
        """Run it.

        Split over
        two lines."""

    for words, flag in (([], "--loud"), (["run"], "--quick")):
        result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, result.output
        assert flag in result.output and "<bool>" not in result.output
    assert "Split over two lines." in CliRunner().invoke(app, ["run", "--help"]).output
