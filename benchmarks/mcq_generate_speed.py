"""Faithful `generate` MCQ evaluation: PULSE's batched path vs MLLMU-Bench's per-question loop.

The loop is what MLLMU-Bench's eval.py does: one `generate` call per question, greedy, 50 new tokens, then the
first-character parse. PULSE batches (left padding) and stops once every sequence has its first non-space
character. Same prompts, same demos: the predictions must be identical. Goal: >= 10x.

    python benchmarks/mcq_generate_speed.py [--model DIR --data DIR --config NAME] [--limit N]
Without --model it uses the mini world's fine-tuned model (building the mini world first if needed).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from pulse.config import MiniConfig
from pulse.data.mllmu import read_people
from pulse.eval import prompts as P
from pulse.eval.generate import generate
from pulse.eval.mcq import evaluate_mcq
from pulse.models.batches import Encoder
from pulse.models.load import load_model


def per_question_loop(lm, enc, people, demo_ids, form):
    """One generate call per question, 50 new tokens — MLLMU-Bench's loop (prompts from the same functions)."""
    source = {p.id: p for p in people}
    demo_people = [source[i] for i in demo_ids]
    demos, demo_imgs = P.demo_mcqs(demo_people, form), P.demo_images(demo_people, form)
    preds = []
    for m in P.scored_mcqs(people, form, demo_ids, demos):
        imgs = P.mcq_images(source[m.person_id].image, demo_imgs) if form == "image" else []
        text = generate(lm.model, enc, [P.mcq_prompt(m, demos)], [imgs], max_new_tokens=50, batch_size=1)[0]
        preds.append(P.parse_mcq_answer(text, m.options, continuation=True))
    return preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--config", default="Full_Set")
    ap.add_argument("--limit", type=int, default=20, help="people evaluated (default 20)")
    a = ap.parse_args()
    if a.model is None:
        from pulse.mini.cache import ensure_mini
        world = ensure_mini(MiniConfig())
        a.model, a.data = str(world / "models" / "finetuned"), str(world / "mllmu")
    torch.manual_seed(0)
    lm = load_model(a.model)
    enc = Encoder(lm.processor, device=lm.device)
    people = sorted(read_people(a.data, a.config), key=lambda p: p.id)[: a.limit]

    t = time.perf_counter()
    batched = evaluate_mcq(lm, people, scoring="generate", enc=enc, demo_people=1, demo_seed=0)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    loop = {f: per_question_loop(lm, enc, people, batched.demo_ids[f], f) for f in ("image", "text")}
    t_loop = time.perf_counter() - t
    ours = {f: [p["prediction"] for p in batched.predictions if p["form"] == f] for f in ("image", "text")}
    identical = ours == loop
    n = sum(len(v) for v in loop.values())
    result = {"questions": n, "batched_s": round(t_batched, 2), "loop_s": round(t_loop, 2),
              "speedup": round(t_loop / t_batched, 1), "identical_predictions": identical,
              "accuracy": batched.accuracy, "threads": torch.get_num_threads(), "model": a.model}
    print(json.dumps(result, indent=2))
    if not identical:
        raise SystemExit("predictions differ between the batched and the per-question evaluation")


if __name__ == "__main__":
    main()
