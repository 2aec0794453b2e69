import base64
import csv
import json
import re

import pytest

from pulse.errors import PulseError
from pulse.report import build_report, main
from pulse.report.figures import figure4, figure5
from pulse.report.load import load_run

FILES = ("figure4.png", "figure4.svg", "figure5.png", "figure5.svg", "table3.md", "table3.csv",
         "findings.json", "report.html", "ranking.md", "ranking.csv", "tradeoff.png", "tradeoff.svg")


@pytest.fixture(scope="module")
def single(tmp_path_factory, synth):
    """One run, built through the command line with the default output directory."""
    run = synth.write_run(tmp_path_factory.mktemp("single") / "run_a", synth.make_results())
    assert main([str(run)]) == 0
    return run / "report"


@pytest.fixture(scope="module")
def multi(tmp_path_factory, synth):
    """Two runs: run_a complete, run_b only the fine-tuned scenario with one seed."""
    base = tmp_path_factory.mktemp("multi")
    a = synth.write_run(base / "run_a", synth.make_results())
    b = synth.write_run(base / "run_b", synth.make_results(seeds=(3,), scenarios=("finetuned",)),
                        {"config": {"name": "only-ft"}})
    report = build_report([a, b], base / "cmp")
    return report


def test_build_writes_every_file(single, capsys):
    for name in FILES:
        assert (single / name).stat().st_size > 0, name
    assert (single / "figure4.png").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in (single / "figure5.svg").read_bytes()
    assert not list(single.glob(".*.tmp"))


def test_html_is_self_contained_with_its_figures(single):
    html = (single / "report.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert "example.org" in html  # the manifest's URL is shown, as text only
    imgs = re.findall(r"<img [^>]*>", html)
    assert len(imgs) == 3
    for fid, tag in zip(("figure4", "figure5", "tradeoff"), imgs):
        assert f'id="{fid}"' in tag and 'alt="Figure' in tag
        data = re.search(r'src="data:image/png;base64,([^"]+)"', tag).group(1)
        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert not re.search(r"<(link|iframe|object|embed)\b", html)
    assert not re.search(r"(src|href)=\"(?!data:)", html)
    for text in ("95% CI, Student t", "Run configuration", "likelihood", "celeb_000 (90.0%)", "2h 34m 56s",
                 'id="table3"', "8.7 \u00b1 11.4", "holds", "F4", "llava-hf/llava-1.5-13b-hf"):
        assert text in html, text


def test_findings_json(single):
    found = json.loads((single / "findings.json").read_text())
    assert [f["id"] for f in found] == ["F1", "F2", "F3", "F4"]
    assert all(f["holds"] is True and f["run"] == "run_a" for f in found)


def test_multi_run_comparison(multi):
    out = multi.parent
    for name in FILES:
        assert (out / name).exists(), name
    rows = list(csv.DictReader((out / "table3.csv").open()))
    assert {r["run"] for r in rows} == {"run_a", "run_b"}
    b_ga = next(r for r in rows if r["run"] == "run_b" and r["method"] == "ga" and r["target"] == "proj+llm")
    assert float(b_ga["unlearn_multi_mean"]) == pytest.approx(7.8) and b_ga["unlearn_multi_ci95"] == ""
    md = (out / "table3.md").read_text()
    assert "run_a: D_unlearn Multi" in md and "run_b: MMBench" in md
    html = multi.read_text()
    assert "http://" not in html and "https://" not in html
    assert html.count("<img ") == 3  # figures 4 and 5, the trade-off
    assert html.count('<th colspan="5">') == 2  # one column group per run in Table 3
    assert "No data for scenario pretrained in run run_b." in html
    assert "No data for scenario sustainability in run run_b." in html
    found = json.loads((out / "findings.json").read_text())
    assert len(found) == 8
    assert {f["id"]: f["holds"] for f in found if f["run"] == "run_b"} == {
        "F1": None, "F2": None, "F3": True, "F4": True}


def test_figures_with_missing_scenarios_say_so(tmp_path, synth):
    run = load_run(synth.write_run(tmp_path / "r", synth.make_results(scenarios=("finetuned",))))
    texts4 = [t.get_text() for ax in figure4([run]).axes for t in ax.texts]
    assert any("no data for scenario pretrained" in t for t in texts4)
    texts5 = [t.get_text() for ax in figure5([run]).axes for t in ax.texts]
    assert "no data for scenario sustainability" in texts5
    empty = load_run(synth.write_run(tmp_path / "e", synth.make_results(scenarios=())))
    assert any("no data for scenarios" in t.get_text() for ax in figure4([empty]).axes for t in ax.texts)


def test_cli_errors_are_one_line(tmp_path, capsys, synth):
    a = synth.write_run(tmp_path / "a", synth.make_results(scenarios=("finetuned",)))
    assert main([str(a), str(a)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err
    assert main([str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(PulseError):
        main([str(tmp_path / "missing"), "--debug"])


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.replace("modality,", "mode,", 1), "field modality: missing column"),
    (lambda t: t.replace(",ok,", ",fine,", 1), "row 1, field status"),
    (lambda t: t.replace(",0,unlearn,", ",x,unlearn,", 1), "field request: not an integer"),
])
def test_bad_results_csv_names_file_row_field(tmp_path, synth, mutate, message):
    run = synth.write_run(tmp_path / "r", synth.make_results(scenarios=("finetuned",)))
    path = run / "results.csv"
    path.write_text(mutate(path.read_text()))
    with pytest.raises(PulseError, match=re.escape(message)) as e:
        load_run(run)
    assert "results.csv" in str(e.value)


def test_bad_manifest(tmp_path, synth):
    run = synth.write_run(tmp_path / "r", synth.make_results(scenarios=("finetuned",)))
    (run / "manifest.json").write_text('{"seeds": [0]}')
    with pytest.raises(PulseError, match="field config"):
        load_run(run)
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(PulseError, match="manifest.json: not valid JSON"):
        load_run(run)


def test_same_named_runs_get_distinct_labels(tmp_path):
    from pulse.report.load import run_labels
    assert run_labels([tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "z"]) == [
        "x/run", "y/run", "z"]


def test_diverged_everywhere_is_reported(tmp_path, synth):
    from pulse.report.figures import seeds_phrase
    from pulse.report.html import diverged_html

    df = synth.make_results()
    hit = (df.scenario == "sustainability") & (df.method == "ga") & (df.request == 5)
    df.loc[hit, "status"] = "diverged"
    df.loc[hit, ["accuracy", "relative"]] = None
    run = load_run(synth.write_run(tmp_path / "r", df))
    labels = [t.get_text() for leg in figure5([run]).legends for t in leg.get_texts()]
    assert "every seed diverged" in labels
    section = diverged_html([run])
    assert "<td>sustainability</td><td>GA</td><td>proj+llm</td><td>0</td><td>5</td>" in section
    assert seeds_phrase([1]) == "1 seed (no CI)" and seeds_phrase([2, 2]) == "mean of 2 seeds, 95% CI, Student t"


NEW_FILES = ("figure4_matched.png", "figure4_matched.svg", "table3_matched.md", "table3_matched.csv",
             "curves_finetuned.png", "curves_finetuned.svg", "curves_pretrained.png", "curves_pretrained.svg",
             "probes.md", "probes.csv")


@pytest.fixture(scope="module")
def full(tmp_path_factory, synth):
    """One run with checkpoints, matched forgetting and probes, built under umask 022."""
    import os

    run = synth.write_run(tmp_path_factory.mktemp("full") / "run_f", synth.make_full())
    old = os.umask(0o022)
    try:
        report = build_report([run], run / "report")
    finally:
        os.umask(old)
    return report


def test_full_build_writes_the_curve_matched_and_probe_outputs(full):
    for name in FILES + NEW_FILES:
        assert (full.parent / name).stat().st_size > 0, name
    html = full.read_text()
    imgs = re.findall(r"<img [^>]*>", html)
    assert [re.search(r'id="([^"]+)"', t).group(1) for t in imgs] == [
        "figure4", "figure4_matched", "figure5", "tradeoff", "curves_finetuned", "curves_pretrained"]
    for text in ('id="table3_matched"', "did not reach", 'id="probes-section"', "route: all routes (worst case)",
                 "matched forgetting", "unlearn.stop: {rule: never_learned, margin: 0.0, max_steps: 0}",
                 "MMBench (CE, likelihood), checkpoint subset of 20 questions", "<td>P3</td>",
                 "recorded values: finetuned target = never-learned reference + margin: seed 0 55.0 + 0 = 55.0"):
        assert text in html, text
    found = json.loads((full.parent / "findings.json").read_text())
    assert [(f["id"], f["at"]) for f in found] == [
        ("F1", "budget"), ("F2", "budget"), ("F3", "budget"), ("F4", "budget"),
        ("F1", "matched"), ("F2", "matched"), ("F3", "matched"), ("F4", "matched"),
        ("P1", "budget"), ("P2", "budget"), ("P3", "budget")]
    assert all(f["holds"] is not False for f in found)


def test_outputs_are_group_readable(full):
    import stat

    for path in full.parent.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


def test_fsutil_mode_follows_the_umask(tmp_path):
    import os
    import stat

    from pulse.fsutil import atomic_write_json, atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o640}
    assert (tmp_path / "a.txt").read_text() == "x"


def test_rebuild_without_new_rows_removes_stale_outputs(full, synth):
    out = full.parent
    run = out.parent
    synth.write_run(run, synth.make_results())  # the same run directory, now without those rows
    build_report([run], out)
    assert not [n for n in NEW_FILES if (out / n).exists()]
    html = (out / "report.html").read_text()
    assert html.count("<img ") == 3 and "Not measured in this run" in html
