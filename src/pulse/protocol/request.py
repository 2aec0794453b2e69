"""One unlearning request of a cell: train it (locally, or sharded across a process group: the only call sites of
the training loop), evaluate the model after it, and return the request's record (request<R>.json)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import progress
from ..models.batches import Encoder
from ..models.load import LoadedModel
from ..unlearn.checkpoints import Checkpoints
from ..unlearn.loop import finish, prepare, steps_for, unlearn_request
from ..unlearn.recipe import UnlearnSection
from ..unlearn.sharded import group_request
from . import fingerprint
from .baseline import Baseline
from .context import Context
from .plan import Cell, request_seed
from .scenarios import splits
from .track import Track


@dataclass
class CellSetup:
    """What every request of one cell shares, set up once: the cell and its baseline, where its files go, the
    evaluation model and encoder, the method as registered and its recipe, the evaluated sets, the retain samples."""
    ctx: Context
    cell: Cell
    baseline: Baseline
    folder: Path
    lm: LoadedModel
    enc: Encoder
    registered: str
    recipe: UnlearnSection
    sets: dict
    retain_samples: list

    @property
    def requests(self) -> list:
        """The people each request unlearns: the folds of a sequence, or D_unlearn at once."""
        return self.baseline.people.folds or [self.baseline.people.unlearn]

    @property
    def label(self) -> str:
        c = self.cell
        return f"{c.scenario} {c.method} {c.target} seed {c.seed}"

    def forget_samples(self, r: int) -> list:
        return self.baseline.people.forget_of(self.requests[r - 1], self.lm.template)


@dataclass
class Done:
    """A trained and evaluated request: the model after it, its record, and (kept for the probes) its trainable
    LoRA weights at the budget when training went on past it."""
    model: object
    record: dict
    status: str
    diverged: dict  # {"reason", "step"} of a diverged request, else empty
    lora_at_budget: list | None


def run_request(setup: CellSetup, r: int, model, before: dict, *, fresh: bool, keep_lora: bool) -> Done:
    """Train request r on `model` (the model after request r-1; `before`: that model's evaluation) and evaluate
    the model after it. `fresh`: drop in-request checkpoints (they belong to another trajectory). `keep_lora`: keep
    the trainable LoRA weights at the budget, for the probes. The in-request checkpoints stay until the caller has
    written the record."""
    ctx, cell, stop, people = setup.ctx, setup.cell, setup.baseline.stop, setup.baseline.people
    forget = setup.forget_samples(r)
    budget = steps_for(len(forget), setup.recipe)
    cap = (ctx.cfg.unlearn.stop.max_steps or budget) if stop else budget
    track = Track(ctx, setup.lm, setup.enc, setup.sets, setup.baseline.request0["halves"], before, budget,
                  max(budget, cap), cap, stop, keep_lora=keep_lora)
    ckpt_dir = setup.folder / f".request{r}.progress"
    if fresh:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if ctx.cfg.eval.every or stop:  # its in-request checkpoints are resumed only under the same fingerprint
        fingerprint.stamp_folder(ctx, ckpt_dir)
    model, result = _train(setup, r, model, forget, track, max(budget, cap), ckpt_dir)
    setup.lm.model = model
    mcq, mmb, status = _evaluation(setup, r, track, result.status)
    record = {"meta": {"scenario": cell.scenario, "method": cell.method, "target": cell.target, "seed": cell.seed,
                       "request": r},
              "status": status, "losses": result.losses, "training": result.info, "mcq": mcq, "mmbench": mmb,
              "splits": splits(cell.scenario, people.unlearn, people.retain, people.folds, r),
              "request_seed": request_seed(cell, r), "halves": setup.baseline.request0["halves"]}
    if ctx.cfg.eval.every:
        record["curve"] = track.state["curve"]
    if stop:
        record["matched"] = track.state["matched"] or _not_matched(stop, result, cap)
    n = len(setup.requests)
    if status == "diverged" and r < n:
        record["not_run"] = list(range(r + 1, n + 1))  # the sequence stops at a diverged request
    return Done(model, record, status, result.info.get("diverged") or {}, track.lora_at_budget)


def _not_matched(stop: dict, result, cap: int) -> dict:
    """The matched record of a request that never reached the target (or diverged first)."""
    diverged = result.status == "diverged"
    return {"reached": False, "status": "diverged" if diverged else "not_reached",
            "step": result.info["steps_done"] if diverged else cap,
            **{k: stop[k] for k in ("reference", "margin", "target")}, "cap": cap}


def _train(setup: CellSetup, r: int, model, forget: list, track: Track, max_steps: int, ckpt_dir: Path):
    """Train request r — sharded by every process of the group, or here — saving what it changed to
    request<R>.adapter/; (the model after it, RequestResult)."""
    ctx, cell, folder = setup.ctx, setup.cell, setup.folder
    tmp = folder / f".request{r}.adapter.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    seed = request_seed(cell, r)
    desc = f"{setup.label} request {r}/{len(setup.requests)}"
    if ctx.group is not None:  # every process of the group, sharded
        m = ctx.cfg.model
        before = {"checkpoint": str(ctx.models[setup.baseline.people.phase]), "dtype": m.dtype, "device": m.device,
                  "template": m.template, "trust_remote_code": m.trust_remote_code, "eos": ctx.cfg.unlearn.eos,
                  "applied": [str(folder / f"request{q}.adapter") for q in range(1, r)]}
        model, result = group_request(model, before, setup.registered, cell.target, forget, setup.retain_samples,
                                      setup.recipe, seed, accelerator=ctx.group, save_to=tmp, desc=desc)
    else:
        checkpoints = Checkpoints(ckpt_dir, every=0) if ctx.cfg.eval.every or track.stop else None
        model, result = unlearn_request(model, setup.enc, setup.registered, cell.target, forget,
                                        setup.retain_samples, setup.recipe, seed=seed, save_to=tmp, desc=desc,
                                        max_steps=max_steps, after_step=track.after_step, ckpt=checkpoints,
                                        extra=track.state)
    final = folder / f"request{r}.adapter"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return model, result


def _evaluation(setup: CellSetup, r: int, track: Track, trained: str) -> tuple[dict | None, dict | None, str]:
    """(MCQ, MMBench, status) of the model after request r at its budget: evaluated now when training ended there,
    taken from the track when training went on past it; a diverged request has nothing to measure."""
    st = track.state
    if st["budget"] is not None:  # evaluated during training, which went on past the budget
        return st["budget"]["mcq"], st["budget"]["mmbench"], "ok"
    if trained != "ok":  # diverged: the rows say diverged, accuracy empty
        return None, None, trained
    with progress.stage(f"{setup.label} request {r}/{len(setup.requests)}"):
        mcq, mmb = setup.ctx.evaluate(setup.lm, setup.enc, setup.sets)
    track.at_budget(mcq, mmb)
    return mcq, mmb, trained


def at_budget_from_kept(setup: CellSetup, model, lora: list):
    """The model after the last request at its budget, from its LoRA weights kept there: a fresh adapter on the
    model before it, given those weights, merged as the request merges."""
    n = len(setup.requests)
    model, named, _ = prepare(model, setup.cell.target, setup.recipe, "lora", request_seed(setup.cell, n))
    with torch.no_grad():
        for (_, p), kept in zip(named, lora, strict=True):
            p.copy_(kept)
    return finish(model, "lora", setup.recipe)


def replayed_to_budget(setup: CellSetup, model, info: dict):
    """The model after the last request at its budget, by training it again from the model before it to its
    budget (the same seeded steps); used after a resume lost the kept LoRA weights."""
    n = len(setup.requests)
    setup.ctx.log(f"probes: replaying {setup.label} request {n} to its budget "
                  f"({info['steps']} of {info['steps_done']} steps)")
    model, _ = unlearn_request(model, setup.enc, setup.registered, setup.cell.target, setup.forget_samples(n),
                               setup.retain_samples, setup.recipe, seed=request_seed(setup.cell, n),
                               desc=f"{setup.label} request {n} (replay)", max_steps=info["plan_steps"],
                               after_step=lambda k, _: "stop" if k >= info["steps"] else None)
    return model
