"""report.html: one self-contained page (inline CSS, figures as base64 PNG data URIs, no external URL).

The page needs no JavaScript. One small inline script only records, on load, whether every figure
decoded and is laid out, plus any script or console error, into #pulse-selfcheck (a hidden element that
the browser test reads); it fetches nothing.
"""
from __future__ import annotations

import base64
import html
import json

from .agg import method_name, target_name
from .load import SCENARIOS, Run, matched_targets, stop_rule, target_phrase
from .mmbench import PAPER_NOTE, caveat, comparable, curve_label, definitions, metric_name
from .probes import PRE as PROBE_PRE
from .probes import ProbeRow, display
from .probes import columns as probe_columns
from .probes import caption as probes_caption
from .runinfo import config_rows
from .stats import CI_LABEL
from .sweep import winners
from .tables import COLUMNS, DIVERGED_MARK, Table3, caption, format_cell, notes, row_labels

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;color:#1d1d1f;
background:#fafafa;line-height:1.45}
main{max-width:1280px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{margin:0 0 4px;font-size:26px}h2{margin-top:36px;border-bottom:2px solid #e4e4e7;padding-bottom:4px}
.sub{color:#555;margin:0 0 16px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:14px}
th,td{border:1px solid #d4d4d8;padding:4px 10px;vertical-align:top}
th{background:#f4f4f5;text-align:center}td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}
table.kv th{text-align:left;white-space:nowrap}
tr.pre td{background:#fafaf0;font-style:italic}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption,.caption{color:#444;font-size:14px;margin-top:6px}
.note{color:#b00020}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:13px;
white-space:nowrap}
.holds{background:#d9f2e3;color:#0b6b2e}.fails{background:#fde2e1;color:#a11a12}
.nodata{background:#ececec;color:#555}
details pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px;max-height:400px}
code{font-size:13px}
.scroll{overflow-x:auto;max-width:100%}
.defbox{border:1px solid #c7d2fe;background:#f5f7ff;border-radius:6px;padding:4px 18px 8px;margin:16px 0}
.defbox h2{margin-top:8px;border:0;font-size:18px}.defbox dt{font-weight:600;margin-top:6px}
.defbox dd{margin:2px 0 4px 20px}.defbox p{font-size:14px;color:#333}
"""

SELFCHECK = """
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    errors.push("error: " + (e.message || (e.target && e.target.id) || "resource failed"));
  }, true);
  var origError = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return origError.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var lines = [], bad = 0, imgs = document.images;
    for (var i = 0; i < imgs.length; i++) {
      var im = imgs[i], r = im.getBoundingClientRect();
      var ok = im.complete && im.naturalWidth > 0 && r.width > 0 && r.height > 0;
      if (!ok) { bad++; }
      lines.push((im.id || "img" + i) + " " + (ok ? "ok" : "FAIL") + " natural " + im.naturalWidth + "x" +
                 im.naturalHeight + " box " + Math.round(r.width) + "x" + Math.round(r.height));
    }
    var el = document.getElementById("pulse-selfcheck");
    el.setAttribute("data-images", String(imgs.length));
    el.setAttribute("data-errors", String(errors.length));
    el.setAttribute("data-status", bad === 0 && errors.length === 0 ? "ok" : "fail");
    el.textContent = lines.concat(errors).join("\\n");
  });
})();
"""


def esc(value) -> str:
    """HTML-escape; '://' is written as a character reference so no URL appears in the file's text."""
    return html.escape(str(value)).replace("://", "&#58;//")


def _config_section(runs: list[Run]) -> str:
    parts = ['<section id="configuration"><h2>Run configuration</h2>']
    per_run = [config_rows(r) for r in runs]
    parts.append('<table class="kv"><thead><tr><th></th>')
    parts += [f"<th>{esc(r.label)}</th>" for r in runs]
    parts.append("</tr></thead><tbody>")
    for i, (key, _v) in enumerate(per_run[0]):
        parts.append(f"<tr><th>{esc(key)}</th>" + "".join(f"<td>{esc(rows[i][1])}</td>" for rows in per_run)
                     + "</tr>")
    parts.append("</tbody></table>")
    for r in runs:
        full = json.dumps(r.manifest.get("config", {}), indent=2, sort_keys=True, default=str)
        parts.append(f"<details><summary>Full configuration of {esc(r.label)}</summary><pre>{esc(full)}</pre>"
                     "</details>")
    parts.append("</section>")
    return "".join(parts)


def missing_notes(runs: list[Run], scenarios: tuple[str, ...]) -> list[str]:
    """'No data for scenario X' lines, naming the run when there are several."""
    out = []
    for run in runs:
        present = set(run.df["scenario"])
        for scenario in scenarios:
            if scenario not in present:
                out.append(f"No data for scenario {scenario}" + (f" in run {run.label}." if len(runs) > 1 else "."))
    return out


def _figure_section(fid: str, title: str, png: bytes, alt: str, figcaption: str, notes_: list[str]) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<section id="{fid}-section"><h2>{esc(title)}</h2>'
            + "".join(f'<p class="note">{esc(n)}</p>' for n in notes_)
            + f'<figure><img id="{fid}" alt="{esc(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{figcaption}</figcaption></figure></section>")


def table3_html(table: Table3) -> str:
    matched = table.at == "matched"
    sid, title = ("table3_matched", "Table 3 at matched forgetting") if matched else ("table3", "Table 3")
    measure = "MMBench measures vary by run" if table.measures else table.mmbench
    parts = [f'<section id="{sid}-section"><h2>{title}: performance by task modality ({esc(measure)})</h2>']
    parts += [f'<p class="note">{esc(n)}</p>' for n in notes(table)]
    held = " held-out" if matched else ""
    if table.has_data:
        runs = [r for r in table.runs if r not in table.missing]
        multi = len(table.runs) > 1
        hdr = [f'<div class="scroll"><table id="{sid}"><thead>']
        span = 3 if multi else 2
        hdr.append(f'<tr><th rowspan="{span}">Update target</th><th rowspan="{span}">Method</th>')
        if multi:
            hdr += [f'<th colspan="{len(COLUMNS)}">{esc(r)}</th>' for r in runs]
            hdr.append("</tr><tr>")
        for r in runs:
            hdr.append(f'<th colspan="2">D<sub>unlearn</sub>{held} (\u2193)</th><th colspan="2">D<sub>retain</sub>'
                       f'{held} (\u2191)</th><th rowspan="2">{esc(table.measures.get(r, table.mmbench))} (\u2191)</th>')
        hdr.append("</tr><tr>")
        for _r in runs:
            hdr.append("<th>Multi</th><th>Text</th><th>Multi</th><th>Text</th>")
        hdr.append("</tr></thead><tbody>")
        parts += hdr
        for row in table.rows:
            target, method = row_labels(row)
            cls = ' class="pre"' if not method else ""
            parts.append(f"<tr{cls}><td>{esc(target)}</td><td>{esc(method)}</td>")
            for run in runs:
                parts += [f'<td class="num">{esc(format_cell(table.cell(run, row, key)))}</td>'
                          for key, *_ in COLUMNS]
            parts.append("</tr>")
        parts.append("</tbody></table></div>")
    parts.append(f'<p class="caption">{esc(caption(table, define=False))}</p></section>')
    return "".join(parts)


def _badge(holds) -> str:
    if holds is True:
        return '<span class="badge holds">holds</span>'
    if holds is False:
        return '<span class="badge fails">does not hold</span>'
    return '<span class="badge nodata">no data</span>'


AT_NAMES = {"budget": "fixed budget", "matched": "matched forgetting"}


def findings_html(findings: list[dict], multi: bool) -> str:
    parts = ['<section id="findings-section"><h2>Findings check</h2>',
             '<p class="caption">The paper\'s claims F1\u2013F4, checked against this run at the configured budget '
             'and, where the run has them, at matched forgetting (held-out half of the questions), with the '
             f'{CI_LABEL} of each per-seed difference (seed means of accuracy as % of the pre-unlearning accuracy; '
             'diverged measurements excluded; a method that did not reach the target is named and left out). '
             'P1\u2013P3 state what the probes show.</p>',
             '<table id="findings"><thead><tr>' + ("<th>Run</th>" if multi else "")
             + "<th>ID</th><th>At</th><th>Claim</th><th>Result</th><th>Evidence</th></tr></thead><tbody>"]
    for f in findings:
        parts.append("<tr>" + (f"<td>{esc(f.get('run', ''))}</td>" if multi else "")
                     + f"<td>{esc(f['id'])}</td><td>{esc(AT_NAMES.get(f.get('at'), f.get('at', '')))}</td>"
                     f"<td>{esc(f['claim'])}</td><td>{_badge(f['holds'])}</td><td>{esc(f['evidence'])}</td></tr>")
    parts.append("</tbody></table></section>")
    return "".join(parts)


def diverged_html(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        div = run.df[run.df["status"] == "diverged"]
        for (scenario, method, target, seed), g in div.groupby(["scenario", "method", "target", "seed"],
                                                               sort=False):
            requests = ", ".join(str(q) for q in sorted(g["request"].unique()))
            rows.append((run.label, scenario, method_name(method), target_name(target), seed, requests))
    parts = ['<section id="diverged-section"><h2>Diverged measurements</h2>']
    if not rows:
        parts.append("<p>None: every measurement has status ok.</p></section>")
        return "".join(parts)
    parts.append(f"<p>Measurements with status <code>diverged</code> are excluded from every mean, interval "
                 f"and finding; table cells that lost a seed carry {DIVERGED_MARK}, cells that lost every "
                 "seed read 'diverged'.</p>")
    parts.append("<table><thead><tr><th>Run</th><th>Scenario</th><th>Method</th><th>Target</th><th>Seed</th>"
                 "<th>Requests</th></tr></thead><tbody>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>")
    parts.append("</tbody></table></section>")
    return "".join(parts)


def definitions_html(runs: list[Run], mmbench: str) -> str:
    """The definitions box at the top of the page: the MMBench label's full meaning (once; each run's own when
    the runs measured differently), kept / forgotten, the interval; how to switch the metric, the paper's number,
    and any comparability caveat."""
    metric = runs[0].mmbench if runs else "circular"
    other = "vanilla" if metric == "circular" else "circular"
    terms = [(esc(name), esc(text)) for name, text in definitions(runs, metric)]
    terms += [("kept / forgotten (%)", "accuracy after unlearning as a percentage of the same model's accuracy "
               "before unlearning (request 0) on the same questions; forgotten = 100 \u2212 kept."),
              (CI_LABEL, "the seed mean \u00b1 t<sub>0.975, n\u22121</sub> \u00b7 s / \u221an over the "
               "seeds; none with a single seed. Figures clip an interval to its quantity's range (accuracy "
               "0\u2013100 %, kept \u2265 0 %, forgotten 0\u2013100 %), a small triangle marking a clipped end; "
               "tables show the full interval.")]
    parts = ['<section id="definitions" class="defbox"><h2>Definitions</h2><dl>']
    parts += [f"<dt>{name}</dt><dd>{text}</dd>" for name, text in terms]
    parts.append(f"</dl><p>MMBench metric shown: {esc(metric_name(metric))}; switch with "
                 f"<code>pulse report RUN_DIR --mmbench {other}</code>. {esc(PAPER_NOTE)}</p>")
    note = caveat(runs)
    if note:
        parts.append(f'<p class="note">{esc(note)}</p>')
    parts.append("</section>")
    return "".join(parts)


def probes_html(rows: list[ProbeRow], multi: bool) -> str:
    parts = ['<section id="probes-section"><h2>Probes of real forgetting</h2>']
    if not rows:
        parts.append("<p>Not measured in this run (no probe rows in results.csv: config <code>probes.run</code> "
                     "empty, or a run made before probes existed).</p></section>")
        return "".join(parts)
    cols = probe_columns(rows)
    groups: dict[tuple[str, str], list[ProbeRow]] = {}
    for row in rows:
        groups.setdefault((row.run, row.scenario), []).append(row)
    for (run, scenario), group in groups.items():
        parts.append(f"<h3>{esc(run + ': ' if multi else '')}{esc(scenario)}</h3>")
        parts.append('<div class="scroll"><table class="probes"><thead><tr><th>Method</th><th>Update target</th>'
                     '<th>Request</th>'
                     + "".join(f"<th>{esc(h)}</th>" for _k, h in cols) + "</tr></thead><tbody>")
        for row in group:
            pre = row.method == PROBE_PRE
            cls = ' class="pre"' if pre else ""
            parts.append(f"<tr{cls}><td>{esc(PROBE_PRE if pre else method_name(row.method))}"
                         f"</td><td>{esc(target_name(row.target))}</td><td>{row.request}</td>"
                         + "".join(f'<td class="num">{esc(display(row, k))}</td>' for k, _h in cols)
                         + "</tr>")
        parts.append("</tbody></table></div>")
    parts.append(f'<p class="caption">{esc(probes_caption(rows[0].split))}</p></section>')
    return "".join(parts)


def _targets_text(runs: list[Run], scenarios) -> str:
    """' Matched-forgetting target as in the config: <code>rule</code>; recorded values (...).' ('' without)."""
    rules = "; ".join(dict.fromkeys(r for r in (stop_rule(run.manifest) for run in runs) if r))
    numbers = "; ".join(dict.fromkeys(p for s in scenarios for p in (target_phrase(r.manifest, s) for r in runs)
                                      if p))
    return ((f" Matched-forgetting target as in the config: <code>{esc(rules)}</code>" if rules else "")
            + (f"; recorded values: {esc(numbers)}." if numbers else "." if rules else ""))


def _curves_sections(runs: list[Run], curves: dict[str, bytes]) -> list[str]:
    if not curves:
        return ['<section id="curves-section"><h2>Effectiveness vs generality during unlearning</h2><p>Not '
                "measured in this run (no checkpoint rows: <code>eval.every</code> is 0, or a run made before "
                "curves existed).</p></section>"]
    subsets = "; ".join(dict.fromkeys(curve_label(run, run.mmbench) for run in runs))
    out = []
    for scenario, png in curves.items():
        cap = (f"Effectiveness vs generality during unlearning, scenario {esc(scenario)}: one line per method, "
               "one point per checkpoint (every <code>eval.every</code> optimizer steps, and the first and last "
               "step, whose numbers are written next to the points); requests follow each other in order. "
               "y: D<sub>unlearn</sub> accuracy on the selection half of the questions (lower = more forgotten); "
               f"x: D<sub>retain</sub> selection half (left) and the checkpoint MMBench subset ({esc(subsets)}; "
               "right), higher = more general ability kept. Seed means; error bars are the "
               f"{CI_LABEL}, drawn only where there are at least 2 seeds and clipped to 0\u2013100 % (a small "
               "triangle marks a clipped end). Each method has its own marker and line style so that overlapping "
               "lines stay visible; \u2605 marks the matched-forgetting stop (the checkpoint nearest the seeds' "
               "median stop step)."
               + (" The dashed line is the target (mean over seeds)." + _targets_text(runs, (scenario,))
                  if any(matched_targets(r.manifest, scenario) for r in runs) else ""))
        out.append(_figure_section(f"curves_{scenario}", f"Effectiveness vs generality: {scenario}", png,
                                   f"Curves of D_unlearn accuracy against D_retain and MMBench-subset accuracy "
                                   f"over unlearning checkpoints, scenario {scenario}, one line per method", cap, []))
    return out


def sweep_html(runs: list[Run]) -> str:
    """The equal-search-budget winners per scenario, update target, method and seed ('' without a sweep)."""
    rows = [(run.label, w) for run in runs for w in winners(run.manifest)]
    if not rows:
        return ""
    parts = ['<section id="sweep-section"><h2>Equal search budget: sweep winners</h2>',
             "<p>Each method ran every configuration of its declared grid; per scenario, update target and seed the "
             "winner is the configuration with the best generality (D<sub>retain</sub> selection half, then the "
             "MMBench subset) among those that reached the matched-forgetting target on the selection half. "
             "Figures and tables show it as \u201c(sweep winner)\u201d, reported on the held-out half; where none "
             "reached the target the method reads \u201cdid not reach\u201d.</p>",
             "<table><thead><tr>" + ("<th>Run</th>" if len(runs) > 1 else "")
             + "<th>Scenario</th><th>Update target</th><th>Method</th><th>Seed</th><th>Winner</th>"
             "<th>Reached the target</th></tr></thead><tbody>"]
    order = {s: i for i, s in enumerate(SCENARIOS)}
    for label, w in sorted(rows, key=lambda r: (r[0], order.get(r[1]["scenario"], 9), r[1]["target"],
                                                 r[1]["method"], r[1]["seed"])):
        parts.append("<tr>" + (f"<td>{esc(label)}</td>" if len(runs) > 1 else "")
                     + f"<td>{esc(w['scenario'])}</td><td>{esc(w['target'])}</td><td>{esc(method_name(w['method']))}"
                     f"</td><td>{w['seed']}</td><td>{esc(w['winner'] or 'none reached')}</td>"
                     f"<td>{w['reached']} of {len(w['candidates'])}</td></tr>")
    parts.append("</tbody></table></section>")
    return "".join(parts)


CLIPPED = ("Intervals are clipped to each quantity's range (kept \u2265 0 %, forgotten 0\u2013100 %); a small "
           "triangle marks a clipped end.")


def _figure4_sections(runs: list[Run], pngs: dict[str, bytes], measures: str) -> list[str]:
    """Figure 4 at the budget, and at matched forgetting when the run has it."""
    multi = len(runs) > 1
    cap = ("Figure 4: the effect of the source of the unlearning target, after request 1. "
           "D<sub>unlearn</sub>: percentage of the pre-unlearning accuracy that has been forgotten "
           f"(100 \u2212 relative); D<sub>retain</sub> and {esc(measures)}: percentage of the pre-unlearning "
           f"accuracy kept (relative; see Definitions). Modality: all questions. Bars are seed means, error bars "
           f"the {CI_LABEL} (none for a single seed). {CLIPPED} {DIVERGED_MARK}: diverged seeds excluded."
           + (" One row of panels per run." if multi else ""))
    out = [_figure_section("figure4", f"Figure 4: fine-tuned vs pre-trained knowledge ({measures})",
                           pngs["figure4"], "Figure 4: grouped bars per unlearning method comparing fine-tuned and "
                           f"pre-trained knowledge: D_unlearn forgotten, D_retain kept and {measures} kept, in percent "
                           "of the pre-unlearning accuracy", cap, missing_notes(runs, ("finetuned", "pretrained")))]
    if "figure4_matched" in pngs:
        mcap = ("Figure 4 at matched forgetting: as Figure 4, at each seed's matched-forgetting stop (the first "
                "checkpoint whose D<sub>unlearn</sub> selection-half accuracy reached the target), measured on the "
                "held-out half of the questions (unlearn_held, retain_held) and the full MMBench set. A method "
                "where some seed did not reach the target within the step cap gets no bar, only "
                "\u201cdid not reach\u201d: it is never compared as if it had. " + CLIPPED
                + _targets_text(runs, ("finetuned", "pretrained")))
        out.append(_figure_section(
            "figure4_matched", f"Figure 4 at matched forgetting ({measures})", pngs["figure4_matched"],
            "Figure 4 at matched forgetting: grouped bars per unlearning method comparing fine-tuned and "
            "pre-trained knowledge at the matched-forgetting stop", mcap, []))
    return out


def _figure5_section(runs: list[Run], png: bytes, measures: str) -> str:
    cap = ("Figure 5: accuracy (%) on D<sub>unlearn</sub>, D<sub>retain</sub> (all questions) and "
           f"{esc(measures)} over sequential unlearning requests (sustainability scenario; request 0 = before "
           "unlearning). Lines are seed means, each method with its own marker and line style and offset "
           f"slightly to the side so that equal lines stay visible; the shaded band is the {CI_LABEL}, drawn "
           "where there are at least 2 seeds and clipped to 0\u2013100 %; \u00d7 marks a request where every "
           "seed diverged." + (" Runs are told apart by line style." if len(runs) > 1 else ""))
    return _figure_section("figure5", f"Figure 5: sustainability over sequential requests ({measures})", png,
                           f"Figure 5: accuracy in percent on D_unlearn, D_retain and {measures} over unlearning "
                           "requests, one line per method", cap, missing_notes(runs, ("sustainability",)))


def render_html(runs: list[Run], table: Table3, findings: list[dict], pngs: dict[str, bytes],
                mmbench: str = "MMBench", *, matched: Table3 | None = None,
                probes: list[ProbeRow] | None = None, ranking: str = "") -> str:
    """The page; `pngs` holds each figure's PNG by file stem (figure4, figure4_matched, figure5,
    curves_<scenario>)."""
    labels = ", ".join(r.label for r in runs)
    multi = len(runs) > 1
    measures = mmbench if comparable(runs) else "MMBench measures vary by run, each named in its own panel"
    curves = {k.removeprefix("curves_"): v for k, v in pngs.items() if k.startswith("curves_")}
    body = [
        "<main>",
        "<h1>PULSE unlearning report</h1>",
        f'<p class="sub">Run{"s" if multi else ""}: {esc(labels)}. Statistics: mean over seeds with the '
        f"{CI_LABEL} (t<sub>0.975, n\u22121</sub> \u00b7 s / \u221an).</p>",
        definitions_html(runs, mmbench),
        _config_section(runs),
        *_figure4_sections(runs, pngs, measures),
        _figure5_section(runs, pngs["figure5"], measures),
        table3_html(table),
        table3_html(matched) if matched is not None else "",
        ranking,
        *_curves_sections(runs, curves),
        sweep_html(runs),
        probes_html(probes or [], multi),
        findings_html(findings, multi),
        diverged_html(runs),
        '<footer><div id="pulse-selfcheck" hidden data-status="pending"></div></footer>',
        "</main>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>PULSE report: {esc(labels)}</title><style>{CSS}</style>"
            f"<script>{SELFCHECK}</script></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
