"""MMBench official LLaVA-1.5 prompt, VLMEvalKit-order answer extraction and CircularEval (mmbench.md §2-4)."""
import json

import pytest

from pulse.data.records import MMBenchItem
from pulse.errors import PulseError
from pulse.eval.mmbench import (
    INSTRUCTION,
    SYSTEM_VICUNA,
    circular_eval,
    extract_answer,
    extract_answers,
    likelihood_note,
    mmbench_message,
    official_llava_prompt,
    subset_groups,
)

# mmbench.md §2, the resulting prompt, verbatim
DOC_TEMPLATE = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER: <image>\n"
    "{hint}\n"
    "{question}\n"
    "A. {A}\n"
    "B. {B}\n"
    "C. {C}\n"
    "D. {D}\n"
    "Answer with the option's letter from the given choices directly. ASSISTANT:"
)


def item(index, answer="A", options=None, hint=None, question="What is shown?", cat="c1", l2="L1"):
    options = options or {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    return MMBenchItem(index=index, question=question, hint=hint, options=options, answer=answer,
                       category=cat, l2_category=l2, image=b"")


def test_constants():
    assert INSTRUCTION == "Answer with the option's letter from the given choices directly."
    assert SYSTEM_VICUNA.startswith("A chat between") and SYSTEM_VICUNA.endswith("questions.")
    assert "64.3" in likelihood_note and "67.7" in likelihood_note


def test_official_prompt_with_hint():
    it = item(0, hint="The picture was taken at noon.", options={"A": "cat", "B": "dog", "C": "bird", "D": "fish"})
    expected = DOC_TEMPLATE.format(hint="The picture was taken at noon.", question="What is shown?",
                                   A="cat", B="dog", C="bird", D="fish")
    assert official_llava_prompt(it) == expected


def test_official_prompt_without_hint():
    it = item(0)
    expected = DOC_TEMPLATE.replace("{hint}\n", "").format(question="What is shown?",
                                                          A="cat", B="dog", C="bird", D="fish")
    assert official_llava_prompt(it) == expected
    assert official_llava_prompt(item(0, hint="nan")) == expected  # NaN read as text is no hint
    assert official_llava_prompt(item(0, hint="")) == expected


def test_three_option_row_has_no_d_line():
    it = item(5, options={"A": "red", "B": "green", "C": "blue"})
    assert mmbench_message(it) == ("What is shown?\nA. red\nB. green\nC. blue\n"
                                   "Answer with the option's letter from the given choices directly.")
    assert "\nD." not in official_llava_prompt(it)


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("B", "B"),
        ("B.", "B"),
        (" C\n", "C"),
        ("(C) red", "C"),
        ("[D]", "D"),
        ("**A**", "A"),
        ("The answer is A", "A"),
        ("The correct answer is (D).", "D"),
        ("Answer: B", "B"),
        ("A or B", "Z"),
        ("red", "A"),
        ("It is red.", "A"),
        ("RED", "A"),
        ("red or blue", "Z"),
        ("purple", "Z"),
        ("I cannot answer", "Z"),
        ("Cannot determine the answer from the image.", "Z"),
        ("Sorry, I can't help with images of people yet.", "Z"),
        ("Z", "Z"),
        ("", "Z"),
        (None, "Z"),
        ("E", "Z"),  # not an option
        # letter far from the end is rejected (VLMEvalKit), then the "answer is" pattern rescues it
        ("The answer is B because the sky looks blue today", "B"),
        ("B because of how it looks in the picture", "Z"),
        ("B because the sky looks blue today", "B"),  # text match on "blue" (short enough)
        # long prediction: option-text matching refuses to guess
        ("the colour that appears most often in this long description is red, clearly", "Z"),
    ],
)
def test_extract_answer(prediction, expected):
    options = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
    assert extract_answer(prediction, options) == expected


def test_extract_answer_respects_present_options():
    two = {"A": "yes", "B": "no"}
    assert extract_answer("C", two) == "Z"
    assert extract_answer("B", two) == "B"
    assert extract_answer("no", two) == "B"


def test_extract_answer_does_not_mutate_options():
    options = {"A": "Red", "B": "Blue"}
    extract_answer("red", options)
    assert options == {"A": "Red", "B": "Blue"}


def rows():
    """3 groups: g1 four rotations all right; g2 four rotations, one wrong; g3 two options, both right."""
    items = [
        item(1, "A", cat="color", l2="perception"),
        item(1_000_001, "B", cat="color", l2="perception"),
        item(2_000_001, "C", cat="color", l2="perception"),
        item(3_000_001, "D", cat="color", l2="perception"),
        item(2, "B", cat="count", l2="perception"),
        item(1_000_002, "C", cat="count", l2="perception"),
        item(2_000_002, "D", cat="count", l2="perception"),
        item(3_000_002, "A", cat="count", l2="perception"),
        item(3, "A", {"A": "yes", "B": "no"}, cat="logic", l2="reasoning"),
        item(1_000_003, "B", {"A": "no", "B": "yes"}, cat="logic", l2="reasoning"),
    ]
    preds = {1: "A", 1_000_001: "B", 2_000_001: "C", 3_000_001: "D",
             2: "B", 1_000_002: "C", 2_000_002: "Z", 3_000_002: "A",
             3: "A", 1_000_003: "B"}
    return items, preds


def test_circular_eval_by_hand():
    items, preds = rows()
    r = circular_eval(items, preds)
    assert r["groups"] == 3 and r["rows"] == 10
    assert r["circular"] == pytest.approx(200 / 3)  # 66.67
    assert r["vanilla"] == pytest.approx(100.0)  # rotation-0 rows 1, 2, 3 all right
    assert r["vanilla_all_rows"] == pytest.approx(90.0)
    assert r["z_share"] == pytest.approx(10.0)
    assert r["per_category"] == {
        "color": {"circular": 100.0, "vanilla": 100.0, "n": 1},
        "count": {"circular": 0.0, "vanilla": 100.0, "n": 1},
        "logic": {"circular": 100.0, "vanilla": 100.0, "n": 1},
    }
    assert r["per_l2_category"]["perception"] == {"circular": 50.0, "vanilla": 100.0, "n": 2}
    assert r["per_l2_category"]["reasoning"] == {"circular": 100.0, "vanilla": 100.0, "n": 1}


def test_circular_eval_wrong_original_and_json_keys():
    items, preds = rows()
    preds[3] = "B"  # the 2-option group's original now wrong
    r = circular_eval(items, {str(k): v for k, v in preds.items()})  # keys as read back from JSON
    assert r["circular"] == pytest.approx(100 / 3)
    assert r["vanilla"] == pytest.approx(200 / 3)
    assert r["vanilla_all_rows"] == pytest.approx(80.0)
    json.dumps(r)  # plain JSON-able


def test_circular_eval_errors():
    items, preds = rows()
    with pytest.raises(PulseError, match="test split"):
        circular_eval([item(7, answer=None)], {7: "A"})
    missing = dict(preds)
    del missing[2_000_002]
    with pytest.raises(PulseError, match="2000002"):
        circular_eval(items, missing)
    with pytest.raises(PulseError, match="rotation-0"):
        circular_eval(items[1:4], preds)
    with pytest.raises(PulseError, match="twice"):
        circular_eval(items + items[:1], preds)
    with pytest.raises(PulseError):
        circular_eval([], {})


def test_extract_answers_then_score():
    items, _ = rows()
    gens = {it.index: f"{it.answer}." for it in items}
    gens[2_000_002] = "I cannot answer"
    letters = extract_answers(items, gens)
    assert letters[2_000_002] == "Z" and letters[1] == "A"
    assert circular_eval(items, letters)["circular"] == pytest.approx(200 / 3)


def test_subset_groups_keeps_whole_groups():
    items, _ = rows()
    sub = subset_groups(items, 2, seed=0)
    assert sub == subset_groups(items, 2, seed=0)
    assert len({it.group for it in sub}) == 2
    for g in {it.group for it in sub}:
        assert [it for it in sub if it.group == g] == [it for it in items if it.group == g]
    assert subset_groups(items, None, seed=0) == items
    assert subset_groups(items, 99, seed=0) == items
