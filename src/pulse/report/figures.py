"""Figures 4 and 5 of the paper, drawn with matplotlib's object API (no pyplot global state).

Figure 4: per method, fine-tuned vs pre-trained knowledge at request 1 on three axes: D_unlearn forgotten
(100 - relative), D_retain kept and MMBench kept (relative), all in % of the pre-unlearning accuracy.
Figure 5: sustainability scenario, accuracy (%) over requests 0..K, one panel per split, one line per
method, shaded 95% CI band (Student t) where there are >= 2 seeds. Several runs: Figure 4 gets one row of
panels per run, Figure 5 overlays runs by line style. `mmbench` is the MMBench label (report.mmbench.label),
e.g. "MMBench (CircularEval)": it names the metric in the axis, panel and title text.
"""
from __future__ import annotations

import io

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .agg import Cell, main_target, method_name, methods, select, seed_count, summarize, target_name
from .load import Run
from .stats import CI_LABEL

DAGGER = "\u2020"
SCENARIO_COLORS = {"finetuned": "#4C72B0", "pretrained": "#DD8452"}
SCENARIO_LABELS = {"finetuned": "Fine-tuned knowledge", "pretrained": "Pre-trained knowledge"}
METHOD_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
RUN_STYLES = ("-", "--", ":", "-.")
FIG4_AXES = (  # (label, split, transform of relative); "MMBench" is replaced by the metric's label
    ("D$_\\mathrm{unlearn}$\nforgotten (%)", "unlearn", lambda r: 100.0 - r),
    ("D$_\\mathrm{retain}$\nkept (%)", "retain", None),
    ("MMBench\nkept (%)", "mmbench", None),
)
FIG5_PANELS = (("D$_\\mathrm{unlearn}$", "unlearn"), ("D$_\\mathrm{retain}$", "retain"),
               ("MMBench", "mmbench"))


def _metric_short(mmbench: str) -> str:
    """'MMBench (CircularEval; ...)' -> 'MMBench (CircularEval)': the metric alone, for axis and panel text."""
    head, _, rest = mmbench.partition(" (")
    return f"{head} ({rest.split(';')[0].rstrip(')')})" if rest else mmbench


def _with_metric(text: str, mmbench: str) -> str:
    return text.replace("MMBench", _metric_short(mmbench)) if mmbench != "MMBench" else text


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


def figure4(runs: list[Run], mmbench: str = "MMBench") -> Figure:
    scenarios = ("finetuned", "pretrained")
    per_run = []
    for run in runs:
        df = run.df[run.df["scenario"].isin(scenarios)]
        at1 = select(df, request=1)
        target = main_target(at1)
        per_run.append((run, df, target, methods(at1, target=target)))
    ncols = max([len(m) for *_, m in per_run] + [1])
    nrows = len(runs)
    fig = Figure(figsize=(max(4.4 * ncols, 7.5), 3.9 * nrows + 1.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    counts, diverged, targets = [], 0, set()
    drawn, ylim = [], (0.0, 104.0)
    for i, (run, df, target, meths) in enumerate(per_run):
        prefix = f"{run.label}: " if len(runs) > 1 else ""
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
                              target=target, request=1, split=split, modality="all")
                    for _label, split, tf in FIG4_AXES]
                if any(c.has_data or c.n_diverged for c in cells):
                    by_scenario[scenario] = cells
            missing = [s for s in scenarios if s not in by_scenario]
            width = 0.38 if len(by_scenario) > 1 else 0.5
            for s, (scenario, cells) in enumerate(by_scenario.items()):
                xs = [k + (s - (len(by_scenario) - 1) / 2) * width for k in range(len(FIG4_AXES))]
                means = [c.mean if c.has_data else 0.0 for c in cells]
                errs = [c.half if c.half is not None else 0.0 for c in cells]
                ax.bar(xs, means, width, yerr=errs, capsize=3, color=SCENARIO_COLORS[scenario],
                       edgecolor="white", error_kw={"elinewidth": 1, "ecolor": "#333333"})
                for x, c, e in zip(xs, cells, errs):
                    diverged += c.n_diverged > 0
                    if c.has_data:
                        label = f"{c.mean:.0f}" + (DAGGER if c.n_diverged else "")
                        y = max(c.mean, 0) + e + 1.5
                        top = max(top, y + 8)
                    else:
                        label, y = "diverged", 1.5
                    ax.text(x, y, label, ha="center", va="bottom", fontsize=8,
                            rotation=90 if not c.has_data else 0)
            ax.set_xticks(range(len(FIG4_AXES)), [_with_metric(a[0], mmbench) for a in FIG4_AXES], fontsize=9)
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
            _no_data(axes[i][0], f"{prefix}no data for scenarios finetuned and pretrained at request 1")
    for ax in drawn:  # one scale for every panel, so bars compare across methods
        ax.set_ylim(*ylim)
    tgt = ", ".join(target_name(t) for t in sorted(targets) if t) or "-"
    fig.suptitle("Figure 4: fine-tuned vs pre-trained knowledge after unlearning (request 1, target "
                 f"{tgt})\n{seeds_phrase(counts)}; {mmbench}", fontsize=12)
    handles = [Patch(color=SCENARIO_COLORS[s], label=SCENARIO_LABELS[s]) for s in scenarios]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=10,
               title=_diverged_note(diverged, "bar(s) affected") or None, title_fontsize=8)
    return fig


def figure5(runs: list[Run], mmbench: str = "MMBench") -> Figure:
    fig = Figure(figsize=(15, 5.2), layout="constrained")
    axes = fig.subplots(1, len(FIG5_PANELS), squeeze=False)[0]
    all_methods = list(dict.fromkeys(m for r in runs for m in methods(r.df, scenario="sustainability")))
    color = {m: METHOD_COLORS[i % len(METHOD_COLORS)] for i, m in enumerate(all_methods)}
    missing = [r.label for r in runs if select(r.df, scenario="sustainability").empty]
    counts, diverged, targets, kmax, all_diverged = [], 0, set(), 0, False
    for r_i, run in enumerate(runs):
        sus = select(run.df, scenario="sustainability")
        if sus.empty:
            continue
        target = main_target(sus)
        targets.add(target)
        counts.append(seed_count(sus))
        style = RUN_STYLES[r_i % len(RUN_STYLES)]
        for method in methods(sus, target=target):
            requests = sorted(set(select(sus, method=method, target=target)["request"]))
            kmax = max([kmax] + requests)
            for ax, (_title, split) in zip(axes, FIG5_PANELS):
                cells = [summarize(sus, method=method, target=target, request=q, split=split, modality="all")
                         for q in requests]
                diverged += sum(c.n_diverged > 0 for c in cells)
                xs = [q for q, c in zip(requests, cells) if c.has_data]
                ys = [c.mean for c in cells if c.has_data]
                ax.plot(xs, ys, style, marker="o", ms=4, color=color[method], lw=1.8)
                band = [(q, c.mean - c.half, c.mean + c.half)
                        for q, c in zip(requests, cells) if c.has_data and c.half is not None]
                if len(band) >= 2:
                    bx, lo, hi = zip(*band)
                    ax.fill_between(bx, lo, hi, color=color[method], alpha=0.18, lw=0)
                for q, c in zip(requests, cells):
                    if not c.has_data and c.n_diverged:
                        all_diverged = True
                        ax.plot([q], [0], marker="x", color=color[method], ms=8, mew=2, clip_on=False)
    if len(missing) == len(runs):
        for ax in axes:
            ax.set_axis_off()
        _no_data(axes[1], "no data for scenario sustainability")
        axes[1].set_axis_on()
        for side in axes[1].spines.values():
            side.set_visible(False)
    else:
        for ax, (title, _split) in zip(axes, FIG5_PANELS):
            ax.set_title(_with_metric(title, mmbench), fontsize=12)
            ax.set_xlabel("unlearning requests")
            ax.set_ylabel("accuracy (%)")
            ax.set_xticks(range(0, kmax + 1))
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
    tgt = ", ".join(target_name(t) for t in sorted(targets)) or "-"
    extra = f" (no data for scenario sustainability in {', '.join(missing)})" if missing and len(
        missing) < len(runs) else ""
    fig.suptitle(f"Figure 5: accuracy over sequential unlearning requests (sustainability, target {tgt})"
                 f"{extra}\n{seeds_phrase(counts)}, shaded where >= 2 seeds; {mmbench}", fontsize=12)
    handles = [Line2D([], [], color=color[m], marker="o", lw=2, label=method_name(m)) for m in all_methods]
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


def render(fig: Figure) -> tuple[bytes, bytes]:
    """PNG (150 dpi) and SVG bytes; metadata stripped so the files hold no URL or timestamp."""
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=150, metadata={"Software": None})
    fig.set_layout_engine("none")  # keep the layout computed for the PNG; do not solve it again
    fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png.getvalue(), svg.getvalue()
