"""Memory and time at paper scale: a full-depth LLaVA-1.5-13B-shaped random model (40 text + 24 CLIP layers, bf16)
on a GPU, built in memory from the published config (`pulse.models.llava_shaped`); nothing is written to disk.

Measured, each with the peak GPU memory (`torch.cuda.max_memory_allocated`, reset before it) and wall time:
  ga_klr   one unlearning request with a 1-step budget through `pulse.unlearn.loop.unlearn_request`: LoRA on
           proj+llm, gradient ascent on 4 forget samples + KL to the reference (adapter disabled) on 4 retain
           samples; MLLMU-Bench sample format `USER: <image>\\n{q}\\nASSISTANT: {a}`, one 336-px image each (576
           image tokens). Includes wrapping the adapter and merging it at the end. The recipe is PULSE's default
           (MLLMU-Bench's: with `master_fp32` the LoRA-target layers are held in fp32) — see `--recipe`.
  npo      the same request with NPO (its reference log-probs of the forget set are computed first)
  mmbench  `evaluate_mmbench` on 100 synthetic rows (random images, 4 options, a hint on every other row),
           generate scoring, LLaVA-1.5 template. A random model never emits EOS, so every row decodes exactly
           --mmbench-new-tokens tokens (default 8; a real LLaVA-1.5 answers "A" + EOS, 2 tokens).

    python benchmarks/paper_scale.py [--size 13b] [--batch 4] [--rows 100] [--mmbench-new-tokens 8]
    python benchmarks/paper_scale.py --smoke      # CPU, 7b widths, 1 text + 2 vision layers, tiny budgets
    python benchmarks/paper_scale.py --device cpu --layers N [--vision-layers M]
Without CUDA it refuses unless --device cpu and --layers are given (or --smoke). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(name: str, device, fn) -> dict:
    """Run fn(); wall seconds and peak memory (GPU: max allocated since a reset; CPU: process peak RSS so far)."""
    import resource

    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t = time.perf_counter()
    extra = fn() or {}
    _sync(device)
    out = {"seconds": round(time.perf_counter() - t, 2), **extra}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    else:
        out["process_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(f"{name}: {out}", file=sys.stderr, flush=True)
    return out


def unlearn_config(batch: int, overrides: dict):
    """The default unlearning recipe (MLLMU-Bench's) with a steps budget of 1, LoRA, `batch` samples per batch."""
    try:
        from pulse.config import UnlearnSection as Section
    except ImportError:  # older layout
        from pulse.unlearn.loop import UnlearnConfig as Section
    wanted = {"budget": "steps", "steps": 1, "batch_size": batch, "mode": "lora", **overrides}
    known = {f.name for f in fields(Section)}
    unknown = set(overrides) - known
    if unknown:
        raise SystemExit(f"paper_scale: unknown recipe field(s) {sorted(unknown)}; known: {sorted(known)}")
    return Section(**{k: v for k, v in wanted.items() if k in known})


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def samples(people):
    """MLLMU-Bench training samples (image form), one per person: question + a sentence answer."""
    from pulse.models.batches import Sample
    from pulse.models.templates import MLLMU

    out = []
    for p in people:
        q = p.image_mcqs[0]
        out.append(Sample(MLLMU.prompt(q.question, image=True),
                          f"This person works as a {q.options[q.answer]} and lives in Lisbon, Portugal.", p.image))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("7b", "13b"), default="13b")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu (needs --layers)")
    ap.add_argument("--layers", type=int, default=None, help="text layers (default: full depth, 40 for 13b)")
    ap.add_argument("--vision-layers", type=int, default=None, help="CLIP layers (default: full depth, 24)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--batch", type=int, default=4, help="unlearning batch size (forget and retain)")
    ap.add_argument("--rows", type=int, default=100, help="MMBench rows evaluated")
    ap.add_argument("--mmbench-new-tokens", type=int, default=8)
    ap.add_argument("--eval-batch-size", type=int, default=64, help="evaluate_mmbench batch_size (CLI default)")
    ap.add_argument("--methods", default="ga_klr,npo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                    help="unlearning recipe override, e.g. master_fp32=false or gradient_checkpointing=true")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU proof that the script runs: 7b widths, 1 text + 2 vision layers, batch 1, 2 rows")
    a = ap.parse_args(argv)
    if a.smoke:
        a.device, a.size, a.layers, a.vision_layers = "cpu", "7b", a.layers or 1, a.vision_layers or 2
        a.batch, a.rows, a.mmbench_new_tokens, a.dtype = 1, 2, 2, "float32"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    if a.device is None:
        a.device = "cuda" if torch.cuda.is_available() else None
    if a.device is None or (a.device == "cpu" and a.layers is None):
        print("paper_scale: no CUDA GPU here. This benchmark measures a full-depth 13B-shaped model on a GPU; for a "
              "CPU smoke test pass --smoke, or --device cpu --layers N [--vision-layers M].", file=sys.stderr)
        return 2
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"paper_scale: --device {a.device} but torch sees no CUDA device.", file=sys.stderr)
        return 2
    device = torch.device(a.device)

    from pulse.eval.mmbench import evaluate_mmbench
    from pulse.models import llava_shaped as L
    from pulse.models.batches import Encoder
    from pulse.models.load import DTYPES, LoadedModel
    from pulse.models.templates import TEMPLATES
    from pulse.unlearn.loop import unlearn_request

    config = L.published_config(a.size, a.layers, a.vision_layers)
    result: dict = {"size": a.size, "device": str(device), "dtype": a.dtype,
                    "text_layers": config["text_config"].get("num_hidden_layers", L.FULL_TEXT_LAYERS[a.size]),
                    "vision_layers": config["vision_config"]["num_hidden_layers"], "batch": a.batch, "rows": a.rows,
                    "mmbench_new_tokens": a.mmbench_new_tokens}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    holder = {}

    def build():
        holder["model"] = L.build_model(config, seed=a.seed, dtype=a.dtype, device=str(device))
        return {"parameters_b": round(sum(p.numel() for p in holder["model"].parameters()) / 1e9, 3)}

    result["build"] = _measure("build", device, build)
    processor = L.build_processor(L.build_tokenizer())
    enc = Encoder(processor, device=device, dtype=DTYPES[a.dtype], eos=False)
    people = L.synthetic_people(2 * a.batch, seed=a.seed)
    forget, retain = samples(people[:a.batch]), samples(people[a.batch:])
    result["sample_tokens"] = int(enc.batch(forget[:1])["input_ids"].shape[1])
    cfg = unlearn_config(a.batch, {k: _value(v) for k, v in (r.split("=", 1) for r in a.recipe)})
    result["recipe"] = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    for method in a.methods.split(","):
        def step(method=method):
            holder["model"], res = unlearn_request(holder["model"], enc, method, "proj+llm", forget, retain, cfg,
                                                   seed=a.seed, desc=method)
            return {"status": res.status, "loss": round(res.losses[-1]["loss"], 4) if res.losses else None}
        result[method] = _measure(method, device, step)
    items = L.synthetic_mmbench(a.rows, seed=a.seed)
    lm = LoadedModel(model=holder["model"], processor=processor, template=TEMPLATES["llava-1.5"], scoring="generate",
                     path=None)

    def mmbench():
        out = evaluate_mmbench(lm, items, scoring="generate", enc=enc, max_new_tokens=a.mmbench_new_tokens,
                               batch_size=a.eval_batch_size)
        return {"rows": out["rows"], "vanilla": round(out["vanilla"], 1), "z_share": round(out["z_share"], 1)}

    result["mmbench"] = _measure("mmbench", device, mmbench)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
