"""The claims of Sec. 4.2, each checked against the runs: reproduced, not reproduced,
inconclusive (within the seeds' noise), or not enough runs (naming the runs that are missing
and the command that makes them).

Usage: `degrade claims outputs/` prints the verdicts and writes `outputs/figures/claims.md`
and `claims.csv`.

The claims are judged on one recipe: the longest schedule among the finished runs (settings
that differ only in warm-up count as one recipe, as the paper warms up ResNet-110 alone), plain
nets and ResNets with the paper's shortcut option A. Errors are means over the finished seeds;
a verdict judged on a schedule shorter than the paper's 64k iterations says so. Every ordering
a claim makes (claims 1, 2, 3, 5 and 6) is judged on the difference of the two means and its
interval over seeds (`stats.RULE`); a network with one seed takes a stated floor for its spread.

The runs are chosen in `study.py`; one ordering is judged against the noise in `orderings.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from degradation.analysis import stats
from degradation.analysis.gradients import (
    gradient_iterations,
    gradient_norm_table,
    gradient_ratios,
)
from degradation.analysis.orderings import (
    METRIC_NAMES,
    Ordering,
    diverged_note,
    floor_note,
    order,
    ordering_text,
)
from degradation.analysis.results import describe_states, figures_dir, load_runs, network_label
from degradation.analysis.study import (
    Study,
    final_errors,
    run_command,
    select_study,
    training_measure,
)
from degradation.analysis.table import markdown_table
from degradation.console import shell_command
from degradation.paper import (
    PAPER_FIGURE6_PLAIN,
    PAPER_TABLE6,
    PLAIN_110_ERROR,
    RESNET_DEPTHS,
    published_range,
)
from degradation.storage import atomic_write_text

REPRODUCED, NOT_REPRODUCED = stats.REPRODUCED, stats.NOT_REPRODUCED
INCONCLUSIVE, NOT_ENOUGH = stats.INCONCLUSIVE, stats.NOT_ENOUGH
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_ENOUGH)
# Vanishing gradients would starve the first layers: the plain net's first-to-last layer
# gradient-norm ratio is called healthy when it is at least this fraction of the ResNet's of
# the same depth (identical layer shapes, so the parameter counts cancel out).
GRADIENT_FACTOR = 0.1
CLAIM_COLUMNS = ["number", "claim", "paper", "ours", "verdict", "note", "interval", "seeds"]


@dataclass
class Claim:
    """One claim of the paper, our numbers beside it, and the verdict."""

    number: int
    claim: str
    paper: str
    ours: str
    verdict: str
    note: str = ""
    interval: str = ""  # each compared difference with its interval (`stats.RULE`)
    seeds: int | None = None  # the fewest seeds of a compared network

    @property
    def verdict_text(self) -> str:
        """The verdict, and `one seed` where it rests on single runs."""
        return f"{self.verdict} (one seed)" if self.seeds == 1 else self.verdict


# --- the claims -------------------------------------------------------------------------------


def judge(study: Study) -> list[Claim]:
    """Every claim of Sec. 4.2, judged on `study`."""
    study.floors.clear()  # computed afresh for each judgement, once per metric
    errors = final_errors(study).set_index(["arch", "depth"])
    claims = [
        _plain_deeper_worse(study, errors), _resnet_deeper_better(study, errors),
        _resnet_below_plain(study, errors), _table6(study, errors), _resnet_1202(study, errors),
        _responses(study), _plain_110(study, errors), _gradients(study),
    ]
    schedule = study.schedule_note()
    for claim in claims:
        if schedule and claim.verdict != NOT_ENOUGH:
            claim.note = _join(f"judged on a {schedule}", claim.note)
    return claims


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def _present(errors: pd.DataFrame, arch: str) -> list[int]:
    return sorted(depth for a, depth in errors.index if a == arch)


def _mean(errors: pd.DataFrame, arch: str, depth: int, metric: str) -> float:
    return float(errors.loc[(arch, depth), f"{metric}_mean"])


def _describe(errors: pd.DataFrame, arch: str, depth: int, metric: str) -> str:
    row = errors.loc[(arch, depth)]
    n = int(row["n"])
    text = f"{network_label(arch, depth)} {row[f'{metric}_mean']:.2f}"
    if n > 1:
        text += f" ({row[f'{metric}_min']:.2f}-{row[f'{metric}_max']:.2f}, n={n})"
    return text


def _missing(study: Study, errors: pd.DataFrame, wanted: Sequence[tuple[str, int]]) -> str:
    """'missing: plain-56 (1 running); make them with `...`' for the networks not finished."""
    absent = [(arch, depth) for arch, depth in wanted if (arch, depth) not in errors.index]
    if not absent:
        return ""
    names = []
    for arch, depth in absent:
        states = [r for r in study.records if (r.config.arch, r.config.depth) == (arch, depth)]
        names.append(network_label(arch, depth)
                     + (f" ({describe_states(states)})" if states else ""))
    return f"missing: {', '.join(names)}; train with {run_command(study, absent)}"


def _not_enough(number: int, claim: str, paper: str, note: str, ours: str = "") -> Claim:
    return Claim(number, claim, paper, ours or "-", NOT_ENOUGH, note)


MEASURES = {
    "train_error": "the running training error of the last mini-batches, under augmentation "
                   "and train-mode BatchNorm, as the paper plots it",
    "clean_train_error": "the clean training error: the final weights on the whole training "
                         "set in eval mode, without augmentation (`degrade evaluate`)",
}


def _ordered(study: Study, errors: pd.DataFrame, arch: str, depths: list[int], metric: str,
             deeper_higher: bool) -> tuple[list[str], list[Ordering]]:
    """(comparisons of the means as text, each pair judged) for every pair of depths present."""
    texts, judged = [], []
    for i, shallow in enumerate(depths):
        for deep in depths[i + 1:]:
            a, b = _mean(errors, arch, shallow, metric), _mean(errors, arch, deep, metric)
            sign = ">" if b > a else "<" if b < a else "="
            texts.append(f"{network_label(arch, deep)} {b:.2f} {sign} "
                         f"{network_label(arch, shallow)} {a:.2f}")
            judged.append(order(study, (arch, shallow), (arch, deep), metric,
                                "higher" if deeper_higher else "lower"))
    return texts, judged


def _judged_claim(number: int, claim: str, paper: str, ours: str, orderings: list[Ordering],
                  *notes: str) -> Claim:
    """A claim whose verdict is `stats.combine` of its orderings; the note says which fail,
    which are within the noise (and the seeds that would resolve them), and the floors used."""
    verdict = stats.combine(ordering.result.verdict for ordering in orderings)
    groups: dict[str, list[str]] = {}
    for ordering in orderings:
        groups.setdefault(ordering.result.verdict, []).append(ordering_text(ordering))
    parts = [*notes,
             "fails: " + "; ".join(groups[NOT_REPRODUCED]) if NOT_REPRODUCED in groups else "",
             "within the noise: " + "; ".join(groups[INCONCLUSIVE])
             if INCONCLUSIVE in groups else "",
             "no finite value: " + "; ".join(groups[NOT_ENOUGH]) if NOT_ENOUGH in groups else "",
             floor_note(orderings), diverged_note(orderings)]
    seeds = min((min(o.result.a.n, o.result.b.n) for o in orderings), default=None)
    interval = "; ".join(f"{o.label()}: {o.result.interval()}" for o in orderings)
    rule = f"judged on the {stats.LEVEL:.0%} Welch t-interval of each difference over seeds"
    return Claim(number, f"{claim} ({rule})", paper, ours, verdict, _join(*parts), interval,
                 seeds)


def _plain_deeper_worse(study: Study, errors: pd.DataFrame) -> Claim:
    claim = ("Plain nets: the deeper net has the higher training error (each pair of depths, "
             "plain-56 against plain-20 in particular), so degradation is not overfitting")
    paper = "Fig. 6 (left), training error at 64k: " + ", ".join(
        f"plain-{depth} {values[1]}" for depth, values in PAPER_FIGURE6_PLAIN.items())
    missing = _missing(study, errors, [("plain", 20), ("plain", 56)])
    if missing:
        return _not_enough(1, claim, paper, missing)
    depths = _present(errors, "plain")
    metric = training_measure(study, [("plain", depth) for depth in depths])
    texts, judged = _ordered(study, errors, "plain", depths, metric, True)
    ours = f"{METRIC_NAMES[metric]} (%): " + "; ".join(texts)
    key = next(o for o in judged if (o.a, o.b) == (("plain", 20), ("plain", 56)))
    held = {REPRODUCED: "holds", NOT_REPRODUCED: "fails"}.get(key.result.verdict,
                                                              key.result.verdict)
    measured = f"measured on {MEASURES[metric]}"
    if metric == "train_error":
        measured += f"; `degrade evaluate {study.root} --split train` measures the clean one"
    return _judged_claim(1, claim, paper, ours, judged, f"key pair plain-56 vs plain-20 {held}",
                         measured)


def _resnet_deeper_better(study: Study, errors: pd.DataFrame) -> Claim:
    claim = "ResNets: the deeper net has the lower training and test error, up to 110 layers"
    paper = "Fig. 6 (middle); Table 6: " + ", ".join(
        f"ResNet-{d} {PAPER_TABLE6[d]}" for d in RESNET_DEPTHS)
    missing = _missing(study, errors, [("resnet", 20), ("resnet", 56)])
    if missing:
        return _not_enough(2, claim, paper, missing)
    depths = [d for d in _present(errors, "resnet") if d in RESNET_DEPTHS]
    train, train_judged = _ordered(study, errors, "resnet", depths, "train_error", False)
    test, test_judged = _ordered(study, errors, "resnet", depths, "test_error", False)
    ours = "training error (%): " + "; ".join(train) + ". test error (%): " + "; ".join(test)
    unchecked = [d for d in RESNET_DEPTHS if d not in depths]
    note = ("not checked: " + ", ".join(f"ResNet-{d}" for d in unchecked)
            + f" ({run_command(study, [('resnet', d) for d in unchecked])})") if unchecked else ""
    return _judged_claim(2, claim, paper, ours, train_judged + test_judged, note)


def _resnet_below_plain(study: Study, errors: pd.DataFrame) -> Claim:
    claim = "At equal depth, the ResNet's training error is below the plain net's"
    paper = "Fig. 6 (left vs middle)"
    depths = [d for d in _present(errors, "plain") if ("resnet", d) in errors.index]
    if not depths:
        wanted = [(arch, d) for d in (20, 56) for arch in ("plain", "resnet")]
        return _not_enough(3, claim, paper, _missing(study, errors, wanted)
                           or "no depth with both a plain net and a ResNet")
    texts, judged = [], []
    for depth in depths:
        plain = _mean(errors, "plain", depth, "train_error")
        resnet = _mean(errors, "resnet", depth, "train_error")
        texts.append(f"ResNet-{depth} {resnet:.2f} {'<' if resnet < plain else '>='} "
                     f"plain-{depth} {plain:.2f}")
        judged.append(order(study, ("plain", depth), ("resnet", depth), "train_error", "lower"))
    return _judged_claim(3, claim, paper, "training error (%): " + "; ".join(texts), judged)


def _table6(study: Study, errors: pd.DataFrame) -> Claim:
    claim = ("ResNet test errors as in Table 6: within the paper's spread or the range of the "
             "independent reproductions, per depth")
    ranges = {d: published_range(d) for d in PAPER_TABLE6}
    paper = "; ".join(f"ResNet-{d} {PAPER_TABLE6[d]} (published {low:.2f}-{high:.2f})"
                      for d, (low, high) in ranges.items())
    depths = [d for d in _present(errors, "resnet") if d in PAPER_TABLE6]
    if not depths:
        return _not_enough(4, claim, paper, _missing(study, errors, [("resnet", 20),
                                                                     ("resnet", 56)]))
    if study.short:
        return _not_enough(4, claim, paper, "the paper's final numbers need its full schedule "
                           f"(these runs are a {study.schedule_note()}): `degrade sweep "
                           "experiment=table6`",
                           "; ".join(_describe(errors, "resnet", d, "test_error")
                                     for d in depths))
    finals = study.finals
    if set(finals.loc[finals["arch"] == "resnet", "eval_set"]) != {"test"}:
        return _not_enough(4, claim, paper, "these runs are evaluated on a validation split "
                           "(data.val_split > 0); Table 6 is on the test set")
    texts, failures, below = [], [], []
    for depth in depths:
        mean = _mean(errors, "resnet", depth, "test_error")
        low, high = ranges[depth]
        where = "above" if mean > high else "below" if mean < low else "within"
        texts.append(f"{_describe(errors, 'resnet', depth, 'test_error')}: {where} "
                     f"{low:.2f}-{high:.2f}")
        if where == "above":
            failures.append(f"ResNet-{depth}")
        elif where == "below":
            below.append(f"ResNet-{depth}")
    note = _join("above the published range: " + ", ".join(failures) if failures else "",
                 "below every published value (lower error): " + ", ".join(below)
                 if below else "")
    return Claim(4, claim, paper, "test error (%), mean over seeds: " + "; ".join(texts),
                 NOT_REPRODUCED if failures else REPRODUCED, note)


def _resnet_1202(study: Study, errors: pd.DataFrame) -> Claim:
    claim = ("ResNet-1202 has a lower training error than ResNet-110 but a higher test error "
             "(overfitting)")
    paper = (f"Fig. 6 (right): ResNet-1202 training error < 0.1%; test error "
             f"{PAPER_TABLE6[1202]} against {PAPER_TABLE6[110]}")
    missing = _missing(study, errors, [("resnet", 110), ("resnet", 1202)])
    if missing:
        return _not_enough(5, claim, paper, missing)
    ours = (f"training error: {_describe(errors, 'resnet', 1202, 'train_error')} vs "
            f"{_describe(errors, 'resnet', 110, 'train_error')}; test error: "
            f"{_describe(errors, 'resnet', 1202, 'test_error')} vs "
            f"{_describe(errors, 'resnet', 110, 'test_error')}")
    judged = [order(study, ("resnet", 110), ("resnet", 1202), "train_error", "lower"),
              order(study, ("resnet", 110), ("resnet", 1202), "test_error", "higher")]
    return _judged_claim(5, claim, paper, ours, judged)


def _responses(study: Study) -> Claim:
    claim = ("Figure 7: ResNets' layer responses are smaller than the plain nets', and smaller "
             "for deeper ResNets")
    paper = "Fig. 7: std of each 3x3 layer's response, plain-20/56 above ResNet-20/56/110"
    measured = {key: sum(values) / len(values) for key, values in study.responses.items()}
    wanted = [("plain", 20), ("plain", 56), ("resnet", 20), ("resnet", 56)]
    absent = [key for key in wanted if key not in measured]
    if absent:
        errors = final_errors(study).set_index(["arch", "depth"])
        untrained = [key for key in absent if key not in errors.index]
        note = _missing(study, errors, untrained) if untrained else ""
        if len(untrained) < len(absent):
            note = _join(note, "not measured yet: " + ", ".join(
                network_label(*key) for key in absent if key not in untrained)
                + f"; measure them with `{shell_command('degrade', 'responses', study.root)}`")
        return _not_enough(6, claim, paper, note)
    texts, judged = [], []
    for depth in sorted(d for a, d in measured if a == "plain"):
        if ("resnet", depth) in measured:
            plain, resnet = measured[("plain", depth)], measured[("resnet", depth)]
            texts.append(f"ResNet-{depth} {resnet:.3f} {'<' if resnet < plain else '>='} "
                         f"plain-{depth} {plain:.3f}")
            judged.append(order(study, ("plain", depth), ("resnet", depth), "response",
                                "lower"))
    resnets = sorted(d for a, d in measured if a == "resnet" and d in RESNET_DEPTHS)
    for shallow, deep in itertools.pairwise(resnets):
        a, b = measured[("resnet", shallow)], measured[("resnet", deep)]
        texts.append(f"ResNet-{deep} {b:.3f} {'<' if b < a else '>='} ResNet-{shallow} {a:.3f}")
        judged.append(order(study, ("resnet", shallow), ("resnet", deep), "response", "lower"))
    ours = "mean over layers of the response std (seeds averaged): " + "; ".join(texts)
    return _judged_claim(6, claim, paper, ours, judged)


def _plain_110(study: Study, errors: pd.DataFrame) -> Claim:
    claim = f"Plain-110 has an error above {PLAIN_110_ERROR:g}% (so the paper does not draw it)"
    paper = "Sec. 4.2: \"plain-110 ... has error above 60%\""
    missing = _missing(study, errors, [("plain", 110)])
    if missing:
        return _not_enough(7, claim, paper, missing)
    test = _mean(errors, "plain", 110, "test_error")
    ours = (f"test error: {_describe(errors, 'plain', 110, 'test_error')}; training error: "
            f"{_describe(errors, 'plain', 110, 'train_error')}")
    if study.short:
        return _not_enough(7, claim, paper, "the paper's final error needs its full schedule "
                           f"(these runs are a {study.schedule_note()}): `degrade sweep "
                           "experiment=fig6`", ours)
    return Claim(7, claim, paper, ours, REPRODUCED if test > PLAIN_110_ERROR else NOT_REPRODUCED)


# --- gradients --------------------------------------------------------------------------------


def _gradients(study: Study) -> Claim:
    claim = ("Plain nets do not suffer from vanishing gradients: their gradients keep healthy "
             "norms down to the first layer (criterion: plain-56's first-to-last conv "
             f"gradient-norm ratio is at least {GRADIENT_FACTOR:g} of ResNet-56's at every "
             "compared iteration)")
    paper = ("Sec. 4.1: with BN \"the backward propagated gradients exhibit healthy norms\"; "
             "argued, not measured")
    errors = final_errors(study).set_index(["arch", "depth"])
    missing = _missing(study, errors, [("plain", 56), ("resnet", 56)])
    if missing:
        return _not_enough(8, claim, paper, missing)
    ratios = gradient_ratios(gradient_norm_table(study))
    have = set(zip(ratios["arch"], ratios["depth"], strict=True))
    lacking = [key for key in (("plain", 56), ("resnet", 56)) if key not in have]
    if lacking:
        return _not_enough(8, claim, paper, "no gradient logs (grad_norms.csv) in the runs of "
                           + ", ".join(network_label(*key) for key in lacking)
                           + ": they were trained before gradient logging; retrain them with "
                           + run_command(study, lacking, "--force"))
    table = ratios[ratios["depth"] == 56].pivot(index="iteration", columns="arch",
                                                values="ratio")
    logged = table.dropna().index.tolist()
    chosen = gradient_iterations(logged, study.iterations) if logged else []
    if not chosen:
        return _not_enough(8, claim, paper, "plain-56 and ResNet-56 logged gradients at no "
                           "common iteration")
    texts, failures = [], []
    for iteration in chosen:
        plain, resnet = table.loc[iteration, "plain"], table.loc[iteration, "resnet"]
        healthy = plain >= GRADIENT_FACTOR * resnet
        text = f"it {iteration:,}: plain-56 {plain:.3g}, ResNet-56 {resnet:.3g}"
        texts.append(text)
        if not healthy:
            failures.append(text)
    ours = "first-to-last conv gradient-norm ratio: " + "; ".join(texts)
    note = ("plain-56's first layers get under " f"{GRADIENT_FACTOR:g}x the ResNet's share at: "
            + "; ".join(failures)) if failures else ""
    return Claim(8, claim, paper, ours, NOT_REPRODUCED if failures else REPRODUCED, note)


# --- output -----------------------------------------------------------------------------------


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    """The claims as a frame (columns `CLAIM_COLUMNS`), for claims.csv."""
    frame = pd.DataFrame([asdict(claim) for claim in claims], columns=CLAIM_COLUMNS)
    return frame.astype({"seeds": "Int64"})  # whole numbers, empty where nothing is compared


def header(study: Study) -> str:
    """One line on what the verdicts rest on: how many runs, which schedule."""
    runs = len(study.finals)
    text = (f"Judged on {runs} finished run{'s' if runs != 1 else ''} of "
            f"{study.iterations:,} iterations (plain nets and ResNets with shortcut A; errors "
            "are means over seeds, spreads min-max)")
    if study.short:
        text += f": a {study.schedule_note()}"
    if study.left_out:
        text += f"; {study.left_out} runs of other recipes or shortcut options are left out"
    return (f"{text}. Each ordering a claim makes is judged by the {stats.RULE}; a network "
            "with one seed takes a stated floor for its spread.")


def verdict_counts(claims: Sequence[Claim]) -> str:
    """`2 reproduced, 1 inconclusive, 5 not enough runs`: each verdict counted apart."""
    counts = {verdict: sum(c.verdict == verdict for c in claims) for verdict in VERDICTS}
    return ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])


def claims_markdown(study: Study, claims: Sequence[Claim]) -> str:
    """The verdicts as a Markdown table under a one-line header."""
    summary = verdict_counts(claims)
    rows = [[str(c.number), c.claim, c.paper, c.ours, f"**{c.verdict_text}**", c.note]
            for c in claims]
    return (f"# The claims of Sec. 4.2: {summary}\n\n{header(study)}\n\n"
            + markdown_table(["#", "claim", "paper", "ours", "verdict", "note"], rows))


def claims_command(path: Path, out: Path | None, recursive: bool = False
                   ) -> tuple[str, list[Path]]:
    """`degrade claims`: judge every claim, write claims.md and claims.csv; the text, paths."""
    path = Path(path)
    study = select_study(load_runs(path, recursive), path)
    claims = judge(study)
    markdown = claims_markdown(study, claims)
    folder = figures_dir(path, out)
    written = [folder / "claims.md", folder / "claims.csv"]
    atomic_write_text(written[0], markdown)
    atomic_write_text(written[1], claims_frame(claims).to_csv(index=False))
    return markdown, written
