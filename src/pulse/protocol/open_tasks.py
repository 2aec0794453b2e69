"""MLLMU-Bench's cloze and generation tasks at every request-level evaluation (`eval.tasks`), and their rows.

Each evaluated set is scored as `pulse eval --tasks` scores it (eval/open_tasks.py): cloze with few-shot demos
drawn from the set's own IDs (eval.cloze_demo_people, seeded by eval.demo_seed; the celebrities zero-shot, as
their MCQs), generation without demos, greedy, eval.max_new_tokens new tokens. The cell file keeps one compact
record per question; results.csv gets metric `cloze` (accuracy, %) and `rouge1`, `rouge2`, `rougeL`, `bleu`
(0-1) per split (unlearn, retain) and modality.
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


def open_rows(meta: dict, mcq: dict | None) -> list[dict]:
    """results.csv rows of one evaluation's open tasks: cloze accuracy (%) and the generation metrics (0-1) per
    split and modality."""
    found = (mcq or {}).get("open") or {}
    meta = {"probe": "none", "step": None, "at": "budget", "status": "ok", "relative": None, **meta}
    rows = []
    for task, by_set in found.items():
        metrics = ("cloze",) if task == "cloze" else GENERATION_METRICS
        for split, records in by_set.items():
            for modality, forms in MODALITIES.items():
                picked = [r for r in records if r[1] in forms]
                for k, metric in enumerate(metrics):
                    values = [r[4 + k] for r in picked]
                    value = sum(values) / len(values) if values else float("nan")
                    rows.append({**meta, "split": split, "modality": modality, "metric": metric,
                                 "accuracy": round(100.0 * value if task == "cloze" else value, 4),
                                 "n": len(picked)})
    return rows
