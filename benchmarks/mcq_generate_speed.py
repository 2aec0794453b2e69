"""Faithful `generate` MCQ evaluation: PULSE's batched path vs MLLMU-Bench's per-question loop.

The loop is what MLLMU-Bench's eval.py does: one `generate` call per question, greedy, 50 new tokens, then the
first-character parse of the decoded prompt + continuation. PULSE batches (left padding), shares the few-shot
prefix's KV cache and stops each row once its parse is settled. Same prompts, same demos: the predictions must be
identical — checked on the parsed letter AND on the raw first generated token id of every question (a weak model
mostly parses to None, which would hide differences). Goal: >= 10x.

    python benchmarks/mcq_generate_speed.py [--model DIR --data DIR --config NAME] [--limit N]
                                            [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16]
                                            [--forms image,text] [--mini-size default|small]
Without --model it uses the mini world's fine-tuned model (`--mini-size`, default "default"; built first if the
cache lacks it; "small" is the seconds-long test world).
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
    """One generate call per question, 50 new tokens — MLLMU-Bench's loop (prompts from the same functions).
    Returns [(parsed letter, first generated token id)] in scoring order."""
    source = {p.id: p for p in people}
    demo_people = [source[i] for i in demo_ids]
    demos, demo_imgs = P.demo_mcqs(demo_people, form), P.demo_images(demo_people, form)
    out = []
    for m in P.scored_mcqs(people, form, demo_ids, demos):
        imgs = P.mcq_images(source[m.person_id].image, demo_imgs) if form == "image" else []
        prompt = P.mcq_prompt(m, demos)
        text, first = generate(lm.model, enc, [prompt], [imgs], max_new_tokens=50, batch_size=1,
                               return_first_token=True)[0]
        out.append((P.parse_mcq_answer(prompt + text, m.options), first))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--config", default="Full_Set")
    ap.add_argument("--limit", type=int, default=20, help="people evaluated (default 20)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    ap.add_argument("--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16")
    ap.add_argument("--forms", default="image,text", help="comma-separated MCQ forms (default both)")
    ap.add_argument("--mini-size", default="default", choices=["default", "small"],
                    help="without --model: which mini world (default: the README's)")
    a = ap.parse_args()
    if a.model is None:
        from pulse.mini.cache import ensure_mini
        world = ensure_mini(MiniConfig(size=a.mini_size))
        a.model, a.data = str(world / "models" / "finetuned"), str(world / "mllmu")
    torch.manual_seed(0)
    lm = load_model(a.model, device=a.device, dtype=a.dtype)
    dtype = next(lm.model.parameters()).dtype
    enc = Encoder(lm.processor, device=lm.device, dtype=dtype)
    people = sorted(read_people(a.data, a.config), key=lambda p: p.id)[: a.limit]

    def sync():
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)

    sync()
    t = time.perf_counter()
    forms = tuple(a.forms.split(","))
    batched = evaluate_mcq(lm, people, scoring="generate", enc=enc, demo_people=1, demo_seed=0, forms=forms)
    sync()
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    loop = {f: per_question_loop(lm, enc, people, batched.demo_ids[f], f) for f in forms}
    sync()
    t_loop = time.perf_counter() - t
    ours = {f: [(p["prediction"], p["first_token"]) for p in batched.predictions if p["form"] == f] for f in forms}
    n = sum(len(v) for v in loop.values())
    same_letter = sum(a[0] == b[0] for f in loop for a, b in zip(ours[f], loop[f]))
    same_token = sum(a[1] == b[1] for f in loop for a, b in zip(ours[f], loop[f]))
    identical = all(len(ours[f]) == len(loop[f]) for f in loop) and same_letter == same_token == n
    result = {"questions": n, "batched_s": round(t_batched, 2), "loop_s": round(t_loop, 2),
              "speedup": round(t_loop / t_batched, 1), "identical_predictions": identical,
              "same_letter": same_letter, "same_first_token": same_token,
              "parsed_none": sum(p["prediction"] is None for p in batched.predictions),
              "accuracy": batched.accuracy, "device": str(lm.device), "dtype": str(dtype).removeprefix("torch."),
              "threads": torch.get_num_threads(), "model": a.model}
    print(json.dumps(result, indent=2))
    if not identical:
        raise SystemExit("predictions or first tokens differ between the batched and the per-question evaluation")


if __name__ == "__main__":
    main()
