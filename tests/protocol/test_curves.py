"""Question halves, the matched-forgetting stop rule, the never-learned reference, the sweep winner and the rows
of results.csv for curves and matched points — on hand-made data (no model)."""
import hashlib
import json
import math
from dataclasses import replace

import pandas as pd
import pytest

from pulse.config import load_config, to_dict
from pulse.data.records import MCQ, Person
from pulse.errors import PulseError
from pulse.protocol import curves as C
from pulse.protocol.halves import keys_of, question_half, question_halves, split_indices
from pulse.protocol.runner import COLUMNS, write_results
from pulse.unlearn.loop import batch_plan

from ..conftest import SMALL_CONFIG


def person(pid: str, n_image: int = 5, n_text: int = 5) -> Person:
    def mcqs(form, n):
        return [MCQ(f"q{i}", {"A": "a", "B": "b"}, "A", form, pid, i) for i in range(n)]
    return Person(pid, pid, None, {}, mcqs("image", n_image), mcqs("text", n_text))


# --- halves ---------------------------------------------------------------------------------------------------------

def test_halves_follow_the_sha256_rank_rule():
    """The first ceil(n/2) questions by sha256(f"{seed}:{pid}:{form}:{index}") are the selection half."""
    ranks = sorted(range(5), key=lambda i: hashlib.sha256(f"7:P01:text:{i}".encode()).hexdigest())
    assert {i for i, h in split_indices("P01", "text", list(range(5)), seed=7).items() if h == "sel"} \
        == set(ranks[:3])
    assert question_half("P01", "text", ranks[3], 5, seed=7) == "held"


def test_halves_balanced_deterministic_and_independent_of_the_other_people():
    people = [person(f"P{i:02d}") for i in range(20)] + [person("Q", n_image=4, n_text=1)]
    halves = question_halves(people, seed=0)
    assert halves == question_halves(people, seed=0)  # deterministic
    for p in people:
        for form in ("image", "text"):
            n = len(p.mcqs(form))
            sel = [k for k, h in halves.items() if k[0] == p.id and k[1] == form and h == "sel"]
            assert len(sel) == math.ceil(n / 2)  # 5 -> 3/2, 4 -> 2/2, 1 -> 1/0
    assert question_halves(people[:1], seed=0).items() <= halves.items()  # a person's halves do not move
    other = question_halves(people, seed=1)
    assert other != halves and sum(other[k] == "sel" for k in other) == sum(h == "sel" for h in halves.values())
    assert keys_of(people[:2], "sel") | keys_of(people[:2], "held") == set(question_halves(people[:2]))
    assert not keys_of(people[:2], "sel") & keys_of(people[:2], "held")


def test_compact_strings_round_trip_and_mark_unscored_questions():
    keys = C.half_keys([person("P1", 2, 1)], seed=0)["sel"] + C.half_keys([person("P1", 2, 1)], seed=0)["held"]
    assert sorted(keys) == ["P1:image:0", "P1:image:1", "P1:text:0"]
    preds = [{"person_id": "P1", "form": "image", "index": 1, "correct": True},
             {"person_id": "P1", "form": "text", "index": 0, "correct": False}]
    s = C.encode(["P1:image:0", "P1:image:1", "P1:text:0"], preds)
    assert s == "-10"
    assert C.decode(["P1:image:0", "P1:image:1", "P1:text:0"], s) == preds
    assert C.accuracy(preds) == 50.0 and math.isnan(C.accuracy([]))


# --- the stop rule --------------------------------------------------------------------------------------------------

def test_stop_rule_is_the_first_checkpoint_at_or_below_the_target():
    curve = [(0, 80.0), (2, 60.0), (4, 30.0), (6, 20.0), (8, 35.0)]
    assert C.first_reaching(curve, target=30.0, cap=8) == 4  # equality reaches it
    assert C.first_reaching(curve, target=29.9, cap=8) == 6
    assert C.first_reaching(list(reversed(curve)), target=29.9, cap=8) == 6  # order of the list is irrelevant
    assert C.first_reaching(curve, target=60.0, cap=8) == 2
    assert C.first_reaching(curve, target=90.0, cap=8) == 0  # already at the target before unlearning


def test_stop_rule_not_reached_within_the_cap():
    curve = [(0, 80.0), (2, 60.0), (4, 30.0), (6, 20.0)]
    assert C.first_reaching(curve, target=25.0, cap=5) is None  # reached only at 6, after the cap
    assert C.first_reaching(curve, target=10.0, cap=100) is None
    assert C.first_reaching([(0, float("nan")), (2, 10.0)], target=25.0, cap=5) == 2  # nothing measured: skipped


def test_stop_rule_compares_equal_ratios_as_equal():
    """23 of 55 correct against a reference of 7 of 22 + 10 points: the same number (23/55 = 7/22 + 1/10), though
    the float sum rounds below the float ratio."""
    acc, target = 100 * 23 / 55, 100 * 7 / 22 + 10.0
    assert acc > target
    assert C.first_reaching([(3, acc)], target=target, cap=3) == 3
    assert C.first_reaching([(3, acc + 1e-6)], target=target, cap=3) is None


# --- the never-learned reference ------------------------------------------------------------------------------------

def test_never_known_reference_chooses_on_held_and_measures_on_sel():
    """Selecting the lowest scorers and measuring them on the same questions is biased low; the rule picks people
    on the held-out half and scores the selection half."""
    def halves(pid):
        return {form: split_indices(pid, form, list(range(5)), 0) for form in ("image", "text")}

    def answers(pid, sel_ok: int, held_ok: int) -> dict[str, str]:
        """sel_ok of the 6 selection-half and held_ok of the 4 held-out questions right (image first)."""
        out, left = {}, {"sel": sel_ok, "held": held_ok}
        for form, h in halves(pid).items():
            chars = []
            for i in range(5):
                chars.append("1" if left[h[i]] > 0 else "0")
                left[h[i]] -= 1
            out[form] = "".join(chars)
        return out

    correct = {"A": answers("A", sel_ok=4, held_ok=0),  # lowest on held, fairly good on sel
               "B": answers("B", sel_ok=0, held_ok=3),  # lowest on sel, good on held: not "never known"
               "C": answers("C", sel_ok=2, held_ok=1),
               "D": answers("D", sel_ok=6, held_ok=4)}
    ref = C.never_known_reference(correct, ["A", "B", "C", "D"], n=2, seed=0)
    assert ref["people"] == ["A", "C"]
    assert ref["held_accuracy"] == {"A": 0.0, "C": 25.0}
    assert ref["n"] == 12 and ref["accuracy"] == pytest.approx(100 * 6 / 12)
    # the biased rule (choose and measure on all questions) would pick B and C and report 6/20 = 30 %
    with pytest.raises(ValueError, match="needs 5"):
        C.never_known_reference(correct, ["A", "B", "C", "D"], n=5, seed=0)


# --- the sweep winner -----------------------------------------------------------------------------------------------

def test_sweep_winner_best_generality_among_those_reaching_the_target():
    c = [{"name": "npo@lr=0.01", "reached": False, "retain_sel": 99.0, "mmbench_sub": 99.0},
         {"name": "npo@lr=0.001", "reached": True, "retain_sel": 70.0, "mmbench_sub": 40.0},
         {"name": "npo@lr=0.002", "reached": True, "retain_sel": 70.0, "mmbench_sub": 55.0},
         {"name": "npo@lr=0.003", "reached": True, "retain_sel": 70.0, "mmbench_sub": 55.0}]
    assert C.pick_winner(c) == "npo@lr=0.002"  # tie on retain -> MMBench subset -> grid order
    assert C.pick_winner(c[:1]) is None


# --- config ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    (["unlearn.stop.rule=never_learned"], "needs checkpoints"),
    (["unlearn.stop.rule=sometimes", "eval.every=2"], "unlearn.stop.rule must be"),
    (["unlearn.stop.rule=never_learned", "eval.every=2", "unlearn.stop.max_steps=50", "unlearn.schedule=linear"],
     "needs unlearn.schedule constant"),
    (["unlearn.stop.max_steps=-1"], "max_steps must be"),
    (["eval.every=-1"], "eval.every must be"),
    (["eval.curve_mmbench_groups=0"], "curve_mmbench_groups"),
    (["sweep={npo: {lr: [0.001]}}"], "set unlearn.stop.rule never_learned"),
    (["sweep={simnpo: {lr: [0.001]}}", "unlearn.stop.rule=never_learned", "eval.every=1"], "not one of the run"),
    (["sweep={npo: {beta2: [1]}}", "unlearn.stop.rule=never_learned", "eval.every=1"], "no parameter 'beta2'"),
    (["sweep={npo: {lr: []}}", "unlearn.stop.rule=never_learned", "eval.every=1"], "non-empty list"),
])
def test_bad_curve_settings_are_one_line_errors(overrides, message):
    with pytest.raises(PulseError, match=message) as e:
        load_config(SMALL_CONFIG, ["methods=[ga,npo]", *overrides])
    assert "\n" not in str(e.value)


def test_a_cap_above_the_budget_is_allowed_with_a_constant_schedule():
    cfg = load_config(SMALL_CONFIG, ["unlearn.stop.rule=never_learned", "eval.every=2", "unlearn.stop.max_steps=50",
                                     "methods=[ga,npo]", "sweep={npo: {lr: [1e-3, 2e-3], beta: [0.1, 1]}}"])
    assert cfg.unlearn.schedule == "constant" and cfg.sweep["npo"]["beta"] == [0.1, 1.0]
    from pulse.protocol.plan import plan as run_plan, variants
    assert list(variants(cfg)) == ["npo@lr=0.001+beta=0.1", "npo@lr=0.001+beta=1", "npo@lr=0.002+beta=0.1",
                                    "npo@lr=0.002+beta=1"]
    plan = run_plan(cfg)
    assert ("npo@lr=0.002+beta=1", "proj+llm") in plan["finetuned"]
    assert not any("@" in m for m, _ in plan["sustainability"])


def test_a_longer_plan_starts_with_the_budget_plan():
    """Training past the budget continues the same seeded batch stream: the first `budget` batches are unchanged."""
    r = load_config(SMALL_CONFIG).unlearn
    for recipe in (replace(r, budget="epochs", epochs=2, batch_size=3),
                   replace(r, budget="steps", steps=4, batch_size=3)):
        plan = batch_plan(10, recipe, [5, 0])
        longer = batch_plan(10, recipe, [5, 0], steps=len(plan) + 7)
        assert len(longer) == len(plan) + 7 and longer[:len(plan)] == plan


# --- results.csv rows -----------------------------------------------------------------------------------------------

def _preds(people, correct_keys):
    return [{"person_id": p.id, "form": f, "index": m.index, "answer": "A", "prediction": "A",
             "correct": C.key(p.id, f, m.index) in correct_keys} for p in people for f in ("image", "text")
            for m in p.mcqs(f)]


def test_write_results_rows_for_budget_checkpoints_and_matched(tmp_path):
    cfg = load_config(SMALL_CONFIG, ["scenarios=[finetuned]", "methods=[ga,npo]", "table3_targets=[]",
                                     "eval.every=2", "unlearn.stop.rule=never_learned"])
    (tmp_path / "manifest.json").write_text(json.dumps({"config": to_dict(cfg)}))
    unlearn, retain = [person("U1"), person("U2")], [person("R1")]
    halves = C.half_keys(unlearn + retain, 0)
    everything = set(halves["sel"]) | set(halves["held"])
    splits = {"unlearn": ["U1", "U2"], "retain": ["R1"]}
    mmb0 = {"circular": 50.0, "vanilla": 75.0, "groups": 4}
    cells = tmp_path / "cells" / "finetuned"
    cells.mkdir(parents=True)
    (cells / "request0__seed0.json").write_text(json.dumps({
        "mcq": {"predictions": _preds(unlearn + retain, everything)}, "mmbench": mmb0, "splits": splits,
        "halves": halves, "mmbench_sub": {"circular": 40.0, "vanilla": 80.0, "groups": 2}}))
    u_sel = [k for k in halves["sel"] if k.startswith("U")]
    after = everything - set(u_sel)  # every unlearn selection-half question forgotten, the rest kept
    n_sel = len(halves["sel"])
    curve = [{"step": 0, "sel": "1" * n_sel, "mmbench": {"circular": 40.0, "vanilla": 80.0, "groups": 2}},
             {"step": 2, "sel": C.encode(halves["sel"], _preds(unlearn + retain, after)),
              "mmbench": {"circular": 20.0, "vanilla": 40.0, "groups": 2}}]
    base = {"status": "ok", "mcq": {"predictions": _preds(unlearn + retain, after)},
            "mmbench": {"circular": 25.0, "vanilla": 50.0, "groups": 4}, "splits": splits, "halves": halves,
            "curve": curve}
    matched = {"reached": True, "status": "ok", "step": 2, "sel": curve[1]["sel"],
               "held": C.encode(halves["held"], _preds(unlearn + retain, everything)),
               "mmbench": {"circular": 30.0, "vanilla": 60.0, "groups": 4}, "target": 30.0, "cap": 6}
    for method, mt in (("ga", matched), ("npo", {"reached": False, "status": "not_reached", "step": 6, "cap": 6})):
        meta = {"scenario": "finetuned", "method": method, "target": "proj+llm", "seed": 0, "request": 1}
        (cells / f"{method}__proj+llm__seed0").mkdir()
        (cells / f"{method}__proj+llm__seed0" / "request1.json").write_text(
            json.dumps({**base, "meta": meta, "matched": mt}))
    df = write_results(tmp_path)
    assert list(df.columns) == COLUMNS == ["scenario", "method", "target", "seed", "request", "split", "modality",
                                           "metric", "accuracy", "relative", "status", "n", "probe", "step", "at"]
    assert set(df.metric) == {"accuracy"}
    assert (df.probe == "none").all()
    ga = df[df.method == "ga"]
    budget = ga[(ga["at"] == "budget") & (ga.request == 1)].set_index(["split", "modality"])
    assert set(budget.index.get_level_values(0)) == {"unlearn", "retain", "unlearn_sel", "unlearn_held",
                                                     "retain_sel", "retain_held", "mmbench", "mmbench_vanilla",
                                                     "unlearn_known", "unlearn_known_sel", "unlearn_known_held"}
    assert budget.loc[("unlearn_sel", "all"), "accuracy"] == 0.0 and budget.loc[("unlearn_sel", "all"), "n"] == 12
    assert budget.loc[("unlearn_held", "all"), "accuracy"] == 100.0 and budget.loc[("unlearn_held", "all"), "n"] == 8
    assert budget.loc[("unlearn", "all"), "accuracy"] == 40.0 and budget["step"].isna().all()
    r0 = ga[ga.request == 0]
    assert set(r0["at"]) == {"budget"} and "unlearn_held" in set(r0.split)
    ck = ga[ga["at"] == "checkpoint"].set_index(["step", "split", "modality"])
    assert set(ck.index.get_level_values(0)) == {0, 2}
    assert ck.loc[(2, "unlearn_sel", "all"), "accuracy"] == 0.0 and ck.loc[(0, "unlearn_sel", "all"), "accuracy"] == 100
    assert ck.loc[(2, "retain_sel", "image"), "accuracy"] == 100.0
    assert ck.loc[(2, "mmbench_sub", "all"), "relative"] == 50.0 and ck.loc[(2, "mmbench_sub", "all"), "n"] == 2
    assert ck.loc[(2, "mmbench_sub_vanilla", "all"), "accuracy"] == 40.0
    mt = ga[ga["at"] == "matched"].set_index(["split", "modality"])
    assert set(mt.step) == {2} and set(mt.status) == {"ok"}
    assert mt.loc[("unlearn_held", "all"), "accuracy"] == 100.0 and mt.loc[("unlearn_sel", "all"), "accuracy"] == 0
    assert mt.loc[("mmbench", "all"), "accuracy"] == 30.0 and mt.loc[("mmbench", "all"), "relative"] == 60.0
    nr = df[(df.method == "npo") & (df["at"] == "matched")]
    assert len(nr) == 6 * 3 + 2 and set(nr.status) == {"not_reached"} and set(nr.step) == {6}
    assert nr.accuracy.isna().all() and nr.n.isna().all()
    text = (tmp_path / "results.csv").read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    line = next(row for row in text.splitlines() if ",npo," in row and "not_reached" in row)
    assert line.endswith(",not_reached,,none,6,matched")  # empty accuracy, relative and n; integer step
    assert ",budget" in text and ".0,matched" not in text
    from pulse.report.load import read_results
    assert len(read_results(tmp_path / "results.csv")) == len(df)  # the report reads every new row type
    assert pd.read_csv(tmp_path / "results.csv").shape == df.shape


def test_pretrained_target_uses_celebrities_outside_the_selection(tmp_path):
    """The runner's pre-trained-knowledge target: never-known candidates are the celebrities outside unlearn and
    retain, as many chosen as D_unlearn has people; the target is the reference + margin, cached per seed."""
    from types import SimpleNamespace

    from pulse.protocol.baseline import People, stop_target

    cfg = load_config(SMALL_CONFIG, ["eval.every=1", "unlearn.stop.rule=never_learned", "unlearn.stop.margin=2.5"])
    from pulse.protocol.fingerprint import run_identity
    ctx = SimpleNamespace(cfg=cfg, out=tmp_path, identity=run_identity(cfg, {}, None, None, {}, None, {}, None))
    everything_right = {"image": "11111", "text": "11111"}
    nothing_right = {"image": "00000", "text": "00000"}
    correct = {"S1": everything_right, "S2": everything_right, "S3": everything_right,  # selected: never candidates
               "N1": nothing_right, "N2": everything_right, "N3": {"image": "10000", "text": "00001"}}
    unlearn, retain = [person("S1"), person("S2")], [person("S3")]
    people = People(unlearn, retain, None, "pretrained", None)
    got = stop_target(ctx, "pretrained", 0, people, {"correct": correct})
    halves = {f: split_indices("N3", f, list(range(5)), 0) for f in ("image", "text")}
    n3_sel = sum(halves[f][i] == "sel" for f, i in (("image", 0), ("text", 4)))
    assert got["people"] == ["N1", "N3"]  # the lowest on the held-out half (N2: 100 %)
    assert got["n"] == 12 and got["reference"] == pytest.approx(100 * n3_sel / 12)
    assert got["target"] == pytest.approx(got["reference"] + 2.5)
    assert json.loads((tmp_path / "cells" / "pretrained" / "reference__seed0.json").read_text()) == got
    assert stop_target(ctx, "sustainability", 0, people, None) is None  # fixed budget only
