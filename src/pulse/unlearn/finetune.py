"""Fine-tuning — the protocol's first step (paper Figure 1a) — through the same loop as unlearning (`loop.fit`).

`train_on` trains a model on samples with NLL (batch token mean = the HF model's built-in loss, which MLLMU-Bench
uses) under a `FinetuneSection` recipe; `pulse finetune` (`run_finetune`) and the mini world's two phases call it.

`pulse finetune` follows MLLMU-Bench's `finetune.py` with its README command (`--batch_size 4 --lr 2e-5
--num_epochs 5`): the first N `Full_Set` people by ID; their `ft_Data` QA pairs, one sample each with the person's
image, written `USER: <image>\\n{question}\\nASSISTANT: {answer}` with no EOS appended; loss on the whole sequence
(MLLMU-Bench labels = input_ids with pads −100; PULSE also masks the image tokens); no truncation (MLLMU-Bench's
`--max_length` has no effect: its `max_length=` is commented out); LoRA r16/α16/dropout 0.05, Gaussian init, on
the modules peft matches for MLLMU-Bench's target names (`mllmu`: LLM linears + CLIP q/k/v); AdamW, weight decay
0, linear decay to 0, no warm-up, no clipping; merged and saved as a standard llava-hf checkpoint directory.

Output DIR is built as DIR.partial and renamed at the end; an existing DIR is never touched. DIR.partial/checkpoints
holds the resumable training state: rerunning the same command after Ctrl-C or a kill continues from the last
checkpoint and gives the same weights as an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..data.mllmu import FT_DATA, FULL_SET, config_files, read_people, read_qa_pairs
from ..errors import PulseError
from ..eval.mcq import evaluate_mcq
from ..fsutil import atomic_write_json
from ..models.batches import Encoder, Sample, forward
from ..models.load import DTYPES, load_model, save_model
from ..models.templates import MLLMU
from ..provenance import versions
from .checkpoints import Checkpoints
from .loop import batch_plan, finish, fit, prepare, release_fp32, weighted_plan
from .losses import nll
from .recipe import FinetuneSection

RECORD = "pulse_finetune.json"
SAMPLE_FORMAT = "USER: <image>\\n{question}\\nASSISTANT: {answer}"


def train_on(model, enc: Encoder, samples: list[Sample], r: FinetuneSection, *, weights=None, ckpt_dir=None,
             desc: str = "fine-tuning", leave: bool = False, on_step=None, frozen: tuple[str, ...] = ()):
    """Train `model` on `samples` (NLL, mask `r.mask`, EOS `r.eos`); returns (model, info). LoRA is merged.

    `r.sampler` "shuffle": shuffled epochs (or cycling full batches under budget steps); "weighted": the mini's
    replay sampler with `weights` (one per sample). `ckpt_dir`: resumable checkpoints every `r.save_every` steps.
    `frozen` (mode full): parameter-name prefixes left out of the update (the mini's pre-training keeps its vision
    tower frozen, as LLaVA keeps CLIP frozen)."""
    if not samples:
        raise PulseError("nothing to fine-tune on: no samples")
    if r.sampler == "weighted":
        if weights is None or len(weights) != len(samples):
            raise PulseError("sampler 'weighted' needs one weight per sample")
        plan = weighted_plan(samples, weights, r.batch_size, r.steps, r.seed)
    else:
        plan = batch_plan(len(samples), r, [r.seed, 0])
    target = None if r.target == "all" else r.target
    model, named, info = prepare(model, target, r, r.mode, r.seed)
    if frozen:
        for n, p in model.named_parameters():
            if n.startswith(frozen):
                p.requires_grad_(False)
        named = [(n, p) for n, p in named if not n.startswith(frozen)]
        info.update(frozen=list(frozen), trainable_parameters=sum(p.numel() for _, p in named))
    if target is None and info["master_fp32_modules"]:  # the whole model went to fp32: so do the pixel values
        enc.dtype = next(model.parameters()).dtype

    def loss_fn(idx):
        batch = enc.batch([samples[i] for i in idx], mask=r.mask, eos=r.eos)
        loss = nll(forward(model, batch), batch["labels"])
        return loss, {"loss": loss.item()}

    ckpt = Checkpoints(ckpt_dir, r.save_every) if ckpt_dir is not None else None
    losses, status = fit(named, plan, loss_fn, r, ckpt=ckpt, desc=desc, leave=leave, on_step=on_step)
    if status != "ok":
        raise PulseError(f"{desc}: the {losses[-1].get('diverged', 'loss')} became non-finite at step "
                         f"{losses[-1]['step']}; lower the lr")
    model = finish(model, r.mode, r)
    per_epoch = len(plan) // r.epochs if r.budget == "epochs" and r.sampler == "shuffle" else None
    info.update({"steps": len(plan), "steps_per_epoch": per_epoch, "samples": len(samples), "losses": losses})
    return model, info


def loss_summary(losses: list[dict], steps_per_epoch: int | None) -> dict:
    values = [x["loss"] for x in losses]
    out = {"first": values[0], "last": values[-1], "mean_last_50": float(np.mean(values[-50:]))}
    if steps_per_epoch:
        out["per_epoch_mean"] = [float(np.mean(values[i:i + steps_per_epoch]))
                                 for i in range(0, len(values), steps_per_epoch)]
    return out


def finetune_samples(pairs, template) -> list[Sample]:
    """One sample per QA pair: image pairs with the person's image (MLLMU-Bench trains image pairs only)."""
    return [Sample(template.prompt(q.question, image=q.form == "image"), q.answer,
                   q.image if q.form == "image" else None) for q in pairs]


def _files_record(root: Path, config: str) -> list[dict]:
    out = []
    for f in config_files(root, config):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out.append({"file": str(f.relative_to(root)), "bytes": f.stat().st_size, "sha256": h.hexdigest()})
    return out


def _people_and_pairs(data: Path, n: int, exclude=()) -> tuple[list, list]:
    """The first `n` Full_Set people by ID but `exclude` (a retrained oracle: without D_unlearn) and their
    training-flavour QA pairs (every person must have some)."""
    people = sorted(read_people(data, FULL_SET), key=lambda p: p.id)
    if len(people) < n:
        raise PulseError(f"{data}/{FULL_SET}: {len(people)} people, finetune.people asks for {n}")
    people = people[:n]
    if outside := sorted(set(exclude) - {p.id for p in people}):
        raise PulseError(f"--exclude: {len(outside)} people are not among the first {n} of {FULL_SET} "
                         f"(e.g. {outside[0]!r})")
    people = [p for p in people if p.id not in set(exclude)]
    ids = {p.id for p in people}
    pairs = [q for q in read_qa_pairs(data, FT_DATA) if q.person_id in ids]
    missing = sorted(ids - {q.person_id for q in pairs})
    if missing:
        raise PulseError(f"{data}/{FT_DATA}: no QA pairs for people {missing[:5]}")
    return people, pairs


def _open_partial(partial: Path, marker: Path, request: dict, log) -> None:
    """The OUT.partial folder of this fine-tuning: resumed when it holds one with the same arguments, else new."""
    if partial.exists():
        old = json.loads(marker.read_text()) if marker.is_file() else None
        if old != request:
            raise PulseError(f"{partial}: holds an unfinished fine-tuning with other arguments; rerun with the same "
                             f"arguments to resume it, or delete it")
        log(f"resuming the fine-tuning in {partial}")
    else:
        partial.mkdir(parents=True)
        atomic_write_json(marker, request)


def run_finetune(base, data, out, ft: FinetuneSection, *, device: str = "auto", dtype: str = "auto",
                 template: str | None = None, log=print, on_step=None, exclude=()) -> dict:
    """`pulse finetune`: fine-tune `base` on the first `ft.people` Full_Set people of the MLLMU-Bench folder `data`
    but `exclude` (the retrained oracle of a split: its D_unlearn), write the merged checkpoint to `out`
    (atomically) with `pulse_finetune.json`; returns that record."""
    base, data, out = str(base), Path(data).expanduser(), Path(out).expanduser()
    if out.exists():
        raise PulseError(f"{out}: already exists; a finished fine-tuning is never overwritten — choose a new --out")
    partial = out.with_name(out.name + ".partial")
    people, pairs = _people_and_pairs(data, ft.people, exclude)
    request = {"base": base, "data": str(data), "people": [p.id for p in people], "recipe": asdict(ft),
               "device": device, "dtype": dtype, "template": template}
    marker = partial / "pulse_finetune.request.json"
    _open_partial(partial, marker, request, log)
    started = time.time()
    lm = load_model(base, dtype=dtype, device=device, template=template)
    enc = Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype, eos=ft.eos)
    samples = finetune_samples(pairs, MLLMU)
    log(f"fine-tuning {Path(base).name} on {len(people)} people, {len(samples)} QA pairs "
        f"({ft.epochs if ft.budget == 'epochs' else ft.steps} {ft.budget}, batch {ft.batch_size}, lr {ft.lr})")
    model, info = train_on(lm.model, enc, samples, ft, ckpt_dir=partial / "checkpoints", desc="pulse finetune",
                           leave=True, on_step=on_step)
    if ft.save_dtype is not None:
        release_fp32(model, DTYPES[ft.save_dtype])
        model.to(DTYPES[ft.save_dtype])
    lm.model = model
    losses = info.pop("losses")
    mcq = evaluate_mcq(lm, people, batch_size=ft.eval_batch_size)
    record = {
        "base": base, "people": [p.id for p in people], "excluded": sorted(exclude),
        "data": {"path": str(data), "config": FT_DATA, "files": _files_record(data, FT_DATA), "pairs": len(pairs),
                 "image_pairs": sum(q.form == "image" for q in pairs)},
        "sample_format": SAMPLE_FORMAT, "eos": ft.eos,
        "loss_tokens": "every text token after BOS: USER:, question, ASSISTANT:, answer (MLLMU-Bench: input_ids "
                       "with pads -100); image tokens and padding masked" if ft.mask == "sequence"
                       else "answer tokens only",
        "recipe": asdict(ft), "seed": ft.seed, "device": str(lm.device), "dtype": dtype,
        "saved_dtypes": sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()}),
        "versions": versions(), "training": info, "losses": loss_summary(losses, info["steps_per_epoch"]),
        "mcq_accuracy": {"image": round(mcq.accuracy["image"], 2), "text": round(mcq.accuracy["text"], 2),
                         "n": mcq.n, "scoring": lm.scoring, "demo_ids": mcq.demo_ids},
        "time_s": round(time.time() - started, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_model(lm, partial, extra={"phase": "finetuned", "finetune": RECORD})
    atomic_write_json(partial / RECORD, record)
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)
    marker.unlink()
    partial.rename(out)
    return record
