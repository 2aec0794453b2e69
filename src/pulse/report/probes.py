"""Probes of real forgetting (routes, quantization, relearning): one table per scenario x method and plain
statements.

Reads the rows protocol/probes.py writes (probe != none, at budget; modality `all`):

- routes (split `unlearn`): `route_image`, `route_text`, `route_test_set`, `route_name_only` (the same facts asked
  four ways) and `route_all` (a fact counts as known if ANY route answers it: the worst case for forgetting), at
  request R (after unlearning) and request 0 (before). Leak, per seed, in points, over the same facts:
      leak = route_all_R - route_image_R   (what the worst case keeps beyond the image question alone)
- quantization (split `unlearn`): `quant<b>` = the unlearned model's weights quantized to b bits (request R), beside
  the same quantization of the model before unlearning (request 0). Gain, per seed, in points, against the
  ordinary (unquantized) D_unlearn rows:
      gain = (quant_R - unlearned_R) - (quant_0 - pre_0)
  what quantizing adds back after unlearning beyond what it changes on the model before unlearning.
- relearning (probe `relearn`, split `relearn_measured` = the half of D_unlearn's people the attack never shows;
  `_attacked` = after the attack on the other half): per seed s, pre = request 0 (before unlearning), unl = request
  R (after unlearning), att = request R `relearn_measured_attacked`; the control (method `never_learned`: the same
  attack on a model that never learned those people, any target) before = `relearn_measured`, after =
  `relearn_measured_attacked`:
      recovery = 100 * (att - unl) / (pre - unl)        share (%) of the forgotten accuracy the attack brings back
                                                         (protocol/probes.recovery_ratio x 100)
      control  = 100 * (ctl_after - ctl_before) / (pre - unl)   the attack's gain without hidden knowledge, same scale
      excess   = recovery - control
  undefined (no value) for a seed where unlearning lowered nothing (pre <= unl).
Every aggregate is the seed mean with the 95% CI (stats.mean_ci); diverged rows (e.g. an attack that diverged) are
left out.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import pandas as pd

from .agg import Cell, method_name, select, summarize, target_name
from .load import NEVER_LEARNED, ROUTES, Run
from .stats import CI_LABEL, mean_ci

SPLIT = "unlearn"
MEASURED, ATTACKED = "relearn_measured", "relearn_measured_attacked"
RELEARN = ("recovery", "control", "excess")
ROUTE_NAMES = {"route_image": "image", "route_text": "text", "route_test_set": "Test_Set",
               "route_name_only": "name only", "route_all": "all routes (worst case)"}
PRE = "(pre-unlearning)"


def quants(df: pd.DataFrame) -> list[str]:
    """The quantization probes present, most bits first (quant8, quant4)."""
    names = {p for p in df["probe"] if str(p).startswith("quant")}
    return sorted(names, key=lambda p: -int(p[5:]))


@dataclass
class ProbeRow:
    """One method (or the pre-unlearning row) of one scenario in one run: cells by measure name."""

    run: str
    scenario: str
    target: str
    method: str
    request: int
    split: str
    cells: dict[str, Cell] = field(default_factory=dict)
    per_seed: dict[str, dict[int, float]] = field(default_factory=dict)  # gains / ratios, for findings


def _modality(picked: pd.DataFrame) -> str:
    mods = set(picked["modality"])
    return "all" if "all" in mods or len(mods) != 1 else next(iter(mods))


def _cell(rows: pd.DataFrame, **filters) -> Cell:
    """Modality `all`, else the single modality the selected rows carry."""
    picked = select(rows, **filters)
    return summarize(picked, modality=_modality(picked))


def _per_seed(rows: pd.DataFrame, **filters) -> dict[int, float]:
    picked = select(rows, **filters)
    picked = picked[(picked["modality"] == _modality(picked)) & (picked["status"] == "ok")]
    return picked.groupby("seed")["accuracy"].mean().dropna().to_dict()


def _agg(per_seed: dict[int, float]) -> Cell:
    values = [v for v in per_seed.values() if not math.isnan(v)]
    mean, half = mean_ci(values)
    return Cell(mean, half, len(values), 0)


@dataclass
class ScenarioProbes:
    """What one run's probe rows of one scenario are read against: the ordinary D_unlearn rows (`base`), the
    probe rows of the unlearned methods (`probed`) and their request-0 rows (`at0`), the quantization probes
    present, and the never-learned control's measured half before / after the attack, per seed."""

    run: str
    scenario: str
    base: pd.DataFrame
    probed: pd.DataFrame
    at0: pd.DataFrame
    quants: list[str]
    ctl_before: dict[int, float]
    ctl_after: dict[int, float]


def _scenario_probes(run: Run, probes: pd.DataFrame, scenario: str) -> ScenarioProbes:
    sp = select(probes, scenario=scenario)
    probed = sp[sp["method"] != NEVER_LEARNED]
    control = sp[(sp["method"] == NEVER_LEARNED) & (sp["probe"] == "relearn")]
    return ScenarioProbes(run.label, scenario, select(run.df, scenario=scenario, split=SPLIT), probed,
                          probed[probed["request"] == 0], quants(sp), _per_seed(control, split=MEASURED),
                          _per_seed(control, split=ATTACKED))


def _pre_row(sp: ScenarioProbes) -> ProbeRow:
    """The pre-unlearning row: every probe at request 0."""
    pre = ProbeRow(sp.run, sp.scenario, "", PRE, 0, SPLIT)
    pre.cells["unlearned"] = _cell(sp.base, request=0)
    for probe in (*ROUTES, *sp.quants):
        pre.cells[probe] = _cell(sp.at0, probe=probe, split=SPLIT)
    pre.cells["relearn_unlearned"] = _cell(sp.at0, probe="relearn", split=MEASURED)
    return pre


def _quant_gains(row: ProbeRow, sp: ScenarioProbes, mine: pd.DataFrame, mine0: pd.DataFrame) -> None:
    """Each quantization's accuracy and its gain per seed: (quant_R - unlearned_R) - (quant_0 - pre_0)."""
    f = dict(method=row.method, target=row.target)
    unl = _per_seed(sp.base, request=row.request, **f)
    pre0 = _per_seed(sp.base, request=0, **f) or _per_seed(sp.base, request=0)
    for probe in sp.quants:
        row.cells[probe] = _cell(mine, probe=probe, split=SPLIT)
        q_after = _per_seed(mine, probe=probe, split=SPLIT)
        q_before = _per_seed(mine0, probe=probe, split=SPLIT) or _per_seed(sp.at0, probe=probe, split=SPLIT)
        row.per_seed[f"{probe}_gain"] = {s: (q_after[s] - unl[s]) - (q_before[s] - pre0[s])
                                         for s in q_after if s in unl and s in q_before and s in pre0}


def _relearn_ratios(row: ProbeRow, sp: ScenarioProbes, mine: pd.DataFrame, mine0: pd.DataFrame) -> None:
    """Relearning: recovery, control and excess per seed (% of the forgotten accuracy), and the accuracies."""
    r_pre = _per_seed(mine0, probe="relearn", split=MEASURED)
    r_unl = _per_seed(mine, probe="relearn", split=MEASURED)
    r_att = _per_seed(mine, probe="relearn", split=ATTACKED)
    ratios = {k: {} for k in RELEARN}
    for s, a in r_att.items():
        gap = r_pre.get(s, math.nan) - r_unl.get(s, math.nan)
        if not gap > 0:
            continue
        ratios["recovery"][s] = 100.0 * (a - r_unl[s]) / gap
        if s in sp.ctl_before and s in sp.ctl_after:
            ratios["control"][s] = 100.0 * (sp.ctl_after[s] - sp.ctl_before[s]) / gap
            ratios["excess"][s] = ratios["recovery"][s] - ratios["control"][s]
    row.cells["relearn"] = _cell(mine, probe="relearn", split=ATTACKED)
    row.cells["relearn_unlearned"] = _cell(mine, probe="relearn", split=MEASURED)
    row.cells["relearn_control_acc"] = _agg({s: sp.ctl_after[s] for s in r_att if s in sp.ctl_after})
    for k, v in ratios.items():
        row.per_seed[f"relearn_{k}"] = v


def _method_row(sp: ScenarioProbes, method: str, target: str, request: int) -> ProbeRow:
    """One method x target after request R: routes and their leak, quantization gains, relearning."""
    row = ProbeRow(sp.run, sp.scenario, target, method, int(request), SPLIT)
    mine = select(sp.probed, method=method, target=target, request=request)
    mine0 = select(sp.at0, method=method, target=target)
    row.cells["unlearned"] = _cell(sp.base, method=method, target=target, request=request)
    for probe in ROUTES:
        row.cells[probe] = _cell(mine, probe=probe, split=SPLIT)
    worst = _per_seed(mine, probe="route_all", split=SPLIT)
    image = _per_seed(mine, probe="route_image", split=SPLIT)
    row.per_seed["route_leak"] = {s: worst[s] - image[s] for s in worst if s in image}
    _quant_gains(row, sp, mine, mine0)
    _relearn_ratios(row, sp, mine, mine0)
    for k, v in row.per_seed.items():
        row.cells[k] = _agg(v)
    return row


def _rows_for(run: Run) -> list[ProbeRow]:
    full = run.full
    probes = full[(full["probe"] != "none") & (full["at"] == "budget")]
    out = []
    for scenario in dict.fromkeys(probes["scenario"]):
        sp = _scenario_probes(run, probes, scenario)
        out.append(_pre_row(sp))
        after = sp.probed[sp.probed["request"] > 0]
        for method, target, request in after[["method", "target", "request"]].drop_duplicates().itertuples(
                index=False):
            out.append(_method_row(sp, method, target, request))
    return out


def probe_rows(runs: list[Run]) -> list[ProbeRow]:
    return [row for run in runs for row in _rows_for(run)]


def fmt(cell: Cell | None, digits: int = 1) -> str:
    if cell is None or not cell.has_data:
        return "\u2013"
    text = f"{cell.mean:.{digits}f}"
    return text + (f" \u00b1 {cell.half:.{digits}f}" if cell.half is not None else "")


def columns(rows: list[ProbeRow]) -> list[tuple[str, str]]:
    """(cell key, header) of the probe table: the standard D_unlearn accuracy, each route and the leak, each
    quantization with its gain, the relearning attack (measured half before / after the attack, recovery, control)."""
    keys = {k for row in rows for k in row.cells}
    qs = sorted({k for k in keys if k.startswith("quant") and not k.endswith("_gain")}, key=lambda p: -int(p[5:]))
    cols = [("unlearned", "D_unlearn (standard)")]
    cols += [(r, f"route: {ROUTE_NAMES[r]}") for r in ROUTES]
    cols += [("route_leak", "leak: all routes \u2212 image (points)")]
    for q in qs:
        cols += [(q, f"{q[5:]}-bit"), (f"{q}_gain", f"{q[5:]}-bit gain (points)")]
    cols += [("relearn_unlearned", "relearn: measured half, before the attack"),
             ("relearn", "relearn: measured half, after the attack"),
             ("relearn_recovery", "relearn recovery (% of forgotten)"),
             ("relearn_control", "control: never learned, gain (% of forgotten)")]
    return cols


def caption(split: str = SPLIT) -> str:
    return (f"Probes of real forgetting, on D_unlearn (split {split}; relearning: the half of D_unlearn's people the "
            "attack never shows). Accuracy (%) after the request per route (a fact counts as known under 'all "
            "routes' if any route answers it; leak = all routes \u2212 the image question, same facts), with the "
            "weights quantized (gain = what quantizing adds after unlearning beyond what it changes before; the "
            "pre-unlearning row holds the same quantization of the model before unlearning), and the relearning "
            "attack: recovery = 100 (after attack \u2212 before attack) / (before unlearning \u2212 after "
            "unlearning), beside the same attack on a model that never learned those people (control: its gain on "
            "the same scale). Pre-unlearning row: request 0. Mean over seeds \u00b1 half-width of the "
            f"{CI_LABEL}; a plain mean where only one seed; \u2013 = not measured.")


def to_markdown(rows: list[ProbeRow], multi: bool = False) -> str:
    if not rows:
        return ("**Probes of real forgetting**\n\n_No probe rows in results.csv (config `probes.run` empty, or a "
                "run made before probes existed)._\n")
    cols = columns(rows)
    lines = ["**Probes of real forgetting**", "", f"_{caption(rows[0].split)}_", ""]
    for (run, scenario), group in _groups(rows).items():
        lines += [f"### {run + ': ' if multi else ''}{scenario}", ""]
        header = ["Method", "Update target", "Request"] + [h for _k, h in cols]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 3 + ["---:"] * len(cols)) + "|")
        for row in group:
            name = PRE if row.method == PRE else method_name(row.method)
            cells = [name, target_name(row.target) if row.target else "", str(row.request)]
            cells += [display(row, k) for k, _h in cols]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def display(row: ProbeRow, key: str) -> str:
    """'' where the row has no such measure (e.g. gains on the pre-unlearning row), '\u2013' where not measured."""
    return fmt(row.cells[key]) if key in row.cells else ""


def _groups(rows: list[ProbeRow]) -> dict[tuple[str, str], list[ProbeRow]]:
    out: dict[tuple[str, str], list[ProbeRow]] = {}
    for row in rows:
        out.setdefault((row.run, row.scenario), []).append(row)
    return out


def to_csv(rows: list[ProbeRow]) -> str:
    """Long format: one line per run x scenario x method x measure with mean, CI half-width and seeds. Measures:
    unlearned (standard D_unlearn), route_* and route_leak, quant<b> and quant<b>_gain (points), relearn (measured
    half after the attack), relearn_unlearned (before the attack), relearn_control_acc (the control after the
    attack), relearn_recovery / relearn_control / relearn_excess (% of the forgotten accuracy); see the module
    docstring."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "scenario", "target", "method", "request", "split", "measure", "mean", "ci95", "seeds"])

    def num(x):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

    for row in rows:
        for measure, c in row.cells.items():
            writer.writerow([row.run, row.scenario, row.target, row.method, row.request, row.split, measure,
                             num(c.mean), num(c.half), c.n_seeds])
    return out.getvalue()
