"""Seeded question halves: every MCQ of D_unlearn and D_retain is in the *selection* half ("sel") or the
*held-out* half ("held"), fixed for a run by `eval.half_seed`.

Rule: within each person and form, the questions are ranked by
sha256(f"{seed}:{person_id}:{form}:{index}") (hex digest, ascending; ties impossible in practice, then by index);
the first ceil(n/2) are "sel", the rest "held". So each person&form contributes ceil(n/2) / floor(n/2) questions
(MLLMU-Bench and the mini world: 5 per form -> 3 sel, 2 held), and a question's half does not depend on which
other people are evaluated. Checkpoint evaluations, the stop rule and sweep winners use "sel" only; matched and
sweep results are reported on "held".
"""
from __future__ import annotations

import hashlib
import math

from ..data.records import FORMS, MCQ, Person

HALVES = ("sel", "held")


def _rank_key(seed: int, person_id: str, form: str, index: int) -> tuple[str, int]:
    return hashlib.sha256(f"{seed}:{person_id}:{form}:{index}".encode()).hexdigest(), index


def split_indices(person_id: str, form: str, indices: list[int], seed: int = 0) -> dict[int, str]:
    """{index: "sel" | "held"} for one person's questions of one form (the balanced rule above)."""
    ranked = sorted(indices, key=lambda i: _rank_key(seed, person_id, form, i))
    n_sel = math.ceil(len(ranked) / 2)
    return {i: ("sel" if pos < n_sel else "held") for pos, i in enumerate(ranked)}


def question_half(person_id: str, form: str, index: int, n: int, seed: int = 0) -> str:
    """The half of question `index` among a person's `n` questions of `form` (indices 0..n-1)."""
    return split_indices(person_id, form, list(range(n)), seed)[index]


def question_halves(people: list[Person], seed: int = 0) -> dict[tuple[str, str, int], str]:
    """{(person_id, form, index): half} for every MCQ of these people."""
    out = {}
    for p in people:
        for form in FORMS:
            for i, half in split_indices(p.id, form, [m.index for m in p.mcqs(form)], seed).items():
                out[(p.id, form, i)] = half
    return out


def keys_of(people: list[Person], half: str, seed: int = 0) -> set[tuple[str, str, int]]:
    """The (person_id, form, index) keys of one half — what `evaluate_mcq(questions=...)` takes."""
    return {k for k, h in question_halves(people, seed).items() if h == half}


def in_half(m: MCQ, keys: set) -> bool:
    return (m.person_id, m.form, m.index) in keys
