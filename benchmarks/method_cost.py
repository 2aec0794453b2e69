"""What the reference-based methods cost: GA vs GA+KLR vs NPO (and any other registered method) on the same model,
the same forget/retain samples, the same batch size and the same number of steps, each in its own process so its
peak memory is its own.

    python benchmarks/method_cost.py [--methods ga,ga_klr,npo] [--ckpt DIR] [--steps 20] [--batch 8] [--threads 2]

Model and people: by default the default mini world's fine-tuned tiny LLaVA and its fictional people (built into the
cache first if missing); with `--ckpt` (any checkpoint `pulse.models.load.load_model` reads, e.g. a LLaVA-1.5-shaped
one written by `pulse.models.llava_shaped.write_checkpoint`) synthetic MLLMU-Bench-format people
(`llava_shaped.synthetic_people`). Unlearning data: each person's 10 MCQs as QA, as `pulse run` (paper Table 2).

Per method, one JSON line: request_s (the whole `unlearn_request`, incl. NPO's pass over the forget set with the
adapter disabled, LoRA set-up and merge), step_s (median optimizer step), peak_mib (peak RSS during the request over
the RSS after loading, CPU; on CUDA max_memory_allocated), and the ratios to the first method. Run it alone: two
heavy jobs on 2 cores halve each other's speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _model_and_people(ckpt: str | None, n: int):
    from pulse.models.batches import Encoder
    from pulse.models.load import load_model

    if ckpt:
        from pulse.models import llava_shaped as L
        lm, people = load_model(ckpt), L.synthetic_people(n, seed=3)
    else:
        from pulse.config import load_config
        from pulse.data.mllmu import read_people
        from pulse.mini.cache import ensure_mini
        world = ensure_mini(load_config(None).mini, log=lambda *_: None)
        lm, people = load_model(world / "models" / "finetuned"), read_people(world / "mllmu", "Full_Set")[:n]
    return lm, Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype, eos=True), people


def run_one(method: str, a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from dataclasses import replace

    from pulse.config import UnlearnSection
    from pulse.protocol.scenarios import mcq_samples
    from pulse.unlearn.loop import unlearn_request

    lm, enc, people = _model_and_people(a.ckpt, a.people)
    forget_people, retain_people = people[: a.people // 2], people[a.people // 2:]
    forget, retain = mcq_samples(forget_people, lm.template), mcq_samples(retain_people, lm.template)
    cfg = replace(UnlearnSection(), budget="steps", steps=a.steps, batch_size=a.batch, lr=1e-4, schedule="constant",
                  lora_dropout=0.0, format="model", eos=True, mask="answer")
    steps: list[float] = []
    last = [time.perf_counter()]

    def tick(step):  # called before each step: the time since the previous call is one step
        now = time.perf_counter()
        if step > 0:
            steps.append(now - last[0])
        last[0] = now

    cuda = lm.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    t = time.perf_counter()
    import pulse.unlearn.loop as loop
    fit = loop.fit
    loop.fit = lambda *args, **kw: fit(*args, **{**kw, "on_step": tick})
    try:
        _, result = unlearn_request(lm.model, enc, method, "proj+llm", forget, retain, cfg, seed=0)
    finally:
        loop.fit = fit
    request_s = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _status_mib("VmHWM") - base
    return {"method": method, "status": result.status, "steps": a.steps, "batch": a.batch,
            "forget_samples": len(forget), "request_s": round(request_s, 2),
            "step_s": round(statistics.median(steps), 4) if steps else None, "peak_mib": round(peak, 1),
            "memory": "cuda max_memory_allocated" if cuda else "peak RSS over RSS after loading",
            "threads": a.threads, "loadavg_1min_at_end": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ga,ga_klr,npo")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--people", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", help=argparse.SUPPRESS)  # internal: one method in this process
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.method:
        print(json.dumps(run_one(a.method, a)), flush=True)
        return
    passthrough = [f"--steps={a.steps}", f"--batch={a.batch}", f"--people={a.people}", f"--threads={a.threads}"]
    passthrough += [f"--ckpt={a.ckpt}"] if a.ckpt else []
    first = None
    for method in a.methods.split(","):
        proc = subprocess.run([sys.executable, __file__, f"--method={method}", *passthrough], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            print(json.dumps({"method": method, "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        first = first or out
        out["time_ratio"] = round(out["request_s"] / first["request_s"], 2)
        out["step_ratio"] = round(out["step_s"] / first["step_s"], 2) if out["step_s"] and first["step_s"] else None
        out["memory_ratio"] = round(out["peak_mib"] / first["peak_mib"], 2) if first["peak_mib"] > 0 else None
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
