"""The retrained oracle: the mini world's fine-tuning rerun without the forget people, the truth ratio and forget
quality against hand-computed values, its rows in results.csv, and learned-before (unlearn_known) rows."""
import json
import math

import pandas as pd
import pytest
from safetensors.numpy import load_file

from pulse.config import MiniConfig, load_config
from pulse.errors import PulseError
from pulse.mini.build import load_world_data
from pulse.mini.cache import build_config
from pulse.mini.oracle import build_oracle, kept_people
from pulse.protocol.oracle import forget_quality, truth_ratios

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def pred(pid, index, scores, answer="A", form="image"):
    return {"person_id": pid, "form": form, "index": index, "answer": answer, "scores": scores}


def test_truth_ratio_is_mean_wrong_over_correct_probability():
    got = truth_ratios([pred("p", 0, [-1.0, -2.0, -3.0, -4.0]), pred("p", 1, [-2.0, -1.0], answer="B")],
                       {"p"}, ("image",))
    # log((e^-2 + e^-3 + e^-4) / 3) - (-1) and log(e^-2 / 1) - (-1)
    assert got["p:image:0"] == pytest.approx(math.log((math.exp(-2) + math.exp(-3) + math.exp(-4)) / 3) + 1)
    assert got["p:image:0"] == pytest.approx(-1.691006, abs=1e-6)
    assert got["p:image:1"] == pytest.approx(-1.0)


def test_forget_quality_is_the_ks_p_value_on_common_questions():
    same = [pred("p", i, [0.0, -float(i)]) for i in range(1, 4)]
    assert forget_quality(same, same, {"p"}, ("image",)) == (1.0, 3)
    # ratios -1, -2, -3 against +9, +10, +11 (no overlap): KS D = 1, exact two-sided p = 2 / C(6, 3) = 0.1
    far = [pred("p", i, [-10.0 - i, 0.0]) for i in range(1, 4)]
    p, n = forget_quality(same, far, {"p"}, ("image",))
    assert n == 3 and p == pytest.approx(0.1)
    no_scores = [{k: v for k, v in q.items() if k != "scores"} for q in same]
    p, n = forget_quality(no_scores, same, {"p"}, ("image",))
    assert n == 0 and math.isnan(p)


def test_oracle_of_everyone_is_the_worlds_fine_tuned_model(small_world, tmp_path):
    cfg = build_config(MiniConfig(size="small"))
    keep = kept_people(small_world, [])
    assert keep == sorted(p.id for p in load_world_data(small_world)["fictional"])
    build_oracle(small_world, keep, tmp_path / "oracle", cfg, log=lambda *_: None)
    ours = load_file(tmp_path / "oracle" / "model.safetensors")
    world = load_file(small_world / "models" / "finetuned" / "model.safetensors")
    assert ours.keys() == world.keys()
    assert all((ours[k] == world[k]).all() for k in world)
    with pytest.raises(PulseError, match="not in the world's Full_Set"):
        kept_people(small_world, ["nobody"])


BEYOND = ["scenario.finetuned.oracle=build", "eval.mia=true", "methods=[ga]", "table3_targets=[]"]


@pytest.fixture(scope="module")
def beyond_run(small_world, tmp_path_factory):
    """The small config's three scenarios with the retrained oracle and membership inference (the mini default's
    measurements beyond accuracy)."""
    from pulse.cli import main
    out = tmp_path_factory.mktemp("beyond") / "run"
    assert main(["run", str(ROOT / "configs" / "mini" / "small.yaml"), "--out", str(out), "--no-report", *BEYOND]) == 0
    return out


def test_results_hold_the_oracle_and_learned_before_rows(beyond_run):
    df = pd.read_csv(beyond_run / "results.csv")
    cfg = load_config(ROOT / "configs" / "mini" / "small.yaml", BEYOND)
    oracle = df[df.method == "oracle"]
    assert set(oracle.scenario) == {"finetuned"} and set(oracle.request) == {0} and set(oracle.target) == {"none"}
    assert set(oracle.split) == {"unlearn", "retain", "mmbench", "mmbench_vanilla", "unlearn_sel", "unlearn_held",
                                 "retain_sel", "retain_held"}
    gap = df[df.metric == "oracle_gap"]
    fq = df[df.metric == "forget_quality"]
    assert set(gap.scenario) == set(fq.scenario) == {"finetuned"}
    assert set(gap.split) == {"unlearn", "retain"} and set(fq.split) == {"unlearn"}
    assert fq.accuracy.between(0, 1).all() and (fq.n > 0).all()
    # the gap is the cell's accuracy minus the oracle's, on the same split and modality
    acc = df[(df.metric == "accuracy") & (df.scenario == "finetuned") & (df.method == "ga")
             & (df.target == "proj+llm") & (df.request == 1)].set_index(["split", "modality"])["accuracy"]
    orc = oracle[oracle.metric == "accuracy"].set_index(["split", "modality"])["accuracy"]
    assert {m for m in oracle.metric if m != "accuracy"} == {f"mia_auc_{a}" for a in ("loss", "zlib", "mink", "minkpp")}
    g = gap[(gap.method == "ga") & (gap.target == "proj+llm") & (gap.request == 1)].set_index(["split", "modality"])
    for k in g.index:
        assert g.loc[k, "accuracy"] == pytest.approx(acc[k] - orc[k], abs=1e-3)
    # membership inference: the fictional scenarios against held-out people, PrivLeak where the oracle is;
    # the pre-trained scenario in its relative form only
    mia = df[df.metric.str.startswith("mia_auc_")]
    assert set(mia[mia.scenario != "pretrained"].split) == {"unlearn"}
    assert set(mia[mia.scenario == "pretrained"].split) == {"unlearn_vs_retain"} and mia.accuracy.between(0, 1).all()
    assert set(df[df.metric == "privleak"].scenario) == {"finetuned"}
    # learned before: request 0 answers every known item, the count is that of its correct answers
    known = df[(df.split == "unlearn_known") & (df.metric == "accuracy")]
    assert (known[known.request == 0].accuracy == 100).all()
    r0 = df[(df.request == 0) & (df.split == "unlearn") & (df.modality == "all") & (df.metric == "accuracy")
            & (df.method == cfg.methods[0]) & (df.target == "proj+llm")].set_index("scenario")
    k0 = known[(known.request == 0) & (known.modality == "all") & (known.method == cfg.methods[0])
               & (known.target == "proj+llm")].set_index("scenario")
    for scenario in r0.index:
        assert k0.loc[scenario, "n"] == round(r0.loc[scenario, "accuracy"] * r0.loc[scenario, "n"] / 100)


def test_building_an_oracle_needs_the_mini_world(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(PulseError, match="oracle: build retrains on a mini world only"):
        load_config(ROOT / "configs" / "paper" / "finetuned.yaml",
                    [f"data.mllmu={tmp_path / 'x'}", f"data.mmbench={tmp_path / 'x'}",
                     f"model.pretrained={tmp_path / 'x'}", f"model.finetuned={tmp_path / 'x'}",
                     "scenario.finetuned.oracle=build"])


def test_open_tasks_rows_and_the_oracle_stop_rule(small_world, tmp_path):
    from pulse.cli import main
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "configs" / "mini" / "small.yaml"), "--out", str(out), "--no-report",
                 "scenarios=[finetuned]", "methods=[ga]", "table3_targets=[]", "eval.tasks=[mcq,cloze,generation]",
                 "scenario.finetuned.oracle=build",
                 "eval.every=2", "unlearn.stop={rule: oracle, margin: 10.0, max_steps: 6}"]) == 0
    df = pd.read_csv(out / "results.csv")
    # MLLMU-Bench's cloze (%) and generation (0-1) per split and modality, at request 0 and after the request
    cloze = df[(df.metric == "cloze") & (df.method == "ga")]
    assert set(cloze.split) == {"unlearn", "retain", "unlearn_known"} and set(cloze.request) == {0, 1}
    # known before unlearning: request 0 answers every known cloze item
    k0 = cloze[(cloze.split == "unlearn_known") & (cloze.request == 0) & (cloze.n > 0)]
    assert (k0.accuracy == 100).all()
    # against the oracle: this evaluation's cloze accuracy / ROUGE-L minus the oracle's, same split and modality
    oracle = df[(df.method == "oracle")].set_index(["split", "modality", "metric"])["accuracy"]
    mine = df[(df.method == "ga") & (df.request == 1)].set_index(["split", "modality", "metric"])["accuracy"]
    for metric in ("cloze", "rougeL"):
        for split in ("unlearn", "retain"):
            gap = mine[(split, "all", f"oracle_gap_{metric}")]
            assert gap == pytest.approx(mine[(split, "all", metric)] - oracle[(split, "all", metric)], abs=1e-3)
    measured = cloze[cloze.n > 0]  # a split with no item of a form (unlearn_known) has no value
    assert measured.accuracy.between(0, 100).all() and cloze[cloze.n == 0].accuracy.isna().all()
    assert (cloze[(cloze.modality == "all") & (cloze.split != "unlearn_known")].n > 0).all()
    gen = df[df.metric.isin(["rouge1", "rouge2", "rougeL", "bleu"])]
    ga_gen = gen[gen.method == "ga"]
    assert ga_gen[ga_gen.n > 0].accuracy.between(0, 1).all() and len(ga_gen) == 4 * len(cloze)
    assert set(ga_gen.split) == set(cloze.split)
    request1 = json.loads((out / "cells" / "finetuned" / "ga__proj+llm__seed0" / "request1.json").read_text())
    assert set(request1["mcq"]["open"]) == {"cloze", "generation"}
    # the matched-forgetting target is the oracle's accuracy on D_unlearn's selection half, plus the margin
    ref = json.loads((out / "cells" / "finetuned" / "reference__seed0.json").read_text())
    orc = json.loads((out / "cells" / "finetuned" / "oracle__seed0.json").read_text())
    assert ref["rule"] == "the retrained oracle on D_unlearn's selection half" and ref["model"] == orc["model"]
    sel = set(ref["questions"])
    picked = [p["correct"] for p in orc["mcq"]["predictions"] if f"{p['person_id']}:{p['form']}:{p['index']}" in sel]
    assert ref["reference"] == pytest.approx(100.0 * sum(picked) / len(picked))
    assert ref["target"] == pytest.approx(ref["reference"] + 10.0)


def test_the_oracle_stop_rule_needs_an_oracle():
    with pytest.raises(PulseError, match="stop.rule oracle needs a retrained oracle"):
        load_config(ROOT / "configs" / "mini" / "small.yaml", ["eval.every=2", "unlearn.stop={rule: oracle}"])
