"""MLLMU-Bench's cloze and generation tasks: prompt strings as its eval.py (LLaVA branch) writes them, the demo
exclusion rule, scores checked against hand-computed ROUGE / BLEU / substring values, and both tasks run on the
small mini world's model."""
import math

import pytest

from pulse.data.records import OpenItem, Person
from pulse.eval.open_tasks import (cloze_correct, cloze_jobs, cloze_prompt, evaluate_cloze, evaluate_generation,
                                   generation_prompt, generation_scores)


def _person(pid, cloze=(), generation=(), image=b"png"):
    return Person(id=pid, name=pid, image=image, biography={}, image_mcqs=[], text_mcqs=[], cloze=list(cloze),
                  generation=list(generation))


def test_cloze_prompts_are_eval_py_strings():
    demo = [OpenItem("She was born in __.", "Paris", "image"), OpenItem("Her dog is __.", "Rex", "image")]
    query = OpenItem("He works as a __.", "baker", "image")
    assert cloze_prompt(query, demo) == (
        "USER:<image>\nShe was born in [Blank].\nPlease **ONLY** provide the correct answer that should replace the "
        "[Blank].\nCorrect Answer: Paris\n"
        "USER:<image>\nHer dog is [Blank].\nPlease **ONLY** provide the correct answer that should replace the "
        "[Blank].\nCorrect Answer: Rex\n"
        "USER: <image>\nHe works as a [Blank].\nPlease **ONLY** provide the correct answer that should replace the "
        "[Blank].\nASSISTANT:")
    text = OpenItem("This person studied __ at college.", "law", "text")
    assert cloze_prompt(text, [OpenItem("__ is her sister.", "Ann", "text")]) == (
        "USER:\n[Blank] is her sister.\nPlease **ONLY** provide the correct answer that should replace the [Blank]."
        "\nCorrect Answer: Ann\n"
        "USER:\nThis person studied [Blank] at college.\nPlease **ONLY** provide the correct answer that should "
        "replace the [Blank].\nASSISTANT:")
    assert cloze_prompt(text, []) == ("USER:\nThis person studied [Blank] at college.\nPlease **ONLY** provide the "
                                      "correct answer that should replace the [Blank].\nASSISTANT:")


def test_generation_prompts_are_eval_py_strings():
    assert generation_prompt(OpenItem("Where was this person born?", "In Paris.", "image")) == (
        "USER: <image>\nWhere was this person born?\nAnswer the question based on your trained knowledge in one "
        "sentence accurately in ENGLISH.\nASSISTANT: ")
    assert generation_prompt(OpenItem("Where was Ann Lee born?", "In Paris.", "text")) == (
        "USER: Where was Ann Lee born?\nAnswer the question based on your trained knowledge in one sentence in "
        "ENGLISH.\nASSISTANT:")


def test_demo_questions_are_not_scored_and_demo_images_come_first():
    demo = _person("D", cloze=[OpenItem("a __", "x", "image"), OpenItem("b __", "y", "text"),
                               OpenItem("c __", "z", "image")], image=b"demo")
    other = _person("P", cloze=[OpenItem("d __", "u", "image"), OpenItem("e __", "v", "text")], image=b"mine")
    jobs = cloze_jobs([demo, other], [demo])
    assert [(p.id, i) for p, i, *_ in jobs] == [("P", 0), ("P", 1)]  # every question of the demo person is a demo
    _, _, item, prompt, images = jobs[0]
    assert images == [b"demo", b"demo", b"mine"] and prompt.count("<image>") == 3
    assert jobs[1][4] == [] and "Correct Answer: y\n" in jobs[1][3] and "<image>" not in jobs[1][3]
    # a scored list whose demo record differs (Test_Set rows): only the demo indices of that form are skipped
    shorter = _person("D", cloze=[OpenItem("t __", "w", "text")])
    assert [(p.id, i) for p, i, *_ in cloze_jobs([shorter], [demo])] == [("D", 0)]


def test_scores_match_hand_computed_values():
    # rouge_score tokens (lower-cased, punctuation dropped, Porter stems): reference he wa born in pari in 1970 (7),
    # answer she wa born in pari (5): 4 common unigrams, 3 common bigrams of 5/4 and 7/6, LCS 4
    got = generation_scores("He was born in Paris in 1970.", "She was born in Paris.")
    f = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert got["rouge1"] == pytest.approx(f(4 / 5, 4 / 7)) and got["rougeL"] == pytest.approx(f(4 / 5, 4 / 7))
    assert got["rouge2"] == pytest.approx(f(3 / 4, 3 / 6))
    # BLEU on whitespace tokens ("Paris." != "Paris"): precisions 3/5, 2/4, 1/3, and 0/2 smoothed to 0.1/2;
    # brevity penalty exp(1 - 7/5)
    bleu = math.exp(1 - 7 / 5) * math.exp(sum(map(math.log, (3 / 5, 2 / 4, 1 / 3, 0.1 / 2))) / 4)
    assert got["bleu"] == pytest.approx(bleu)
    assert generation_scores("In Paris.", "")["bleu"] == 0.0
    assert cloze_correct("Paris", "She lives in paris now.") and not cloze_correct("New York", "new  york")


@pytest.mark.slow
def test_both_tasks_run_on_the_small_world(small_world):
    from pulse.data.mllmu import read_people
    from pulse.models.batches import Encoder
    from pulse.models.load import load_model

    lm = load_model(small_world / "models" / "finetuned")
    enc = Encoder(lm.processor)
    people = sorted(read_people(small_world / "mllmu", "Full_Set"), key=lambda p: p.id)[:4]
    cloze = evaluate_cloze(lm, people, enc=enc, demo_people=2, demo_seed=1, max_new_tokens=8)
    assert len(cloze.demo_ids) == 2
    scored = {p.id for p in people} - set(cloze.demo_ids)
    assert {r["person_id"] for r in cloze.records} == scored
    for form in ("image", "text"):
        rows = [r for r in cloze.records if r["form"] == form]
        assert cloze.n[form] == len(rows) > 0
        assert cloze.scores[form]["accuracy"] == pytest.approx(100 * sum(r["score"] for r in rows) / len(rows))
    assert all(r["score"] == float(r["ground_truth"].lower() in r["output"].lower()) for r in cloze.records)
    gen = evaluate_generation(lm, people[:2], enc=enc, max_new_tokens=8)
    assert len(gen.records) == sum(len(p.generation) for p in people[:2])
    keys = {"task", "person_id", "form", "index", "question", "ground_truth", "output", "score"}
    assert all(keys <= set(r) and r["score"] == r["rougeL"] for r in gen.records)
    assert gen.scores["text"]["bleu"] == pytest.approx(
        sum(r["bleu"] for r in gen.records if r["form"] == "text") / gen.n["text"])


@pytest.mark.slow
def test_pulse_eval_tasks_writes_one_record_per_item(small_world, tmp_path, capsys):
    import json

    from pulse.cli import main

    out = tmp_path / "predictions.json"
    assert main(["eval", "--model", str(small_world / "models" / "finetuned"), "--data", str(small_world / "mllmu"),
                 "--config", "Full_Set", "--tasks", "cloze,generation,mcq", "--predictions", str(out),
                 "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    records = json.loads(out.read_text())
    for task in ("cloze", "generation"):
        rows = [r for r in records if r["task"] == task]
        assert len(rows) == summary[task]["n"]["image"] + summary[task]["n"]["text"] > 0
        assert all({"person_id", "form", "index", "question", "ground_truth", "output", "score"} <= set(r)
                   for r in rows)
    assert sum(r["task"] == "mcq" for r in records) == summary["n"]["image"] + summary["n"]["text"]
    assert len(summary["cloze"]["demo_ids"]) == 2 and summary["generation"]["demo_ids"] == []
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "m", "--data", "d", "--config", "c", "--tasks", "mcq,essay"])
    assert e.value.code == 2
    assert "--tasks: expected a comma-separated list of mcq, cloze, generation, got 'mcq,essay'" in \
        capsys.readouterr().err
