"""Every figure the report builds keeps its text on the canvas, and draws each interval within its quantity's
range (clipped, and marked so), with no axis of those quantities below 0. The numbers themselves do not change."""
import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from pulse.report.figures import CLIPPED_LABEL, clip_interval, curves, figure4, figure5, report_figures
from pulse.report.load import SCENARIOS, load_run
from pulse.report.mmbench import label, select_metric

SEEDS = (0, 1, 2)
T1 = 12.706205  # t_{0.975, 1}: two seeds


def mini_manifest(synth, name: str) -> dict:
    """A manifest like the default mini run's: the built-in world, likelihood-scored subset of 80 questions, a
    matched-forgetting target of reference + margin 10 per scenario and seed."""
    man = synth.manifest(name, seeds=SEEDS)
    man["config"]["data"] = {"mllmu": None, "mmbench": None, "fictional": "Full_Set"}
    man["config"]["unlearn"]["stop"] = {"rule": "never_learned", "margin": 10.0, "max_steps": 78}
    man.update({"mini_world": {"path": "/repo/worlds/mini-e00766b406e4", "build": {}},
                "mmbench_subset_groups": 80,
                "matched_targets": {f"{sc}/seed{s}": {"reference": 45.0 + 1.23456 * s, "margin": 10.0,
                                                      "target": 55.0 + 1.23456 * s, "n": 120}
                                    for sc in ("finetuned", "pretrained") for s in SEEDS}})
    return man


def picked(runs, metric="circular"):
    runs = [select_metric(r, metric) for r in runs]
    return runs, label(runs, metric)


@pytest.fixture(scope="module")
def realistic(tmp_path_factory, synth):
    """A mini-like run with 3 seeds, checkpoints, matched forgetting and probes; and it beside a real-data run with
    the paper outputs only (two rows of panels, MMBench measures that differ)."""
    base = tmp_path_factory.mktemp("layout")
    mini = load_run(synth.write_run(base / "mini", synth.make_full(seeds=SEEDS), mini_manifest(synth, "mini")))
    real = load_run(synth.write_run(base / "real", synth.make_results()))
    return mini, real


def off_canvas(fig) -> list[str]:
    """The texts of `fig` (suptitle, panel titles, axis labels, tick labels, texts in the panels, legend entries and
    titles) that do not lie entirely within the figure's canvas, as measured by its renderer after layout."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison:
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):  # the tick labels drawn: ticks within the view
            lo, hi = sorted(axis.get_view_interval())
            texts += [t.label1 for t in axis.get_major_ticks() if lo - 1e-9 <= t.get_loc() <= hi + 1e-9]
    for box in fig.legends:
        texts += [*box.get_texts(), box.get_title()]
    canvas = fig.bbox
    out = []
    for text in texts:
        if not text.get_visible() or not text.get_text().strip():
            continue
        ext = text.get_window_extent(renderer)
        if min(ext.x0 - canvas.x0, canvas.x1 - ext.x1, ext.y0 - canvas.y0, canvas.y1 - ext.y1) < -0.5:
            out.append(f"{text.get_text()!r}: {ext.x0:.0f}..{ext.x1:.0f} x {ext.y0:.0f}..{ext.y1:.0f} outside "
                       f"{canvas.x1:.0f} x {canvas.y1:.0f}")
    return out


@pytest.mark.parametrize("which", ["mini", "mini+real"])
def test_every_report_figure_fits_its_canvas(realistic, which):
    mini, real = realistic
    runs, mmb = picked([mini] if which == "mini" else [mini, real])
    figs = report_figures(runs, mmb, True, SCENARIOS)
    assert {"figure4", "figure4_matched", "figure5", "curves_finetuned", "curves_pretrained"} <= set(figs)
    problems = {name: off_canvas(fig) for name, fig in figs.items()}
    assert not any(problems.values()), problems


def test_matched_title_names_the_rule_and_leaves_the_per_seed_targets_to_the_caption(realistic):
    runs, mmb = picked(realistic[:1])
    title = figure4(runs, mmb, at="matched").get_suptitle()
    assert "unlearn.stop: {rule: never_learned, margin: 10.0, max_steps: 78}" in title
    assert "seed 1" not in title and "per-seed values in the caption" in title


def test_clip_interval():
    assert clip_interval(10.0, 25.0, (0.0, None)) == (0.0, 35.0, True)
    assert clip_interval(90.0, 25.0, (0.0, 100.0)) == (65.0, 100.0, True)
    assert clip_interval(50.0, 25.0, (0.0, 100.0)) == (25.0, 75.0, False)
    assert clip_interval(-5.0, 10.0, (0.0, 100.0)) == (-15.0, 5.0, False)  # a mean outside the range: not clipped


def _spread(df, mask, values):
    """Give the rows under `mask` of seed index i the value values[i] (accuracy and relative)."""
    for seed, v in zip(sorted(df.loc[mask, "seed"].unique()), values):
        df.loc[mask & (df.seed == seed), ["accuracy", "relative"]] = v
    return df


def test_figure4_interval_below_zero_is_clipped_and_marked(tmp_path, synth):
    df = synth.make_results()
    hit = (df.scenario == "pretrained") & (df.method == "ga") & (df.request == 1) & (df.split == "mmbench")
    run = load_run(synth.write_run(tmp_path / "r", _spread(df, hit, [10.0, 60.0])))  # 35 +- 317.7: below 0
    fig = figure4([run])
    ga = next(ax for ax in fig.axes if ax.get_title() == "GA")
    x = 2 + 0.19  # the pre-trained bar of the MMBench axis
    bar = next(p for p in ga.patches if abs(p.get_x() + p.get_width() / 2 - x) < 1e-9)
    assert bar.get_height() == pytest.approx(35.0)  # the mean is drawn as it is
    segments = [seg for c in ga.containers if isinstance(c, ErrorbarContainer) for coll in c.lines[2]
                for seg in coll.get_segments()]
    mine = next(seg for seg in segments if abs(seg[0, 0] - x) < 1e-9)
    assert sorted(mine[:, 1]) == pytest.approx([0.0, 35.0 + T1 * 25.0])  # clipped at 0, the upper end kept
    assert min(seg[:, 1].min() for seg in segments) == 0.0
    assert all(ax.get_ylim()[0] == 0.0 for ax in fig.axes if ax.axison)
    marked = [(float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in ga.get_lines() if ln.get_marker() == "v"]
    assert marked == [(pytest.approx(x), 0.0)]
    assert CLIPPED_LABEL in [t.get_text() for box in fig.legends for t in box.get_texts()]


def test_figure5_band_and_curve_bars_stay_within_0_100(tmp_path, synth):
    df = synth.make_full(probes=False)
    sus = (df.scenario == "sustainability") & (df.method == "ga") & (df.request == 5) & (df.split == "unlearn")
    df = _spread(df, sus & (df.modality == "all"), [2.0, 40.0])  # 21 +- 241: band below 0
    ck = (df["at"] == "checkpoint") & (df.method == "ga") & (df.step == 4) & (df.scenario == "finetuned")
    df = _spread(df, ck & (df.split == "unlearn_sel"), [1.0, 30.0])  # 15.5 +- 184: error bar below 0
    df = _spread(df, ck & (df.split == "retain_sel"), [70.0, 99.0])  # 84.5 +- 184: error bar above 100
    run = load_run(synth.write_run(tmp_path / "r", df))
    fig5 = figure5([run])
    bands = [c for c in fig5.axes[0].collections if isinstance(c, PolyCollection)]
    assert bands and min(p.vertices[:, 1].min() for b in bands for p in b.get_paths()) >= 0.0
    assert fig5.axes[0].get_ylim() == (0.0, 100.0)
    assert "Shaded bands clipped to 0-100 %." in fig5.legends[0].get_title().get_text()
    fig = curves([run], "finetuned")
    for ax in fig.axes[:2]:
        for c in ax.containers:
            if isinstance(c, ErrorbarContainer):
                pts = np.concatenate([seg for coll in c.lines[2] for seg in coll.get_segments()])
                assert pts.min() >= 0.0 and pts.max() <= 100.0
        assert ax.get_xlim()[0] >= 0.0 and ax.get_ylim()[0] >= 0.0
    markers = {ln.get_marker() for ln in fig.axes[0].get_lines()}
    assert {"v", ">"} <= markers  # y clipped at 0, x clipped at 100
