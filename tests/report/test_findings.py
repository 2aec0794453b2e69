import pytest

from pulse.report.findings import check_findings


def _by_id(df):
    return {f["id"]: f for f in check_findings(df)}


def test_all_findings_hold_on_the_synthetic_run(results_df):
    found = check_findings(results_df)
    assert [f["id"] for f in found] == ["F1", "F2", "F3", "F4"]
    for f in found:
        assert set(f) >= {"id", "claim", "holds", "evidence"}
        assert f["holds"] is True, f
        assert f["evidence"].endswith(".")
    by = {f["id"]: f for f in found}
    assert "GA 96.0 vs 11.0" in by["F1"]["evidence"]
    # per seed proj+llm - llm: seed 0 95 - 65, seed 1 97 - 67: difference 30, no spread -> CI half-width 0
    assert by["F4"]["numbers"] == pytest.approx({"llm": 66.0, "proj+llm": 96.0, "difference": 30.0, "ci95": 0.0})
    assert "(difference 30.0 \u00b1 0.0)" in by["F4"]["evidence"] and by["F4"]["at"] == "budget"


def test_f1_does_not_hold_when_pretrained_keeps_mmbench(results_df):
    df = results_df.copy()
    df.loc[(df.scenario == "pretrained") & (df.split == "mmbench") & (df.request == 1), "relative"] = 100.0
    f = _by_id(df)["F1"]
    assert f["holds"] is False
    assert "0 of 3" in f["evidence"]


def test_f1_majority_and_diverged_rows(results_df):
    df = results_df.copy()
    mmb1 = (df.split == "mmbench") & (df.request == 1)
    # ga: pretrained keeps more than fine-tuned; ga_klr and npo still lower -> 2 of 3 holds
    df.loc[mmb1 & (df.scenario == "pretrained") & (df.method == "ga"), "relative"] = 100.0
    assert _by_id(df)["F1"]["holds"] is True
    # every pretrained mmbench measurement diverged -> no data
    df.loc[mmb1 & (df.scenario == "pretrained"), "status"] = "diverged"
    assert _by_id(df)["F1"]["holds"] is None


def test_f2_does_not_hold_without_erosion(results_df):
    df = results_df.copy()
    end = (df.scenario == "sustainability") & (df.request == 5) & df.split.isin(["retain", "mmbench"])
    df.loc[end, "relative"] = 99.5
    f = _by_id(df)["F2"]
    assert f["holds"] is False
    assert "0.5" in f["evidence"]


def test_f3_does_not_hold_when_images_resist(results_df):
    df = results_df.copy()
    img, txt = df.modality == "image", df.modality == "text"
    df.loc[img, "modality"], df.loc[txt, "modality"] = "text", "image"
    assert _by_id(df)["F3"]["holds"] is False


def test_f4_none_without_llm_target_and_false_when_reversed(results_df):
    no_llm = results_df[results_df.target != "llm"]
    f = _by_id(no_llm)["F4"]
    assert f["holds"] is None and "llm" in f["evidence"]
    df = results_df.copy()
    df.loc[(df.target == "llm") & (df.split == "mmbench") & (df.request == 1), "relative"] = 99.0
    assert _by_id(df)["F4"]["holds"] is False


def test_missing_scenarios_give_none(synth):
    only_ft = synth.make_results(scenarios=("finetuned",))
    by = _by_id(only_ft)
    assert by["F1"]["holds"] is None and "pretrained" in by["F1"]["evidence"]
    assert by["F2"]["holds"] is None and "sustainability" in by["F2"]["evidence"]
    assert by["F3"]["holds"] is True  # fine-tuned alone has text and image
    empty = only_ft.iloc[0:0]
    assert [f["holds"] for f in check_findings(empty)] == [None, None, None, None]
