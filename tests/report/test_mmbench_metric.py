"""The report names its MMBench metric everywhere and switches between CircularEval and vanilla."""
import csv
import io
import json

import pandas as pd
import pytest

from pulse.errors import PulseError
from pulse.report import main
from pulse.report.html import definitions_html
from pulse.report.figures import figure4, figure5
from pulse.report.load import load_run
from pulse.report.mmbench import (PAPER_NOTE, caveat, comparable, definition, definitions, label, own_label,
                                  qualifiers, select_metric)
from pulse.report.tables import PRE, table3, to_csv, to_markdown

VANILLA_GAIN = 10.0  # vanilla accuracy = CircularEval accuracy + 10 points in these synthetic runs


def with_vanilla(df: pd.DataFrame) -> pd.DataFrame:
    """Add split "mmbench_vanilla" rows (accuracy + VANILLA_GAIN), relative to their own request-0 value, as
    protocol/runner.py `_rows` writes them."""
    van = df[df.split == "mmbench"].copy()
    van["split"] = "mmbench_vanilla"
    van["accuracy"] = van["accuracy"] + VANILLA_GAIN
    keys = ["scenario", "method", "target", "seed"]
    acc0 = van[van.request == 0].set_index(keys)["accuracy"]
    van["relative"] = [100 * a / acc0[tuple(k)] for a, k in zip(van["accuracy"], van[keys].to_numpy())]
    return pd.concat([df, van], ignore_index=True)


@pytest.fixture
def both(tmp_path, synth):
    return synth.write_run(tmp_path / "run_v", with_vanilla(synth.make_results()))


def test_select_metric_relabels_one_split(both):
    run = load_run(both)
    circ, van = select_metric(run, "circular"), select_metric(run, "vanilla")
    assert set(circ.df.split) == set(van.df.split) == {"unlearn", "retain", "mmbench", "fold_current",
                                                      "folds_done", "folds_pending"}
    pick = dict(scenario="finetuned", method="ga", target="proj+llm", seed=0, request=0, split="mmbench")
    row = lambda r: r.df.loc[(r.df[list(pick)] == pd.Series(pick)).all(axis=1), "accuracy"]  # noqa: E731
    assert row(circ).tolist() == [75.0] and row(van).tolist() == [85.0]
    assert (circ.mmbench, van.mmbench) == ("circular", "vanilla")
    with pytest.raises(PulseError, match="unknown MMBench metric"):
        select_metric(run, "both")


def test_table3_follows_the_switch(both):
    run = load_run(both)
    for metric, pre in (("circular", 76.0), ("vanilla", 86.0)):  # seeds 0/1: 75, 77 (+10 for vanilla)
        picked = [select_metric(run, metric)]
        t = table3(picked, label(picked, metric))
        assert t.cell(run.label, PRE, "mmbench").mean == pytest.approx(pre)
        # GA, Proj+LLM at request 1: circular 75 * 0.95, 77 * 0.97; vanilla (75 * 0.95 + 10), (77 * 0.97 + 10)
        ga = t.cell(run.label, ("proj+llm", "ga"), "mmbench").mean
        assert ga == pytest.approx((75 * 0.95 + 77 * 0.97) / 2 + (VANILLA_GAIN if metric == "vanilla" else 0))
        name = "CE" if metric == "circular" else "vanilla"
        assert f"MMBench ({name}, likelihood) (\u2191)" in to_markdown(t)
        assert f"MMBench column: MMBench ({name}, likelihood). MMBench ({name}, likelihood): " in to_markdown(t)
        assert "likelihood-scored" in to_markdown(t) and "Not comparable with published" in to_markdown(t)
        rows = list(csv.DictReader(io.StringIO(to_csv(t))))
        assert {r["mmbench_metric"] for r in rows} == {t.mmbench}


def test_report_switch_end_to_end(both, tmp_path):
    assert main([str(both), "--out", str(tmp_path / "c")]) == 0
    assert main([str(both), "--out", str(tmp_path / "v"), "--mmbench", "vanilla"]) == 0
    for sub, name, tag, other in (("c", "CircularEval", "CE", "vanilla"), ("v", "vanilla", "vanilla", "circular")):
        html = (tmp_path / sub / "report.html").read_text()
        assert f"MMBench metric shown: {name}; switch with" in html
        assert html.count(f"MMBench ({tag}, likelihood)</dt>") == 1  # defined once, in the box
        assert f"--mmbench {other}</code>" in html
        assert f"Figure 4: fine-tuned vs pre-trained knowledge (MMBench ({tag}, likelihood))" in html
        assert f"Table 3: performance by task modality (MMBench ({tag}, likelihood))" in html
        assert "75.1" in html and "67.7" in html
        found = json.loads((tmp_path / sub / "findings.json").read_text())
        assert all(f["mmbench"] == f"MMBench ({tag}, likelihood)" for f in found)
        assert f"MMBench ({tag}, likelihood)" in found[0]["evidence"]
    c = list(csv.DictReader((tmp_path / "c" / "table3.csv").open()))
    v = list(csv.DictReader((tmp_path / "v" / "table3.csv").open()))
    assert float(v[0]["mmbench_mean"]) == pytest.approx(float(c[0]["mmbench_mean"]) + VANILLA_GAIN)


def test_figures_name_the_metric(both):
    run = select_metric(load_run(both), "vanilla")
    name = label([run], "vanilla")
    fig4, fig5 = figure4([run], name), figure5([run], name)
    ticks = [t.get_text() for ax in fig4.axes for t in ax.get_xticklabels()]
    assert "MMBench\n(vanilla, likelihood)\nkept (%)" in ticks
    assert name in fig4.get_suptitle() and name in fig5.get_suptitle()
    assert "MMBench (vanilla, likelihood)" in [ax.get_title() for ax in fig5.axes]


def test_old_run_without_vanilla_rows(tmp_path, synth, capsys):
    """A run made before mmbench_vanilla existed: CircularEval reports, vanilla is a one-line error."""
    run_dir = synth.write_run(tmp_path / "old_run", synth.make_results(scenarios=("finetuned",)))
    assert main([str(run_dir), "--out", str(tmp_path / "old")]) == 0
    assert "MMBench (CE, likelihood)" in (tmp_path / "old" / "report.html").read_text()
    assert main([str(run_dir), "--out", str(tmp_path / "old_v"), "--mmbench", "vanilla"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no vanilla MMBench rows" in err and "--mmbench circular" in err
    assert "results.csv" in err


def test_pulse_report_command_has_the_switch():
    from pulse.arguments import build_parser as _parser
    assert _parser().parse_args(["report", "runs/x", "--mmbench", "vanilla"]).mmbench == "vanilla"
    assert _parser().parse_args(["report", "runs/x"]).mmbench == "circular"
    with pytest.raises(SystemExit):
        _parser().parse_args(["report", "runs/x", "--mmbench", "both"])


def _run(tmp_path, synth, name, manifest):
    return load_run(synth.write_run(tmp_path / name, synth.make_results(scenarios=("finetuned",)), manifest))


def test_non_standard_scores_are_labelled(tmp_path, synth):
    real = _run(tmp_path, synth, "real", {"config": {"data": {"mllmu": "/d/mllmu"}}, "mmbench_scoring": "generate"})
    assert qualifiers(real) == [] and label([real], "circular") == "MMBench (CE)"
    assert caveat([real]) == ""
    mini = _run(tmp_path, synth, "mini", {"config": {"data": {"mllmu": None}}, "mmbench_scoring": "model default",
                                          "mini_world": {"path": "x"}, "mmbench_subset_groups": 30})
    assert qualifiers(mini) == ["mini-MMBench of the built-in mini world", "likelihood-scored, non-standard",
                                "subset of 30 questions"]
    # never titled plain "MMBench": the short label names the mini world's set and the metric; the definition
    # says the rest, once
    assert label([mini], "vanilla") == "mini-MMBench (vanilla)" and label([mini], "circular") == "mini-MMBench (CE)"
    assert mini.measure == "" and own_label(mini, "vanilla") == "mini-MMBench (vanilla, likelihood, subset of 30)"
    assert definitions([mini], "circular") == [("mini-MMBench (CE)", definition(mini, "circular"))]
    for text in ("CircularEval accuracy", "built-in mini world", "likelihood-scored", "subset of 30 questions",
                 "Not comparable with published MMBench scores."):
        assert text in definition(mini, "circular"), text
    assert "not comparable with published MMBench scores" in caveat([mini])
    # runs that differ: the label says so, the caveat names the run
    assert label([real, mini], "circular") == "MMBench / mini-MMBench (CE; measures vary by run)"
    assert not comparable([real, mini]) and comparable([mini, mini])
    assert caveat([real, mini]).count("mini:") == 1
    assert "not comparable" not in definitions_html([real], label([real], "circular")).lower()
    assert 'class="note">MMBench here is not comparable' in definitions_html([mini], label([mini], "circular"))
    assert "vanilla (non-circular)" in PAPER_NOTE
