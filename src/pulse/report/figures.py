"""Figures 4 and 5 of the paper and the effectiveness-vs-generality curves, drawn with matplotlib's object API
(no pyplot global state). Each function returns its Figure; `render` turns one into PNG and SVG bytes.

Figure 4: per method, fine-tuned vs pre-trained knowledge at request 1 on three axes: D_unlearn forgotten
(100 - relative), D_retain kept and MMBench kept (relative), all in % of the pre-unlearning accuracy.
`at="matched"` draws the same at the matched-forgetting stop, on the held-out half of the questions
(unlearn_held, retain_held); a scenario x method where some seed did not reach the target gets no bar, only the
words "did not reach". The target rule is in the title; the per-seed target values go in the report's caption.
Figure 5: sustainability scenario, accuracy (%) over requests 0..K, one panel per split, one line per
method (own marker, a small horizontal offset so that equal lines stay visible), shaded 95% CI band (Student t)
where there are >= 2 seeds. Runs whose MMBench measured different things get one MMBench panel each.
Curves: per scenario, D_unlearn accuracy on the selection half (y) against generality (x: D_retain selection half;
the checkpoint MMBench subset) at every checkpoint, one line per method, error bars (95% CI) only where >= 2 seeds.
Several runs: one row of panels per run (Figure 4, curves), line styles (Figure 5). `mmbench` is the MMBench
short label (report.mmbench.label, e.g. "mini-MMBench (CE)"): it names the metric in axis, panel and title text.
Error bars are drawn only for values with a CI: a single seed gets no bar and no zero-height cap. An interval is
clipped to its quantity's range (accuracy 0-100; kept >= 0; forgotten 0-100), a clipped end marked by a small
triangle, so no axis of those quantities extends below 0. Titles are wrapped to the figure's width.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .agg import (Cell, main_target, method_name, methods, select, seed_count, summarize, target_name,
                  with_relative)
from .load import Run, matched_targets, stop_rule, view
from .mmbench import comparable, curve_label
from .stats import CI_LABEL

DAGGER = "\u2020"
NOT_REACHED = "did not reach"
SCENARIOS = ("finetuned", "pretrained")  # Figure 4's scenarios
SCENARIO_COLORS = {"finetuned": "#4C72B0", "pretrained": "#DD8452"}
SCENARIO_LABELS = {"finetuned": "Fine-tuned knowledge", "pretrained": "Pre-trained knowledge"}
METHOD_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
METHOD_STYLES = ("-", "--", "-.", ":")
RUN_STYLES = ("-", "--", ":", "-.")
DODGE = 0.06  # Figure 5: horizontal offset between methods, in requests
ACCURACY = (0.0, 100.0)  # the range of an accuracy (%)
KEPT = (0.0, None)  # relative accuracy: >= 0, no upper bound
FORGOTTEN = (0.0, 100.0)  # 100 - relative, shown as a share forgotten
FIG4_AXES = (  # (tick label, split, transform of relative, range); "MMBench" is replaced by the metric's label
    ("D$_\\mathrm{unlearn}$\nforgotten (%)", "unlearn", lambda r: 100.0 - r, FORGOTTEN),
    ("D$_\\mathrm{retain}$\nkept (%)", "retain", None, KEPT),
    ("MMBench\nkept (%)", "mmbench", None, KEPT),
)
HELD = {"unlearn": "unlearn_held", "retain": "retain_held"}
FIG5_PANELS = (("D$_\\mathrm{unlearn}$", "unlearn"), ("D$_\\mathrm{retain}$", "retain"))
CLIPPED_LABEL = "interval clipped to its range"
TITLE_SIZE = 12


@dataclass
class Marks:
    """What a figure's title, notes and legend must explain, collected while its panels are drawn."""

    counts: list[int] = field(default_factory=list)  # seeds per drawn group
    targets: set = field(default_factory=set)  # update targets drawn
    diverged: int = 0  # bars / points that lost a seed to divergence
    not_reached: bool = False
    all_diverged: bool = False
    clipped: bool = False  # some interval was clipped to its quantity's range
    starred: bool = False  # curves: a matched-forgetting stop drawn
    lined: bool = False  # curves: a target line drawn


def _tick(text: str, mmbench: str) -> str:
    """An axis tick naming the MMBench measure, wrapped: 'mini-MMBench\n(CE)\nkept (%)'."""
    return text.replace("MMBench", mmbench.replace(" (", "\n(", 1)) if "MMBench" in text else text


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure with an Agg canvas, so text can be measured before it is saved."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def fit_title(fig: Figure, text: str, fontsize: float = TITLE_SIZE) -> str:
    """`text` with every line wrapped, at spaces, to the figure's width (as the renderer measures the font)."""
    renderer, font = fig.canvas.get_renderer(), FontProperties(size=fontsize)
    limit = 0.95 * fig.bbox.width
    out = []
    for line in text.split("\n"):
        current = ""
        for word in line.split(" "):
            trial = f"{current} {word}" if current else word
            if current and renderer.get_text_width_height_descent(trial, font, ismath=False)[0] > limit:
                out.append(current)
                trial = word
            current = trial
        out.append(current)
    return "\n".join(out)


def legend(fig: Figure, handles: list, title: str | None = None):
    """The legend under the panels, in as many columns (up to 6) as fit the figure's width."""
    renderer = fig.canvas.get_renderer()
    labels = [(h[0] if isinstance(h, tuple) else h).get_label() for h in handles]
    for ncols in range(min(len(handles), 6), 0, -1):
        box = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=10, title=title,
                         title_fontsize=8, handler_map={tuple: HandlerTuple(ndivide=None)})
        if ncols == 1 or box.get_window_extent(renderer).width <= 0.97 * fig.bbox.width:
            return box
        box.remove()
    return None


def clipped_handle() -> tuple:
    """The legend entry of a clipped interval end: both triangles (clipped below, clipped above)."""
    return (Line2D([], [], color="#333333", marker="v", ls="", ms=5, label=CLIPPED_LABEL),
            Line2D([], [], color="#333333", marker="^", ls="", ms=5))


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


def clip_interval(mean: float, half: float, bounds: tuple) -> tuple[float, float, bool]:
    """The interval mean - half .. mean + half clipped to `bounds` (low, high; None = unbounded): (lower end,
    upper end, clipped?). A mean outside the range leaves that side unclipped (the data say the range is wider)."""
    low, high = bounds
    lo, hi = mean - half, mean + half
    c_lo = lo if low is None or mean < low else max(lo, low)
    c_hi = hi if high is None or mean > high else min(hi, high)
    return c_lo, c_hi, (c_lo, c_hi) != (lo, hi)


def _errorbars(ax, xs, ys, halves, color, axis: str = "y", bounds: tuple = (None, None)) -> bool:
    """Error bars only for the points that have a CI (>= 2 seeds); none, and no cap, for the others. Each interval
    is clipped to `bounds`, a clipped end marked by a small triangle. True when some interval was clipped."""
    pts = [(x, y, h) for x, y, h in zip(xs, ys, halves) if h is not None and not math.isnan(h)]
    if not pts:
        return False
    px, py, ph = zip(*pts)
    ends = [clip_interval(v, h, bounds) for v, h in zip(py if axis == "y" else px, ph)]
    err = [[v - lo for v, (lo, _hi, _c) in zip(py if axis == "y" else px, ends)],
           [hi - v for v, (_lo, hi, _c) in zip(py if axis == "y" else px, ends)]]
    ax.errorbar(px, py, fmt="none", ecolor=color, elinewidth=0.9, capsize=3, alpha=0.6,
                **({"yerr": err} if axis == "y" else {"xerr": err}))
    low, high = bounds
    for x, y, h, (lo, hi, _c) in zip(px, py, ph, ends):
        v = y if axis == "y" else x
        for end, cut, marker in ((lo, lo > v - h, "v" if axis == "y" else "<"),
                                 (hi, hi < v + h, "^" if axis == "y" else ">")):
            if cut:
                ax.plot(*((x, end) if axis == "y" else (end, y)), marker=marker, ms=4, color=color, ls="",
                        clip_on=False, zorder=3)
    return any(c for *_e, c in ends)


def _floor_at_zero(ax) -> None:
    """No axis of a non-negative quantity extends below 0."""
    for get, set_ in ((ax.get_xlim, ax.set_xlim), (ax.get_ylim, ax.set_ylim)):
        lo, hi = get()
        if lo < 0:
            set_(0.0, hi)


# --- Figure 4 ---------------------------------------------------------------------------------------------------


@dataclass
class Fig4Run:
    """One run's rows for Figure 4: request-1 rows of the two scenarios at the budget or the matched stop."""

    run: Run
    df: pd.DataFrame
    target: str | None
    methods: list[str]


def _fig4_runs(runs: list[Run], at: str) -> list[Fig4Run]:
    out = []
    for run in runs:
        after = run.df if at == "budget" else with_relative(view(run.full, at=at), run.df)
        df = after[after["scenario"].isin(SCENARIOS)]
        at1 = select(df, request=1)
        target = main_target(at1)
        out.append(Fig4Run(run, df, target, methods(at1, target=target)))
    return out


def _fig4_cells(df, scenario: str, method: str, target, at: str) -> list[Cell]:
    return [summarize(df, value="relative", transform=tf, scenario=scenario, method=method, target=target,
                      request=1, split=HELD.get(split, split) if at == "matched" else split, modality="all")
            for _label, split, tf, _range in FIG4_AXES]


def _fig4_bars(ax, scenario: str, xs: list[float], width: float, cells: list[Cell], marks: Marks) -> tuple:
    """One scenario's bars with their clipped intervals and value labels; returns (lowest bar or interval end,
    highest label position)."""
    means = [c.mean if c.has_data else 0.0 for c in cells]
    ax.bar(xs, means, width, color=SCENARIO_COLORS[scenario], edgecolor="white")
    low, top = 0.0, 100.0
    for x, mean, c, axis in zip(xs, means, cells, FIG4_AXES):
        marks.clipped |= _errorbars(ax, [x], [mean], [c.half if c.has_data else None], "#333333", "y", axis[3])
        marks.diverged += c.n_diverged > 0
        if c.n_not_reached:
            marks.not_reached = True
            label, y, rot = NOT_REACHED, 1.5, 90
        elif c.has_data:
            lower, upper, clipped = clip_interval(c.mean, c.half or 0.0, axis[3])
            low = min(low, lower)
            label = f"{c.mean:.0f}" + (DAGGER if c.n_diverged else "")
            y, rot = max(upper, 0) + (4.0 if clipped and upper < c.mean + c.half else 1.5), 90
            top = max(top, y + 8)
        else:
            label, y, rot = "diverged", 1.5, 0
        ax.text(x, y, label, ha="center", va="bottom", fontsize=8, rotation=rot)
    return low, top


def _fig4_panel(ax, part: Fig4Run, method: str, at: str, measure: str, marks: Marks) -> tuple[float, float]:
    """One method's panel: both scenarios' bars on the three axes; returns (lowest bar, highest label)."""
    by_scenario = {}
    for scenario in SCENARIOS:
        marks.counts.append(seed_count(part.df, scenario=scenario))
        cells = _fig4_cells(part.df, scenario, method, part.target, at)
        if any(c.has_data or c.n_diverged or c.n_not_reached for c in cells):
            by_scenario[scenario] = cells
    width = 0.38 if len(by_scenario) > 1 else 0.5
    low, top = 0.0, 100.0
    for s, (scenario, cells) in enumerate(by_scenario.items()):
        xs = [k + (s - (len(by_scenario) - 1) / 2) * width for k in range(len(FIG4_AXES))]
        bottom, high = _fig4_bars(ax, scenario, xs, width, cells, marks)
        low, top = min(low, bottom), max(top, high)
    ax.set_xticks(range(len(FIG4_AXES)), [_tick(a[0], measure) for a in FIG4_AXES], fontsize=9)
    ax.set_ylabel("% of pre-unlearning accuracy")
    ax.axhline(100, color="#999999", lw=0.8, ls="--")
    ax.grid(axis="y", alpha=0.3)
    missing = [s for s in SCENARIOS if s not in by_scenario]
    if missing:
        ax.text(0.5, 0.97, "\n".join(f"no data for scenario {m}" for m in missing), ha="center", va="top",
                transform=ax.transAxes, fontsize=9, color="#B00020")
    return low, top


def _fig4_title(runs: list[Run], at: str, marks: Marks, measures: str) -> str:
    tgt = ", ".join(target_name(t) for t in sorted(marks.targets) if t) or "-"
    if at == "matched":
        rule = "; ".join(dict.fromkeys(r for r in (stop_rule(run.manifest) for run in runs) if r))
        recorded = any(matched_targets(run.manifest, s) for run in runs for s in SCENARIOS)
        head = ("Figure 4 at matched forgetting: fine-tuned vs pre-trained knowledge at each seed's stop\n"
                f"(request 1, held-out half of the questions, update target {tgt})"
                + (f"\ntarget {rule}" if rule else "") + (" (per-seed values in the caption)" if recorded else ""))
    else:
        head = ("Figure 4: fine-tuned vs pre-trained knowledge after unlearning (request 1, update target "
                f"{tgt})")
    return f"{head}\n{seeds_phrase(marks.counts)}; {measures}"


def _fig4_legend(fig: Figure, marks: Marks) -> None:
    handles = [Patch(color=SCENARIO_COLORS[s], label=SCENARIO_LABELS[s]) for s in SCENARIOS]
    if marks.clipped:
        handles.append(clipped_handle())
    notes = [n for n in (_diverged_note(marks.diverged, "bar(s) affected"),
                         f"'{NOT_REACHED}': some seed missed the target; no bar is drawn." if marks.not_reached
                         else "") if n]
    legend(fig, handles, "\n".join(notes) or None)


def figure4(runs: list[Run], mmbench: str = "MMBench", at: str = "budget") -> Figure:
    parts = _fig4_runs(runs, at)
    ncols = max([len(p.methods) for p in parts] + [1])
    fig = new_figure(max(4.4 * ncols, 7.5), 3.9 * len(runs) + 1.5)
    axes = fig.subplots(len(runs), ncols, squeeze=False)
    marks, drawn, ylim = Marks(), [], (0.0, 104.0)
    own_measure = not comparable(runs)
    for i, part in enumerate(parts):
        prefix = f"{part.run.label}: " if len(runs) > 1 else ""
        measure = part.run.measure if own_measure and part.run.measure else mmbench
        for j, ax in enumerate(axes[i]):
            if j >= len(part.methods):
                ax.set_axis_off()
                continue
            marks.targets.add(part.target)
            low, top = _fig4_panel(ax, part, part.methods[j], at, measure, marks)
            ax.set_title(f"{prefix}{method_name(part.methods[j])}", fontsize=11)
            drawn.append(ax)
            ylim = (min(ylim[0], low), max(ylim[1], top + 4))
        if not part.methods:
            what = " at matched forgetting" if at == "matched" else ""
            _no_data(axes[i][0], f"{prefix}no data for scenarios finetuned and pretrained at request 1{what}")
    for ax in drawn:  # one scale for every panel, so bars compare across methods
        ax.set_ylim(*ylim)
    measures = "MMBench measures vary by run (see each panel)" if own_measure else mmbench
    fig.suptitle(fit_title(fig, _fig4_title(runs, at, marks, measures)), fontsize=TITLE_SIZE)
    _fig4_legend(fig, marks)
    return fig


# --- Figure 5 ---------------------------------------------------------------------------------------------------


def _fig5_groups(runs: list[Run], mmbench: str) -> dict[str, list[str]]:
    """MMBench panel title -> the runs drawn in it: one panel, or one per distinct measure when runs differ."""
    groups: dict[str, list[str]] = {}
    for run in runs:
        groups.setdefault(run.measure if not comparable(runs) and run.measure else mmbench, []).append(run.label)
    return groups


def _fig5_method(axes, splits: list[str], sus, method: str, target, st: dict, dx: float, marks: Marks) -> int:
    """One method's line (and CI band, clipped to 0-100 %) in every panel whose split is in `splits` (None:
    skipped); returns its last request."""
    requests = sorted(set(select(sus, method=method, target=target)["request"]))
    for ax, split in zip(axes, splits):
        if split is None:
            continue
        cells = [summarize(sus, method=method, target=target, request=q, split=split, modality="all")
                 for q in requests]
        marks.diverged += sum(c.n_diverged > 0 for c in cells)
        ax.plot([q + dx for q, c in zip(requests, cells) if c.has_data], [c.mean for c in cells if c.has_data],
                ms=5, lw=1.8, mfc="white", mew=1.5, **st)
        band = [(q + dx, *clip_interval(c.mean, c.half, ACCURACY))
                for q, c in zip(requests, cells) if c.has_data and c.half is not None]
        if len(band) >= 2:
            bx, lo, hi, clipped = zip(*band)
            ax.fill_between(bx, lo, hi, color=st["color"], alpha=0.15, lw=0)
            marks.clipped |= any(clipped)
        for q, c in zip(requests, cells):
            if not c.has_data and c.n_diverged:
                marks.all_diverged = True
                ax.plot([q], [0], marker="x", color=st["color"], ms=8, mew=2, clip_on=False)
    return max(requests, default=0)


def _fig5_axes(axes, titles: list[str], kmax: int, groups: dict[str, list[str]]) -> None:
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("unlearning requests")
        ax.set_ylabel("accuracy (%)")
        ax.set_xticks(range(0, kmax + 1))
        ax.set_ylim(*ACCURACY)
        ax.grid(alpha=0.3)
    if len(groups) > 1:
        for ax, labels in zip(axes[2:], groups.values()):
            ax.text(0.5, 0.02, "runs: " + ", ".join(labels), transform=ax.transAxes, ha="center", fontsize=8,
                    color="#555555")


def _fig5_empty(axes) -> None:
    for ax in axes:
        ax.set_axis_off()
    _no_data(axes[1], "no data for scenario sustainability")
    axes[1].set_axis_on()
    for side in axes[1].spines.values():
        side.set_visible(False)


def _fig5_legend(fig: Figure, runs: list[Run], look: dict, missing: list[str], marks: Marks) -> None:
    handles = [Line2D([], [], color=s["color"], marker=s["marker"], ls=s["ls"], mfc="white", lw=2,
                      label=method_name(m)) for m, s in look.items()]
    if len(runs) > 1:
        handles += [Line2D([], [], color="#333333", ls=RUN_STYLES[i % len(RUN_STYLES)], label=r.label)
                    for i, r in enumerate(runs) if r.label not in missing]
    if marks.all_diverged:
        handles.append(Line2D([], [], color="#333333", marker="x", ls="", ms=8, mew=2, label="every seed diverged"))
    notes = [n for n in (_diverged_note(marks.diverged, "point(s) affected"),
                         "Shaded bands clipped to 0-100 %." if marks.clipped else "") if n]
    if handles:
        legend(fig, handles, "\n".join(notes) or None)


def figure5(runs: list[Run], mmbench: str = "MMBench") -> Figure:
    groups = _fig5_groups(runs, mmbench)
    titles = [t for t, _s in FIG5_PANELS] + list(groups)
    fig = new_figure(5 * len(titles), 5.2)
    axes = fig.subplots(1, len(titles), squeeze=False)[0]
    all_methods = list(dict.fromkeys(m for r in runs for m in methods(r.df, scenario="sustainability")))
    look = {m: style(i) for i, m in enumerate(all_methods)}
    missing = [r.label for r in runs if select(r.df, scenario="sustainability").empty]
    marks, kmax = Marks(), 0
    for r_i, run in enumerate(runs):
        sus = select(run.df, scenario="sustainability")
        if sus.empty:
            continue
        target = main_target(sus)
        marks.targets.add(target)
        marks.counts.append(seed_count(sus))
        mine = next(k for k, labels in enumerate(groups.values()) if run.label in labels)
        splits = [s for _t, s in FIG5_PANELS] + ["mmbench" if k == mine else None for k in range(len(groups))]
        for method in methods(sus, target=target):
            st = dict(look[method], ls=RUN_STYLES[r_i % len(RUN_STYLES)] if len(runs) > 1 else look[method]["ls"])
            dx = (all_methods.index(method) - (len(all_methods) - 1) / 2) * DODGE
            kmax = max(kmax, _fig5_method(axes, splits, sus, method, target, st, dx, marks))
    if len(missing) == len(runs):
        _fig5_empty(axes)
    else:
        _fig5_axes(axes, titles, kmax, groups)
    tgt = ", ".join(target_name(t) for t in sorted(marks.targets)) or "-"
    extra = (f" (no data for scenario sustainability in {', '.join(missing)})"
             if missing and len(missing) < len(runs) else "")
    measures = "MMBench measures differ between runs: one panel each, not comparable" if len(groups) > 1 else mmbench
    fig.suptitle(fit_title(fig, f"Figure 5: accuracy over sequential unlearning requests (sustainability, update "
                                f"target {tgt}){extra}\n{seeds_phrase(marks.counts)}, shaded where >= 2 seeds; "
                                f"methods offset by {DODGE} request for visibility\n{measures}"), fontsize=TITLE_SIZE)
    _fig5_legend(fig, runs, look, missing, marks)
    return fig


# --- Curves -----------------------------------------------------------------------------------------------------

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


def _curve_line(ax, pts, st: dict, stops, marks: Marks) -> None:
    """One method's checkpoints: line, clipped error bars, first / last step numbers, the matched stop (the
    checkpoint nearest the seeds' median stop step) as a star."""
    xs, ys = [p[2].mean for p in pts], [p[3].mean for p in pts]
    ax.plot(xs, ys, ms=6, lw=1.6, mfc="white", mew=1.5, alpha=0.9, **st)
    marks.clipped |= _errorbars(ax, xs, ys, [p[3].half for p in pts], st["color"], "y", ACCURACY)
    marks.clipped |= _errorbars(ax, xs, ys, [p[2].half for p in pts], st["color"], "x", ACCURACY)
    for k in (0, len(pts) - 1):
        ax.annotate(f"{pts[k][1]}", (xs[k], ys[k]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                    color=st["color"])
    if len(stops):
        med = float(stops.median())
        k = min(range(len(pts)), key=lambda j: (abs(pts[j][1] - med), j))
        ax.plot([xs[k]], [ys[k]], marker="*", ms=14, color=st["color"], mec="black", mew=0.6, ls="")
        marks.starred = True


def _curve_row(axes, run: Run, rows, target, meths: list[str], scenario: str, look: dict, marks: Marks,
               prefix: str) -> None:
    """One run's two panels (D_retain, MMBench subset on x)."""
    goal = [t["target"] for t in matched_targets(run.manifest, scenario)]
    matched = select(view(run.full, at="matched"), scenario=scenario, status="ok", split="unlearn_held",
                     modality="all")
    for ax, (x_split, x_label) in zip(axes, CURVE_X):
        for method in meths:
            pts = curve_points(rows, method, target, x_split)
            if pts:
                _curve_line(ax, pts, look[method], select(matched, method=method, target=target)["step"].dropna(),
                            marks)
        if goal:  # the recorded target (mean over seeds when they differ; each seed's value in the caption)
            ax.axhline(sum(goal) / len(goal), color="#555555", lw=1, ls=(0, (4, 3)), zorder=0)
            marks.lined = True
        _floor_at_zero(ax)
        ax.set_xlabel(x_label or f"{curve_label(run, run.mmbench)}, accuracy (%) \u2191")
        ax.set_ylabel(CURVE_Y[1])
        ax.set_title(f"{prefix}{scenario}: D_unlearn vs "
                     + ("D_retain" if x_split == "retain_sel" else "MMBench subset"), fontsize=11)
        ax.grid(alpha=0.3)


def _curve_legend(fig: Figure, look: dict, marks: Marks) -> None:
    handles = [Line2D([], [], color=s["color"], marker=s["marker"], ls=s["ls"], mfc="white", lw=2,
                      label=method_name(m)) for m, s in look.items()]
    if marks.starred:
        handles.append(Line2D([], [], color="#333333", marker="*", ls="", ms=12,
                              label="matched-forgetting stop (median over seeds)"))
    if marks.lined:
        handles.append(Line2D([], [], color="#555555", lw=1, ls=(0, (4, 3)), label="target (mean over seeds)"))
    if marks.clipped:
        handles.append(clipped_handle())
    legend(fig, handles)


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
    fig = new_figure(12, 4.6 * len(per_run) + 1.6)
    axes = fig.subplots(len(per_run), len(CURVE_X), squeeze=False)
    look = {m: style(i) for i, m in enumerate(dict.fromkeys(m for *_, ms in per_run for m in ms))}
    marks = Marks()
    for i, (run, rows, target, meths) in enumerate(per_run):
        marks.counts.append(seed_count(rows))
        marks.targets.add(target)
        _curve_row(axes[i], run, rows, target, meths, scenario, look, marks,
                   f"{run.label}: " if len(per_run) > 1 else "")
    tgt = ", ".join(target_name(t) for t in sorted(marks.targets)) or "-"
    rule = "; ".join(dict.fromkeys(r for r in (stop_rule(run.manifest) for run, *_ in per_run) if r))
    fig.suptitle(fit_title(fig, f"Effectiveness vs generality during unlearning ({scenario}, update target {tgt})\n"
                                f"points = checkpoints (numbers: first and last step), {seeds_phrase(marks.counts)} "
                                "as error bars where >= 2 seeds"
                                + (f"\nmatched-forgetting target {rule} (per-seed values in the caption)"
                                   if rule and marks.lined else "")), fontsize=TITLE_SIZE)
    _curve_legend(fig, look, marks)
    return fig


def report_figures(runs: list[Run], mmbench: str, matched: bool, scenarios) -> dict[str, Figure]:
    """Every figure a report holds, by file stem: figure4, figure4_matched (when `matched`), figure5 and
    curves_<scenario> for each of `scenarios` with checkpoint rows."""
    figs = {"figure4": figure4(runs, mmbench)}
    if matched:
        figs["figure4_matched"] = figure4(runs, mmbench, at="matched")
    figs["figure5"] = figure5(runs, mmbench)
    for scenario in scenarios:
        fig = curves(runs, scenario)
        if fig is not None:
            figs[f"curves_{scenario}"] = fig
    return figs


def render(fig: Figure) -> tuple[bytes, bytes]:
    """PNG (150 dpi) and SVG bytes; metadata stripped so the files hold no URL or timestamp."""
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=150, metadata={"Software": None})
    fig.set_layout_engine("none")  # keep the layout computed for the PNG; do not solve it again
    fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png.getvalue(), svg.getvalue()
