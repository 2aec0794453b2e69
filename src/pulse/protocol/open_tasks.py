"""MLLMU-Bench's cloze and generation tasks at every request-level evaluation (`eval.tasks`), and their rows.

Each evaluated set is scored as `pulse eval --tasks` scores it (eval/open_tasks.py): cloze with few-shot demos
drawn from the set's own IDs (eval.cloze_demo_people, seeded by eval.demo_seed; the celebrities zero-shot, as
their MCQs), generation without demos, greedy, eval.max_new_tokens new tokens. The cell file keeps one compact
record per question; results.csv gets metric `cloze` (accuracy, %) and `rouge1`, `rouge2`, `rougeL`, `bleu`
(0-1) per split (unlearn, retain, unlearn_known) and modality, and with an oracle `oracle_gap_cloze` and
`oracle_gap_rougeL`. Known before unlearning: a cloze item request 0 answered, a generation item whose request-0
answer reached ROUGE-L 0.5 (at least half of the one-sentence reference, in order; our threshold).
"""
from __future__ import annotations

from ..eval.open_tasks import GENERATION_METRICS, evaluate_cloze, evaluate_generation

OPEN_TASKS = ("cloze", "generation")
MODALITIES = {"image": ("image",), "text": ("text",), "all": ("image", "text")}


def open_record(ctx, lm, enc, sets: dict) -> dict:
    """{task: {set name: [[person_id, form, index, output, score...], ...]}} of the tasks in eval.tasks."""
    e, out = ctx.cfg.eval, {}
    for task in (t for t in OPEN_TASKS if t in e.tasks):
        out[task] = {}
        for name, (people, n_demo) in sets.items():
            if task == "cloze":
                res = evaluate_cloze(lm, people, enc=enc, demo_people=e.cloze_demo_people if n_demo else 0,
                                     demo_seed=e.demo_seed, max_new_tokens=e.max_new_tokens,
                                     batch_size=max(1, e.batch_size // 4))
                out[task][name] = [[r["person_id"], r["form"], r["index"], r["output"], r["score"]]
                                   for r in res.records]
            else:
                res = evaluate_generation(lm, people, enc=enc, max_new_tokens=e.max_new_tokens,
                                          batch_size=max(1, e.batch_size // 4))
                out[task][name] = [[r["person_id"], r["form"], r["index"], r["output"],
                                    *(round(r[m], 6) for m in GENERATION_METRICS)] for r in res.records]
    return out


KNOWN_ROUGE_L = 0.5  # a generation item is known when request 0's answer reaches this ROUGE-L F-measure


def _known(task: str, before: list) -> set:
    """(person_id, form, index) of the items request 0 knew: cloze answered, generation ROUGE-L >= KNOWN_ROUGE_L."""
    col = 4 if task == "cloze" else 4 + GENERATION_METRICS.index("rougeL")
    return {tuple(r[:3]) for r in before if r[col] >= (1.0 if task == "cloze" else KNOWN_ROUGE_L)}


def _value(task: str, records: list, k: int) -> float:
    values = [r[4 + k] for r in records]
    value = sum(values) / len(values) if values else float("nan")
    return 100.0 * value if task == "cloze" else value


def open_rows(meta: dict, mcq: dict | None, ref: dict | None, orc: dict | None, known: bool = True) -> list[dict]:
    """results.csv rows of one evaluation's open tasks: cloze accuracy (%) and the generation metrics (0-1) per
    split (unlearn, retain, and — `known` — unlearn_known: the items request 0 `ref` knew, `mcq` itself when None)
    and modality; against the oracle `orc`, oracle_gap_cloze and oracle_gap_rougeL (this evaluation's minus the
    oracle's)."""
    found = (mcq or {}).get("open") or {}
    meta = {"probe": "none", "step": None, "at": "budget", "status": "ok", "relative": None, **meta}
    rows = []
    for task, by_set in found.items():
        metrics = ("cloze",) if task == "cloze" else GENERATION_METRICS
        splits = dict(by_set)
        before = ((ref or mcq).get("open") or {}).get(task, {}).get("unlearn")
        if known and before is not None and "unlearn" in by_set:
            learned = _known(task, before)
            splits["unlearn_known"] = [r for r in by_set["unlearn"] if tuple(r[:3]) in learned]
        theirs = ((orc or {}).get("mcq", {}).get("open") or {}).get(task, {})
        for split, records in splits.items():
            for modality, forms in MODALITIES.items():
                picked = [r for r in records if r[1] in forms]
                for k, metric in enumerate(metrics):
                    rows.append({**meta, "split": split, "modality": modality, "metric": metric,
                                 "accuracy": round(_value(task, picked, k), 4), "n": len(picked)})
                    if split in theirs and metric in ("cloze", "rougeL"):
                        gap = _value(task, picked, k) - _value(task, [r for r in theirs[split] if r[1] in forms], k)
                        rows.append({**meta, "split": split, "modality": modality, "metric": f"oracle_gap_{metric}",
                                     "accuracy": round(gap, 4), "n": len(picked)})
    return rows
