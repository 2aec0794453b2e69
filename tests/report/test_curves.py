"""Effectiveness-vs-generality curves over checkpoints (conftest: accuracy = START + 2 x seed index - SLOPE x step)."""
import pytest
from matplotlib.container import ErrorbarContainer

from pulse.report.figures import curve_points, curves, figure5
from pulse.report.load import load_run, view
from pulse.report.mmbench import select_metric

T1 = 12.706205


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synth):
    base = tmp_path_factory.mktemp("c")
    two = load_run(synth.write_run(base / "two", synth.make_full(probes=False)))
    mini_manifest = synth.manifest("one")
    mini_manifest.update({"mini_world": {"path": "w"}})
    one = load_run(synth.write_run(base / "one", synth.make_full(seeds=(0,), probes=False), mini_manifest))
    return select_metric(two, "circular"), select_metric(one, "circular")


def test_curve_points_are_seed_means_in_step_order(runs):
    two, _ = runs
    rows = view(two.full, at="checkpoint")
    pts = curve_points(rows[rows.scenario == "finetuned"], "ga", "proj+llm", "retain_sel")
    assert [(q, s) for q, s, _x, _y in pts] == [(1, 0), (1, 2), (1, 4)]
    # GA: unlearn_sel 80/82 - 15 step, retain_sel 70/72 - 5 step
    assert [p[3].mean for p in pts] == pytest.approx([81.0, 51.0, 21.0])
    assert [p[2].mean for p in pts] == pytest.approx([71.0, 61.0, 51.0])
    assert all(p[2].half == pytest.approx(T1) and p[3].half == pytest.approx(T1) for p in pts)


def test_curves_figure(runs):
    two, _ = runs
    fig = curves([two], "finetuned")
    left, right = fig.axes[:2]
    lines = [ln for ln in left.get_lines()
             if len(ln.get_xdata()) > 1 and ln.get_marker() not in ("None", "", "|", "_", "*")]
    assert len(lines) == 3  # GA, GA+KLR, NPO (target proj+llm)
    assert len({ln.get_marker() for ln in lines}) == 3  # each method its own marker
    stars = [ln for ln in left.get_lines() if ln.get_marker() == "*"]
    # matched stops: GA at step 2 (61, 51), NPO at step 4 (70 - 8 + 1 = 63, 80 - 40 + 1 = 41); GA+KLR none
    assert sorted((float(s.get_xdata()[0]), float(s.get_ydata()[0])) for s in stars) == [(61.0, 51.0), (63.0, 41.0)]
    assert "MMBench (CE, likelihood), checkpoint subset of 20 questions" in right.get_xlabel()
    assert "selection half" in left.get_ylabel() and "selection half" in left.get_xlabel()
    assert [tuple(ln.get_ydata()) for ln in left.get_lines() if ln.get_linestyle() == "--"] == [(55.0, 55.0)]  # target
    assert "unlearn.stop: {rule: never_learned, margin: 0.0, max_steps: 0}" in fig.get_suptitle()
    assert [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert labels == ["GA", "GA+KLR", "NPO", "matched-forgetting stop (median over seeds)", "target (mean over seeds)"]
    assert "seed 0 55.0" not in fig.get_suptitle()  # the per-seed targets are in the report's caption


def test_curves_one_seed_mini_world_no_error_bars(runs):
    _, one = runs
    fig = curves([one], "pretrained")
    assert not [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert fig.axes[1].get_xlabel().startswith("mini-MMBench (CE), checkpoint subset of 20 questions")
    assert "1 seed (no CI)" in fig.get_suptitle()


def test_curves_follow_the_mmbench_switch(tmp_path, synth):
    run = load_run(synth.write_run(tmp_path / "v", synth.make_full(probes=False)))
    van = select_metric(run, "vanilla")
    rows = view(van.full, at="checkpoint")
    pts = curve_points(rows[rows.scenario == "finetuned"], "ga", "proj+llm", "mmbench_sub")
    assert pts[0][2].mean == pytest.approx(71.0)  # 60/62 + 10 (vanilla rows)
    assert "(vanilla, likelihood)" in curves([van], "finetuned").axes[1].get_xlabel()


def test_no_checkpoints_no_curve(tmp_path, synth):
    run = load_run(synth.write_run(tmp_path / "old", synth.make_results(scenarios=("finetuned",))))
    assert curves([run], "finetuned") is None


def test_figure5_lines_have_own_markers_and_offsets(runs):
    two, _ = runs
    ax = figure5([two]).axes[0]
    lines = [ln for ln in ax.get_lines()
             if len(ln.get_xdata()) > 1 and ln.get_marker() not in ("None", "", "|", "_", "*")]
    assert len({ln.get_marker() for ln in lines}) == 3
    starts = sorted(round(float(ln.get_xdata()[0]), 6) for ln in lines)
    assert starts == [-0.06, 0.0, 0.06]  # request 0, dodged so equal lines stay visible
