"""MLLMU-Bench multiple-choice prompts, demos and answer parsing, faithful to the official `eval.py`.

Reference: /work/shared/reference/mllmu_bench.md §9.3-9.5. The strings below reproduce the official ones
character for character, odd spacing included (`USER:\\n` in the text form, a newline before `ASSISTANT:`,
`Question: ` in demos but not in the query). Everything here is model-free; the batched model-running code
calls these functions.

Faithful flow for one evaluated ID list and one form:

    demo_ids = select_demo_people(ids, n=1, seed=cfg_seed)          # record demo_ids in the manifest
    demo_people = [full_set[i] for i in demo_ids]                    # Full_Set, even in test mode
    demos = demo_mcqs(demo_people, form)                             # every question of the form
    for mcq in scored_mcqs(people, form, demo_ids, demos):           # demo questions are not scored
        prompt = mcq_prompt(mcq, demos)
        images = mcq_images(query_image, demo_images(demo_people, form))  # image form only
        pred = parse_mcq_answer(decoded, mcq.options)                # first character, official rule
"""
from __future__ import annotations

import random
from collections.abc import Iterable

from pulse.data.records import FORMS, MCQ, Person
from pulse.errors import PulseError

INSTRUCTION = "Just give ONE letter representing the answer directly."


def format_options(options: dict[str, str]) -> str:
    """Options one per line as `A: text`, in the dict's key order, joined by newlines (no trailing newline)."""
    return "\n".join(f"{key}: {value}" for key, value in options.items())


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise PulseError(f"MCQ form must be one of {FORMS}, got {form!r}")


def demo_string(demo: MCQ, form: str) -> str:
    """One few-shot demo: image `USER: <image>\\nQuestion: {q}\\n{options}\\nCorrect Answer: {letter}\\n`,
    text the same with `USER:\\n` in place of `USER: <image>\\n`."""
    _check_form(form)
    head = "USER: <image>\n" if form == "image" else "USER:\n"
    return f"{head}Question: {demo.question}\n{format_options(demo.options)}\nCorrect Answer: {demo.answer}\n"


def mcq_prompt(mcq: MCQ, demos: list[MCQ]) -> str:
    """The full official prompt for one MCQ: the demos concatenated (nothing in between), then the query.

    Image form: `<demos>USER: <image>\\n{question}\\n{options}\\n{INSTRUCTION}\\nASSISTANT:`.
    Text form:  `<demos>USER:\\n{question}\\n{options}\\n{INSTRUCTION}\\nASSISTANT:`.
    The form is the query's (`mcq.form`); every demo must have the same form. With image demos the processor
    gets one image per demo question (the demo person's portrait) followed by the query image, in that order:
    see `mcq_images` and `demo_images`. A text prompt gets no image at all (tokenizer only).
    """
    _check_form(mcq.form)
    for d in demos:
        if d.form != mcq.form:
            raise PulseError(
                f"demo of person {d.person_id!r}, question {d.index}: form {d.form!r} does not match the "
                f"query's form {mcq.form!r}"
            )
    head = "USER: <image>\n" if mcq.form == "image" else "USER:\n"
    shots = "".join(demo_string(d, mcq.form) for d in demos)
    return f"{shots}{head}{mcq.question}\n{format_options(mcq.options)}\n{INSTRUCTION}\nASSISTANT:"


def mcq_images(mcq_person_image, demo_images: list) -> list:
    """Images for an image-form prompt, in `<image>` order: the demo images first, then the query image.

    Works with bytes or decoded PIL images alike; the caller decodes as its processor needs.
    """
    return [*demo_images, mcq_person_image]


def select_demo_people(person_ids: list[str], n: int, seed: int) -> list[str]:
    """Draw `n` demo people from the evaluated ID list with `random.Random(seed).sample` (0 -> zero-shot, []).

    The draw depends on the order of `person_ids` (pass the split's order); record the result in the run
    manifest. The official code does not seed this draw (§9.2); we do.
    """
    if n < 0:
        raise PulseError(f"few-shot demo count must be >= 0, got {n}")
    if n > len(person_ids):
        raise PulseError(f"few-shot demo count {n} exceeds the {len(person_ids)} people evaluated")
    return random.Random(seed).sample(list(person_ids), n)


def demo_mcqs(demo_people: list[Person], form: str) -> list[MCQ]:
    """All questions of the given form of each demo person (their `Full_Set` records), people in draw order."""
    _check_form(form)
    return [m for p in demo_people for m in p.mcqs(form)]


def demo_images(demo_people: list[Person], form: str) -> list[bytes]:
    """One portrait per demo question (the person's `image`, repeated), matching `demo_mcqs`; [] for text."""
    _check_form(form)
    if form == "text":
        return []
    out = []
    for p in demo_people:
        if p.image is None:
            raise PulseError(f"demo person {p.id!r}: field image is empty (demos must come from Full_Set)")
        out.extend([p.image] * len(p.mcqs(form)))
    return out


def scored_mcqs(
    people: list[Person], form: str, demo_ids: Iterable[str], demos: list[MCQ] | None = None
) -> list[MCQ]:
    """The questions that are scored: every question of `form` except those used as demos.

    Official rule (§9.4): a question is skipped when a demo has the same person ID and question index. Pass the
    demo questions as `demos` to apply it exactly. Without `demos`, every question of a person in `demo_ids` is
    skipped; that is the same set whenever a demo person is scored on no more questions than it gives as demos
    (MLLMU-Bench: 5 and 5), so in effect the demo person is not scored (forget_5: 24 x 5 = 120 per form).
    """
    _check_form(form)
    demo_ids = set(demo_ids)
    if demos is not None:
        if any(not d.person_id for d in demos):
            raise PulseError("demo MCQs carry no person_id; cannot apply the (person ID, index) exclusion")
        skip = {(d.person_id, d.index) for d in demos if d.form == form}
        return [m for p in people for m in p.mcqs(form) if (p.id, m.index) not in skip]
    return [m for p in people if p.id not in demo_ids for m in p.mcqs(form)]


SEPARATOR = "ASSISTANT:"


def parse_mcq_answer(decoded: str, option_keys, *, continuation: bool = False) -> str | None:
    """Official MLLMU-Bench parsing (§9.5): the FIRST character of the answer, upper-cased, if it is an option key.

    `decoded` is the decoded output. eval.py (`evaluate_classification`, both forms), line for line:

        assistant_response = generated_text.split("ASSISTANT:")[1].strip() if "ASSISTANT:" in generated_text
                             else generated_text.strip()
        predicted_answer = assistant_response[0].upper() if assistant_response and
                           assistant_response[0].upper() in options else None

    i.e. the piece between the first and the second `ASSISTANT:` (never an exception: [1] exists whenever the
    separator is present), stripped; an empty piece gives None (the `and` short-circuits); otherwise the first
    character upper-cased if it is an option key (`in options` tests the dict's keys), else None. Faithfully
    strict: "The answer is B" parses as None (T is no key) and "(B)" as None, so both score wrong.

    The official code decodes prompt + continuation, whose only `ASSISTANT:` is the prompt's last. If you pass
    the continuation alone, set `continuation=True`: the piece before any generated `ASSISTANT:` is used, which
    gives exactly what the official rule gives on the full text.
    """
    if decoded is None:
        return None
    text = str(decoded)
    if continuation:
        text = text.split(SEPARATOR)[0]
    elif SEPARATOR in text:
        text = text.split(SEPARATOR)[1]
    text = text.strip()
    if not text:
        return None
    first = text[0].upper()
    return first if first in set(option_keys) else None


def answer_settled(continuation: str) -> bool:
    """True once no further generated text can change `parse_mcq_answer` of prompt + `continuation`.

    The parse reads the continuation up to its first `ASSISTANT:`, stripped, and keeps its first character. With
    s = continuation.lstrip() (Python's whitespace, as `strip`):
    - s empty: not settled (the first character is still to come);
    - s a proper prefix of `ASSISTANT:` ("A", "ASS", ..., "ASSISTANT"): not settled — if the model completes the
      separator the piece becomes empty (None), otherwise the first character stands;
    - s starts with U+FFFD: not settled — the decoder shows an incomplete multi-byte character (byte-fallback
      tokens) that may still turn out to be whitespace (e.g. U+3000);
    - anything else: settled (s starting with `ASSISTANT:` settles on None; no later text can move the separator
      before the first character, since `ASSISTANT:` cannot start inside whitespace).
    EOS or the token budget ends generation in any state; the caller then parses what it has.
    """
    s = continuation.lstrip()
    if not s or s[0] == "\ufffd":
        return False
    return not (len(s) < len(SEPARATOR) and SEPARATOR.startswith(s))


def likelihood_prompt_parts(mcq: MCQ) -> tuple[str, list[str]]:
    """DEVIATION (not the official metric): parts for option log-likelihood scoring of an MCQ.

    Returns (question text, [option texts in letter order]). The caller poses the question alone as an open-QA
    prompt (no options, no letters, no demos; the image form still shows the image) and scores each option text
    as the continuation; the prediction is the letter of the highest-scoring option. MLLMU-Bench itself only
    generates and reads the first character (§9.5): report this variant next to the official number, labelled,
    never in place of it.
    """
    return mcq.question, [mcq.options[k] for k in mcq.options]
