"""The HTML report holds the figures, Table 6 beside the paper, and every run."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import pytest

from degradation.analysis import report
from degradation.analysis.measurements import RESPONSES_FILE
from degradation.analysis.results import AnalysisError
from degradation.storage import write_json
from tests.analysis_fixtures import make_config, make_summary, write_run, write_study


class _Page(HTMLParser):
    """Images, table cells and <details> blocks of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: list[str] = []
        self.details = 0
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._heading = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "details":
            self.details += 1

    def handle_endtag(self, tag):
        if tag == "h2" and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One study with every kind of run, reported once (drawing figures takes seconds)."""
    root = tmp_path_factory.mktemp("study")
    folders = write_study(root, depths=(20,), seeds=(0, 1), shortcuts=("A", "B"),
                          iterations=8000)
    write_run(root, {"depth": 20, "seed": 9, "train.iterations": 8000,
                     "train.milestones": [4000, 6000]},
              scalars={"error/test": [(2000, 31.5)]})  # unfinished
    diverged = {"arch": "plain", "depth": 56, "train.iterations": 8000,
                "train.milestones": [4000, 6000]}
    write_run(root, diverged, summary=make_summary(make_config(root, diverged), "diverged",
                                                   iterations_done=3000))
    std = [1.0 - 0.1 * i for i in range(19)]
    write_json(folders[0] / RESPONSES_FILE,
               {"arch": "plain", "depth": 20, "shortcut": None, "seed": 0, "eval_set": "test",
                "pooling": "pooled <somehow>", "std": std})
    out = root / "public"
    path = report.write_report(root, out)
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return out, path, text, page


@pytest.mark.slow
def test_report_embeds_the_figures_and_the_table(built):
    out, path, text, page = built
    assert path == out / "report.html"
    assert len(page.images) == 4  # error against depth, Figure 6, shortcuts, Figure 7
    names = ("degradation", "figure6", "shortcuts", "figure7")
    for src, name in zip(page.images, names, strict=True):
        png = base64.b64decode(src.removeprefix("data:image/png;base64,"))
        assert png == (out / f"{name}.png").read_bytes()
        assert (out / f"{name}.pdf").exists()
    for name in ("plain-20", "ResNet-20", "ResNet-20 (B)", "plain-56", "8.75",
                 "best, chosen on the test set", "paper (Table 6): mean", "≈13 / ≈6"):
        assert name in page.cells, name
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")


def test_report_puts_the_claims_first_then_the_figures_and_tables_in_order(built):
    _, _, _, page = built
    assert page.headings == [
        "The claims of Sec. 4.2", "Error against depth", "Figure 6: training and test error",
        "Shortcut options A / B / C", "Table 6: ours beside the paper",
        "Figure 7: layer responses", "Runs"]
    assert "not enough runs" in page.cells  # plain-56 diverged, ResNet-56 never ran


@pytest.mark.slow
def test_report_draws_the_gradients_when_runs_logged_them(tmp_path):
    from tests.test_claims import write_grad_norms

    for folder in write_study(tmp_path, depths=(20,), seeds=(0,), iterations=8000):
        write_grad_norms(folder, 0.5, iterations=range(1000, 8001, 1000))
    page = _Page()
    page.feed(report.report_command(tmp_path, None).read_text(encoding="utf-8"))
    assert page.headings[0] == "The claims of Sec. 4.2"
    assert page.headings[-2:] == ["Gradient norms per layer", "Runs"]
    assert (tmp_path / "figures" / "gradients.png").exists()


def test_report_lists_every_run_with_its_state_and_config(built):
    _, _, text, page = built
    assert page.details == 8  # 2 plain + 4 ResNet (A, B) + unfinished + diverged
    assert page.cells.count("done") == 6
    assert "diverged at 3000" in page.cells and "pending" in page.cells
    assert "31.50 (latest, at 2000)" in page.cells
    assert "2000 / 8000" in page.cells
    assert {"1h 02m", "NVIDIA H100", "abc1234"} <= set(page.cells)
    assert "train:\n  iterations: 8000" in text  # the config, in a collapsible block


def test_report_of_runs_without_curves_still_renders(tmp_path):
    write_run(tmp_path, {"depth": 20})
    path = report.report_command(tmp_path, None)
    assert path == tmp_path / "figures" / "report.html"
    text = path.read_text(encoding="utf-8")
    assert "no training curves to plot yet" in text and "ResNet-20" in text


def test_report_of_nothing_says_so(tmp_path):
    with pytest.raises(AnalysisError, match="no runs under"):
        report.report_command(tmp_path, None)


# Reads the page as a browser laid it out: every heading in order with its position, and for
# every image whether it decoded (naturalWidth > 0).
_BROWSER_CHECK = """<script>
window.addEventListener("load", () => {
  const top = (el) => el.getBoundingClientRect().top + window.scrollY;
  const out = {
    headings: [...document.querySelectorAll("h2")].map((h) => [h.textContent, top(h)]),
    images: [...document.images].map((i) => [i.alt, i.complete && i.naturalWidth > 0, top(i)]),
  };
  const pre = document.createElement("pre");
  pre.id = "browser-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.mark.slow
def test_report_renders_in_a_headless_browser_claims_first_images_loaded(built, tmp_path):
    import json
    import re
    import shutil
    import subprocess

    browser = next((found for name in _BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        pytest.skip("no headless browser (chromium or google-chrome) on PATH")
    text = built[2]
    page = tmp_path / "report.html"
    page.write_text(text.replace("</body>", _BROWSER_CHECK + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    rendered = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    headings = [name for name, _ in rendered["headings"]]
    assert headings[0] == "The claims of Sec. 4.2"
    assert headings.index("Table 6: ours beside the paper") < headings.index(
        "Figure 7: layer responses")
    claims_top = rendered["headings"][0][1]
    assert [alt for alt, _, _ in rendered["images"]] == ["degradation", "figure6", "shortcuts",
                                                         "figure7"]
    for alt, loaded, top in rendered["images"]:
        assert loaded, f"{alt} did not load"
        assert top > claims_top, f"{alt} is drawn above the claims"


def test_report_counts_each_verdict_apart(tmp_path):
    from degradation.analysis.report import write_report
    from tests.test_claims import write_grid

    write_grid(tmp_path, seeds=(0,))
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "<strong>2 reproduced, 2 inconclusive, 4 not enough runs</strong>" in page
    assert "class='verdict-inconclusive'>inconclusive (one seed)</strong>" in page
