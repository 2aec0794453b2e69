"""Probes of real forgetting: recovery arithmetic, halves, fact alignment, the route_all rule, name-only strings,
the relearn attack leaving the caller's model untouched, config errors, and one end-to-end run on the small world."""
import math

import pandas as pd
import pytest
import torch

from pulse.config import load_config
from pulse.data.records import MCQ, Person, encode_png
from pulse.errors import PulseError
from pulse.models.batches import Encoder, Sample
from pulse.protocol import probes as P

SMALL = "configs/mini/small.yaml"


def _mcq(answer_text, form="image", pid="p", index=0, question="What is the pet of this person?"):
    others = [x for x in ("cat", "dog", "owl", "eel", "fox") if x != answer_text][:3]
    return MCQ(question, dict(zip("ABCD", [answer_text, *others])), "A", form, pid, index)


# --- relearn arithmetic -----------------------------------------------------------------------------------------

def test_recovery_ratio_arithmetic():
    assert P.recovery_ratio(80.0, 30.0, 55.0) == pytest.approx(0.5)  # (55 − 30) / (80 − 30)
    assert P.recovery_ratio(80.0, 30.0, 80.0) == pytest.approx(1.0)
    assert P.recovery_ratio(80.0, 30.0, 20.0) == pytest.approx(-0.2)  # the attack made it worse
    assert P.recovery_ratio(60.0, 60.0, 70.0) is None  # nothing was unlearned: no ratio
    assert P.recovery_ratio(60.0, 70.0, 70.0) is None
    assert P.recovery_ratio(80.0, float("nan"), 50.0) is None


def test_relearn_halves_are_seeded_disjoint_and_ordered():
    people = [Person(f"{i:03d}", f"N{i}", None, {}, [], []) for i in range(7)]
    a, m = P.relearn_halves(people, 3)
    assert (len(a), len(m)) == (3, 4)
    assert {p.id for p in a} | {p.id for p in m} == {p.id for p in people} and not {p.id for p in a} & {p.id for p in m}
    assert [p.id for p in a] == sorted(p.id for p in a)
    assert P.relearn_halves(people, 3) == (a, m)
    assert P.relearn_halves(people, 4) != (a, m)
    with pytest.raises(PulseError, match="at least 2"):
        P.relearn_halves(people[:1], 0)


def _pred(pid, form, index, correct):
    return {"person_id": pid, "form": form, "index": index, "prediction": "A", "correct": correct}


def test_relearn_rows_let_the_report_compute_the_recovery_ratio():
    # measured person m: 4 image questions; before 4/4, after unlearning 1/4, after attack 3/4 -> ratio (75−25)/(100−25)
    meta = {"scenario": "finetuned", "method": "ga", "target": "proj+llm", "seed": 0, "request": 1}
    stage = lambda k: [_pred("m", "image", i, i < k) for i in range(4)] + [_pred("t", "text", 0, True)]  # noqa: E731
    payload = {"probe": "relearn", "meta": meta, "halves": {"attacked": ["t"], "measured": ["m"]},
               "training": {"status": "ok"}, "before": stage(4), "after_unlearning": stage(1), "after_attack": stage(3)}
    rows = pd.DataFrame(P.probe_rows(payload))
    assert set(rows.probe) == {"relearn"} and set(rows["at"]) == {"budget"} and rows.step.isna().all()
    get = lambda req, split: rows[(rows.request == req) & (rows.split == split) & (rows.modality == "all")]  # noqa
    before, unl = get(0, "relearn_measured").accuracy.item(), get(1, "relearn_measured").accuracy.item()
    att = get(1, "relearn_measured_attacked").accuracy.item()
    assert (before, unl, att) == (100.0, 25.0, 75.0)
    assert P.recovery_ratio(before, unl, att) == pytest.approx(50 / 75)
    assert get(1, "relearn_measured_attacked").relative.item() == 75.0  # against the same half before unlearning
    assert get(1, "relearn_trained_attacked").n.item() == 1
    assert math.isnan(rows[(rows.split == "relearn_measured") & (rows.modality == "text")].accuracy.iloc[0])


# --- routes -----------------------------------------------------------------------------------------------------

def test_name_only_question_strings():
    f = P.name_only_question
    assert f("What is the occupation of this person?", "Ada Roe") == "What is the occupation of Ada Roe?"
    assert f("Which job does the person in this picture hold?", "Ada Roe") == "Which job does Ada Roe hold?"
    assert f("What is this person's hobby?", "Ada Roe") == "What is Ada Roe's hobby?"
    assert f("This person was born where?", "Ada Roe") == "Ada Roe was born where?"
    assert f("How old is he?", "Ada Roe") == "Question about Ada Roe. How old is he?"  # no person phrase
    assert f("What is the personality of this person?", "Ada Roe") == "What is the personality of Ada Roe?"
    assert f("What is the pet of this person?", "Ada Roe", "prefix") == \
        "Question about Ada Roe. What is the pet of this person?"


def test_align_facts_by_correct_option_text():
    image = [_mcq("cat", index=0), _mcq("Paris", index=1), _mcq("chess", index=2)]
    text = [_mcq("chess", "text", index=0), _mcq("cat", "text", index=1), _mcq("red", "text", index=2)]
    test = Person("p", "N", None, {}, [_mcq("Paris", index=0), _mcq("cat", index=1), _mcq("CAT ", index=2)], [])
    facts = P.align_facts(Person("p", "N", None, {}, image, text), test)
    # cat: text 1; test 1 and 2 both match, neither is index 0 -> the lowest (1). Paris: no text partner -> None
    assert facts == [{"index": 0, "text": 1, "test_set": 1}, {"index": 1, "text": None, "test_set": 0},
                     {"index": 2, "text": 0, "test_set": None}]
    # same index preferred when it matches
    same = P.align_facts(Person("p", "N", None, {}, image, [_mcq("cat", "text", index=0)]), None)
    assert same[0] == {"index": 0, "text": 0, "test_set": None}


def test_route_all_counts_a_fact_known_if_any_route_is_right():
    by_route = {"image": {"a": False, "b": False, "c": True, "d": False},
                "text": {"a": False, "b": False, "c": False, "d": True},
                "test_set": {"a": False, "b": False, "c": False},  # d has no Test_Set partner
                "name_only": {"a": False, "b": True, "c": False, "d": False}}
    assert P.route_all(by_route) == {"a": False, "b": True, "c": True}


def test_routes_rows_use_the_same_facts_for_every_route():
    meta = {"scenario": "finetuned", "method": "npo", "target": "proj+llm", "seed": 1, "request": 1}
    after = {"image": [["x", 0, False], ["x", 1, True], ["y", 0, False], ["y", 1, False]],
             "text": [["x", 0, False], ["x", 1, False], ["y", 0, True], ["y", 1, False]],
             "test_set": [["x", 0, False], ["x", 1, False], ["y", 0, False]],  # (y, 1) missing: dropped everywhere
             "name_only": [["x", 0, True], ["x", 1, False], ["y", 0, False], ["y", 1, True]]}
    request0 = {r: [[p, i, True] for p, i, _ in v] for r, v in after.items()}
    payload = {"probe": "routes", "meta": meta, "routes": list(P.ROUTES), "splits": {"unlearn": ["x", "y"]},
               "request0": request0, "after": after}
    rows = pd.DataFrame(P.probe_rows(payload))
    r1 = rows[rows.request == 1].set_index("probe")
    assert list(r1.index) == list(P.ROUTE_PROBES)
    assert (r1.n == 3).all() and (r1.modality == "all").all()
    want = {"route_image": 100 / 3, "route_text": 100 / 3, "route_test_set": 0.0, "route_name_only": 100 / 3,
            "route_all": 100.0}  # x0: name_only; x1: image; y0: text -> every kept fact known somewhere
    for probe, acc in want.items():
        assert r1.loc[probe, "accuracy"] == pytest.approx(acc, abs=1e-4)
    assert (rows[rows.request == 0].accuracy == 100.0).all()


# --- the relearn attack leaves the caller's model as it was -----------------------------------------------------

def test_attack_restores_the_callers_model_bitwise():
    from pulse.mini.model import TinyConfig, build_tiny_llava
    from PIL import Image

    texts = ["USER: <image>\nWhat is the pet of this person? ASSISTANT: cat", "USER: Who is Ada? ASSISTANT: a pilot"]
    lm = build_tiny_llava(texts, TinyConfig(vision_hidden=32, text_hidden=32, text_layers=1, text_ffn=64,
                                            vocab_size=300))
    model = lm.model.to(torch.bfloat16)  # half precision: the attack holds its LoRA target in fp32 meanwhile
    model.eval()
    model.model.language_model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    image = encode_png(Image.new("RGB", (32, 32), (200, 30, 30)))
    samples = [Sample("USER: <image>\nWhat is the pet of this person? ASSISTANT:", "cat", image),
               Sample("USER: Who is Ada? ASSISTANT:", "a pilot")] * 2
    cfg = load_config(SMALL, ["probes.relearn.steps=3", "probes.relearn.lr=0.05", "probes.relearn.batch_size=2"])
    recipe = P.attack_recipe(cfg, 7)
    assert (recipe.steps, recipe.lr, recipe.batch_size, recipe.schedule, recipe.target) == \
        (3, 0.05, 2, "constant", "proj+llm")
    assert (recipe.lora_rank, recipe.clip, recipe.mask, recipe.eos) == (8, 1.0, "answer", True)  # unlearn's
    enc = Encoder(lm.processor, dtype=torch.bfloat16)
    with P.attacked(model, enc, samples, recipe) as (attacked_model, info):
        assert info["status"] == "ok" and info["steps"] == 3
        assert any("lora_" in n for n, _ in attacked_model.named_parameters())
        lora_b = [p for n, p in attacked_model.named_parameters() if "lora_B" in n]
        assert any(p.abs().sum() > 0 for p in lora_b)  # it trained (B starts at zero)
    assert type(model).__name__ == "LlavaForConditionalGeneration" and not model.training
    assert "peft_config" not in vars(model)
    assert not any(getattr(m, "_pulse_fp32", None) for m in model.modules())
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k].view(torch.int16), v.view(torch.int16)), k
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


# --- config -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("probes.run=[relearn, leak]", "probes.run: unknown value 'leak'"),
    ("probes.scenarios=[finetuned, finetuned]", "probes.scenarios: duplicate"),
    ("probes.relearn.steps=0", "probes.relearn.steps"),
    ("probes.relearn.lr=-1", "probes.relearn.lr"),
    ("probes.relearn.target=everything", "probes.relearn.target"),
    ("probes.quant_bits=[8, 8]", "probes.quant_bits"),
    ("probes.quant_bits=[1]", "probes.quant_bits"),
    ("probes.name_only=guess", "probes.name_only"),
    ("probes.relearn.epochs=2", "unknown key 'epochs'"),
])
def test_bad_probe_config_is_a_one_line_error(override, message):
    with pytest.raises(PulseError, match=message) as e:
        load_config(SMALL, [override])
    assert "\n" not in str(e.value)


# --- end to end on the small mini world -------------------------------------------------------------------------

@pytest.mark.slow
def test_probes_end_to_end_on_the_small_world(small_world, tmp_path, monkeypatch):
    """The "unlearned" model here is the request-0 model itself, so every probe's request-R rows must equal its
    request-0 rows — which also shows the relearn attack (run first) left the model as it was."""
    from pulse.protocol.runner import Context
    from pulse.protocol.scenarios import mcq_samples, split_people

    cfg = load_config(SMALL, ["scenarios=[finetuned]", "probes.run=[relearn,routes,quant]", "probes.relearn.steps=2", "probes.quant_bits=[4]"])
    ctx = Context(cfg, tmp_path, log=lambda *_: None)
    unlearn, retain = split_people(ctx.fictional, cfg.scenario.finetuned.unlearn, 0, "finetuned")
    sets = {"unlearn": (unlearn, 1), "retain": (retain, 1)}
    lm, enc = ctx.model("finetuned")
    ref = {"mcq": {"predictions": P._evaluate_sets(ctx, lm, enc, sets)}}
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    meta = {"scenario": "finetuned", "method": "ga", "target": "proj+llm", "seed": 0, "request": 1}
    folder = tmp_path / "cells" / "finetuned" / "ga__proj+llm__seed0"
    payloads = P.run_probes(ctx, "finetuned", 0, lm, enc, sets, ref, meta, lambda ps, tpl: mcq_samples(ps, tpl),
                            cell=ref, folder=folder)
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in before.items())
    assert set(payloads) == {"relearn", "routes", "quant"} and (folder / "probes.json").is_file()
    for name in ("probe_control", "probe_routes_request0", "probe_quant_request0"):
        assert (tmp_path / "cells" / "finetuned" / f"{name}__seed0.json").is_file()

    rows = pd.DataFrame(P.cell_rows(folder))
    assert set(rows.probe) == {"relearn", *P.ROUTE_PROBES, "quant4"}
    assert set(rows.split[rows.probe == "quant4"]) == {"unlearn", "retain"}
    for probe in [*P.ROUTE_PROBES, "quant4"]:
        r = rows[rows.probe == probe].sort_values(["split", "modality"])
        assert r[r.request == 0].accuracy.tolist() == r[r.request == 1].accuracy.tolist(), probe
    routes = rows[(rows.request == 1) & rows.probe.str.startswith("route_")].pivot(index="split", columns="probe",
                                                                                   values="accuracy")
    for route in P.ROUTES:
        assert (routes["route_all"] >= routes[f"route_{route}"]).all()
    # mini world: the substituted name-only question is the text question's string (with the image MCQ's options)
    for person in unlearn + retain:
        for fact in payloads["routes"]["facts"][person.id]:
            image_q = person.image_mcqs[fact["index"]].question
            assert P.name_only_question(image_q, person.name) == person.text_mcqs[fact["text"]].question
    relearn = payloads["relearn"]
    assert relearn["recovery_ratio"]["all"] is None  # nothing was unlearned
    assert relearn["halves"]["attacked"] + relearn["halves"]["measured"] != []
    control = pd.DataFrame(P.control_rows(tmp_path, "finetuned", 0))
    assert set(control.method) == {"never_learned"} and set(control.request) == {0}
    assert set(control.split) == {"relearn_measured", "relearn_trained", "relearn_measured_attacked",
                                  "relearn_trained_attacked"}

    # a rerun loads probes.json and evaluates nothing
    monkeypatch.setattr(P, "evaluate_mcq", lambda *a, **k: pytest.fail("re-evaluated"))
    assert P.run_probes(ctx, "finetuned", 0, lm, enc, sets, ref, meta, None, cell=ref, folder=folder) == payloads
