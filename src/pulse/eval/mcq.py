"""MCQ accuracy on a set of people, per form (image-textual / pure-text), in two scoring modes:

- `likelihood` (non-standard, the default for tiny models): the question alone as an open-QA prompt in the
  model's template, every option text scored as the continuation, argmax (see `likelihood.py`);
- `generate` (MLLMU-Bench's protocol, §9.3–9.5): its literal prompt strings, seeded few-shot demo people whose
  questions are excluded from scoring, greedy decoding, first-character parse.

Per-question predictions are kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import progress
from ..data.records import FORMS, MCQ, Person
from ..errors import PulseError
from ..models.batches import Encoder
from ..models.load import LoadedModel
from . import prompts as official
from .generate import generate, generate_shared_prefix
from .likelihood import option_logps

SCORINGS = ("likelihood", "generate")


@dataclass
class McqResult:
    accuracy: dict[str, float]  # form -> percent
    n: dict[str, int]
    predictions: list[dict] = field(default_factory=list)
    demo_ids: dict[str, list[str]] = field(default_factory=dict)

    def for_people(self, ids) -> "McqResult":
        """The same predictions restricted to a subset of people (no re-evaluation)."""
        ids = set(ids)
        return summarise([p for p in self.predictions if p["person_id"] in ids], self.demo_ids)


def summarise(predictions: list[dict], demo_ids: dict | None = None) -> McqResult:
    acc, n = {}, {}
    for form in FORMS:
        rows = [p for p in predictions if p["form"] == form]
        n[form] = len(rows)
        acc[form] = 100.0 * sum(p["correct"] for p in rows) / len(rows) if rows else float("nan")
    return McqResult(acc, n, predictions, demo_ids or {})


def _record(m: MCQ, pred: str | None, scores=None, output: tuple[str, int | None] | None = None) -> dict:
    row = {"person_id": m.person_id, "form": m.form, "index": m.index, "answer": m.answer,
           "prediction": pred, "correct": pred == m.answer}
    if scores is not None:
        row["scores"] = [round(s, 4) for s in scores]
    if output is not None:  # generate scoring: the (early-stopped) continuation and its first token id
        row["output"], row["first_token"] = output
    return row


def _generate_mcqs(lm, enc, mcqs, demos, demo_imgs, images, form, max_new_tokens, batch_size, on_batch=None):
    """(continuation, first token id) of the faithful prompts; the demo prefix (shared by every question) is
    computed once."""
    query_imgs = [[images[m.person_id]] if form == "image" else [] for m in mcqs]
    if demos:
        prefix = "".join(official.demo_string(d, form) for d in demos)
        try:
            return generate_shared_prefix(lm.model, enc, prefix, demo_imgs, [official.mcq_prompt(m, []) for m in mcqs],
                                          query_imgs, max_new_tokens=max_new_tokens,
                                          batch_size=max(1, batch_size // 4), return_first_token=True,
                                          on_batch=on_batch)
        except ValueError:  # tokenizer merges across the boundary, or another cache type: full prompts
            pass
    texts = [official.mcq_prompt(m, demos) for m in mcqs]
    imgs = [official.mcq_images(images[m.person_id], demo_imgs) if form == "image" else [] for m in mcqs]
    return generate(lm.model, enc, texts, imgs, max_new_tokens=max_new_tokens, batch_size=max(1, batch_size // 4),
                    stop_at_first_char=True, return_first_token=True, on_batch=on_batch)


def evaluate_mcq(lm: LoadedModel, people: list[Person], *, scoring: str | None = None, forms=FORMS,
                 enc: Encoder | None = None, demo_people: int = 1, demo_seed: int = 0,
                 demo_source: list[Person] | None = None, max_new_tokens: int = 50,
                 batch_size: int = 64, questions: set | None = None) -> McqResult:
    """Accuracy (percent) per form on `people`, one evaluated set (MLLMU-Bench: one ID list per call).

    Generate scoring draws `demo_people` demo people from `people`'s IDs (in their order, seeded by `demo_seed`;
    0 = zero-shot) and takes their records from `demo_source` (MLLMU-Bench: Full_Set; default `people`).
    `questions`: score only these (person_id, form, index) keys (e.g. one seeded half, protocol/halves.py); the
    demo draw and the demo exclusion are those of the whole set, so the result equals the full evaluation
    restricted to those keys. None = every question.
    A progress bar (pulse.progress) counts the scored questions of every form.
    """
    keep = (lambda m: True) if questions is None else (lambda m: (m.person_id, m.form, m.index) in questions)
    scoring = scoring or lm.scoring
    if scoring not in SCORINGS:
        raise PulseError(f"unknown scoring {scoring!r}; known: {', '.join(SCORINGS)}")
    enc = enc or Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype)
    preds: list[dict] = []
    demo_ids: dict[str, list[str]] = {}
    images = {p.id: p.image for p in people}
    jobs = []  # per form: (form, scored MCQs, demo MCQs, demo images) — all known before the first forward pass
    for form in forms:
        if scoring == "likelihood":
            jobs.append((form, [m for p in people for m in p.mcqs(form) if keep(m)], None, None))
        else:
            source = {p.id: p for p in (demo_source or people)}
            ids = official.select_demo_people([p.id for p in people], min(demo_people, len(people)), demo_seed)
            missing = [i for i in ids if i not in source]
            if missing:
                raise PulseError(f"demo person {missing[0]!r}: no record in the demo source (Full_Set)")
            demo_ids[form] = ids
            demo_records = [source[i] for i in ids]
            demos = official.demo_mcqs(demo_records, form)
            jobs.append((form, [m for m in official.scored_mcqs(people, form, ids, demos) if keep(m)], demos,
                         official.demo_images(demo_records, form)))
    who = f"{len(people)} {'person' if len(people) == 1 else 'people'}"
    with progress.bar(desc=progress.named(f"MCQ ({who})"), total=sum(len(j[1]) for j in jobs),
                      unit="question") as bar:
        for form, mcqs, demos, demo_imgs in jobs:
            if scoring == "likelihood":
                prompts = []
                for m in mcqs:
                    q, opts = official.likelihood_prompt_parts(m)
                    img = images[m.person_id] if form == "image" else None
                    prompts.append((lm.template.prompt(q, image=img is not None), img, opts))
                scores = option_logps(lm.model, enc, prompts, batch_size=batch_size, on_batch=bar.update) \
                    if prompts else []
                for m, s in zip(mcqs, scores):
                    keys = list(m.options)
                    preds.append(_record(m, keys[max(range(len(s)), key=s.__getitem__)], s))
            else:
                outs = _generate_mcqs(lm, enc, mcqs, demos, demo_imgs, images, form, max_new_tokens, batch_size,
                                      on_batch=bar.update) if mcqs else []
                for m, (text, first) in zip(mcqs, outs):
                    # eval.py parses the decoded prompt + continuation; the prompt's only ASSISTANT: is its last
                    preds.append(_record(m, official.parse_mcq_answer(official.mcq_prompt(m, demos) + text, m.options),
                                         output=(text, first)))
    return summarise(preds, demo_ids)
