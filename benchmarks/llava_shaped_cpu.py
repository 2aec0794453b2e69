"""CPU figures for the LLaVA-1.5-shaped random checkpoint (full widths, few layers; `pulse.models.llava_shaped`).

Parts, each in its own process so that its peak RSS is its own: `peak_rss_mib` (ru_maxrss, loading included) and
`peak_rss_after_load_mib` (VmHWM reset after loading: the part's own peak):
  write     write the checkpoint (float16 on disk, as published): seconds, bytes
  load      `load_model` (float32, cpu): seconds
  forward   one forward pass of one MLLMU-Bench training sample with its image (~600 tokens), float32, no grad
  train     LoRA (r16/α16, proj+llm) steps with batch 1: NLL on the answer tokens, backward, AdamW
  generate  greedy 5 new tokens after a 6-image few-shot MLLMU-Bench MCQ prompt (~3,500 tokens; pulse.eval.prompts)

    python benchmarks/llava_shaped_cpu.py [--ckpt DIR] [--size 7b] [--text-layers 1] [--vision-layers 2]
                                          [--threads 2] [--parts write,load,forward,train,generate]
Prints one JSON line per part, with wall seconds and process CPU seconds (user + system; on a busy machine CPU
seconds / threads approximates the wall time alone). Run it alone: two heavy jobs on 2 cores halve each other's speed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

PARTS = ("write", "load", "forward", "train", "generate")


def _status_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since start or since `_reset_peak`) from /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load(ckpt):
    from pulse.models.batches import Encoder
    from pulse.models.load import load_model

    t = time.perf_counter()
    lm = load_model(ckpt)
    return lm, Encoder(lm.processor, eos=False), time.perf_counter() - t


def _sample(person):
    from pulse.models.batches import Sample
    from pulse.models.templates import MLLMU

    q = person.image_mcqs[0]
    answer = f"This person works as a {q.options[q.answer]} and lives in Lisbon, Portugal."
    return Sample(MLLMU.prompt(q.question, image=True), answer, person.image)


def run_part(part: str, a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from pulse.models import llava_shaped as L

    out: dict = {"part": part}
    if part == "write":
        t, c = time.perf_counter(), _cpu_s()
        facts = L.write_checkpoint(a.ckpt, size=a.size, text_layers=a.text_layers, vision_layers=a.vision_layers,
                                   overwrite=True, log=lambda *_: None)
        out.update(seconds=round(time.perf_counter() - t, 1), cpu_s=round(_cpu_s() - c, 1),
                   gib_on_disk=round(facts["bytes"] / 2**30, 3),
                   parameters_m=round(facts["parameters"] / 1e6, 1),
                   **{k: facts[k] for k in ("tokenizer_s", "build_s", "write_s")})
        return out
    c = _cpu_s()
    lm, enc, load_s = _load(a.ckpt)
    out.update(load_s=round(load_s, 1), load_cpu_s=round(_cpu_s() - c, 1),
               load_peak_rss_mib=round(_status_mib("VmHWM")), rss_after_load_mib=round(_status_mib("VmRSS")))
    _reset_peak()
    person = L.synthetic_people(1, seed=1)[0]
    if part == "forward":
        from pulse.models.batches import forward

        batch = enc.batch([_sample(person)])
        t, c = time.perf_counter(), _cpu_s()
        with torch.no_grad():
            logits = forward(lm.model, batch)
        out.update(seconds=round(time.perf_counter() - t, 2), cpu_s=round(_cpu_s() - c, 1),
                   tokens=int(batch["input_ids"].shape[1]),
                   finite=bool(torch.isfinite(logits).all()))
    elif part == "train":
        from peft import LoraConfig, get_peft_model

        from pulse.models.batches import forward
        from pulse.models.targets import target_regex
        from pulse.unlearn.losses import nll

        model = get_peft_model(lm.model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05,
                                                    target_modules=target_regex("proj+llm")))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-5)
        batch = enc.batch([_sample(person)])
        times, cpu, losses = [], [], []
        for _ in range(a.steps):
            t, c = time.perf_counter(), _cpu_s()
            loss = nll(forward(model, batch), batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(round(time.perf_counter() - t, 2))
            cpu.append(round(_cpu_s() - c, 1))
            losses.append(round(loss.item(), 3))
        out.update(step_seconds=times, step_cpu_s=cpu, losses=losses, tokens=int(batch["input_ids"].shape[1]),
                   answer_tokens=int((batch["labels"] != -100).sum()),
                   trainable_m=round(sum(p.numel() for p in params) / 1e6, 2))
    elif part == "generate":
        from pulse.eval import prompts as P
        from pulse.eval.generate import generate

        demo, query = L.synthetic_people(2, seed=2)
        demos = P.demo_mcqs([demo], "image")
        mcq = query.image_mcqs[0]
        prompt = P.mcq_prompt(mcq, demos)
        images = P.mcq_images(query.image, P.demo_images([demo], "image"))
        n_tokens = len(enc.tok(prompt.replace("<image>", "<image>" * 576))["input_ids"])
        t, c = time.perf_counter(), _cpu_s()
        text = generate(lm.model, enc, [prompt], [images], max_new_tokens=5, batch_size=1)[0]
        out.update(seconds=round(time.perf_counter() - t, 1), cpu_s=round(_cpu_s() - c, 1), images=len(images),
                   prompt_tokens=n_tokens,
                   new_tokens=5, output=text)
    elif part != "load":
        raise SystemExit(f"unknown part {part!r}")
    out["peak_rss_after_load_mib"] = round(_status_mib("VmHWM"))  # the part's own peak (load excluded)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=os.path.join(tempfile.gettempdir(), "llava-1.5-7b-shaped"))
    ap.add_argument("--size", default="7b", choices=("7b", "13b"))
    ap.add_argument("--text-layers", type=int, default=1)
    ap.add_argument("--vision-layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="LoRA steps timed in the train part")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if a.part:
        out = run_part(a.part, a)
        out["peak_rss_mib"] = max(out.get("load_peak_rss_mib", 0),  # clear_refs also resets ru_maxrss
                                  round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        out["loadavg_1min_at_end"] = round(os.getloadavg()[0], 1)  # > threads: other jobs shared the cores
        out.update(threads=a.threads, size=a.size, text_layers=a.text_layers, vision_layers=a.vision_layers)
        print(json.dumps(out), flush=True)
        return
    passthrough = [f"--ckpt={a.ckpt}", f"--size={a.size}", f"--text-layers={a.text_layers}",
                   f"--vision-layers={a.vision_layers}", f"--threads={a.threads}", f"--steps={a.steps}"]
    for part in a.parts.split(","):
        proc = subprocess.run([sys.executable, __file__, f"--part={part}", *passthrough], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            print(json.dumps({"part": part, "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
