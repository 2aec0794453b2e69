"""Figures 4 and 5 of the paper and the effectiveness-vs-generality curves, drawn with matplotlib's object API
(no pyplot global state).

Figure 4: per method, fine-tuned vs pre-trained knowledge at request 1 on three axes: D_unlearn forgotten
(100 - relative), D_retain kept and MMBench kept (relative), all in % of the pre-unlearning accuracy.
`at="matched"` draws the same at the matched-forgetting stop, on the held-out half of the questions
(unlearn_held, retain_held); a scenario x method where some seed did not reach the target gets no bar, only the
words "did not reach".
Figure 5: sustainability scenario, accuracy (%) over requests 0..K, one panel per split, one line per
method (own marker, a small horizontal offset so that equal lines stay visible), shaded 95% CI band (Student t)
where there are >= 2 seeds. Runs whose MMBench measured different things get one MMBench panel each.
Curves: per scenario, D_unlearn accuracy on the selection half (y) against generality (x: D_retain selection half;
the checkpoint MMBench subset) at every checkpoint, one line per method, error bars (95% CI) only where >= 2 seeds.
Several runs: one row of panels per run (Figure 4, curves), line styles (Figure 5). `mmbench` is the MMBench
label (report.mmbench.label), e.g. "MMBench (CircularEval)": it names the metric in the axis, panel and title text.
Error bars are drawn only for values with a CI: a single seed gets no bar and no zero-height cap.
"""
from __future__ import annotations

import io
import math

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .agg import (Cell, main_target, method_name, methods, select, seed_count, summarize, target_name,
                  with_relative)
from .load import Run, matched_targets, stop_rule, target_phrase, view
from .mmbench import comparable, curve_label, short
from .stats import CI_LABEL

DAGGER = "\u2020"
NOT_REACHED = "did not reach"
SCENARIO_COLORS = {"finetuned": "#4C72B0", "pretrained": "#DD8452"}
SCENARIO_LABELS = {"finetuned": "Fine-tuned knowledge", "pretrained": "Pre-trained knowledge"}
METHOD_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
METHOD_STYLES = ("-", "--", "-.", ":")
RUN_STYLES = ("-", "--", ":", "-.")
DODGE = 0.06  # Figure 5: horizontal offset between methods, in requests
FIG4_AXES = (  # (label, split, transform of relative); "MMBench" is replaced by the metric's label
    ("D$_\\mathrm{unlearn}$\nforgotten (%)", "unlearn", lambda r: 100.0 - r),
    ("D$_\\mathrm{retain}$\nkept (%)", "retain", None),
    ("MMBench\nkept (%)", "mmbench", None),
)
HELD = {"unlearn": "unlearn_held", "retain": "retain_held"}
FIG5_PANELS = (("D$_\\mathrm{unlearn}$", "unlearn"), ("D$_\\mathrm{retain}$", "retain"),
               ("MMBench", "mmbench"))


def _with_metric(text: str, mmbench: str) -> str:
    return text.replace("MMBench", short(mmbench)) if mmbench != "MMBench" else text


def _tick(text: str, mmbench: str) -> str:
    """An axis tick naming the MMBench measure, wrapped: 'MMBench\n(CircularEval,\nlikelihood-scored)\nkept (%)'."""
    if "MMBench" not in text or mmbench == "MMBench":
        return text
    return text.replace("MMBench", short(mmbench).replace(" (", "\n(").replace(", ", ",\n"))


def seeds_phrase(counts: list[int]) -> str:
    counts = sorted({c for c in counts if c})
    if not counts:
        return "no seeds"
    if counts == [1]:
        return "1 seed (no CI)"
    n = "/".join(str(c) for c in counts)
    return f"mean of {n} seeds, {CI_LABEL}"


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="#555555",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _diverged_note(n: int, what: str) -> str:
    return f"{DAGGER} diverged seeds are excluded from the means ({n} {what})." if n else ""


def style(i: int) -> dict:
    """Colour, marker and line style of the i-th method: overlapping lines stay told apart."""
    return {"color": METHOD_COLORS[i % len(METHOD_COLORS)], "marker": METHOD_MARKERS[i % len(METHOD_MARKERS)],
            "ls": METHOD_STYLES[(i // len(METHOD_COLORS)) % len(METHOD_STYLES)]}


def _errorbars(ax, xs, ys, halves, color, axis: str = "y") -> None:
    """Error bars only for the points that have a CI (>= 2 seeds); none, and no cap, for the others."""
    pts = [(x, y, h) for x, y, h in zip(xs, ys, halves) if h is not None and not math.isnan(h)]
    if not pts:
        return
    px, py, ph = zip(*pts)
    kw = {"yerr": ph} if axis == "y" else {"xerr": ph}
    ax.errorbar(px, py, fmt="none", ecolor=color, elinewidth=0.9, capsize=3, alpha=0.6, **kw)


def figure4(runs: list[Run], mmbench: str = "MMBench", at: str = "budget") -> Figure:
    scenarios = ("finetuned", "pretrained")
    per_run = []
    for run in runs:
        after = run.df if at == "budget" else with_relative(view(run.full, at=at), run.df)
        df = after[after["scenario"].isin(scenarios)]
        at1 = select(df, request=1)
        target = main_target(at1)
        per_run.append((run, df, target, methods(at1, target=target)))
    ncols = max([len(m) for *_, m in per_run] + [1])
    nrows = len(runs)
    fig = Figure(figsize=(max(4.4 * ncols, 7.5), 3.9 * nrows + 1.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    counts, diverged, targets, not_reached = [], 0, set(), False
    drawn, ylim = [], (0.0, 104.0)
    own_measure = not comparable(runs)
    for i, (run, df, target, meths) in enumerate(per_run):
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        measure = run.measure if own_measure and run.measure else mmbench
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(meths):
                ax.set_axis_off()
                continue
            method = meths[j]
            targets.add(target)
            top = 100.0
            by_scenario = {}
            for scenario in scenarios:
                counts.append(seed_count(df, scenario=scenario))
                cells: list[Cell] = [
                    summarize(df, value="relative", transform=tf, scenario=scenario, method=method,
                              target=target, request=1, split=HELD.get(split, split) if at == "matched" else split,
                              modality="all")
                    for _label, split, tf in FIG4_AXES]
                if any(c.has_data or c.n_diverged or c.n_not_reached for c in cells):
                    by_scenario[scenario] = cells
            missing = [s for s in scenarios if s not in by_scenario]
            width = 0.38 if len(by_scenario) > 1 else 0.5
            for s, (scenario, cells) in enumerate(by_scenario.items()):
                xs = [k + (s - (len(by_scenario) - 1) / 2) * width for k in range(len(FIG4_AXES))]
                means = [c.mean if c.has_data else 0.0 for c in cells]
                ax.bar(xs, means, width, color=SCENARIO_COLORS[scenario], edgecolor="white")
                _errorbars(ax, xs, means, [c.half if c.has_data else None for c in cells], "#333333")
                for x, c in zip(xs, cells):
                    diverged += c.n_diverged > 0
                    if c.n_not_reached:
                        not_reached = True
                        label, y, rot = NOT_REACHED, 1.5, 90
                    elif c.has_data:
                        label = f"{c.mean:.0f}" + (DAGGER if c.n_diverged else "")
                        y, rot = max(c.mean, 0) + (c.half or 0.0) + 1.5, 90
                        top = max(top, y + 8)
                    else:
                        label, y, rot = "diverged", 1.5, 0
                    ax.text(x, y, label, ha="center", va="bottom", fontsize=8, rotation=rot)
            ax.set_xticks(range(len(FIG4_AXES)), [_tick(a[0], measure) for a in FIG4_AXES], fontsize=9)
            drawn.append(ax)
            ylim = (min(ylim[0], ax.get_ylim()[0], 0.0), max(ylim[1], top + 4))
            ax.set_ylabel("% of pre-unlearning accuracy")
            ax.axhline(100, color="#999999", lw=0.8, ls="--")
            ax.set_title(f"{prefix}{method_name(method)}", fontsize=11)
            ax.grid(axis="y", alpha=0.3)
            if missing:
                ax.text(0.5, 0.97, "\n".join(f"no data for scenario {m}" for m in missing), ha="center",
                        va="top", transform=ax.transAxes, fontsize=9, color="#B00020")
        if not meths:
            what = " at matched forgetting" if at == "matched" else ""
            _no_data(axes[i][0], f"{prefix}no data for scenarios finetuned and pretrained at request 1{what}")
    for ax in drawn:  # one scale for every panel, so bars compare across methods
        ax.set_ylim(*ylim)
    tgt = ", ".join(target_name(t) for t in sorted(targets) if t) or "-"
    if at == "matched":
        rule = "; ".join(dict.fromkeys(r for r in (stop_rule(run.manifest) for run in runs) if r))
        numbers = "; ".join(dict.fromkeys(p for run in runs for s in scenarios
                                          if (p := target_phrase(run.manifest, s))))
        head = ("Figure 4 at matched forgetting: fine-tuned vs pre-trained knowledge at each seed's stop "
                f"(request 1, held-out half of the questions, update target {tgt})"
                + (f"\ntarget {rule}" if rule else "") + (f"\n{numbers}" if numbers else ""))
    else:
        head = ("Figure 4: fine-tuned vs pre-trained knowledge after unlearning (request 1, update target "
                f"{tgt})")
    measures = "MMBench measures vary by run (see each panel)" if own_measure else mmbench
    fig.suptitle(f"{head}\n{seeds_phrase(counts)}; {measures}", fontsize=12)
    handles = [Patch(color=SCENARIO_COLORS[s], label=SCENARIO_LABELS[s]) for s in scenarios]
    notes = [n for n in (_diverged_note(diverged, "bar(s) affected"),
                         f"'{NOT_REACHED}': some seed missed the target; no bar is drawn." if not_reached else "")
             if n]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=10,
               title="\n".join(notes) or None, title_fontsize=8)
    return fig


def figure5(runs: list[Run], mmbench: str = "MMBench") -> Figure:
    groups = {}  # one MMBench panel per distinct measure
    for run in runs:
        groups.setdefault(run.measure if not comparable(runs) and run.measure else mmbench, []).append(run.label)
    panels = list(FIG5_PANELS[:2]) + [(_with_metric("MMBench", m), "mmbench") for m in groups]
    fig = Figure(figsize=(5 * len(panels), 5.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    all_methods = list(dict.fromkeys(m for r in runs for m in methods(r.df, scenario="sustainability")))
    look = {m: style(i) for i, m in enumerate(all_methods)}
    offset = {m: (i - (len(all_methods) - 1) / 2) * DODGE for i, m in enumerate(all_methods)}
    missing = [r.label for r in runs if select(r.df, scenario="sustainability").empty]
    counts, diverged, targets, kmax, all_diverged = [], 0, set(), 0, False
    for r_i, run in enumerate(runs):
        sus = select(run.df, scenario="sustainability")
        if sus.empty:
            continue
        target = main_target(sus)
        targets.add(target)
        counts.append(seed_count(sus))
        line = RUN_STYLES[r_i % len(RUN_STYLES)] if len(runs) > 1 else None
        mmb_panel = 2 + next(k for k, labels in enumerate(groups.values()) if run.label in labels)
        for method in methods(sus, target=target):
            st = dict(look[method], ls=line or look[method]["ls"])
            requests = sorted(set(select(sus, method=method, target=target)["request"]))
            kmax = max([kmax] + requests)
            for p, (ax, (_title, split)) in enumerate(zip(axes, panels)):
                if split == "mmbench" and p != mmb_panel:
                    continue
                cells = [summarize(sus, method=method, target=target, request=q, split=split, modality="all")
                         for q in requests]
                diverged += sum(c.n_diverged > 0 for c in cells)
                xs = [q + offset[method] for q, c in zip(requests, cells) if c.has_data]
                ys = [c.mean for c in cells if c.has_data]
                ax.plot(xs, ys, ms=5, lw=1.8, mfc="white", mew=1.5, **st)
                band = [(q + offset[method], c.mean - c.half, c.mean + c.half)
                        for q, c in zip(requests, cells) if c.has_data and c.half is not None]
                if len(band) >= 2:
                    bx, lo, hi = zip(*band)
                    ax.fill_between(bx, lo, hi, color=st["color"], alpha=0.15, lw=0)
                for q, c in zip(requests, cells):
                    if not c.has_data and c.n_diverged:
                        all_diverged = True
                        ax.plot([q], [0], marker="x", color=st["color"], ms=8, mew=2, clip_on=False)
    if len(missing) == len(runs):
        for ax in axes:
            ax.set_axis_off()
        _no_data(axes[1], "no data for scenario sustainability")
        axes[1].set_axis_on()
        for side in axes[1].spines.values():
            side.set_visible(False)
    else:
        for ax, (title, split) in zip(axes, panels):
            ax.set_title(_with_metric(title, mmbench) if split != "mmbench" else title, fontsize=11)
            ax.set_xlabel("unlearning requests")
            ax.set_ylabel("accuracy (%)")
            ax.set_xticks(range(0, kmax + 1))
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        if len(groups) > 1:
            for ax, labels in zip(axes[2:], groups.values()):
                ax.text(0.5, 0.02, "runs: " + ", ".join(labels), transform=ax.transAxes, ha="center",
                        fontsize=8, color="#555555")
    tgt = ", ".join(target_name(t) for t in sorted(targets)) or "-"
    extra = f" (no data for scenario sustainability in {', '.join(missing)})" if missing and len(
        missing) < len(runs) else ""
    measures = ("MMBench measures differ between runs: one panel each, not comparable" if len(groups) > 1
                else mmbench)
    fig.suptitle(f"Figure 5: accuracy over sequential unlearning requests (sustainability, update target {tgt})"
                 f"{extra}\n{seeds_phrase(counts)}, shaded where >= 2 seeds; methods offset by {DODGE} request "
                 f"for visibility\n{measures}", fontsize=12)
    handles = [Line2D([], [], color=look[m]["color"], marker=look[m]["marker"], ls=look[m]["ls"], mfc="white",
                      lw=2, label=method_name(m)) for m in all_methods]
    if len(runs) > 1:
        handles += [Line2D([], [], color="#333333", ls=RUN_STYLES[i % len(RUN_STYLES)], label=r.label)
                    for i, r in enumerate(runs) if r.label not in missing]
    if all_diverged:
        handles.append(Line2D([], [], color="#333333", marker="x", ls="", ms=8, mew=2,
                              label="every seed diverged"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=10,
                   title=_diverged_note(diverged, "point(s) affected") or None, title_fontsize=8)
    return fig


CURVE_Y = ("unlearn_sel", "D$_\\mathrm{unlearn}$ accuracy, selection half (%) \u2193")
CURVE_X = (("retain_sel", "D$_\\mathrm{retain}$ accuracy, selection half (%) \u2191"),
           ("mmbench_sub", None))  # None: the run's MMBench subset label (report.mmbench.curve_label)


def curve_points(rows, method: str, target: str, x_split: str) -> list[tuple[int, int, Cell, Cell]]:
    """(request, step, x cell, y cell) for every checkpoint of `method` in `rows` (checkpoint rows of one
    scenario), in trajectory order; points without data on both axes are left out."""
    mine = select(rows, method=method, target=target)
    points = []
    for request, step in sorted(set(zip(mine["request"], mine["step"]))):
        f = dict(request=request, step=step, modality="all")
        x, y = summarize(mine, split=x_split, **f), summarize(mine, split=CURVE_Y[0], **f)
        if x.has_data and y.has_data:
            points.append((int(request), int(step), x, y))
    return points


def curves(runs: list[Run], scenario: str) -> Figure | None:
    """Effectiveness vs generality over optimisation for one scenario; None when no run has its checkpoints.
    The MMBench subset is named per run (its metric, scoring, world and size: report.mmbench.curve_label)."""
    per_run = []
    for run in runs:
        rows = select(view(run.full, at="checkpoint"), scenario=scenario)
        if not rows.empty:
            target = main_target(rows)
            per_run.append((run, rows, target, methods(rows, target=target)))
    if not per_run:
        return None
    fig = Figure(figsize=(12, 4.6 * len(per_run) + 1.6), layout="constrained")
    axes = fig.subplots(len(per_run), len(CURVE_X), squeeze=False)
    all_methods = list(dict.fromkeys(m for *_, ms in per_run for m in ms))
    look = {m: style(i) for i, m in enumerate(all_methods)}
    counts, targets, rules, starred, lined = [], set(), set(), False, False
    for i, (run, rows, target, meths) in enumerate(per_run):
        counts.append(seed_count(rows))
        targets.add(target)
        rules.add(stop_rule(run.manifest))
        goal = [t["target"] for t in matched_targets(run.manifest, scenario)]
        matched = select(view(run.full, at="matched"), scenario=scenario, status="ok", split="unlearn_held",
                         modality="all")
        prefix = f"{run.label}: " if len(per_run) > 1 else ""
        for ax, (x_split, x_label) in zip(axes[i], CURVE_X):
            for method in meths:
                pts = curve_points(rows, method, target, x_split)
                if not pts:
                    continue
                st = look[method]
                xs, ys = [p[2].mean for p in pts], [p[3].mean for p in pts]
                ax.plot(xs, ys, ms=6, lw=1.6, mfc="white", mew=1.5, alpha=0.9, **st)
                _errorbars(ax, xs, ys, [p[3].half for p in pts], st["color"], "y")
                _errorbars(ax, xs, ys, [p[2].half for p in pts], st["color"], "x")
                for (_q, step, _x, _y), x, y in ((pts[0], xs[0], ys[0]), (pts[-1], xs[-1], ys[-1])):
                    ax.annotate(f"{step}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                color=st["color"])
                stops = select(matched, method=method, target=target)["step"].dropna()
                if len(stops):  # the matched-forgetting stop: the checkpoint nearest the seeds' median stop
                    med = float(stops.median())
                    k = min(range(len(pts)), key=lambda j: (abs(pts[j][1] - med), j))
                    ax.plot([xs[k]], [ys[k]], marker="*", ms=14, color=st["color"], mec="black", mew=0.6, ls="")
                    starred = True
            if goal:  # the recorded target (mean over seeds when they differ; each seed's value in the title)
                ax.axhline(sum(goal) / len(goal), color="#555555", lw=1, ls=(0, (4, 3)), zorder=0)
                lined = True
            ax.set_xlabel(x_label or f"{curve_label(run, run.mmbench)} accuracy (%) \u2191")
            ax.set_ylabel(CURVE_Y[1])
            ax.set_title(f"{prefix}{scenario}: D_unlearn vs "
                         + ("D_retain" if x_split == "retain_sel" else "MMBench subset"), fontsize=11)
            ax.grid(alpha=0.3)
    tgt = ", ".join(target_name(t) for t in sorted(targets)) or "-"
    rule = "; ".join(sorted(r for r in rules if r))
    numbers = "; ".join(dict.fromkeys(p for p in (target_phrase(r.manifest, scenario) for r, *_ in per_run) if p))
    fig.suptitle(f"Effectiveness vs generality during unlearning ({scenario}, update target {tgt})\n"
                 f"points = checkpoints (numbers: first and last step), {seeds_phrase(counts)} as error bars "
                 "where >= 2 seeds" + (f"\nmatched-forgetting target {rule}" if rule else "")
                 + (f"\n{numbers}" if numbers else ""), fontsize=12)
    handles = [Line2D([], [], color=look[m]["color"], marker=look[m]["marker"], ls=look[m]["ls"], mfc="white",
                      lw=2, label=method_name(m)) for m in all_methods]
    if starred:
        handles.append(Line2D([], [], color="#333333", marker="*", ls="", ms=12,
                              label="matched-forgetting stop (median over seeds)"))
    if lined:
        handles.append(Line2D([], [], color="#555555", lw=1, ls=(0, (4, 3)), label="target (mean over seeds)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=10)
    return fig


def render(fig: Figure) -> tuple[bytes, bytes]:
    """PNG (150 dpi) and SVG bytes; metadata stripped so the files hold no URL or timestamp."""
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=150, metadata={"Software": None})
    fig.set_layout_engine("none")  # keep the layout computed for the PNG; do not solve it again
    fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png.getvalue(), svg.getvalue()
