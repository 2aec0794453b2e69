"""Likelihood MCQ / MMBench scoring (the mini world's evaluation): PULSE's cache-sharing scorer vs full sequences.

`option_logps` runs each image's shared prompt prefix once, then each prompt's rest, then only the options' tokens
after the first (likelihood.py); `option_logps_full` scores every option as a full sequence. Same model, same
questions, one torch thread (a `--launcher local` worker's setting), both in batches of `--batch-size` option rows
(default 256, the default run's `eval.batch_size`): the option log-probs must agree (max abs difference printed)
and so must every prediction.

    python benchmarks/likelihood_speed.py [--mini-size default|small] [--threads N] [--repeats N] [--batch-size N]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from pulse.config import MiniConfig
from pulse.data.mllmu import read_people
from pulse.data.mmbench import read_mmbench
from pulse.eval import prompts as P
from pulse.eval.likelihood import option_logps, option_logps_full
from pulse.eval.mmbench import mmbench_message, subset_groups
from pulse.mini.cache import ensure_mini
from pulse.models.batches import Encoder, expand_to_square
from pulse.models.load import load_model


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mini-size", default="default", choices=["default", "small"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    ap.add_argument("--batch-size", type=int, default=256, help="option rows per batch (default 256)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    world = ensure_mini(MiniConfig(size=a.mini_size))
    lm = load_model(world / "models" / "finetuned")
    enc = Encoder(lm.processor)
    mcq = [(lm.template.prompt(q, image=m.form == "image"), p.image if m.form == "image" else None, opts)
           for p in read_people(world / "mllmu", "Full_Set") for m in p.image_mcqs + p.text_mcqs
           for q, opts in [P.likelihood_prompt_parts(m)]]
    items = read_mmbench(world / "mmbench.tsv")
    items = subset_groups(items, 80, seed=0) if a.mini_size == "default" else items  # the default run's subset
    mmb = [(lm.template.prompt(mmbench_message(it), image=True), expand_to_square(it.image, lm.processor),
            list(it.options.values())) for it in items]
    for name, qs in (("MCQ", mcq), ("mini-MMBench", mmb)):
        t_shared, shared = timed(lambda: option_logps(lm.model, enc, qs, a.batch_size), a.repeats)
        t_full, full = timed(lambda: option_logps_full(lm.model, enc, qs, a.batch_size), a.repeats)
        print(json.dumps({
            "set": name, "questions": len(qs), "world": world.name, "threads": a.threads, "best_of": a.repeats,
            "batch_size": a.batch_size,
            "shared_s": round(t_shared, 3), "full_sequences_s": round(t_full, 3),
            "speedup": round(t_full / t_shared, 2),
            "max_abs_diff": max(abs(x - y) for s, f in zip(shared, full) for x, y in zip(s, f)),
            "same_predictions": all(s.index(max(s)) == f.index(max(f)) for s, f in zip(shared, full)),
        }), flush=True)


if __name__ == "__main__":
    main()
