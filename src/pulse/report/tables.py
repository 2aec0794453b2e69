"""Table 3 of the paper: accuracy by task modality, per update target and method (fine-tuned scenario).

Rows: "(Pre-unlearning)" from request 0, then target x method at request 1. Columns: D_unlearn Multi /
Text (modality image / text), D_retain Multi / Text, MMBench (named by its short label, `Table3.mmbench`, e.g.
"mini-MMBench (CE)"; the Markdown caption gives its definition, report.html its definitions box). Several runs give
one column group per run; runs whose MMBench measured different things (mini world, scoring, subset) each name
their own measure in their column header.

`at="budget"` (default): the configured budget, all questions (splits unlearn / retain).
`at="matched"`: the matched-forgetting stop point (rows at=matched), reported on the held-out half of the
questions (splits unlearn_held / retain_held; the pre-unlearning row reads the same halves at request 0); a method
where some seed did not reach the target reads "did not reach", with no number.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

from .agg import Cell, main_target, method_name, paper_target_name, select, seed_count, summarize, target_name
from .load import Run, view
from .mmbench import comparable, definitions
from .stats import CI_LABEL

SCENARIO = "finetuned"
REQUEST = 1
PRE = ("", "(pre-unlearning)")
DIVERGED_MARK = "\u2020"  # dagger
NOT_REACHED = "did not reach"
HELD = {"unlearn": "unlearn_held", "retain": "retain_held"}  # matched forgetting reports the held-out half

# (key, group, sub-column, split, modality, better)
COLUMNS = (
    ("unlearn_multi", "D_unlearn", "Multi", "unlearn", "image", "\u2193"),
    ("unlearn_text", "D_unlearn", "Text", "unlearn", "text", "\u2193"),
    ("retain_multi", "D_retain", "Multi", "retain", "image", "\u2191"),
    ("retain_text", "D_retain", "Text", "retain", "text", "\u2191"),
    ("mmbench", "MMBench", "", "mmbench", "all", "\u2191"),
)


@dataclass
class Table3:
    runs: list[str]
    rows: list[tuple[str, str]]  # (target, method); PRE first
    cells: dict[tuple[str, tuple[str, str], str], Cell] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # runs with no fine-tuned scenario
    mmbench: str = "MMBench"  # the MMBench column's label, naming its metric (report.mmbench.label)
    definition: str = ""  # what that label means (report.mmbench.definitions)
    at: str = "budget"  # "budget" or "matched"
    measures: dict[str, str] = field(default_factory=dict)  # run -> its own MMBench label, when runs differ

    def cell(self, run: str, row: tuple[str, str], key: str) -> Cell:
        return self.cells.get((run, row, key), Cell())

    @property
    def has_data(self) -> bool:
        return len(self.missing) < len(self.runs)


def _pre_unlearning(df, split, modality) -> Cell:
    """Request 0 is the same model for every method and target: average duplicates within a seed."""
    return summarize(df, scenario=SCENARIO, request=0, split=split, modality=modality)


def split_of(split: str, at: str) -> str:
    return HELD.get(split, split) if at == "matched" else split


def table3(runs: list[Run], mmbench: str = "MMBench", at: str = "budget") -> Table3:
    after = {r.label: (r.df if at == "budget" else view(r.full, at=at)) for r in runs}
    rows: list[tuple[str, str]] = [PRE]
    for run in runs:
        ft = select(after[run.label], scenario=SCENARIO, request=REQUEST)
        first = main_target(ft)
        targets = sorted(dict.fromkeys(ft["target"]), key=lambda t: t != first)
        for target in targets:
            for method in dict.fromkeys(select(ft, target=target)["method"]):
                if (target, method) not in rows:
                    rows.append((target, method))
    table = Table3(runs=[r.label for r in runs], rows=rows, mmbench=mmbench, at=at,
                   definition=" ".join(f"{name}: {text}" for name, text in definitions(runs, runs[0].mmbench))
                   if runs else "")
    if not comparable(runs):
        table.measures = {r.label: r.measure or mmbench for r in runs}
    for run in runs:
        if select(after[run.label], scenario=SCENARIO, request=REQUEST).empty:
            table.missing.append(run.label)
            continue
        table.seeds[run.label] = seed_count(after[run.label], scenario=SCENARIO)
        for key, _g, _s, split, modality, _b in COLUMNS:
            split = split_of(split, at)
            table.cells[(run.label, PRE, key)] = _pre_unlearning(run.df, split, modality)
            for target, method in rows[1:]:
                table.cells[(run.label, (target, method), key)] = summarize(
                    after[run.label], scenario=SCENARIO, request=REQUEST, target=target, method=method,
                    split=split, modality=modality)
    return table


def format_cell(cell: Cell, digits: int = 1) -> str:
    """'mean ± half-width' (>= 2 seeds), 'mean' (1 seed), 'diverged' (every seed diverged), '–' (no data),
    'did not reach' (matched forgetting: every seed missed the target; 'did not reach (k of n seeds)' when some
    did reach, still without a number)."""
    if cell.n_not_reached:
        n = cell.n_not_reached + cell.n_reached
        return NOT_REACHED if not cell.n_reached else f"{NOT_REACHED} ({cell.n_not_reached} of {n} seeds)"
    if not cell.has_data:
        return "diverged" if cell.n_diverged else "\u2013"
    text = f"{cell.mean:.{digits}f}"
    if cell.half is not None:
        text += f" \u00b1 {cell.half:.{digits}f}"
    if cell.n_diverged:
        text += DIVERGED_MARK
    return text


def row_labels(row: tuple[str, str]) -> tuple[str, str]:
    if row == PRE:
        return "(Pre-unlearning)", ""
    return target_name(row[0]), method_name(row[1])


def _targets_phrase(table: Table3) -> str:
    targets = dict.fromkeys(t for t, _m in table.rows[1:])
    names = ", ".join(f"{t} = the paper's '{paper_target_name(t)}'" for t in targets)
    return f"Update targets as written in the config ({names})." if names else ""


def _seeds_phrase(table: Table3) -> str:
    counts = sorted(set(table.seeds.values()))
    if not counts:
        return "no seeds"
    n = "/".join(str(c) for c in counts)
    return f"{n} seed{'s' if counts != [1] else ''}"


def _mmbench_phrase(table: Table3, define: bool) -> str:
    """Which MMBench each column holds; `define`: with the full definition (the standalone Markdown), else a
    pointer to report.html's definitions box."""
    if table.measures:
        names = ("MMBench columns: each run's own measure, not comparable across runs ("
                 + "; ".join(f"{r}: {m}" for r, m in table.measures.items()) + ")")
    else:
        names = f"MMBench column: {table.mmbench}"
    if define and table.definition:
        return f"{names}. {table.definition}"
    return f"{names}, defined at the top of the report."


def caption(table: Table3, define: bool = True) -> str:
    if table.at == "matched":
        where = (f"Table 3 at matched forgetting: accuracy (%) by task modality, scenario {SCENARIO}, request "
                 f"{REQUEST}, at each seed's matched-forgetting stop (the first checkpoint whose D_unlearn "
                 "selection-half accuracy reached the target), on the held-out half of the questions "
                 "(unlearn_held, retain_held; pre-unlearning row: the same halves at request 0). "
                 f"'{NOT_REACHED}' = the target was not reached within the step cap (no number is shown).")
    else:
        where = (f"Table 3: accuracy (%) by task modality, scenario {SCENARIO}, request {REQUEST} at the "
                 "configured budget (pre-unlearning row: request 0).")
    return (f"{where} Mean over seeds \u00b1 half-width of the {CI_LABEL} "
            f"({_seeds_phrase(table)}); a plain mean where only one seed. Multi = image questions, "
            f"Text = text-only questions. {_mmbench_phrase(table, define)} {_targets_phrase(table)} "
            f"{DIVERGED_MARK} = some seeds diverged and are excluded from the mean; 'diverged' = every seed "
            "diverged.")


def notes(table: Table3) -> list[str]:
    what = f"scenario {SCENARIO}" + (" at matched forgetting (rows at=matched)" if table.at == "matched" else "")
    return [f"No data for {what} in run {run}." if len(table.runs) > 1
            else f"No data for {what}." for run in table.missing]


def _header_names(table: Table3) -> list[str]:
    names = ["Update target", "Method"]
    multi = len(table.runs) > 1
    for run in table.runs:
        for key, group, sub, _sp, _m, better in COLUMNS:
            if key == "mmbench":
                group = table.measures.get(run, table.mmbench)
            elif table.at == "matched":
                group += " held-out"
            name = f"{group} {sub}".strip() + f" ({better})"
            names.append(f"{run}: {name}" if multi else name)
    return names


def to_markdown(table: Table3) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [f"**{caption(table)}**", ""]
    lines += [f"_{n}_" for n in notes(table)]
    if notes(table):
        lines.append("")
    if not table.has_data:
        return "\n".join(lines).rstrip() + "\n"
    header = _header_names(table)
    lines.append("| " + " | ".join(esc(h) for h in header) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    for row in table.rows:
        cells = list(row_labels(row))
        for run in table.runs:
            cells += [format_cell(table.cell(run, row, key)) for key, *_ in COLUMNS]
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table3) -> str:
    """Machine-readable: one line per run x row, per column its mean, CI half-width, seeds, diverged (and, at
    matched forgetting, the seeds that did not reach the target: then the mean is empty)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["run", "target", "method"]
    matched = table.at == "matched"
    for key, *_ in COLUMNS:
        header += [f"{key}_mean", f"{key}_ci95", f"{key}_seeds", f"{key}_diverged"]
        header += [f"{key}_not_reached"] if matched else []
    writer.writerow(header + ["mmbench_metric"])

    def num(x):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

    for run in table.runs:
        if run in table.missing:
            continue
        for row in table.rows:
            line = [run, row[0], row[1]]
            for key, *_ in COLUMNS:
                c = table.cell(run, row, key)
                line += [num(c.mean), num(c.half), c.n_seeds, c.n_diverged]
                line += [c.n_not_reached] if matched else []
            writer.writerow(line + [table.measures.get(run, table.mmbench)])
    return out.getvalue()
