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
