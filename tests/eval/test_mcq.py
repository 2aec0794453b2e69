"""MCQ evaluation on the (small, really trained) mini world: both scoring modes, predictions kept."""
from pulse.data.mllmu import read_people
from pulse.data.mmbench import read_mmbench
from pulse.eval.mcq import evaluate_mcq
from pulse.eval.mmbench import evaluate_mmbench
from pulse.models.load import load_model


def test_likelihood_scoring_learned_fictional_people(small_world):
    lm = load_model(small_world / "models" / "finetuned")
    people = read_people(small_world / "mllmu", "Full_Set")
    res = evaluate_mcq(lm, people)
    assert res.n == {"image": 5 * len(people), "text": 5 * len(people)}
    assert len(res.predictions) == 10 * len(people)
    assert all(len(p["scores"]) == 4 for p in res.predictions)
    # chance is 25%: the fine-tuned tiny model has learned the people in both forms
    assert res.accuracy["image"] > 50 and res.accuracy["text"] > 50
    sub = res.for_people([people[0].id])
    assert sub.n == {"image": 5, "text": 5}


def test_generate_scoring_faithful_protocol(small_world):
    lm = load_model(small_world / "models" / "finetuned")
    people = read_people(small_world / "mllmu", "forget_15")
    res = evaluate_mcq(lm, people, scoring="generate", demo_people=1, demo_seed=3)
    demo = res.demo_ids["image"]
    assert len(demo) == 1 and demo == res.demo_ids["text"]
    # the demo person's questions are excluded from scoring
    assert {p["person_id"] for p in res.predictions}.isdisjoint(demo)
    assert res.n["image"] == 5 * (len(people) - 1)
    assert all(p["prediction"] in (None, "A", "B", "C", "D") for p in res.predictions)
    again = evaluate_mcq(lm, people, scoring="generate", demo_people=1, demo_seed=3)
    assert again.predictions == res.predictions  # seeded and greedy: reproducible


def test_mmbench_both_scorings(small_world):
    lm = load_model(small_world / "models" / "pretrained")
    items = read_mmbench(small_world / "mmbench.tsv")
    like = evaluate_mmbench(lm, items)
    assert like["scoring"] == "likelihood" and "non-standard" in like["note"].lower() or "never" in like["note"]
    assert like["groups"] == len({i.group for i in items}) and like["rows"] == len(items)
    assert 0 <= like["circular"] <= like["vanilla"] + 1e-9 or like["circular"] <= 100
    gen = evaluate_mmbench(lm, items[:12], scoring="generate", max_new_tokens=4)
    assert gen["scoring"] == "generate" and set(gen["predictions"]) == {str(i.index) for i in items[:12]}


def test_shared_prefix_scoring_equals_full_sequences(small_world):
    """The KV-cache-sharing scorer gives the same option log-probs as scoring every option as a full sequence."""
    from pulse.eval.likelihood import option_logps, option_logps_full
    from pulse.eval.mmbench import mmbench_message
    from pulse.models.batches import Encoder

    lm = load_model(small_world / "models" / "finetuned")
    enc = Encoder(lm.processor)
    items = read_mmbench(small_world / "mmbench.tsv")[:20]  # 2-, 3- and 4-option rows
    qs = [(lm.template.prompt(mmbench_message(it), True), it.image, list(it.options.values())) for it in items]
    people = read_people(small_world / "mllmu", "Full_Set")[:2]
    qs += [(lm.template.prompt(m.question, m.form == "image"), p.image if m.form == "image" else None,
            list(m.options.values())) for p in people for m in p.image_mcqs + p.text_mcqs]
    shared, full = option_logps(lm.model, enc, qs, batch_size=16), option_logps_full(lm.model, enc, qs)
    assert [len(s) for s in shared] == [len(f) for f in full]
    for s, f in zip(shared, full):
        assert s == __import__("pytest").approx(f, abs=1e-4)


def test_shared_demo_prefix_generation_equals_full_prompts(small_world):
    """Generating after a cached demo prefix gives the same text as generating from the full faithful prompts."""
    from pulse.eval import prompts as P
    from pulse.eval.generate import generate, generate_shared_prefix
    from pulse.models.batches import Encoder

    lm = load_model(small_world / "models" / "finetuned")
    enc = Encoder(lm.processor)
    people = sorted(read_people(small_world / "mllmu", "Full_Set"), key=lambda p: p.id)[:4]
    for form in ("image", "text"):
        demos, demo_imgs = P.demo_mcqs(people[:1], form), P.demo_images(people[:1], form)
        mcqs = P.scored_mcqs(people, form, [people[0].id], demos)
        q_imgs = [[next(p.image for p in people if p.id == m.person_id)] if form == "image" else [] for m in mcqs]
        shared = generate_shared_prefix(lm.model, enc, "".join(P.demo_string(d, form) for d in demos), demo_imgs,
                                        [P.mcq_prompt(m, []) for m in mcqs], q_imgs, max_new_tokens=6,
                                        batch_size=4, stop_at_first_char=False)
        full = generate(lm.model, enc, [P.mcq_prompt(m, demos) for m in mcqs],
                        [demo_imgs + q for q in q_imgs], max_new_tokens=6, batch_size=4)
        assert shared == full
