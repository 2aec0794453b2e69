"""MLLMU-Bench faithful MCQ prompts, demos, exclusion and first-character parsing (mllmu_bench.md §9.3-9.5)."""
import pytest

from pulse.data.records import MCQ, Person
from pulse.errors import PulseError
from pulse.eval.prompts import (
    answer_settled,
    demo_images,
    demo_mcqs,
    format_options,
    likelihood_prompt_parts,
    mcq_images,
    mcq_prompt,
    parse_mcq_answer,
    scored_mcqs,
    select_demo_people,
)

OPTS = {"A": "Paris", "B": "Rome", "C": "Oslo", "D": "Lima"}
JOBS = {"A": "cook", "B": "pilot", "C": "nurse", "D": "poet"}


def mcq(form="image", q="Where does this person live?", answer="B", pid="p1", index=0, options=OPTS):
    return MCQ(question=q, options=dict(options), answer=answer, form=form, person_id=pid, index=index)


def person(pid, n=5, image=b"img-"):
    img = image + pid.encode() if image is not None else None
    return Person(
        id=pid,
        name=f"Name {pid}",
        image=img,
        biography={},
        image_mcqs=[mcq("image", f"{pid} image q{i}?", "A", pid, i) for i in range(n)],
        text_mcqs=[mcq("text", f"{pid} text q{i}?", "C", pid, i) for i in range(n)],
    )


def test_format_options_key_order():
    assert format_options(OPTS) == "A: Paris\nB: Rome\nC: Oslo\nD: Lima"
    assert format_options({"B": "x", "A": "y"}) == "B: x\nA: y"


def test_image_prompt_zero_shot():
    expected = (
        "USER: <image>\nWhere does this person live?\nA: Paris\nB: Rome\nC: Oslo\nD: Lima\n"
        "Just give ONE letter representing the answer directly.\nASSISTANT:"
    )
    assert mcq_prompt(mcq("image"), []) == expected


def test_text_prompt_zero_shot():
    expected = (
        "USER:\nWhere does Ann live?\nA: Paris\nB: Rome\nC: Oslo\nD: Lima\n"
        "Just give ONE letter representing the answer directly.\nASSISTANT:"
    )
    assert mcq_prompt(mcq("text", q="Where does Ann live?"), []) == expected


def test_image_prompt_with_demos():
    demos = [
        mcq("image", "What is this person's job?", "C", "p9", 0, JOBS),
        mcq("image", "How old is this person?", "A", "p9", 1, {"A": "30", "B": "40", "C": "50", "D": "60"}),
    ]
    expected = (
        "USER: <image>\nQuestion: What is this person's job?\nA: cook\nB: pilot\nC: nurse\nD: poet\nCorrect Answer: C\n"
        "USER: <image>\nQuestion: How old is this person?\nA: 30\nB: 40\nC: 50\nD: 60\nCorrect Answer: A\n"
        "USER: <image>\nWhere does this person live?\nA: Paris\nB: Rome\nC: Oslo\nD: Lima\n"
        "Just give ONE letter representing the answer directly.\nASSISTANT:"
    )
    assert mcq_prompt(mcq("image"), demos) == expected


def test_text_prompt_with_demos():
    demos = [mcq("text", "What is Bob's job?", "D", "p9", 0, JOBS)]
    expected = (
        "USER:\nQuestion: What is Bob's job?\nA: cook\nB: pilot\nC: nurse\nD: poet\nCorrect Answer: D\n"
        "USER:\nWhere does Ann live?\nA: Paris\nB: Rome\nC: Oslo\nD: Lima\n"
        "Just give ONE letter representing the answer directly.\nASSISTANT:"
    )
    assert mcq_prompt(mcq("text", q="Where does Ann live?"), demos) == expected


def test_demo_form_must_match_query():
    with pytest.raises(PulseError, match="form"):
        mcq_prompt(mcq("image"), [mcq("text", pid="p9")])


def test_demo_images_one_per_question_then_query():
    people = [person("p9", n=5)]
    demos = demo_mcqs(people, "image")
    imgs = demo_images(people, "image")
    assert len(demos) == 5 and [d.index for d in demos] == [0, 1, 2, 3, 4]
    assert imgs == [b"img-p9"] * 5
    assert mcq_images(b"query", imgs) == [b"img-p9"] * 5 + [b"query"]
    assert mcq_prompt(mcq("image"), demos).count("<image>") == len(mcq_images(b"query", imgs))
    assert demo_images(people, "text") == []
    assert mcq_images(b"query", []) == [b"query"]


def test_demo_images_need_a_portrait():
    with pytest.raises(PulseError, match="p9"):
        demo_images([person("p9", image=None)], "image")


def test_select_demo_people_seeded_and_deterministic():
    ids = [f"p{i}" for i in range(25)]
    a = select_demo_people(ids, 1, seed=7)
    assert a == select_demo_people(ids, 1, seed=7)
    assert len(a) == 1 and a[0] in ids
    two = select_demo_people(ids, 2, seed=3)
    assert len(set(two)) == 2 and two == select_demo_people(ids, 2, seed=3)
    assert {tuple(select_demo_people(ids, 2, seed=s)) for s in range(20)} != {tuple(two)}  # seed matters
    assert select_demo_people(ids, 0, seed=7) == []
    with pytest.raises(PulseError):
        select_demo_people(ids[:1], 2, seed=0)
    with pytest.raises(PulseError):
        select_demo_people(ids, -1, seed=0)


def test_demo_people_excluded_from_scoring():
    people = [person(f"p{i}") for i in range(25)]
    demo_ids = select_demo_people([p.id for p in people], 1, seed=11)
    by_id = {p.id: p for p in people}
    demos = demo_mcqs([by_id[i] for i in demo_ids], "image")
    for form in ("image", "text"):
        kept = scored_mcqs(people, form, demo_ids)
        assert len(kept) == 24 * 5  # forget_5: 120 scored per form
        assert all(m.person_id not in demo_ids for m in kept)
    exact = scored_mcqs(people, "image", demo_ids, demos)
    assert exact == scored_mcqs(people, "image", demo_ids)
    assert len(scored_mcqs(people, "text", [])) == 125  # zero-shot scores everyone


def test_exclusion_by_person_and_index():
    # a Test_Set person with 6 questions while only 5 were demos: the 6th (index 5) is still scored
    people = [person("p0", n=6), person("p1", n=6)]
    demos = demo_mcqs([person("p0", n=5)], "image")
    kept = scored_mcqs(people, "image", ["p0"], demos)
    assert [(m.person_id, m.index) for m in kept if m.person_id == "p0"] == [("p0", 5)]
    assert len(kept) == 7


@pytest.mark.parametrize(
    "decoded, expected",
    [
        ("USER: <image>\nQ?\nA: x\nB: y\nC: z\nD: w\nJust give ONE letter ... directly.\nASSISTANT: B", "B"),
        ("ASSISTANT: b) Rome", "B"),
        ("ASSISTANT:C", "C"),
        (" D", "D"),
        ("A", "A"),
        ("ASSISTANT: The answer is B", None),  # faithful: first character T is no option key
        ("ASSISTANT: (B)", None),
        ("ASSISTANT: E", None),
        ("ASSISTANT:   ", None),
        ("", None),
        ("ASSISTANT: B\nUSER: next ASSISTANT: C", "B"),  # piece between first and second ASSISTANT:
    ],
)
def test_parse_mcq_answer(decoded, expected):
    assert parse_mcq_answer(decoded, OPTS) == expected


def test_parse_mcq_answer_continuation_only():
    assert parse_mcq_answer(" B", "ABCD", continuation=True) == "B"
    # the model generated a new turn: official (on prompt + continuation) reads the part before it
    assert parse_mcq_answer(" B\nUSER: hi ASSISTANT: C", "ABCD", continuation=True) == "B"
    assert parse_mcq_answer("ASSISTANT: C", "ABCD", continuation=True) is None
    assert parse_mcq_answer(" c", ["A", "B"], continuation=True) is None  # not an option key


def test_likelihood_prompt_parts():
    q, opts = likelihood_prompt_parts(mcq("image", options={"A": "x", "B": "y", "C": "z", "D": "w"}))
    assert q == "Where does this person live?"
    assert opts == ["x", "y", "z", "w"]


# ---------------------------------------------------------------- early stop agrees with eval.py's parse


def eval_py_parse(generated_text, options):
    """MLLMU-Bench eval.py `evaluate_classification`, the two parse lines verbatim (commit 0e3098e)."""
    assistant_response = generated_text.split("ASSISTANT:")[1].strip() if "ASSISTANT:" in generated_text else generated_text.strip()  # noqa: E501
    predicted_answer = assistant_response[0].upper() if assistant_response and assistant_response[0].upper() in options else None  # noqa: E501
    return predicted_answer


PROMPT = mcq_prompt(mcq("text"), [mcq("text", "Demo q?", "C", "p0", 0)])
CONTINUATIONS = ["B", " B", "A.", "ASS", "ASSISTANT: B", "\nASSISTANT:", "Assistant", "", "ASSISTANT B", " a) x",
                 "\u3000B", "ASSISTANTASSISTANT:", "  \n  C", "The answer is B", "(B)", "ASSISTANT:ASSISTANT: B",
                 "AS", "A", "ASSISTANT", "ASSISTANT:", " ASSISTANT: C\nASSISTANT: D", "ASSISTANT:\n", "b", "d c",
                 "E", "\ufffdB", " \n", "ASSISTANT :B", "ASSISTANT: ", "AASSISTANT:", "\tASSISTANT:C", "ASSISTANTS"]


@pytest.mark.parametrize("cont, expected", [
    ("B", "B"), (" B", "B"), ("A.", "A"), ("ASS", "A"), ("ASSISTANT: B", None), ("\nASSISTANT:", None),
    ("Assistant", "A"), ("", None), ("ASSISTANT B", "A"), ("b) Rome", "B"), ("ASSISTANTS", "A"),
    ("ASSISTANT:ASSISTANT: B", None), ("The answer is B", None), ("\u3000C", "C"),
])
def test_eval_py_parse_on_prompt_plus_continuation(cont, expected):
    """What eval.py returns on the decoded prompt + continuation: the piece between the prompt's ASSISTANT: and a
    generated one, stripped; an empty piece is None (no exception); 'ASSISTANT: B' generated is None."""
    assert eval_py_parse(PROMPT + cont, OPTS) == expected
    assert parse_mcq_answer(PROMPT + cont, OPTS) == expected
    assert parse_mcq_answer(cont, OPTS, continuation=True) == expected


@pytest.mark.parametrize("cont", CONTINUATIONS)
def test_parse_matches_eval_py(cont):
    assert parse_mcq_answer(PROMPT + cont, OPTS) == eval_py_parse(PROMPT + cont, OPTS)
    assert parse_mcq_answer(cont, OPTS, continuation=True) == eval_py_parse(PROMPT + cont, OPTS)


def _check_sound(cont: str) -> None:
    full = eval_py_parse(PROMPT + cont, OPTS)
    for k in range(len(cont) + 1):
        if answer_settled(cont[:k]):  # stopping here must give the full decode's parse
            assert eval_py_parse(PROMPT + cont[:k], OPTS) == full, (cont, k)


@pytest.mark.parametrize("cont", CONTINUATIONS)
def test_early_stop_never_changes_the_parse(cont):
    _check_sound(cont)


def test_early_stop_random_continuations():
    import random
    rng = random.Random(0)
    pieces = ["ASSISTANT:", "ASS", "IST", "ANT", ":", "A", "S", " ", "\n", "B", "c", "x", "\u3000", "\ufffd", "T"]
    for _ in range(3000):
        _check_sound("".join(rng.choice(pieces) for _ in range(rng.randint(0, 8))))


@pytest.mark.parametrize("cont, settled", [
    ("", False), ("   \n", False), (" B", True), ("b", True), ("A", False), ("ASSISTANT", False),
    ("ASSISTANT:", True), (" ASS", False), ("Assistant", True), ("AX", True), ("ASSISTANTS", True),
    ("\ufffd", False), (" \ufffd", False), ("A\ufffd", True), ("(B)", True), ("ASSISTANT ", True),
])
def test_answer_settled_table(cont, settled):
    assert answer_settled(cont) is settled
