"""One unlearning request: batches in, loss from the method registry, optimizer step, done.

The model arrives as plain weights (the model before this request). A fresh LoRA adapter on the update target is
trained and merged at the end, so the next request starts from — and uses as reference — the model after this one.
The reference is the same weights with the adapter disabled (no copy); the forget set's reference log-probs are
computed once per request and reused across steps. `mode="full"` updates the target's parameters directly (no
adapter); then only methods without a per-step reference (ga, grad_diff, npo, simnpo, idk) are allowed.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from ..errors import PulseError
from ..models.batches import Encoder, Sample, forward
from ..models.targets import full_parameter_names, target_regex
from .losses import sequence_logps_sum
from .methods import IDK_ANSWERS, Outputs, get_method, method_loss


@dataclass(frozen=True)
class UnlearnConfig:
    steps: int = 20
    lr: float = 1e-3
    batch_size: int = 16
    mode: str = "lora"  # "lora" or "full"
    lora_rank: int = 8
    lora_alpha: int = 16
    mask: str = "answer"  # "answer" (default) or "sequence" (MLLMU-Bench's whole-sequence labels)
    params: dict = field(default_factory=dict)  # method hyper-parameters, e.g. {"beta": 0.1}


@dataclass
class RequestResult:
    status: str  # "ok" or "diverged"
    losses: list[dict]


def _batches(n: int, batch_size: int, steps: int, rng: np.random.Generator):
    """`steps` index batches cycling through shuffled epochs of n samples."""
    order: list[int] = []
    for _ in range(steps):
        while len(order) < min(batch_size, n):
            order.extend(rng.permutation(n).tolist())
        yield order[:batch_size]
        order = order[batch_size:]


def _idk(samples: list[Sample], seed: int) -> list[Sample]:
    rng = random.Random(seed)
    return [Sample(s.prompt, rng.choice(IDK_ANSWERS), s.image) for s in samples]


def check_method_mode(method_name: str, mode: str) -> None:
    method = get_method(method_name)
    if mode not in ("lora", "full"):
        raise PulseError(f"unknown unlearning mode {mode!r}; use 'lora' or 'full'")
    if mode == "full" and method.needs_ref_retain:
        raise PulseError(f"method {method_name!r} needs reference logits every step; with mode 'full' that would "
                         f"need a second model copy — use mode 'lora'")


@torch.no_grad()
def _ref_logps(model, enc, samples, batch_size, mask) -> torch.Tensor:
    out = []
    for start in range(0, len(samples), batch_size):
        batch = enc.batch(samples[start:start + batch_size], mask=mask)
        out.append(sequence_logps_sum(forward(model, batch), batch["labels"]))
    return torch.cat(out)


def unlearn_request(model, enc: Encoder, method_name: str, target: str, forget: list[Sample],
                    retain: list[Sample], cfg: UnlearnConfig, seed: int, save_to=None, desc: str = "unlearn"):
    """Run one request; returns (model after the request, RequestResult). Merges the adapter in LoRA mode.

    `save_to` (a folder) receives what the request changed, in safetensors — the LoRA adapter, or the updated
    parameters in full mode — so `apply_saved` can rebuild the model after this request (resume).
    """
    from peft import LoraConfig, get_peft_model

    method = get_method(method_name)
    check_method_mode(method_name, cfg.mode)
    if not forget:
        raise PulseError("empty forget set")
    if method.retain_loss is not None and not retain:
        raise PulseError(f"method {method_name!r} needs retain data, but the retain set is empty")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    forget = _idk(forget, seed) if method.forget_answers == "idk" else forget
    if cfg.mode == "lora":
        model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules=target_regex(target)))
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        names = set(full_parameter_names(model, target))
        params = [p for n, p in model.named_parameters() if n in names]
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)
    model.eval()  # no dropout; gradients still flow
    ref_forget = None
    if method.needs_ref_forget:
        if cfg.mode == "lora":
            with model.disable_adapter():
                ref_forget = _ref_logps(model, enc, forget, 64, cfg.mask)
        else:
            ref_forget = _ref_logps(model, enc, forget, 64, cfg.mask)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    forget_batches = _batches(len(forget), cfg.batch_size, cfg.steps, rng)
    retain_batches = _batches(len(retain), cfg.batch_size, cfg.steps, rng) if retain else None
    losses, status = [], "ok"
    for step in tqdm(range(cfg.steps), desc=desc, leave=False, mininterval=2):
        fi = next(forget_batches)
        fb = enc.batch([forget[i] for i in fi], mask=cfg.mask)
        f_out = Outputs(forward(model, fb), fb["labels"],
                        ref_logps_sum=ref_forget[fi] if ref_forget is not None else None, params=cfg.params)
        r_out = None
        if method.retain_loss is not None:
            rb = enc.batch([retain[i] for i in next(retain_batches)], mask=cfg.mask)
            ref_logits = None
            if method.needs_ref_retain:
                with torch.no_grad(), model.disable_adapter():
                    ref_logits = forward(model, rb)
            r_out = Outputs(forward(model, rb), rb["labels"], ref_logits=ref_logits, params=cfg.params)
        loss, parts = method_loss(method, f_out, r_out)
        losses.append({"step": step, **parts})
        if not math.isfinite(parts["loss"]):
            status = "diverged"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    if save_to is not None:
        if cfg.mode == "lora":
            model.save_pretrained(save_to)
        else:
            from safetensors.torch import save_file
            save_to.mkdir(parents=True, exist_ok=True)
            save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if n in names},
                      str(save_to / PARAMS_FILE))
    if cfg.mode == "lora":
        model = model.merge_and_unload()  # the next request's base and reference
    for p in model.parameters():
        p.requires_grad_(False)
    return model, RequestResult(status, losses)


PARAMS_FILE = "updated_parameters.safetensors"


def apply_saved(model, folder):
    """Re-apply a saved request (adapter merged, or updated parameters loaded) to the model before it."""
    from peft import PeftModel

    if (folder / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(model, folder).merge_and_unload()
    from safetensors.torch import load_file
    state = load_file(str(folder / PARAMS_FILE))
    missing = set(state) - {n for n, _ in model.named_parameters()}
    if missing:
        raise PulseError(f"{folder}: saved parameters do not match the model ({sorted(missing)[:3]} ...)")
    model.load_state_dict(state, strict=False)
    return model
