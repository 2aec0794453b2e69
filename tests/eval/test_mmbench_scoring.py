"""MMBench official LLaVA-1.5 prompt, VLMEvalKit-order answer extraction and CircularEval (mmbench.md §2-4)."""
import json

import pytest

from pulse.data.records import MMBenchItem
from pulse.errors import PulseError
from pulse.eval.mmbench import (
    INSTRUCTION,
    SYSTEM_VICUNA,
    circular_eval,
    evaluate_mmbench,
    extract_answer,
    extract_answers,
    likelihood_note,
    mmbench_message,
    official_llava_prompt,
    subset_groups,
)
from pulse.models.templates import LLAVA_15

# mmbench.md §2, the resulting prompt, verbatim
DOC_TEMPLATE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: <image>\n"
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
    # LLaVA llava/conversation.py conv_vicuna_v1 (haotian-liu/LLaVA @ c121f043), verbatim
    assert SYSTEM_VICUNA == ("A chat between a curious user and an artificial intelligence assistant. "
                             "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    assert SYSTEM_VICUNA == LLAVA_15.system
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
    # LLaVA model_vqa_mmbench.is_none: 'nan' / 'none' in any case is no hint
    for absent in ("nan", "", "none", "None", "NONE", "NaN"):
        assert official_llava_prompt(item(0, hint=absent)) == expected, absent
    assert official_llava_prompt(item(0, hint="none.")).count("none.\nWhat is shown?") == 1


def test_three_option_row_has_no_d_line():
    it = item(5, options={"A": "red", "B": "green", "C": "blue"})
    assert mmbench_message(it) == ("What is shown?\nA. red\nB. green\nC. blue\n"
                                   "Answer with the option's letter from the given choices directly.")
    assert "\nD." not in official_llava_prompt(it)


# --- answer extraction: VLMEvalKit's own functions as the oracle ---------------------------------------------
# Copied verbatim from open-compass/VLMEvalKit, vlmeval/utils/matching_util.py at commit
# e8e78f05f3080fe28154f2130321f17951c3be94 (`_VERBOSE_ANSWER_RE`, `can_infer_option`, `can_infer_text`,
# `can_infer`); only the imports and the logger are supplied here. Under `exact_matching` (no judge model),
# `extract_answer_from_item` (vlmeval/dataset/utils/multiple_choice.py) returns `can_infer(...)` or else 'Z'.
import copy as cp  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import string  # noqa: E402

logger = logging.getLogger("vlmevalkit-oracle")

_VERBOSE_ANSWER_RE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")

def can_infer_option(answer, choices):
    verbose = os.environ.get('VERBOSE', 0)
    # Choices is a dictionary
    if 'Failed to obtain answer via API' in answer:
        return False

    reject_to_answer = [
        "Sorry, I can't help with images of people yet.", "I can't process this file.",
        "I'm sorry, but without the image provided", 'Cannot determine the answer'
    ]
    for err in reject_to_answer:
        if err in answer:
            return 'Z'

    def count_choice(splits, choices, prefix='', suffix=''):
        cnt = 0
        for c in choices:
            if prefix + c + suffix in splits:
                cnt += 1
        return cnt

    answer_mod = cp.copy(answer)
    chars = '.()[],:;!*#{}'
    for c in chars:
        answer_mod = answer_mod.replace(c, ' ')

    splits = [x.strip() for x in answer_mod.split()]
    count = count_choice(splits, choices)

    if count == 1:
        for ch in choices:
            if 'A' in splits and len(splits) > 3 and verbose:
                logger.info(f'A might be a quantifier in the string: {answer}.')
                return False
            if ch in splits and splits.index(ch) > (len(splits) - 5):
                return ch
    elif count == 0 and count_choice(splits, {'Z', ''}) == 1:
        return 'Z'

    match = _VERBOSE_ANSWER_RE.search(answer or "")
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()

    return False

def can_infer_text(answer, choices):
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    assert isinstance(choices, dict)
    for k in choices:
        assert k in string.ascii_uppercase
        choices[k] = str(choices[k]).lower()
    cands = []
    for k in choices:
        if choices[k] in answer:
            cands.append(k)
    if len(cands) == 1:
        return cands[0]
    return False

def can_infer(answer, choices):
    answer = str(answer)
    copt = can_infer_option(answer, choices)
    return copt if copt else can_infer_text(answer, choices)


def oracle(prediction, options):
    return can_infer(prediction, dict(options)) or "Z"  # can_infer_text lower-cases its dict in place


COLORS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
YESNO = {"A": "yes", "B": "no"}
ANIMALS = {"A": "A dog", "B": "A cat", "C": "A bird"}
SCENES = {"A": "The man is riding a bicycle", "B": "The man is walking", "C": "The woman is running",
          "D": "Nobody is in the image"}
COUNTS = {"A": "1", "B": "2", "C": "3", "D": "4"}

# (model output, options): outputs as LLaVA-style models give them, and the edge cases of each rule
TABLE = [
    # bare letters and letter punctuation
    ("A", COLORS), ("B", COLORS), ("C", COLORS), ("D", COLORS), ("A.", COLORS), ("B.", COLORS), ("C.", COLORS),
    ("(B)", COLORS), ("(D)", COLORS), ("[A]", COLORS), ("B)", COLORS), ("B) blue", COLORS), ("C: green", COLORS),
    ("**A**", COLORS), ("{C}", COLORS), ("D!", COLORS), ("A;", COLORS), ("#B", COLORS), (" C\n", COLORS),
    ("A. red", COLORS), ("(C) green", COLORS), ("D. yellow", COLORS), ("B, blue", COLORS),
    # lower case letters: not option letters for the letter rule
    ("a", COLORS), ("b.", COLORS), ("(c)", COLORS), ("d", COLORS), ("the answer is b", COLORS),
    # "answer is X" and "answer: X"
    ("The answer is C", COLORS), ("The answer is C.", COLORS), ("The correct answer is (D).", COLORS),
    ("The correct answer is **B**. Here's why: the sky looks blue in this picture today", COLORS),
    ("answer: D", COLORS), ("Answer: B", COLORS), ("Answer: (C) green", COLORS), ("Answer:A", COLORS),
    ("The answer is a red apple", COLORS), ("The answer is E", COLORS), ("My answer is A and B", COLORS),
    ("The answer is B because the sky looks blue today", COLORS),
    ("I think the answer is A, although C is also possible when you look at the picture", COLORS),
    ("answer is\nD", COLORS), ("The answer isn't A", COLORS), ("Final answer is: C", COLORS),
    ("The answer is a blue whale", COLORS), ("answer: c", COLORS),
    ("the correct answer is c because it is green and not red or blue", COLORS),
    # two letters, letters far from the end
    ("A and B", COLORS), ("A or B", COLORS), ("A, B, C", COLORS), ("Either C or D", COLORS),
    ("B because of how it looks in the picture", COLORS), ("B because the sky looks blue today", COLORS),
    ("C is correct because it is green", COLORS), ("Option A is wrong and option B is right", COLORS),
    ("The colour in the picture is B", COLORS), ("It is B, the blue one", COLORS),
    # option texts
    ("red", COLORS), ("Red", COLORS), ("RED", COLORS), ("It is red.", COLORS), ("red or blue", COLORS),
    ("purple", COLORS), ("greenish", COLORS), ("yellow.", COLORS), ("The colour is yellow", COLORS),
    ("the colour that appears most often in this long description is red, clearly", COLORS),
    ("yes", YESNO), ("No", YESNO), ("Yes, it is.", YESNO), ("no, not really", YESNO), ("B", YESNO), ("C", YESNO),
    ("yes and no", YESNO), ("I do not know", YESNO), ("Nope", YESNO),
    # "A" as an article next to option letters
    ("A dog", ANIMALS), ("A cat", ANIMALS), ("B", ANIMALS), ("A bird is flying in the sky", ANIMALS),
    ("There is a cat in the image", ANIMALS), ("A cat. B", ANIMALS), ("The image shows a dog", ANIMALS),
    ("C. A bird", ANIMALS), ("D", ANIMALS),
    # long option texts and long answers
    ("The man is walking", SCENES), ("The man is walking down the street", SCENES),
    ("In the image, the man is riding a bicycle along a road next to some trees and a river at sunset", SCENES),
    ("Nobody is in the image.", SCENES), ("B. The man is walking", SCENES),
    # numbers
    ("2", COUNTS), ("There are 3 apples.", COUNTS), ("C. 3", COUNTS), ("12", COUNTS), ("4 or 1", COUNTS),
    # refusals, API failure, Z, empty
    ("Sorry, I can't help with images of people yet.", COLORS), ("Cannot determine the answer", COLORS),
    ("I'm sorry, but without the image provided I cannot answer. A", COLORS),
    ("I can't process this file.", COLORS), ("Failed to obtain answer via API.", COLORS),
    ("Failed to obtain answer via API: red", COLORS), ("I cannot answer", COLORS),
    ("Z", COLORS), ("Z.", COLORS), ("None of the options (Z)", COLORS), ("Z or A", COLORS), ("", COLORS),
    ("   ", COLORS), ("\n", COLORS), ("None", COLORS), ("E", COLORS), ("A" * 3, COLORS),
]


def test_table_is_large_and_exercises_every_outcome():
    assert len(TABLE) >= 80 and len({(p, tuple(o.items())) for p, o in TABLE}) == len(TABLE)
    outcomes = {oracle(p, o) for p, o in TABLE}
    assert outcomes == {"A", "B", "C", "D", "Z"}


@pytest.mark.parametrize("prediction, options", TABLE, ids=[repr(p)[:40] for p, _ in TABLE])
def test_extract_answer_equals_vlmevalkit(prediction, options, monkeypatch):
    monkeypatch.delenv("VERBOSE", raising=False)  # VLMEvalKit's default: the "quantifier A" log switch is off
    assert extract_answer(prediction, options) == oracle(prediction, options)


@pytest.mark.parametrize(
    "prediction, options, expected",
    [
        ("B", COLORS, "B"),
        ("(C) green", COLORS, "C"),
        ("a", COLORS, "Z"),  # lower-case letter: no letter rule; "a" contains no option text
        ("The answer is a red apple", COLORS, "A"),  # (?i) "answer is a" -> A, a quirk of VLMEvalKit's regex
        ("The answer is a blue whale", COLORS, "A"),  # the same regex wins before the text rule ("blue")
        ("the answer is b", COLORS, "B"),
        ("The answer is B because the sky looks blue today", COLORS, "B"),  # B not in the last 4 tokens; regex
        ("B because of how it looks in the picture", COLORS, "Z"),  # too far from the end, too long for text
        ("C is correct because it is green", COLORS, "C"),  # letter too early; text "green" (32 <= 36 chars)
        ("A or B", COLORS, "Z"),
        ("red or blue", COLORS, "Z"),
        ("It is red.", COLORS, "A"),
        ("Yes, it is.", YESNO, "Z"),  # 11 characters > 2 x (3 + 2): too long for the text rule
        ("Yes.", YESNO, "A"),
        ("A dog", ANIMALS, "A"),
        ("A cat. B", ANIMALS, "B"),  # letters A and B: no letter; text: only "a cat" occurs (8 <= 32 chars)
        ("None of the options (Z)", COLORS, "Z"),
        ("Failed to obtain answer via API: red", COLORS, "A"),  # option rule gives up; text rule still runs
        ("I'm sorry, but without the image provided I cannot answer. A", COLORS, "Z"),  # refusal first
        (None, COLORS, "Z"),  # str(None) = "None": no rule matches
    ],
)
def test_extract_answer_by_hand(prediction, options, expected):
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


# --- evaluate_mmbench on a tiny random LLaVA: records, decoding length, EOS --------------------------------------
def tiny_items():
    """Group 1: 4 options, original answer B (rotations D, C, A... via rotate); group 2: yes/no, answer A."""
    from PIL import Image

    from pulse.data.mmbench import rotate
    from pulse.data.records import encode_png

    out = []
    for g, (opts, ans, colour) in enumerate([(dict(COLORS), "B", (200, 0, 0)), (dict(YESNO), "A", (0, 0, 200))], 1):
        image = encode_png(Image.new("RGB", (32, 32), colour))
        for k in range(len(opts)):
            o, a = rotate(opts, ans, k)
            out.append(MMBenchItem(g + k * 1_000_000, "What colour is it?", None, o, a, "color", "L1", image))
    return out


@pytest.fixture(scope="module")
def tiny_lm():
    from pulse.mini.model import TinyConfig, build_tiny_llava

    xs = TinyConfig(vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1, text_ffn=128, vocab_size=300)
    texts = [official_llava_prompt(it) + " B" for it in tiny_items()]
    return build_tiny_llava(texts, xs)


class Forced:
    """A forward hook on lm_head that dictates greedy tokens: `step(call, row) -> token id or None` (None: EOS is
    forbidden, any other token may win). Counts the forward passes (one per generated token)."""

    def __init__(self, lm, step):
        self.calls, self.step, self.eos = 0, step, lm.tokenizer.eos_token_id
        self.handle = lm.model.lm_head.register_forward_hook(self)

    def __call__(self, module, args, out):
        self.calls += 1
        out = out.clone()
        for row in range(out.shape[0]):
            token = self.step(self.calls, row)
            if token is None:
                out[row, -1, self.eos] = -1e4
            else:
                out[row, -1, token] = 1e4
        return out


def test_generate_scoring_records_and_stop_at_eos(tiny_lm):
    items = tiny_items()
    tok = tiny_lm.tokenizer
    forced = tok(" B", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    hook = Forced(tiny_lm, lambda call, row: forced[min(call, len(forced)) - 1])
    try:
        res = evaluate_mmbench(tiny_lm, items, scoring="generate", batch_size=4 * len(items))
    finally:
        hook.handle.remove()
    assert hook.calls == len(forced)  # default max_new_tokens 1024, but every row ended at EOS
    assert [r["index"] for r in res["records"]] == [it.index for it in items]
    for r, it in zip(res["records"], items):
        assert r["prompt"] == tiny_lm.template.prompt(mmbench_message(it), image=True) and "<image>" in r["prompt"]
        assert r["output"] == "B" and r["prediction"] == "B" and res["predictions"][str(it.index)] == "B"
    # all rows answer B: group 1's original (answer B) right, its rotations wrong; group 2's original (A) wrong
    assert res["circular"] == 0.0 and res["vanilla"] == 50.0
    assert res["vanilla_all_rows"] == pytest.approx(100 * 2 / 6)


def test_batched_generation_stops_once_every_row_hit_eos(tiny_lm):
    from pulse.eval.generate import generate
    from pulse.models.batches import Encoder

    items = tiny_items()[:3]
    eos = tiny_lm.tokenizer.eos_token_id
    hook = Forced(tiny_lm, lambda call, row: eos if call >= row + 1 else None)  # row r ends at step r + 1
    try:
        texts = generate(tiny_lm.model, Encoder(tiny_lm.processor),
                         [official_llava_prompt(it) for it in items], [[it.image] for it in items],
                         max_new_tokens=1024, batch_size=3)
    finally:
        hook.handle.remove()
    assert hook.calls == 3 and len(texts) == 3
    hook = Forced(tiny_lm, lambda call, row: eos if row == 0 else None)  # one row never ends: the cap holds
    try:
        generate(tiny_lm.model, Encoder(tiny_lm.processor), [official_llava_prompt(it) for it in items],
                 [[it.image] for it in items], max_new_tokens=7, batch_size=3)
    finally:
        hook.handle.remove()
    assert hook.calls == 7


def test_likelihood_records_are_labelled(tiny_lm):
    items = tiny_items()
    res = evaluate_mmbench(tiny_lm, items, scoring="likelihood")
    assert "never" in res["note"]
    for r, it in zip(res["records"], items):
        out = r["output"]
        assert out["scoring"] == "likelihood" and list(out["option_logps"]) == list(it.options)
        assert out["chosen"] == r["prediction"] == max(out["option_logps"], key=out["option_logps"].get)
    json.dumps(res["records"])


def test_cli_writes_one_json_line_per_row(tiny_lm, tmp_path, capsys):
    from pulse.cli import main
    from pulse.data.mmbench import write_mmbench
    from pulse.models.load import save_model

    save_model(tiny_lm, tmp_path / "model")
    items = tiny_items()
    write_mmbench(tmp_path / "dev.tsv", items)
    out = tmp_path / "preds.jsonl"
    assert main(["mmbench", "--model", str(tmp_path / "model"), "--tsv", str(tmp_path / "dev.tsv"),
                 "--scoring", "generate", "--max-new-tokens", "2", "--predictions", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    lines = out.read_text().splitlines()
    assert len(lines) == len(items) == summary["rows"]
    recs = [json.loads(x) for x in lines]
    assert [r["index"] for r in recs] == [it.index for it in items]
    for r, it in zip(recs, items):
        assert set(r) == {"index", "prompt", "output", "prediction"} and r["prompt"].count("<image>") == 1
        assert r["prediction"] == extract_answer(r["output"], it.options)


def test_mmbench_pads_images_to_square_like_llava(monkeypatch):
    """image="pad" hands the model LLaVA-1.5's expand2square image; "processor" the raw one; others are errors."""
    from types import SimpleNamespace

    import pytest as _pytest
    from PIL import Image

    from pulse.data.records import MMBenchItem, decode_image, encode_png
    from pulse.errors import PulseError
    from pulse.eval import generate as gen_mod
    from pulse.eval import mmbench as mmb_mod
    from pulse.models.templates import LLAVA_15

    wide = encode_png(Image.new("RGB", (8, 4), (200, 0, 0)))
    item = MMBenchItem(index=0, question="q", hint=None, options={"A": "x", "B": "y"}, answer="A", category="c",
                       l2_category="l2", image=wide)
    seen = []

    def fake_generate(model, enc, prompts, images, **kw):
        seen.extend(decode_image(imgs[0]).size for imgs in images)
        return ["A"] * len(prompts)

    monkeypatch.setattr(gen_mod, "generate", fake_generate)
    proc = SimpleNamespace(image_processor=SimpleNamespace(image_mean=[0.5, 0.5, 0.5]))
    lm = SimpleNamespace(model=None, processor=proc, template=LLAVA_15, scoring="generate")
    enc = object()
    assert mmb_mod.evaluate_mmbench(lm, [item], enc=enc)["circular"] == 100.0
    assert mmb_mod.evaluate_mmbench(lm, [item], enc=enc, image="processor")["circular"] == 100.0
    assert seen == [(8, 8), (8, 4)]
    with _pytest.raises(PulseError, match="pad or processor"):
        mmb_mod.evaluate_mmbench(lm, [item], enc=enc, image="square")
