"""The README's table of a run's results: per scenario × method × target, D_unlearn, D_retain and MMBench accuracy
(modality all) before unlearning and at the last request — at the fixed budget and, where the run has them, at
matched forgetting (held-out halves; "did not reach" when a seed missed the target) — as mean ± 95 % CI over seeds
(`pulse.report.agg.summarize`, the report's own aggregation).

    python benchmarks/results_table.py runs/mini > table.md
"""
from __future__ import annotations

import sys
from pathlib import Path

from pulse.report.agg import summarize
from pulse.report.load import read_results
from pulse.report.tables import format_cell

NAMES = {"ga": "GA", "ga_klr": "GA+KLR", "npo": "NPO"}


def table(df) -> str:
    ordinary = df[df["probe"] == "none"]
    lines = ["| scenario | method | target | D_unlearn: before → budget · matched | D_retain: before → budget · "
             "matched | MMBench: before → budget · matched |", "|---|---|---|---|---|---|"]
    for (scenario, method, target), rows in ordinary.groupby(["scenario", "method", "target"], sort=False):
        last = int(rows["request"].max())
        cells = []
        for split, held in (("unlearn", "unlearn_held"), ("retain", "retain_held"), ("mmbench", "mmbench")):
            f = dict(scenario=scenario, method=method, target=target, modality="all")
            before = summarize(rows, split=split, request=0, at="budget", **f)
            budget = summarize(rows, split=split, request=last, at="budget", **f)
            matched = summarize(rows, split=held, request=last, at="matched", **f)
            text = f"{format_cell(before)} → {format_cell(budget)}"
            if (rows["at"] == "matched").any():
                text += " · " + (format_cell(matched) if matched.has_data else "did not reach")
            cells.append(text)
        label = f"{scenario}" + (f" (after request {last})" if last > 1 else "")
        lines.append(f"| {label} | {NAMES.get(method, method)} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(read_results(Path(sys.argv[1]) / "results.csv")))
