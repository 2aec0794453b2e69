import csv
import io

import pytest

from pulse.report.load import load_run
from pulse.report.tables import PRE, format_cell, table3, to_csv, to_markdown

T1 = 12.706205  # t_{0.975, 1}: two seeds


@pytest.fixture
def make_table(tmp_path, synth):
    def make(df, name="run_a"):
        return table3([load_run(synth.write_run(tmp_path / name, df))])
    return make


def test_table3_cells_match_hand_values(make_table, results_df):
    t = make_table(results_df)
    assert t.rows[0] == PRE
    assert t.rows[1:] == [("proj+llm", "ga"), ("proj+llm", "ga_klr"), ("proj+llm", "npo"), ("llm", "ga")]
    # GA, Proj+LLM, D_unlearn Multi: seed 0 78 * 0.10 = 7.8, seed 1 80 * 0.12 = 9.6
    c = t.cell("run_a", ("proj+llm", "ga"), "unlearn_multi")
    assert c.mean == pytest.approx(8.7)
    assert c.half == pytest.approx(T1 * 0.9, abs=1e-4)
    assert c.n_seeds == 2 and c.n_diverged == 0
    assert format_cell(c) == "8.7 \u00b1 11.4"
    # D_unlearn Text: 76 * 0.50 = 38.0, 78 * 0.52 = 40.56
    c = t.cell("run_a", ("proj+llm", "ga"), "unlearn_text")
    assert (c.mean, c.half) == pytest.approx((39.28, T1 * 1.28), abs=1e-4)
    # LLM, GA, MMBench: 75 * 0.65 = 48.75, 77 * 0.67 = 51.59
    c = t.cell("run_a", ("llm", "ga"), "mmbench")
    assert (c.mean, c.half) == pytest.approx((50.17, T1 * 1.42), abs=1e-4)
    # Pre-unlearning MMBench: 75, 77 (request-0 rows are repeated per method: still 2 seeds)
    c = t.cell("run_a", PRE, "mmbench")
    assert (c.mean, c.half, c.n_seeds) == pytest.approx((76.0, T1, 2), abs=1e-4)


def test_table3_markdown_and_csv(make_table, results_df):
    t = make_table(results_df)
    md = to_markdown(t)
    assert "95% CI, Student t" in md
    assert "| proj+llm | GA | 8.7 \u00b1 11.4 | 39.3 \u00b1 16.3 |" in md
    assert "| (Pre-unlearning) |  | 79.0 \u00b1 12.7 |" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(t))))
    assert len(rows) == 5
    ga = next(r for r in rows if r["target"] == "proj+llm" and r["method"] == "ga")
    assert float(ga["unlearn_multi_mean"]) == pytest.approx(8.7)
    assert float(ga["unlearn_multi_ci95"]) == pytest.approx(T1 * 0.9, abs=1e-3)
    assert ga["unlearn_multi_seeds"] == "2"


def test_table3_one_seed_gives_plain_mean(make_table, synth):
    t = make_table(synth.make_results(seeds=(7,)))
    c = t.cell("run_a", ("proj+llm", "ga"), "unlearn_multi")
    assert c.half is None
    assert format_cell(c) == "7.8"


def test_table3_diverged_seeds_are_excluded_and_marked(make_table, results_df):
    df = results_df.copy()
    hit = (df.scenario == "finetuned") & (df.method == "npo") & (df.request == 1)
    df.loc[hit & (df.seed == 1), "status"] = "diverged"
    df.loc[hit & (df.seed == 1), ["accuracy", "relative"]] = None
    hit_klr = (df.scenario == "finetuned") & (df.method == "ga_klr") & (df.request == 1)
    df.loc[hit_klr, "status"] = "diverged"
    t = make_table(df)
    c = t.cell("run_a", ("proj+llm", "npo"), "unlearn_multi")
    assert (c.mean, c.half, c.n_seeds, c.n_diverged) == pytest.approx((78 * 0.15, None, 1, 1))
    assert format_cell(c) == "11.7\u2020"
    assert format_cell(t.cell("run_a", ("proj+llm", "ga_klr"), "mmbench")) == "diverged"


def test_table3_without_finetuned_says_no_data(make_table, synth):
    t = make_table(synth.make_results(scenarios=("sustainability",)))
    assert not t.has_data
    assert "No data for scenario finetuned." in to_markdown(t)
    assert to_csv(t).count("\n") == 1  # header only


def test_method_display_names():
    from pulse.report.agg import method_name

    assert method_name("ga_klr") == "GA+KLR" and method_name("npo") == "NPO"
    assert method_name("examples.my_method:MY_METHOD") == "MY_METHOD"
    assert method_name("simnpo") == "SIMNPO"
