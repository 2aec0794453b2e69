"""Figure 4 / Table 3 / findings at matched forgetting: held-out halves, and "did not reach" is never a number.

Hand values come from conftest.MATCHED: accuracy = request-0 accuracy x (factor + 0.02 x seed index); the
matched rows carry no `relative`, so the report divides by the request-0 held-out rows (= BASE)."""
import csv
import io

import pytest
from matplotlib.container import ErrorbarContainer

from pulse.report.figures import figure4
from pulse.report.findings import check_findings
from pulse.report.load import load_run
from pulse.report.tables import PRE, format_cell, table3, to_csv, to_markdown

T1 = 12.706205  # t_{0.975, 1}: two seeds


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, synth):
    return load_run(synth.write_run(tmp_path_factory.mktemp("m") / "run_m",
                                    synth.make_full(probes=False, checkpoints=False)))


def test_table3_at_matched_forgetting(full_run):
    t = table3([full_run], at="matched")
    assert t.rows[1:] == [("proj+llm", "ga"), ("proj+llm", "ga_klr"), ("proj+llm", "npo"), ("llm", "ga")]
    # GA, D_unlearn held-out Multi: 78 x 0.50 = 39.0, 80 x 0.52 = 41.6
    c = t.cell("run_m", ("proj+llm", "ga"), "unlearn_multi")
    assert (c.mean, c.half) == pytest.approx((40.3, T1 * 1.3), abs=1e-4)
    # pre-unlearning row: request-0 held-out halves (78, 80)
    assert t.cell("run_m", PRE, "unlearn_multi").mean == pytest.approx(79.0)
    # GA+KLR never reached the target: no number anywhere in its row
    for key in ("unlearn_multi", "unlearn_text", "retain_multi", "retain_text", "mmbench"):
        c = t.cell("run_m", ("proj+llm", "ga_klr"), key)
        assert not c.has_data and c.n_not_reached == 2 and format_cell(c) == "did not reach"
    md = to_markdown(t)
    assert "| proj+llm | GA+KLR | did not reach | did not reach | did not reach | did not reach | did not reach |" in md
    assert "D_unlearn held-out Multi (\u2193)" in md and "held-out half of the questions" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(t))))
    klr = next(r for r in rows if r["method"] == "ga_klr")
    assert klr["unlearn_multi_mean"] == "" and klr["unlearn_multi_not_reached"] == "2"


def test_some_seeds_not_reached_still_no_number(tmp_path, synth):
    df = synth.make_full(probes=False, checkpoints=False)
    hit = (df["at"] == "matched") & (df.method == "npo") & (df.seed == 1) & (df.scenario == "finetuned")
    df.loc[hit, "status"], df.loc[hit, "accuracy"] = "not_reached", None
    t = table3([load_run(synth.write_run(tmp_path / "r", df))], at="matched")
    c = t.cell("r", ("proj+llm", "npo"), "unlearn_multi")
    assert format_cell(c) == "did not reach (1 of 2 seeds)" and not c.has_data


def test_figure4_at_matched_draws_no_bar_for_did_not_reach(full_run):
    fig = figure4([full_run], at="matched")
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    klr, ga = by_title["GA+KLR"], by_title["GA"]
    assert all(p.get_height() == 0 for p in klr.patches)
    assert [t.get_text() for t in klr.texts].count("did not reach") == 6  # 3 axes x 2 scenarios
    # GA fine-tuned MMBench kept: 75 x 0.98 / 75 = 98, 77 x 1.00 / 77 = 100 -> 99
    heights = sorted(round(p.get_height(), 6) for p in ga.patches)
    assert 99.0 in heights
    assert "unlearn.stop: {rule: never_learned, margin: 0.0, max_steps: 0}" in fig.get_suptitle()
    assert "held-out half" in fig.get_suptitle()


def test_one_seed_gets_no_error_bars_or_caps(tmp_path, synth):
    run = load_run(synth.write_run(tmp_path / "one", synth.make_full(seeds=(0,), probes=False, checkpoints=False)))
    for at in ("budget", "matched"):
        fig = figure4([run], at=at)
        assert not [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    two = figure4([load_run(synth.write_run(tmp_path / "two", synth.make_results()))])
    assert [c for ax in two.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_findings_at_matched_forgetting(full_run):
    by = {f["id"]: f for f in check_findings(full_run.full, at="matched")}
    assert all(f["at"] == "matched" for f in by.values())
    f1 = by["F1"]
    # GA: fine-tuned 98, 100 vs pre-trained 50, 52 -> difference 48 in both seeds; NPO 99, 101 vs 60, 62 -> 39
    assert f1["holds"] is True and f1["numbers"]["not_reached"] == ["ga_klr"]
    assert f1["numbers"]["methods"]["ga"] == pytest.approx(
        {"finetuned": 99.0, "pretrained": 51.0, "difference": 48.0, "ci95": 0.0, "seeds": 2})
    assert set(f1["numbers"]["methods"]) == {"ga", "npo"}
    assert "GA+KLR did not reach the target" in f1["evidence"] and f1["evidence"].endswith("Reproduces.")
    assert by["F2"]["holds"] is None and "fixed budget" in by["F2"]["evidence"]
    # F3: text kept 0.70 / 0.75 / 0.60 / 0.80 / 0.80 vs image 0.50 / 0.55 / 0.50 / 0.60 / 0.60 (+0.02 per seed)
    assert by["F3"]["numbers"]["mean_text"] == pytest.approx(100 * (0.70 + 0.75 + 0.60 + 0.80 + 0.80 + 5 * 0.01) / 5)
    assert by["F3"]["numbers"]["difference"] == pytest.approx(18.0) and by["F3"]["numbers"]["ci95"] == pytest.approx(0)
    # F4: llm 90, 92 vs proj+llm 98, 100
    assert by["F4"]["numbers"] == pytest.approx({"llm": 91.0, "proj+llm": 99.0, "difference": 8.0, "ci95": 0.0})


def test_f1_at_matched_does_not_reproduce_when_pretrained_keeps_more(tmp_path, synth):
    df = synth.make_full(probes=False, checkpoints=False)
    hit = (df["at"] == "matched") & (df.scenario == "pretrained") & (df.split == "mmbench")
    df.loc[hit, "accuracy"] = 76.0  # above the request-0 values (75, 77) -> kept > the fine-tuned 98 / 99
    df.loc[hit & (df.seed == 1), "accuracy"] = 77.0
    f1 = check_findings(load_run(synth.write_run(tmp_path / "r", df)).full, at="matched")[0]
    assert f1["holds"] is False and f1["evidence"].endswith("Does not reproduce.")
