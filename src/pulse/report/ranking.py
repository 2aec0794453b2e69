"""Methods ranked on several axes at once, per scenario (ranking.{md,csv}), the forget/retain trade-off figure with
the oracle marked (tradeoff.{png,svg}), and how much of D_unlearn was learned before unlearning.

Every value is the mean over seeds at the budget of the scenario's last request (update target by target). Axes,
each ranked on its own (1 = best; ties share the better rank), then the mean rank orders the methods:

  retain        D_retain accuracy, both forms                     higher is better
  mmbench       MMBench (the report's metric)                     higher is better
  known         accuracy on the D_unlearn questions answered      lower is better
                correctly before unlearning (split unlearn_known)
  oracle gap    |D_unlearn accuracy − the oracle's| (points)      lower is better   fine-tuned scenario with an oracle
  forget q.     KS p-value of the truth ratios vs the oracle      higher is better  fine-tuned scenario with an oracle
  privleak      |MUSE's PrivLeak| (Min-K%, vs the oracle)         lower is better   fine-tuned scenario with an oracle
  MIA AUC       Min-K% AUC of D_unlearn vs held-out people        shown, not ranked (the oracle's AUC is the target)
  relative AUC  Min-K% AUC of D_unlearn vs D_retain (celebrities) shown, not ranked (not a membership test)

D_unlearn accuracy itself is shown beside them (not ranked: forgetting alone rewards a model that forgets
everything). A scenario without an oracle (pre-trained: nothing to retrain; sustainability) ranks on what it has
and says so.
"""
from __future__ import annotations

import csv
import io
import math

import pandas as pd
from matplotlib.figure import Figure

from .agg import method_name, target_name
from .load import ORACLE, Run, SCENARIOS

KNOWN_SHARE_MIN = 80.0  # percent of D_unlearn questions answered before unlearning below which a cell is flagged
# (key, header, metric, split, better: +1 higher / -1 lower / 0 not ranked, transform)
AXES = (
    ("forget", "D_unlearn acc.", "accuracy", "unlearn", 0, None),
    ("retain", "D_retain acc. \u2191", "accuracy", "retain", 1, None),
    ("mmbench", "MMBench \u2191", "accuracy", "mmbench", 1, None),
    ("known", "known items acc. \u2193", "accuracy", "unlearn_known", -1, None),
    ("oracle_gap", "|gap to oracle| \u2193", "oracle_gap", "unlearn", -1, abs),
    ("forget_quality", "forget quality \u2191", "forget_quality", "unlearn", 1, None),
    ("privleak", "|PrivLeak| \u2193", "privleak", "unlearn", -1, abs),
    ("mia_auc", "MIA AUC (Min-K%)", "mia_auc_mink", "unlearn", 0, None),
    ("mia_relative", "D_unlearn vs D_retain AUC (Min-K%, relative)", "mia_auc_mink", "unlearn_vs_retain", 0, None),
)


def _last(df: pd.DataFrame, scenario: str) -> pd.DataFrame:
    rows = df[(df.scenario == scenario) & (df.probe == "none") & (df["at"] == "budget") & (df.modality == "all")]
    return rows[rows.request == rows.request.max()] if len(rows) else rows


def _mean(rows: pd.DataFrame, metric: str, split: str, transform) -> float:
    ok = rows[(rows.metric == metric) & (rows.split == split) & (rows.status == "ok")]
    per_seed = ok.groupby("seed")["accuracy"].mean().dropna()
    if transform is not None:
        per_seed = per_seed.map(transform)
    return float(per_seed.mean()) if len(per_seed) else math.nan


def ranking(run: Run, scenario: str) -> list[dict]:
    """One row per method × target of the scenario: its axis values, ranks and mean rank, best first."""
    last = _last(run.metrics, scenario)
    rows = []
    for (method, target), cell in last[last.method != ORACLE].groupby(["method", "target"], sort=True):
        row = {"scenario": scenario, "method": method, "target": target}
        for key, _h, metric, split, _b, transform in AXES:
            row[key] = _mean(cell, metric, "mmbench" if key == "mmbench" else split, transform)
        rows.append(row)
    ranked = [a for a in AXES if a[4] and any(not math.isnan(r[a[0]]) for r in rows)]
    for key, _h, _m, _s, better, _t in ranked:
        values = sorted({r[key] for r in rows if not math.isnan(r[key])}, reverse=better > 0)
        for r in rows:
            r[f"rank_{key}"] = values.index(r[key]) + 1 if not math.isnan(r[key]) else None
    for r in rows:
        got = [r[f"rank_{a[0]}"] for a in ranked if r.get(f"rank_{a[0]}") is not None]
        r["mean_rank"] = sum(got) / len(got) if got else math.nan
        r["ranked_on"] = [a[0] for a in ranked]
    return sorted(rows, key=lambda r: (r["mean_rank"], r["method"], r["target"]))


def known_shares(run: Run) -> list[dict]:
    """Per scenario and seed: D_unlearn questions answered correctly before unlearning (request 0), of all."""
    df = run.metrics
    r0 = df[(df.request == 0) & (df.metric == "accuracy") & (df.modality == "all") & (df.method != ORACLE)
            & (df.probe == "none")]
    out = []
    for (scenario, seed), rows in r0.groupby(["scenario", "seed"], sort=True):
        n_all = rows[rows.split == "unlearn"]["n"].max()
        n_known = rows[rows.split == "unlearn_known"]["n"].max()
        if n_all == n_all and n_known == n_known and n_all:
            share = 100.0 * n_known / n_all
            out.append({"scenario": scenario, "seed": int(seed), "known": int(n_known), "questions": int(n_all),
                        "share": share, "flagged": share < KNOWN_SHARE_MIN})
    return out


def _fmt(v: float) -> str:
    return "" if v != v else f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"


def to_markdown(run: Run) -> str:
    out = ["# Methods ranked on several axes", "",
           f"Mean over seeds at the budget of each scenario's last request; rank 1 = best on that axis; methods "
           f"ordered by their mean rank. Known items: the D_unlearn questions answered correctly before "
           f"unlearning (a cell where fewer than {KNOWN_SHARE_MIN:.0f}% were is flagged below).", ""]
    for scenario in SCENARIOS:
        rows = ranking(run, scenario)
        if not rows:
            continue
        shown = [a for a in AXES if any(not math.isnan(r[a[0]]) for r in rows)]
        out += [f"## {scenario}", "", f"Ranked on: {', '.join(rows[0]['ranked_on'])}."
                + ("" if "oracle_gap" in rows[0]["ranked_on"] else " No retrained oracle in this scenario."), "",
                "| method | target | " + " | ".join(a[1] for a in shown) + " | mean rank |",
                "|---|---|" + "---:|" * (len(shown) + 1)]
        for r in rows:
            cells = [_fmt(r[a[0]]) + (f" ({r[f'rank_{a[0]}']})" if r.get(f"rank_{a[0]}") else "") for a in shown]
            out.append(f"| {method_name(r['method'])} | {target_name(r['target'])} | " + " | ".join(cells)
                       + f" | {_fmt(r['mean_rank'])} |")
        out.append("")
    shares = known_shares(run)
    if shares:
        out += ["## Learned before unlearning", "", "| scenario | seed | known | questions | share |",
                "|---|---:|---:|---:|---:|"]
        out += [f"| {s['scenario']} | {s['seed']} | {s['known']} | {s['questions']} | {s['share']:.1f}%"
                + (" (flagged)" if s["flagged"] else "") + " |" for s in shares]
        out.append("")
    return "\n".join(out)


def to_csv(run: Run) -> str:
    buf = io.StringIO()
    keys = ["scenario", "method", "target"] + [a[0] for a in AXES] + [f"rank_{a[0]}" for a in AXES if a[4]] \
        + ["mean_rank"]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for scenario in SCENARIOS:
        w.writerows(ranking(run, scenario))
    return buf.getvalue()


def tradeoff(run: Run) -> Figure | None:
    """Per scenario: D_unlearn (x) against D_retain (y) accuracy per method × target, with the model before
    unlearning and (fine-tuned) the retrained oracle marked."""
    panels = [s for s in SCENARIOS if ranking(run, s)]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    look = sorted({(r["method"], r["target"]) for s in panels for r in ranking(run, s)})  # one look per method
    for ax, scenario in zip(axes, panels):
        for r in sorted(ranking(run, scenario), key=lambda r: (r["method"], r["target"])):
            i = look.index((r["method"], r["target"]))
            ax.plot(r["forget"], r["retain"], "os^Dv<>"[i % 7], color=f"C{i}", alpha=0.8,
                    label=f"{method_name(r['method'])} {target_name(r['target'])}")
        m = run.metrics
        df = m[(m.scenario == scenario) & (m.modality == "all") & (m.metric == "accuracy") & (m.request == 0)
               & (m.probe == "none") & (m["at"] == "budget")]
        for who, marker, label in ((df.method != ORACLE, "s", "before unlearning"), (df.method == ORACLE, "*",
                                                                                      "retrained oracle")):
            rows = df[who]
            if len(rows):
                x = rows[rows.split == "unlearn"].groupby("seed")["accuracy"].mean().mean()
                y = rows[rows.split == "retain"].groupby("seed")["accuracy"].mean().mean()
                ax.plot(x, y, "*" if marker == "*" else "P", color="black", markersize=11, label=label)
        ax.set_title(scenario)
        ax.set_xlabel("D_unlearn accuracy (%) \u2190 forgets more")
        ax.set_ylabel("D_retain accuracy (%) \u2191 keeps more")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Forget vs retain at the budget (mean over seeds), metric: MCQ accuracy, both forms")
    return fig


def to_html(run: Run, png: bytes | None) -> str:
    """The report.html section: one table per scenario, the learned-before shares, the trade-off figure."""
    import base64
    from html import escape

    parts = ['<section id="ranking-section"><h2>Methods ranked on several axes</h2>',
             "<p>Mean over seeds at the budget of each scenario's last request; (rank) 1 = best on that axis; "
             "rows ordered by mean rank. D_unlearn accuracy and the MIA AUC are shown, not ranked.</p>"]
    for scenario in SCENARIOS:
        rows = ranking(run, scenario)
        if not rows:
            continue
        shown = [a for a in AXES if any(not math.isnan(r[a[0]]) for r in rows)]
        oracle = "" if "oracle_gap" in rows[0]["ranked_on"] else " No retrained oracle in this scenario."
        parts.append(f"<h3>{escape(scenario)}</h3><p>Ranked on: {escape(', '.join(rows[0]['ranked_on']))}."
                     f"{oracle}</p><table><tr><th>method</th><th>target</th>"
                     + "".join(f"<th>{escape(a[1])}</th>" for a in shown) + "<th>mean rank</th></tr>")
        for r in rows:
            cells = "".join(f"<td>{_fmt(r[a[0]])}" + (f" ({r[f'rank_{a[0]}']})" if r.get(f"rank_{a[0]}") else "")
                            + "</td>" for a in shown)
            parts.append(f"<tr><td>{escape(method_name(r['method']))}</td><td>{escape(target_name(r['target']))}"
                         f"</td>{cells}<td>{_fmt(r['mean_rank'])}</td></tr>")
        parts.append("</table>")
    shares = known_shares(run)
    if shares:
        flagged = [s for s in shares if s["flagged"]]
        listed = ", ".join(f"{s['scenario']} seed {s['seed']} {s['share']:.0f}%" for s in shares)
        parts.append(f"<p>Learned before unlearning: {listed} of D_unlearn questions answered correctly at "
                     f"request 0"
                     + (f"; flagged (below {KNOWN_SHARE_MIN:.0f}%): "
                        + ", ".join(f"{s['scenario']} seed {s['seed']}" for s in flagged) if flagged else
                        f"; none below {KNOWN_SHARE_MIN:.0f}%") + ".</p>")
    if png:
        parts.append(f'<img id="tradeoff" alt="Figure: forget vs retain accuracy per method, the model before '
                     f'unlearning and the retrained oracle marked" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}">')
    parts.append("</section>")
    return "".join(parts)
