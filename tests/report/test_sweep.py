"""Equal search budget: configurations `<method>@<config>` are reported through each seed's recorded winner."""
import pandas as pd
import pytest

from pulse.report.agg import method_name
from pulse.report.html import sweep_html
from pulse.report.load import load_run
from pulse.report.tables import format_cell, table3

T1 = 12.706205


def _with_sweep(synth):
    df = synth.make_full(probes=False, checkpoints=False)
    ga = df[(df.method == "ga") & (df.target == "proj+llm") & df.scenario.isin(["finetuned", "pretrained"])]
    parts = [df]
    for name, acc in (("ga@lr=0.001", 30.0), ("ga@lr=0.01", 10.0)):
        v = ga.copy()
        v["method"] = name
        matched = v["at"] == "matched"
        ft = v["scenario"] == "finetuned"
        v.loc[matched & ft, "accuracy"] = acc
        v.loc[matched & ~ft, ["accuracy", "status"]] = [None, "not_reached"]
        parts.append(v)
    man = synth.manifest("sw")
    man["sweep"] = {
        "finetuned/seed0": {"ga/proj+llm": {"winner": "ga@lr=0.01", "candidates": [
            {"name": "ga@lr=0.001", "reached": True}, {"name": "ga@lr=0.01", "reached": True}]}},
        "finetuned/seed1": {"ga/proj+llm": {"winner": "ga@lr=0.001", "candidates": [
            {"name": "ga@lr=0.001", "reached": True}, {"name": "ga@lr=0.01", "reached": False}]}},
        "pretrained/seed0": {"ga/proj+llm": {"winner": None, "candidates": [
            {"name": "ga@lr=0.001", "reached": False}, {"name": "ga@lr=0.01", "reached": False}]}},
    }
    return pd.concat(parts, ignore_index=True), man


def test_winners_replace_the_configurations(tmp_path, synth):
    df, man = _with_sweep(synth)
    run = load_run(synth.write_run(tmp_path / "sw", df, man))
    assert not any("@lr" in m for m in run.full["method"])
    assert method_name("ga@sweep") == "GA (sweep winner)" and method_name("npo@beta=2") == "NPO@beta=2"
    t = table3([run], at="matched")
    assert ("proj+llm", "ga@sweep") in t.rows
    c = t.cell("sw", ("proj+llm", "ga@sweep"), "unlearn_multi")
    # seed 0's winner (lr=0.01) reads 10, seed 1's (lr=0.001) 30
    assert (c.mean, c.half) == pytest.approx((20.0, T1 * 10.0))
    # the fixed-budget row of the winner is the winner's own budget rows (here equal to GA's)
    assert table3([run]).cell("sw", ("proj+llm", "ga@sweep"), "unlearn_multi").mean == pytest.approx(8.7)
    # pre-trained: no configuration reached the target -> only its matched rows, "did not reach"
    pt = run.full[(run.full.method == "ga@sweep") & (run.full.scenario == "pretrained")]
    assert set(pt["at"]) == {"matched"} and set(pt["status"]) == {"not_reached"}
    html = sweep_html([run])
    assert "<td>finetuned</td><td>proj+llm</td><td>GA</td><td>0</td><td>ga@lr=0.01</td><td>2 of 2</td>" in html
    assert "<td>none reached</td><td>0 of 2</td>" in html


def test_no_sweep_no_section(tmp_path, synth):
    run = load_run(synth.write_run(tmp_path / "r", synth.make_results(scenarios=("finetuned",))))
    assert sweep_html([run]) == ""
    assert format_cell(table3([run]).cell("r", ("proj+llm", "ga"), "unlearn_multi")) == "8.7 \u00b1 11.4"
