"""What each scenario unlearns and measures. Plain functions over people; the runner does the I/O.

- finetuned: the model fine-tuned on N fictional people unlearns `unlearn` of them in one request.
- pretrained: the base model's best-known celebrities (selected by its own accuracy) are split; one request.
- sustainability: the fine-tuned scenario's unlearn set in K disjoint folds, unlearned one request after another.

What a request unlearns is the same kind of data in every scenario (`unlearn.data`): by default each person's 10
MCQs as QA pairs, half image, half text (`mcq_samples`); `ft_data` uses MLLMU-Bench's training-flavour pairs
(`pair_samples`; image form only in the real MLLMU-Bench), which exist for the fictional people only.
"""
from __future__ import annotations

import random

from ..data.records import Person, QAPair
from ..errors import PulseError
from ..models.batches import Sample


def split_people(people: list[Person], n_unlearn: int, seed: int, purpose: str) -> tuple[list[Person], list[Person]]:
    """Seeded split into (unlearn, retain); both keep the input order."""
    ids = [p.id for p in people]
    chosen = set(random.Random(f"{seed}:{purpose}").sample(ids, n_unlearn))
    return [p for p in people if p.id in chosen], [p for p in people if p.id not in chosen]


def make_folds(people: list[Person], k: int, seed: int) -> list[list[Person]]:
    if len(people) % k:
        raise PulseError(f"{k} folds do not divide {len(people)} people to unlearn")
    order = list(people)
    random.Random(f"{seed}:folds").shuffle(order)
    size = len(order) // k
    return [sorted(order[i * size:(i + 1) * size], key=lambda p: p.id) for i in range(k)]


def select_known(people: list[Person], accuracy: dict[str, float], n: int, min_accuracy: float) -> list[Person]:
    """The `n` people the base model knows best (highest accuracy, ties by ID), each at least `min_accuracy`."""
    ranked = sorted(people, key=lambda p: (-accuracy[p.id], p.id))
    keep = [p for p in ranked if accuracy[p.id] >= min_accuracy][:n]
    if len(keep) < n:
        raise PulseError(f"only {len(keep)} celebrities reach {min_accuracy}% base accuracy; "
                         f"scenario.pretrained.select asks for {n}")
    return sorted(keep, key=lambda p: p.id)


def mcq_samples(people: list[Person], template) -> list[Sample]:
    """Each person's MCQs as QA (question -> correct option text), both forms: the paper's Table 2 unlearning data
    ("each individual is associated with 10 questions — half text-only and half multimodal"), the default
    (`unlearn.data: mcq`) in every scenario."""
    return [Sample(template.prompt(m.question, image=m.form == "image"), m.options[m.answer],
                   p.image if m.form == "image" else None)
            for p in people for m in p.image_mcqs + p.text_mcqs]


def pair_samples(pairs: list[QAPair], people: list[Person], template) -> list[Sample]:
    """Training-flavour QA pairs of these people (image pairs with their portrait, text pairs without)."""
    ids = {p.id for p in people}
    out = [Sample(template.prompt(q.question, image=q.form == "image"), q.answer, q.image if q.form == "image" else None)
           for q in pairs if q.person_id in ids]
    missing = ids - {q.person_id for q in pairs}
    if missing:
        raise PulseError(f"training QA has no pairs for people {sorted(missing)[:5]}")
    return out


def splits(scenario: str, unlearn, retain, folds, request: int) -> dict[str, list[str]]:
    """The person-ID splits evaluated after `request`: unlearn and retain; in the sustainability scenario also the
    current fold, the folds done so far and those still pending."""
    def ids(people):
        return [p.id for p in people]
    out = {"unlearn": ids(unlearn), "retain": ids(retain)}
    if scenario == "sustainability":
        if request >= 1:
            out["fold_current"] = ids(folds[request - 1])
            out["folds_done"] = [i for f in folds[:request] for i in ids(f)]
        if request < len(folds):
            out["folds_pending"] = [i for f in folds[request:] for i in ids(f)]
    return out
