"""Trade-off curves, the matched-forgetting stop rule, the never-learned reference and the sweep winner: pure
functions over the compact records the runner keeps in its cell files (no model, no I/O).

Compact MCQ record: a list of question keys "person_id:form:index" (one half, protocol/halves.py) and, per
evaluation, a string with one character per key: "1" correct, "0" wrong, "-" not scored (generate scoring's
demo person). MMBench at a curve point: the extracted letter of every row of the seeded subset, in row order.
"""
from __future__ import annotations

import math

from ..data.records import FORMS
from ..eval.mmbench import circular_eval
from .halves import split_indices

EPS = 1e-9  # accuracies are ratios computed in floating point: 100*2/6 != 100*1/3 bitwise


def key(person_id: str, form: str, index: int) -> str:
    return f"{person_id}:{form}:{index}"


def parse_key(k: str) -> tuple[str, str, int]:
    pid, form, index = k.rsplit(":", 2)
    return pid, form, int(index)


def half_keys(people, seed: int) -> dict[str, list[str]]:
    """{"sel": [...], "held": [...]}: every question key of these people by half — people in the given order,
    forms image then text, indices ascending. This order is the order of the compact strings."""
    out = {"sel": [], "held": []}
    for p in people:
        for form in FORMS:
            halves = split_indices(p.id, form, [m.index for m in p.mcqs(form)], seed)
            for i in sorted(halves):
                out[halves[i]].append(key(p.id, form, i))
    return out


def encode(keys: list[str], predictions: list[dict]) -> str:
    """The compact string of `predictions` (dicts with person_id, form, index, correct) over `keys`."""
    got = {key(p["person_id"], p["form"], p["index"]): p["correct"] for p in predictions}
    return "".join("-" if k not in got else "1" if got[k] else "0" for k in keys)


def decode(keys: list[str], s: str) -> list[dict]:
    """Compact predictions {person_id, form, index, correct} of the scored keys (the rows' input)."""
    if len(keys) != len(s):
        raise ValueError(f"{len(s)} results for {len(keys)} questions")
    out = []
    for k, c in zip(keys, s):
        if c != "-":
            pid, form, index = parse_key(k)
            out.append({"person_id": pid, "form": form, "index": index, "correct": c == "1"})
    return out


def accuracy(predictions: list[dict], people=None) -> float:
    """Percent correct, both forms pooled (modality "all"), optionally of some people only; NaN when empty."""
    ids = None if people is None else set(people)
    hits = [p["correct"] for p in predictions if ids is None or p["person_id"] in ids]
    return 100.0 * sum(hits) / len(hits) if hits else float("nan")


def mmbench_point(items, letters: str) -> dict:
    """CircularEval of the subset `items` from their letters (row order): the curve point's MMBench record."""
    res = circular_eval(items, {it.index: ch for it, ch in zip(items, letters)})
    return {"circular": res["circular"], "vanilla": res["vanilla"], "groups": res["groups"], "letters": letters}


# --- matched forgetting --------------------------------------------------------------------------------------------

def first_reaching(points: list[tuple[int, float]], target: float, cap: int) -> int | None:
    """The stop rule: the first checkpoint (ascending step, at most `cap`) whose selection-half D_unlearn accuracy
    is <= target; None when no checkpoint within the cap reaches it (reported as not_reached)."""
    for step, acc in sorted(points):
        if step > cap:
            break
        if acc == acc and acc <= target + EPS:
            return step
    return None


NEVER_KNOWN_RULE = ("the base model's pooled accuracy on the selection-half questions of the n celebrities outside the "
                    "selection (n = scenario.pretrained.unlearn) with the lowest base accuracy on their held-out-half "
                    "questions (ties by ID); people chosen on one half, measured on the other")


def never_known_reference(correct: dict[str, dict[str, str]], candidates: list[str], n: int, seed: int) -> dict:
    """Pre-trained knowledge: the base model's accuracy on celebrities it never knew.

    Rule: among `candidates` (celebrities outside the scenario's unlearn and retain sets), rank by the base
    model's accuracy on their *held-out-half* questions (ascending, ties by ID) and take the `n` lowest; the
    reference is the base model's pooled accuracy on the *selection-half* questions of those people. Choosing
    the people on one half and measuring on the other keeps the reference free of the downward bias of picking
    the lowest scorers on the very questions that are then scored (the winner's curse of a min over noisy
    estimates). `correct`: {person_id: {form: compact string over indices 0..n-1}} (the selection evaluation).
    """
    def hits(pid: str, half: str) -> list[bool]:
        out = []
        for form, s in sorted(correct[pid].items()):
            halves = split_indices(pid, form, list(range(len(s))), seed)
            out += [c == "1" for i, c in enumerate(s) if c != "-" and halves[i] == half]
        return out

    def pct(h: list[bool]) -> float:
        return 100.0 * sum(h) / len(h) if h else float("nan")

    if len(candidates) < n:
        raise ValueError(f"{len(candidates)} celebrities outside the selection; the never-known reference needs {n}")
    held = {pid: pct(hits(pid, "held")) for pid in candidates}
    chosen = sorted(candidates, key=lambda pid: (held[pid] if held[pid] == held[pid] else math.inf, pid))[:n]
    sel = [h for pid in chosen for h in hits(pid, "sel")]
    return {"people": chosen, "held_accuracy": {pid: round(held[pid], 4) for pid in chosen},
            "accuracy": pct(sel), "n": len(sel)}


# --- equal search budget ---------------------------------------------------------------------------------------------

def pick_winner(candidates: list[dict]) -> str | None:
    """The sweep's configuration: among candidates that reached the target (on the selection half), the best
    generality — highest retain_sel accuracy at the matched point, ties by the MMBench subset's CircularEval
    there, then the grid's order. `candidates`: [{"name", "reached", "retain_sel", "mmbench_sub"}] in grid order.
    None when none reached."""
    best = None
    for c in candidates:
        if not c["reached"]:
            continue
        score = (c["retain_sel"], c["mmbench_sub"])
        if best is None or score > best[0]:
            best = (score, c["name"])
    return best[1] if best else None
