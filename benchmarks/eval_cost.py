"""What the measurements beyond MCQ accuracy add to one request-level evaluation on the mini world: the default
run's MCQ (likelihood, D_unlearn + D_retain of the fine-tuned scenario, seed 0) and MMBench subset as the baseline,
then membership inference (`eval.mia`), the oracle's one-off evaluation and MLLMU-Bench's cloze and generation
(`pulse eval --tasks`, not part of the default run). One torch thread (a `--launcher local` worker's setting),
best of N.

    python benchmarks/eval_cost.py [--mini-size default|small] [--threads N] [--repeats N]
"""
from __future__ import annotations

import argparse
import time

import torch

from pulse.config import load_config
from pulse.data.mmbench import read_mmbench
from pulse.eval.mcq import evaluate_mcq
from pulse.eval.mmbench import evaluate_mmbench, subset_groups
from pulse.eval.open_tasks import evaluate_cloze, evaluate_generation
from pulse.mini.cache import ensure_mini
from pulse.models.batches import Encoder
from pulse.models.load import load_model
from pulse.protocol.context import Context
from pulse.protocol.membership import mia_record
from pulse.protocol.scenarios import split_people


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mini-size", default="default", choices=["default", "small"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(None if a.mini_size == "default" else "configs/mini/small.yaml")
    ctx = Context(cfg, out=None, log=lambda *_: None)
    world = ensure_mini(cfg.mini)
    lm = load_model(world / "models" / "finetuned")
    enc = Encoder(lm.processor)
    unlearn, retain = split_people(ctx.fictional, cfg.scenario.finetuned.unlearn, 0, "finetuned")
    sets = {"unlearn": (unlearn, 0), "retain": (retain, 0)}
    b = cfg.eval.batch_size
    mmb = subset_groups(read_mmbench(world / "mmbench.tsv"), cfg.eval.mmbench_groups, seed=0) \
        if cfg.eval.mmbench_groups else read_mmbench(world / "mmbench.tsv")
    rows = [
        ("MCQ accuracy, D_unlearn + D_retain", lambda: [evaluate_mcq(lm, ps, enc=enc, batch_size=b) for ps in
                                                        (unlearn, retain)]),
        ("MMBench (the run's subset)", lambda: evaluate_mmbench(lm, mmb, enc=enc, batch_size=b)),
        (f"membership inference ({len(ctx.holdout)} held-out people)", lambda: mia_record(ctx, lm, enc, sets)),
        ("cloze, D_unlearn + D_retain", lambda: evaluate_cloze(lm, unlearn + retain, enc=enc, batch_size=16)),
        ("generation, D_unlearn + D_retain", lambda: evaluate_generation(lm, unlearn + retain, enc=enc,
                                                                         batch_size=16)),
    ]
    print(f"mini world {a.mini_size}, {len(unlearn)} + {len(retain)} people, {a.threads} thread(s), best of "
          f"{a.repeats}")
    for name, fn in rows:
        print(f"  {name:48s} {timed(fn, a.repeats):6.2f} s")
    print("An evaluation of the default run = the first two rows (+ membership inference, on by default); the "
          "oracle's evaluation is one more such evaluation per split seed.")


if __name__ == "__main__":
    main()
