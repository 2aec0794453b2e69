"""MLLMU-Bench's two open tasks, as its `eval.py` writes and scores them (LLaVA branch):

- cloze (`Mask_Task`): the question with `__` replaced by `[Blank]` plus CLOZE_INSTRUCTION; few-shot demos from
  `demo_people` people drawn from the evaluated IDs (eval.py: 2 for LLaVA), every question of the query's form of
  each demo person, written `USER:<image>\\n{q}\\nCorrect Answer: {gt}\\n` (image; one portrait per demo question)
  or `USER:\\n{q}\\nCorrect Answer: {gt}\\n` (text); the query `<demos>USER: <image>\\n{q}\\nASSISTANT:` or
  `<demos>USER:\\n{q}\\nASSISTANT:`; a demo person's questions of the demo form are not scored. Correct iff the
  ground truth, lower-cased, is a substring of the answer, lower-cased. Accuracy in percent per form.
- generation (`Generation_Task`): no demos; GENERATION_IMAGE / GENERATION_TEXT (their spaces and words differ, as in
  eval.py); ROUGE-1/2/L F-measure (`rouge_score`, `use_stemmer=True`, reference = ground truth) and sentence BLEU
  (NLTK, whitespace tokens, smoothing method 1) per question, averaged per form on a 0-1 scale.

Both decode greedily up to `max_new_tokens` (50) and read the continuation alone, special tokens skipped. The demo
draw is seeded (eval.py's is not), as for the multiple-choice questions (prompts.select_demo_people).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

from ..data.records import FORMS, OpenItem, Person
from ..errors import PulseError
from .generate import generate
from .prompts import select_demo_people

CLOZE_INSTRUCTION = "\nPlease **ONLY** provide the correct answer that should replace the [Blank]."
GENERATION_IMAGE = ("USER: <image>\n{question}\nAnswer the question based on your trained knowledge in one sentence "
                    "accurately in ENGLISH.\nASSISTANT: ")
GENERATION_TEXT = ("USER: {question}\nAnswer the question based on your trained knowledge in one sentence in "
                   "ENGLISH.\nASSISTANT:")
GENERATION_METRICS = ("rouge1", "rouge2", "rougeL", "bleu")


@dataclass
class TaskResult:
    """One open task on one set of people: per-form summary (`cloze`: accuracy in percent; `generation`: mean of
    each metric, 0-1), question counts, one record per scored question, and the demo people drawn."""
    task: str
    scores: dict[str, dict[str, float]]  # form -> metric -> value
    n: dict[str, int]
    records: list[dict] = field(default_factory=list)
    demo_ids: list[str] = field(default_factory=list)


def cloze_question(question: str) -> str:
    return question.replace("__", "[Blank]") + CLOZE_INSTRUCTION


def cloze_demo(item: OpenItem) -> str:
    head = "USER:<image>\n" if item.form == "image" else "USER:\n"
    return f"{head}{cloze_question(item.question)}\nCorrect Answer: {item.answer}\n"


def cloze_prompt(item: OpenItem, demos: list[OpenItem]) -> str:
    """The full cloze prompt: the demos of the item's form, then the query."""
    head = "USER: <image>\n" if item.form == "image" else "USER:\n"
    return "".join(cloze_demo(d) for d in demos) + f"{head}{cloze_question(item.question)}\nASSISTANT:"


def generation_prompt(item: OpenItem) -> str:
    return (GENERATION_IMAGE if item.form == "image" else GENERATION_TEXT).format(question=item.question)


def cloze_correct(ground_truth: str, output: str) -> bool:
    return ground_truth.lower() in output.lower()


_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def generation_scores(ground_truth: str, output: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure and sentence BLEU (smoothing 1, whitespace tokens) of one answer."""
    rouge = _ROUGE.score(ground_truth, output)
    bleu = sentence_bleu([ground_truth.split()], output.split(), smoothing_function=SmoothingFunction().method1)
    return {**{k: rouge[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")}, "bleu": float(bleu)}


def _image(person: Person, item: OpenItem):
    if item.form != "image":
        return []
    if person.image is None:
        raise PulseError(f"person {person.id!r}: field image is empty (the open tasks' image questions need it)")
    return [person.image]


def cloze_jobs(people: list[Person], demo_people: list[Person]) -> list[tuple[Person, int, OpenItem, str, list]]:
    """(person, index in its Mask_Task, item, prompt, images) of every scored cloze question."""
    demos = {form: [(p, d) for p in demo_people for d in p.cloze if d.form == form] for form in FORMS}
    demo_index = {(p.id, d.form, i) for p in demo_people for i, d in enumerate(p.cloze)}
    jobs = []
    for person in people:
        for index, item in enumerate(person.cloze):
            if (person.id, item.form, index) in demo_index:
                continue  # a demo question (same person, form and Mask_Task index) is not scored
            shots = demos[item.form]
            images = [img for p, d in shots for img in _image(p, d)] + _image(person, item)
            jobs.append((person, index, item, cloze_prompt(item, [d for _, d in shots]), images))
    return jobs


def evaluate_cloze(lm, people: list[Person], *, enc, demo_people: int = 2, demo_seed: int = 0,
                   demo_source: list[Person] | None = None, max_new_tokens: int = 50,
                   batch_size: int = 16) -> TaskResult:
    """MLLMU-Bench's cloze on `people`: demos drawn from their IDs, records looked up in `demo_source` (eval.py:
    Full_Set; people without a record there give no demos, as its celebrities)."""
    ids = select_demo_people([p.id for p in people], min(demo_people, len(people)), demo_seed)
    source = {p.id: p for p in (demo_source if demo_source is not None else people)}
    jobs = cloze_jobs(people, [source[i] for i in ids if i in source])
    outputs = generate(lm.model, enc, [j[3] for j in jobs], [j[4] for j in jobs], max_new_tokens=max_new_tokens,
                       batch_size=batch_size)
    records = [_record("cloze", person, index, item, out, {"score": float(cloze_correct(item.answer, out))})
               for (person, index, item, _, _), out in zip(jobs, outputs)]
    return _summary("cloze", records, ids, lambda rs: {"accuracy": 100.0 * _mean([r["score"] for r in rs])})


def evaluate_generation(lm, people: list[Person], *, enc, max_new_tokens: int = 50,
                        batch_size: int = 16) -> TaskResult:
    """MLLMU-Bench's open generation on `people` (no demos)."""
    jobs = [(p, i, item) for p in people for i, item in enumerate(p.generation)]
    outputs = generate(lm.model, enc, [generation_prompt(item) for _, _, item in jobs],
                       [_image(p, item) for p, _, item in jobs], max_new_tokens=max_new_tokens, batch_size=batch_size)
    records = []
    for (person, index, item), out in zip(jobs, outputs):
        scores = generation_scores(item.answer, out)
        records.append(_record("generation", person, index, item, out, {"score": scores["rougeL"], **scores}))
    return _summary("generation", records, [],
                    lambda rs: {m: _mean([r[m] for r in rs]) for m in GENERATION_METRICS})


def _record(task: str, person: Person, index: int, item: OpenItem, output: str, scores: dict) -> dict:
    return {"task": task, "person_id": person.id, "form": item.form, "index": index, "question": item.question,
            "ground_truth": item.answer, "output": output, **scores}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _summary(task: str, records: list[dict], demo_ids: list[str], summarise) -> TaskResult:
    by_form = {form: [r for r in records if r["form"] == form] for form in FORMS}
    return TaskResult(task, {form: summarise(rs) for form, rs in by_form.items()},
                      {form: len(rs) for form, rs in by_form.items()}, records, demo_ids)
