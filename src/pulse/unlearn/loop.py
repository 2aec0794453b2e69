"""The one training loop of PULSE — unlearning requests, `pulse finetune` and the mini world's two training phases
all run `fit` — plus what surrounds it: batch plans, the update (LoRA or full), fp32 master layers, checkpoints.

The optimisation recipe (`recipe.Recipe`) defaults to MLLMU-Bench's `baselines/` and `finetune.py`:
- budget: `epochs` × ceil(n / batch_size) optimizer steps per request (torch `DataLoader(shuffle=True)`: a fresh
  permutation per epoch, the last batch of an epoch smaller); `budget: steps` runs `steps` full batches cycling
  through fresh permutations. Methods with a retain term draw one full retain batch per forget batch, cycling.
  Batch plans are computed from the seed up front, so a resumed run continues the same order.
- AdamW (torch's, with transformers.AdamW's eps 1e-6 and weight decay 0 by default); lr multiplier per step s of T
  (warm-up w): (s + 1)/w while s < w, then `linear` m + (1 − m)·(T − s)/(T − w) (HF get_linear_schedule_with_warmup
  at m = 0), `cosine` m + (1 − m)·½(1 + cos(π(s − w)/(T − w))), or `constant` 1; stepped after every batch.
  Gradient clipping only when `clip` is set.
- Train mode, as MLLMU-Bench (`model.train()`), so LoRA dropout applies. Every other dropout the model has is
  recorded in the result (`train_mode_dropout.other`; LLaVA-1.5's configs have none: attention dropout 0). Reference
  passes (NPO's log-probs, KL's logits) run in eval mode with the adapter disabled.
- `master_fp32` (half-precision models): the updated layers are held in fp32 — weights cast up, inputs cast up and
  outputs cast back by hooks — so LoRA trains against and merges into fp32 weights and the layers stay fp32 across
  sequential requests. A bf16 merge otherwise rounds away about a third of a 1e-4-sized update (tests pin both).
  Memory: the target layers take 4 bytes per weight instead of 2 (LLaVA-1.5-7B LLM linears ≈ 6.5 B weights:
  +13 GB; 13B ≈ 12.7 B: +25 GB). MLLMU-Bench holds the whole model in fp32 (peft's prepare_model_for_kbit_training).
- `gradient_checkpointing`: `gradient_checkpointing_enable()` (transformers 5: `activation_checkpointing_enable`,
  non-reentrant) + `enable_input_require_grads()` (without it, LoRA with reentrant checkpointing trains nothing:
  open-unlearning #178); undone after the request.

One unlearning request: a fresh LoRA adapter on the update target is trained and merged at the end, so the next
request starts from — and uses as reference — the model after this one. The reference is the same weights with
the adapter disabled (no copy); NPO's forget-set reference log-probs are computed once per request, in batches of
the recipe's batch size. `mode="full"` updates the target's parameters directly; then only methods without a
per-step reference (ga, grad_diff, npo, simnpo, idk) are allowed.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import progress
from ..errors import PulseError
from ..models.batches import Encoder, Sample, forward
from ..models.targets import full_parameter_names, target_regex
from .checkpoints import Checkpoints
from .losses import sequence_logps_sum
from .methods import IDK_ANSWERS, Outputs, check_method_mode, get_method, method_loss
from .recipe import Recipe

HALF = (torch.float16, torch.bfloat16)


# --- batch plans --------------------------------------------------------------------------------------------------

def steps_for(n: int, r: Recipe) -> int:
    """Optimizer steps for n samples: epochs × ceil(n / batch_size), or `steps`."""
    return r.epochs * math.ceil(n / r.batch_size) if r.budget == "epochs" else r.steps


def epoch_plan(n: int, batch_size: int, epochs: int, seed) -> list[list[int]]:
    """DataLoader(shuffle=True, drop_last=False): per epoch a fresh permutation, cut into batches (last smaller)."""
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(epochs):
        order = rng.permutation(n).tolist()
        plan += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return plan


def cycle_plan(n: int, batch_size: int, steps: int, seed) -> list[list[int]]:
    """`steps` batches of min(batch_size, n) indices cycling through fresh permutations of n samples."""
    rng = np.random.default_rng(seed)
    plan, order = [], []
    for _ in range(steps):
        while len(order) < min(batch_size, n):
            order.extend(rng.permutation(n).tolist())
        plan.append(order[:batch_size])
        order = order[batch_size:]
    return plan


def batch_plan(n: int, r: Recipe, seed, steps: int | None = None) -> list[list[int]]:
    """The recipe's batches; `steps` (>= 1) lengthens or shortens the plan to that many batches by continuing the
    same seeded stream (more epochs, or more cycles), so its first batches are the recipe's own."""
    if n < 1:
        raise PulseError("nothing to train on: the sample set is empty")
    if r.budget == "epochs":
        per_epoch = math.ceil(n / r.batch_size)
        epochs = r.epochs if steps is None else max(r.epochs, math.ceil(steps / per_epoch))
        plan = epoch_plan(n, r.batch_size, epochs, seed)
    else:
        plan = cycle_plan(n, r.batch_size, r.steps if steps is None else max(r.steps, steps), seed)
    return plan if steps is None else plan[:steps]


def weighted_plan(samples: list[Sample], weights, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The mini world's replay sampler: every batch is homogeneous — text-only samples, or image samples of one
    prompt-length class — so short samples are not padded to the longest (2–3× faster on CPU). Each step picks a
    group with probability equal to its share of the total weight, then `batch_size` distinct samples within it
    by weight."""
    rng = np.random.default_rng(seed)
    w = np.asarray(weights, dtype=float)
    groups = _groups(samples, w, batch_size)
    group_p = np.array([w[g].sum() for g in groups])
    group_p /= group_p.sum()
    plan = []
    for _ in range(steps):
        g = groups[rng.choice(len(groups), p=group_p)]
        plan.append(rng.choice(g, size=min(batch_size, len(g)), replace=False, p=w[g] / w[g].sum()).tolist())
    return plan


def _groups(samples: list[Sample], w: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped by (has image, prompt length class); groups smaller than a batch are merged."""
    keys: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        if w[i] > 0:
            keys.setdefault((s.image is not None, len(s.prompt) // 64), []).append(i)
    groups, spill = [], []
    for key in sorted(keys):
        (groups if len(keys[key]) >= batch_size else spill).append(keys[key])
    if spill:
        merged = [i for part in spill for i in part]
        if groups and len(merged) < batch_size:
            groups[-1] = groups[-1] + merged
        else:
            groups.append(merged)
    return [np.asarray(g) for g in groups]


# --- the update: fp32 master layers, LoRA or full, train mode ----------------------------------------------------

def hold_fp32(model, target: str | None) -> int:
    """Hold the target's modules in fp32 when they are half precision: parameters cast up, floating inputs cast up
    (forward pre-hook), outputs cast back to the half dtype (forward hook). Idempotent (marked per module). Target
    None/"all" casts the whole model instead (as MLLMU-Bench does). Returns the number of modules converted."""
    if target in (None, "all"):
        if any(p.dtype in HALF for p in model.parameters()):
            model.float()
            return 1
        return 0
    pattern = re.compile(target_regex(target))
    n = 0
    for name, m in model.named_modules():
        if not pattern.fullmatch(name) or getattr(m, "_pulse_fp32", None) is not None:
            continue
        half = [p.dtype for p in m.parameters() if p.dtype in HALF]
        if not half:
            continue
        out_dtype = half[0]
        m.float()
        pre = m.register_forward_pre_hook(
            lambda mod, args: tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args))
        post = m.register_forward_hook(lambda mod, args, out, d=out_dtype: out.to(d))
        m._pulse_fp32 = (out_dtype, pre, post)
        n += 1
    return n


def release_fp32(model, dtype: torch.dtype | None = None) -> None:
    """Undo `hold_fp32` (remove the hooks) and cast those modules to `dtype` (default: their original half dtype)."""
    for _, m in model.named_modules():
        held = getattr(m, "_pulse_fp32", None)
        if held is not None:
            out_dtype, pre, post = held
            pre.remove()
            post.remove()
            m.to(dtype or out_dtype)
            m._pulse_fp32 = None


def dropout_report(model) -> dict:
    """Dropout that train mode switches on: LoRA's, and every other nn.Dropout / config `*dropout*` value > 0."""
    lora, other = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout) and m.p > 0:
            (lora if ".lora_dropout." in f".{name}." else other)[name] = m.p

    def walk(d: dict, prefix: str):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif "dropout" in str(k) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                other[f"config.{prefix}{k}"] = v
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        walk(config.to_dict(), "")
    return {"lora": sorted(set(lora.values())), "other": other}


@contextlib.contextmanager
def eval_mode(model):
    """Temporarily in eval mode (reference passes), then back to the previous mode."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _hf_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prepare(model, target: str | None, r: Recipe, mode: str, seed: int):
    """The model ready to train: (model — a peft model in LoRA mode —, [(name, trainable parameter)], info)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    n_fp32 = hold_fp32(model, target) if r.master_fp32 else 0
    if mode == "lora":
        init = "gaussian" if r.lora_init == "gaussian" else True
        model = get_peft_model(model, LoraConfig(r=r.lora_rank, lora_alpha=r.lora_alpha, lora_dropout=r.lora_dropout,
                                                 target_modules=target_regex(target), init_lora_weights=init))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    else:
        names = {n for n, _ in model.named_parameters()} if target in (None, "all") \
            else set(full_parameter_names(model, target))
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)
        named = [(n, p) for n, p in model.named_parameters() if n in names]
    if r.gradient_checkpointing:
        hf = _hf_model(model)
        (getattr(hf, "activation_checkpointing_enable", None) or hf.gradient_checkpointing_enable)()
        if not getattr(hf, "_require_grads_hooks", None):  # transformers 5 registers it itself for LLaVA
            hf.enable_input_require_grads()
    model.train()
    info = {"mode": mode, "target": target, "trainable_parameters": sum(p.numel() for _, p in named),
            "master_fp32_modules": n_fp32, "train_mode_dropout": dropout_report(model),
            "gradient_checkpointing": r.gradient_checkpointing}
    return model, named, info


def finish(model, mode: str, r: Recipe):
    """Merge the adapter (in fp32 under master_fp32), freeze, eval mode."""
    if r.gradient_checkpointing:
        hf = _hf_model(model)
        (getattr(hf, "activation_checkpointing_disable", None) or hf.gradient_checkpointing_disable)()
        hf.disable_input_require_grads()
        hf._require_grads_hooks = []
    if mode == "lora":
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


# --- the loop -----------------------------------------------------------------------------------------------------

def lr_factor(step: int, total: int, r: Recipe) -> float:
    """The lr multiplier for optimizer step `step` (0-based) of `total` (see the module docstring)."""
    w = r.warmup_steps
    if step < w:
        return (step + 1) / w
    if r.schedule == "constant":
        return 1.0
    t = (step - w) / max(1, total - w)
    decay = max(0.0, 1.0 - t) if r.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * t))
    return r.min_lr_ratio + (1 - r.min_lr_ratio) * decay


def grad_norm(params: list[torch.Tensor], clip: float | None) -> float:
    """The total L2 norm of the gradients before the update (clipped in place to `clip` when set — the norm returned
    is the one before clipping, as torch's `clip_grad_norm_`); NaN/inf when any gradient is non-finite."""
    if clip is not None:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


@torch.no_grad()
def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Every element of every tensor finite. Fast path: the total L2 norm (torch's fused per-device norms, one
    read of the data, one sync) is finite only if every element is; a non-finite norm is confirmed element-wise,
    since finite values above ~1e19 overflow the fp32 norm."""
    if not tensors:
        return True
    if math.isfinite(float(torch.nn.utils.get_total_norm(tensors))):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def fit(named: list[tuple[str, torch.nn.Parameter]], plan: list, loss_fn, r: Recipe, *,
        ckpt: "Checkpoints | None" = None, desc: str = "train", leave: bool = False, on_step=None, after_step=None,
        extra: dict | None = None) -> tuple[list[dict], str]:
    """Optimise: for each plan item, loss_fn(item) -> (loss, parts dict with "loss"), backward, clip, AdamW, scheduler.

    Returns (per-step records {step, lr, **parts}, status "ok" | "diverged"). Divergence stops the loop and is
    recorded in the last record as "diverged": "loss" | "gradient" | "weights":
    - a non-finite loss, or a non-finite total gradient norm (computed before every update: `clip_grad_norm_`'s
      return value, or `get_total_norm` without `clip`), ends training BEFORE that step's update, so the trainable
      parameters keep the values of the last update — the last finite weights (no copy is needed: with a finite
      loss and gradients AdamW's update is bounded by about lr per element);
    - after every update one `isfinite` pass over the trainable parameters (one device sync; cost in the README)
      catches an update that still overflowed. No copy of the weights is kept, so they are NOT restored then
      ("weights_restored": false in the record): the caller must not use them (the runner never evaluates,
      continues or probes a diverged request).
    With `ckpt`, resumes from the newest checkpoint and saves every `ckpt.every` steps and at the end.
    `on_step(step)` is called before each step (progress hooks, tests).

    `after_step(k)` is called with k = optimizer steps done: once before training (k = 0, fresh start only) and
    after every update. It returns None, "checkpoint" (save a checkpoint now — the caller recorded something in
    `extra`) or "stop" (save and end training here). `extra` (a JSON-serialisable dict the caller mutates) is
    saved in every checkpoint and restored in place on resume, so in-request evaluations survive a kill; a run
    that stopped stays stopped on resume."""
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=r.lr, betas=tuple(r.adam_betas), eps=r.adam_eps, weight_decay=r.weight_decay)
    total = len(plan)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, r))
    start, losses, stopped = ckpt.resume(named, opt, sched, plan, extra) if ckpt is not None else (0, [], False)
    status = "ok"
    if start == 0 and after_step is not None and after_step(0) == "stop":
        stopped = True
        if ckpt is not None:
            ckpt.save(0, named, opt, sched, plan, losses, extra, stopped=True)
    bar = progress.bar(range(start, total if not stopped else start), initial=start, total=total, desc=desc,
                       leave=leave, unit="step")
    for step in bar:
        if on_step is not None:
            on_step(step)
        lr = opt.param_groups[0]["lr"]
        loss, parts = loss_fn(plan[step])
        losses.append({"step": step, "lr": lr, **parts})
        diverged = _update(loss, parts["loss"], params, opt, sched, r.clip)
        if diverged:
            losses[-1].update(diverged)
            status = "diverged"
            break
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean([x['loss'] for x in losses[-20:]]):.3f}")
        flag = after_step(step + 1) if after_step is not None else None
        if ckpt is not None and (flag is not None or ckpt.due(step + 1, total)):
            ckpt.save(step + 1, named, opt, sched, plan, losses, extra, stopped=flag == "stop")
        if flag == "stop":
            break
    bar.close()
    return losses, status


def _update(loss, loss_value: float, params, opt, sched, clip) -> dict | None:
    """One optimizer step on `loss`, or what diverged instead: a non-finite loss or gradient norm (before the
    update), non-finite weights (after it)."""
    if not math.isfinite(loss_value):
        return {"diverged": "loss"}
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = grad_norm(params, clip)
    if not math.isfinite(norm):
        return {"diverged": "gradient", "grad_norm": norm}
    opt.step()
    sched.step()
    if not all_finite(params):
        return {"diverged": "weights", "weights_restored": False}
    return None


@dataclass
class RequestResult:
    status: str  # "ok" or "diverged"
    losses: list[dict]
    info: dict = field(default_factory=dict)  # resolved steps, budget, dropout, fp32 layers, reference batch size


def _idk(samples: list[Sample], seed: int) -> list[Sample]:
    rng = random.Random(seed)
    return [Sample(s.prompt, rng.choice(IDK_ANSWERS), s.image) for s in samples]


@torch.no_grad()
def reference_logps_sum(model, enc, samples, batch_size, mask) -> torch.Tensor:
    out = []
    with eval_mode(model):
        for start in range(0, len(samples), batch_size):
            batch = enc.batch(samples[start:start + batch_size], mask=mask)
            out.append(sequence_logps_sum(forward(model, batch), batch["labels"]))
    return torch.cat(out)


def request_plan(method_name: str, forget: list[Sample], retain: list[Sample], cfg, seed: int,
                 max_steps: int | None = None):
    """Checks and the seeded batch plan of one request: (method, forget samples as trained — IdK answers for
    `forget_answers: idk` —, budget steps, [(forget batch indices, retain batch indices or None)] per step)."""
    method = get_method(method_name)
    check_method_mode(method_name, cfg.mode)
    if not forget:
        raise PulseError("empty forget set")
    if method.retain_loss is not None and not retain:
        raise PulseError(f"method {method_name!r} needs retain data, but the retain set is empty")
    forget = _idk(forget, seed) if method.forget_answers == "idk" else forget
    budget_steps = len(batch_plan(len(forget), cfg, [seed, 0]))
    forget_plan = batch_plan(len(forget), cfg, [seed, 0], steps=max(budget_steps, max_steps or 0))
    retain_plan = cycle_plan(len(retain), cfg.batch_size, len(forget_plan), [seed, 1]) \
        if method.retain_loss is not None else [None] * len(forget_plan)
    return method, forget, budget_steps, list(zip(forget_plan, retain_plan))


def request_loss(model, enc: Encoder, method, forget: list[Sample], retain: list[Sample], cfg, ref_forget):
    """The loss of one plan item (forget indices, retain indices): the method's loss on the batches' outputs
    (`Outputs`), with the forget set's precomputed reference log-probs and — for retain-KL methods — the reference
    logits of the retain batch from the model with its adapter disabled (LoRA mode; refused in full mode)."""
    def loss_fn(item):
        fi, ri = item
        fb = enc.batch([forget[i] for i in fi], mask=cfg.mask)
        f_out = Outputs(forward(model, fb), fb["labels"],
                        ref_logps_sum=ref_forget[fi] if ref_forget is not None else None, params=cfg.params)
        r_out = None
        if method.retain_loss is not None:
            rb = enc.batch([retain[i] for i in ri], mask=cfg.mask)
            ref_logits = None
            if method.needs_ref_retain:
                with torch.no_grad(), model.disable_adapter(), eval_mode(model):
                    ref_logits = forward(model, rb)
            r_out = Outputs(forward(model, rb), rb["labels"], ref_logits=ref_logits, params=cfg.params)
        return method_loss(method, f_out, r_out)
    return loss_fn


def request_info(method, forget: list[Sample], cfg, budget_steps: int, losses: list[dict], status: str) -> dict:
    """The training record of one request (budget, sizes; for a diverged one, fit's record of the step)."""
    info = {"budget": cfg.budget, "epochs": cfg.epochs if cfg.budget == "epochs" else None,
            "steps": budget_steps, "forget_samples": len(forget), "batch_size": cfg.batch_size,
            "reference_batch_size": cfg.batch_size if method.needs_ref_forget else None}
    if status == "diverged":  # fit's record of the step that diverged: loss, gradient or weights non-finite
        info["diverged"] = {"step": losses[-1]["step"], "reason": losses[-1].get("diverged", "loss"),
                            "weights": "not restored" if losses[-1].get("diverged") == "weights"
                            else "the last finite ones (that step's update not applied)"}
    return info


REQUEST_FILE = "pulse_request.json"
PARAMS_FILE = "updated_parameters.safetensors"


def unlearn_request(model, enc: Encoder, method_name: str, target: str, forget: list[Sample],
                    retain: list[Sample], cfg, seed: int, save_to=None, desc: str = "unlearn",
                    max_steps: int | None = None, after_step=None, ckpt: Checkpoints | None = None,
                    extra: dict | None = None):
    """Run one request with the recipe `cfg` (an UnlearnSection: Recipe + mode, mask, params); returns (model after
    the request, RequestResult). Merges the adapter in LoRA mode.

    `save_to` (a folder) receives what the request changed, in safetensors — the LoRA adapter, or the updated
    parameters in full mode — so `apply_saved` can rebuild the model after this request (resume).

    In-request evaluations (trade-off curves, matched forgetting): `max_steps` lengthens the batch plan beyond the
    budget (the same seeded stream continued; the lr schedule's length is then the plan's, so callers keep the
    first `budget` steps unchanged by allowing it only with a constant schedule). `after_step(k, in_eval)` is
    `fit`'s hook (see there) with `in_eval()`, a context manager giving the model being trained — adapter active,
    eval mode, no grad — and restoring train mode after. `ckpt` and `extra` go to `fit`: a killed request resumes
    from its newest checkpoint with `extra` as saved there.
    """
    method, forget, budget_steps, plan = request_plan(method_name, forget, retain, cfg, seed, max_steps)
    model, named, info = prepare(model, target, cfg, cfg.mode, seed)
    lora = cfg.mode == "lora"
    ref_forget = None
    if method.needs_ref_forget:
        with (model.disable_adapter() if lora else contextlib.nullcontext()):
            ref_forget = reference_logps_sum(model, enc, forget, cfg.batch_size, cfg.mask)
    loss_fn = request_loss(model, enc, method, forget, retain, cfg, ref_forget)

    @contextlib.contextmanager
    def in_eval():
        with eval_mode(model), torch.no_grad():
            yield _hf_model(model)

    hook = (lambda k: after_step(k, in_eval)) if after_step is not None else None
    losses, status = fit(named, plan, loss_fn, cfg, desc=desc, after_step=hook, ckpt=ckpt, extra=extra)
    info.update(request_info(method, forget, cfg, budget_steps, losses, status))
    if len(plan) != budget_steps or after_step is not None:
        info.update({"plan_steps": len(plan), "steps_done": len(losses) - (status == "diverged")})
    if save_to is not None:
        save_request(model if lora else None, named, Path(save_to), {"mode": cfg.mode, "target": target,
                                                                      "master_fp32": cfg.master_fp32})
    model = finish(model, cfg.mode, cfg)
    return model, RequestResult(status, losses, info)


def save_request(peft_model, named, folder: Path, meta: dict) -> None:
    """What a request changed, in safetensors: the LoRA adapter of `peft_model`, or (None) the updated parameters
    `named`; plus REQUEST_FILE. A failed write (a full disk) is one PulseError naming the folder."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        if peft_model is not None:
            peft_model.save_pretrained(folder)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            save_file({n: p.detach().contiguous() for n, p in named}, str(folder / PARAMS_FILE))
        (folder / REQUEST_FILE).write_text(json.dumps(meta))
    except (OSError, SafetensorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
        if "No space left" in reason or isinstance(e, OSError) and e.errno == errno.ENOSPC:
            reason = "no space left on device"
        raise PulseError(f"{folder}: cannot save what the request changed ({reason[:160]}); free some space and "
                         f"rerun the same command: finished requests are kept, this one is trained again") from e


def apply_saved(model, folder):
    """Re-apply a saved request (adapter merged, or updated parameters loaded) to the model before it, with the
    same fp32 master layers as the request had."""
    from peft import PeftModel

    folder = Path(folder)
    meta = json.loads((folder / REQUEST_FILE).read_text()) if (folder / REQUEST_FILE).is_file() else {}
    if meta.get("master_fp32"):
        hold_fp32(model, meta["target"])
    if (folder / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(model, folder).merge_and_unload()
    from safetensors.torch import load_file
    state = load_file(str(folder / PARAMS_FILE))
    missing = set(state) - {n for n, _ in model.named_parameters()}
    if missing:
        raise PulseError(f"{folder}: saved parameters do not match the model ({sorted(missing)[:3]} ...)")
    model.load_state_dict(state, strict=False)
    return model
