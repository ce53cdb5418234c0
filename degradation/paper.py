"""The published numbers our runs are put beside: He et al. 2016, Sec. 4.2, and the
independent reproductions PAPER.md lists.

Usage: `published_range(56)` is ResNet-56's span of published test errors (%);
`parse_paper_number("8.51 ± 0.22")` the (low, high) a published cell stands for.

Only numbers the paper or a reproduction printed live here; the training recipe (learning
rate, milestones, batch size) is configuration and lives in `conf/`.
"""

from __future__ import annotations

import re

PAPER_ITERATIONS = 64000  # He et al. 2016: "terminate training at 64k iterations"

# He et al. 2016, Table 6: ResNet test error (%) on CIFAR-10, all with shortcut option A.
# For most depths the paper prints one number, which our mean is compared with; for ResNet-110
# it prints the best of 5 runs and their mean ± std: mean is compared with mean, best with best.
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.61, 1202: 7.93}
PAPER_TABLE6_STD = {110: 0.16}
PAPER_TABLE6_RUNS = {110: 5}  # the runs behind the mean ± std
PAPER_TABLE6_BEST = {110: 6.43}
PAPER_TABLE6_NOTES = {110: "mean ± std of 5 runs"}
# Plain nets have no Table 6 entry; these are read off Figure 6 at 64k iterations (test, train).
PAPER_FIGURE6_PLAIN = {20: ("≈9.6", "≈1"), 32: ("≈10", "≈1"), 44: ("≈11-12", "≈3"),
                       56: ("≈13", "≈6")}
RESNET_DEPTHS = (20, 32, 44, 56, 110)  # Figure 6 (middle) and Table 6 up to 110
PLAIN_110_ERROR = 60.0  # "plain-110 ... has error above 60%"

# PAPER.md, "What independent reproductions measured": context for our numbers, not a target.
REPRODUCTIONS = (
    ("source", "schedule", "R-20", "R-32", "R-44", "R-56", "R-110", "P-20", "P-56"),
    ("akamaster/pytorch_resnet_cifar10", "200 epochs, best", "8.27", "7.37", "6.90", "6.61",
     "6.32", "", ""),
    ("its users' reruns (issue 18, 6 runs of R-56, best)", "200 epochs, best", "", "", "",
     "6.89-8.42", "", "", ""),
    ("gcr/torch-residual-networks", "Torch", "8.29", "7.63", "7.14", "6.94", "6.73", "", ""),
    ("nabla0001/resnet, 5 seeds, 45k/5k split", "paper", "8.51 ± 0.22", "", "", "7.40 ± 0.27",
     "7.14 ± 0.20", "9.78 ± 0.13", "12.95 ± 0.22"),
    ("a-martyn/resnet, best", "paper", "8.0", "7.51", "7.38", "7.33", "", "9.5", "12.76"),
)


def parse_paper_number(text: str) -> tuple[float, float] | None:
    """The (low, high) a published cell stands for: `8.51 ± 0.22`, `6.89-8.42`, `≈11-12`, `8.0`."""
    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]
    if not numbers:
        return None
    if "±" in text:
        return numbers[0] - numbers[1], numbers[0] + numbers[1]
    return min(numbers), max(numbers)


def published_range(depth: int) -> tuple[float, float] | None:
    """ResNet-`depth` test error (%): the span of the paper's value and spread and of the
    independent reproductions (PAPER.md)."""
    spans = []
    if depth in PAPER_TABLE6:
        spans.append((PAPER_TABLE6[depth], PAPER_TABLE6[depth]))
    mean = re.search(r"mean\s+([\d.]+\s*±\s*[\d.]+)", PAPER_TABLE6_NOTES.get(depth, ""))
    if mean:
        spans.append(parse_paper_number(mean.group(1)))
    header = REPRODUCTIONS[0]
    column = f"R-{depth}"
    if column in header:
        index = header.index(column)
        spans += [span for row in REPRODUCTIONS[1:] if (span := parse_paper_number(row[index]))]
    if not spans:
        return None
    return min(low for low, _ in spans), max(high for _, high in spans)
