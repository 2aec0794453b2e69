"""Unlearning methods as registry entries: a forget loss, an optional retain loss and their weights.

Each loss callable takes one `Outputs` (one model forward on one batch, plus what the reference gave). The training
loop builds the Outputs, calls `method_loss`, and steps. Which reference data it must provide is in the flags:
- `needs_ref_forget`: `ref_logps_sum` on the forget batch (sequence-summed, answer tokens), computed once per request
  with the LoRA adapter disabled and cached;
- `needs_ref_retain`: `ref_logits` on the retain batch (adapter disabled, no grad).
Hyper-parameters (e.g. beta) come from `Outputs.params`, filled from `Method.defaults` by `method_loss`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from pulse.errors import PulseError
from pulse.unlearn import losses

IDK_ANSWERS: tuple[str, ...] = (
    "I don't know.",
    "I'm not sure.",
    "I have no information about that.",
    "I can't answer that.",
    "I don't have that information.",
    "I'm afraid I don't know.",
    "That is not something I know.",
    "I cannot say.",
)


@dataclass(frozen=True)
class Outputs:
    """One forward pass of the trained model on one batch, plus reference values and hyper-parameters."""

    logits: torch.Tensor  # [B, T, V]
    labels: torch.Tensor  # [B, T], -100 outside the loss
    ref_logps_sum: torch.Tensor | None = None  # [B], reference sequence-summed answer log-probs
    ref_logits: torch.Tensor | None = None  # [B, T, V], reference logits on the same batch
    params: dict = field(default_factory=dict)  # hyper-parameters, e.g. {"beta": 0.1}


LossFn = Callable[[Outputs], torch.Tensor]


@dataclass(frozen=True)
class Method:
    """A registry entry. loss = forget_weight·forget_loss(forget) + retain_weight·retain_loss(retain)."""

    name: str
    description: str
    forget_loss: LossFn
    retain_loss: LossFn | None = None
    forget_weight: float = 1.0
    retain_weight: float = 1.0
    needs_ref_forget: bool = False
    needs_ref_retain: bool = False
    forget_answers: Literal["true", "idk"] = "true"
    defaults: dict = field(default_factory=dict)


# --- loss callables on Outputs ---------------------------------------------------------------------------------


def _need(value, what: str, out: Outputs):
    if value is None:
        raise ValueError(f"this loss needs Outputs.{what}; the training loop did not provide it")
    return value


def ga_loss(out: Outputs) -> torch.Tensor:
    """−NLL (batch token mean) on the batch: gradient ascent."""
    return losses.ga(out.logits, out.labels)


def nll_loss(out: Outputs) -> torch.Tensor:
    """NLL (batch token mean) on the batch: gradient descent."""
    return losses.nll(out.logits, out.labels)


def kl_loss(out: Outputs) -> torch.Tensor:
    """KL(p_ref ‖ p_θ), masked per-token mean over the positions that predict labelled tokens."""
    return losses.kl_ref(out.logits, _need(out.ref_logits, "ref_logits", out), labels=out.labels)


def npo_loss(out: Outputs) -> torch.Tensor:
    """NPO on per-sample sequence-summed log-probs against the cached reference log-probs; needs params['beta']."""
    logps_sum = losses.sequence_logps_sum(out.logits, out.labels)
    return losses.npo(logps_sum, _need(out.ref_logps_sum, "ref_logps_sum", out), out.params["beta"])


def simnpo_loss(out: Outputs) -> torch.Tensor:
    """SimNPO; needs params['beta'] and params['margin'] (γ_m)."""
    logps_sum = losses.sequence_logps_sum(out.logits, out.labels)
    lengths = losses.answer_lengths(out.labels)
    return losses.simnpo(logps_sum, lengths, out.params["beta"], out.params["margin"])


def nll_plus_kl_mllmu_loss(out: Outputs) -> torch.Tensor:
    """MLLMU-Bench KL_Min retain term: NLL + KL(p_ref ‖ p_θ) summed over ALL positions (no mask) / batch size."""
    ref_logits = _need(out.ref_logits, "ref_logits", out)
    return losses.nll(out.logits, out.labels) + losses.kl_ref(out.logits, ref_logits, reduction="mllmu")


# --- the registry ----------------------------------------------------------------------------------------------

_ENTRIES = (
    Method(
        name="ga",
        description="Gradient ascent: −NLL on the forget set; no retain term (TOFU / MLLMU-Bench GA).",
        forget_loss=ga_loss,
    ),
    Method(
        name="ga_klr",
        description="GA + KL retain (PULSE 'GA+KLR', TOFU 'KL', MUSE ga_klr): −NLL(D_f) + KL(p_ref‖p_θ) on D_r, "
        "masked per-token mean; reference = model before this request (adapter disabled).",
        forget_loss=ga_loss,
        retain_loss=kl_loss,
        needs_ref_retain=True,
    ),
    Method(
        name="grad_diff",
        description="Gradient difference: −NLL(D_f) + NLL(D_r), one forget and one retain batch per step.",
        forget_loss=ga_loss,
        retain_loss=nll_loss,
    ),
    Method(
        name="npo",
        description="NPO (arXiv 2404.05868), per-sample sequence-summed log-ratio; reference = model before this "
        "request (not MLLMU-Bench's retain-only oracle); no retain term.",
        forget_loss=npo_loss,
        needs_ref_forget=True,
        defaults={"beta": 0.1},
    ),
    Method(
        name="npo_klr",
        description="NPO + KL(p_ref‖p_θ) on D_r (TOFU npo_KL, PULSE NPO with KL retain), weights 1/1.",
        forget_loss=npo_loss,
        retain_loss=kl_loss,
        needs_ref_forget=True,
        needs_ref_retain=True,
        defaults={"beta": 0.1},
    ),
    Method(
        name="simnpo",
        description="SimNPO (arXiv 2410.07163): reference-free, length-normalised NPO, plus NLL on D_r. "
        "OpenUnlearning defaults: beta 4.5, margin 0, forget weight 0.125, retain weight 1.",
        forget_loss=simnpo_loss,
        retain_loss=nll_loss,
        forget_weight=0.125,
        defaults={"beta": 4.5, "margin": 0.0},
    ),
    Method(
        name="idk",
        description="IdkPO (TOFU 'PO'): NLL towards a refusal (IDK_ANSWERS) on forget questions + NLL on D_r.",
        forget_loss=nll_loss,
        retain_loss=nll_loss,
        forget_answers="idk",
    ),
    Method(
        name="kl_min",
        description="MLLMU-Bench KL_Min as implemented: forget −NLL; retain NLL + KL(p_ref‖p_θ) summed over all "
        "positions (unmasked: prompt, image tokens, padding) / batch size. Deviation: MLLMU-Bench alternates "
        "all-forget then all-retain blocks per epoch; we sum one forget and one retain batch per step.",
        forget_loss=ga_loss,
        retain_loss=nll_plus_kl_mllmu_loss,
        needs_ref_retain=True,
    ),
)

METHODS: dict[str, Method] = {m.name: m for m in _ENTRIES}


def get_method(name: str) -> Method:
    """The registered method called `name`; PulseError naming the known methods otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise PulseError(f"unknown unlearning method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def method_loss(method: Method, forget: Outputs, retain: Outputs | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss = forget_weight·forget_loss + retain_weight·retain_loss, and parts {forget, retain, loss} as floats.

    Missing hyper-parameters in each Outputs.params are filled from `method.defaults` (given params win).
    """
    forget = dataclasses.replace(forget, params={**method.defaults, **forget.params})
    forget_term = method.forget_loss(forget)
    loss = method.forget_weight * forget_term
    parts = {"forget": forget_term.item()}
    if method.retain_loss is not None:
        if retain is None:
            raise ValueError(f"method {method.name!r} needs a retain batch")
        retain = dataclasses.replace(retain, params={**method.defaults, **retain.params})
        retain_term = method.retain_loss(retain)
        loss = loss + method.retain_weight * retain_term
        parts["retain"] = retain_term.item()
    parts["loss"] = loss.item()
    return loss, parts
