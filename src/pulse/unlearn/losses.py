"""Unlearning losses: pure functions of tensors -> tensors.

Conventions (see shared/reference/unlearning_methods.md §1):
- `logits` are [B, T, V] from a causal LM, `labels` are [B, T] with -100 on every position outside the loss
  (prompt under answer-only masking, image tokens, padding). The data pipeline chooses the masking.
- Hugging Face shift: logits[:, t] predicts labels[:, t + 1]; shifted tensors are [B, T - 1].
- Log-softmax is computed in fp32. The vocabulary is never indexed with -100.
- Reductions are named: per token, sequence sum, sequence mean, batch token mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs ℓ_t = log π(y_{t+1} | x, y_≤t), shifted the Hugging Face way.

    Returns `(logps, mask)`, both [B, T-1]: `mask` is 1.0 where labels[:, 1:] != -100, and `logps` is 0 wherever
    `mask` is 0 (the vocabulary is gathered at a dummy index 0 there, never at -100).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [B, T]")
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    safe = torch.where(keep, target, torch.zeros_like(target))
    picked = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    logps = torch.where(keep, picked, torch.zeros_like(picked))
    return logps, keep.float()


def answer_lengths(labels: torch.Tensor) -> torch.Tensor:
    """|y| per sequence: the number of predicted (shifted) labels != -100, as float [B]."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1).float()


def sequence_logps_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sequence-summed log-prob log π(y|x) = Σ_t m_t ℓ_t, [B]. Used by NPO/DPO."""
    logps, _ = token_logps(logits, labels)
    return logps.sum(-1)


def sequence_logps_mean(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sequence-mean log-prob log π(y|x) / |y|, [B] (0 for a sequence with no labelled token). Used by SimNPO."""
    logps, mask = token_logps(logits, labels)
    return logps.sum(-1) / mask.sum(-1).clamp(min=1.0)


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Batch-token-mean negative log-likelihood −Σ_{b,t} m ℓ / Σ_{b,t} m (scalar).

    Equals a Hugging Face causal LM's `outputs.loss` on the same labels. Long answers weigh more than short ones.
    """
    logps, mask = token_logps(logits, labels)
    return -logps.sum() / mask.sum().clamp(min=1.0)


def ga(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: L = −NLL(D_f) (batch token mean). Minimising it lowers the forget answers' likelihood.

    Unbounded below. Source: the GA baseline of TOFU (Maini et al., 2024) / Yao et al. (arXiv 2310.10683).
    """
    return -nll(logits, labels)


def kl_ref(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    reduction: str = "token_mean",
) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) = Σ_v p_ref(v)·(log p_ref(v) − log p_θ(v)) per position, then reduced (scalar).

    Direction: the reference is the target, as in Yao et al. (arXiv 2310.10683), TOFU, MUSE, OpenUnlearning and
    MLLMU-Bench: `kl_div(logp_θ, logp_ref, log_target=True)`. The reference side is detached.
    Positions m_{b,t} (over logit positions [B, T]):
    - `labels` given: positions whose *next* label is not -100 (the positions that predict answer tokens);
    - `mask` given ([B, T], 1 = counted): used as is; giving both is an error;
    - neither: every position.
    Reductions:
    - "token_mean": Σ m·KL / Σ m (masked per-token mean; the recommended form);
    - "mllmu": Σ m·KL / B. With no labels/mask this is MLLMU-Bench KL_Min's `batchmean` on (B, T, V) tensors:
      the sum over all positions (prompt, image tokens and padding included) divided by the batch size.
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ")
    if labels is not None and mask is not None:
        raise ValueError("give kl_ref either labels or mask, not both")
    logp = F.log_softmax(logits.float(), dim=-1)
    logp_ref = F.log_softmax(ref_logits.detach().float(), dim=-1)
    kl = F.kl_div(logp, logp_ref, log_target=True, reduction="none").sum(-1)  # [B, T]
    if labels is not None:
        m = torch.zeros_like(kl)
        m[:, :-1] = (labels[:, 1:] != IGNORE_INDEX).float()
    elif mask is not None:
        m = mask.to(kl.dtype)
    else:
        m = torch.ones_like(kl)
    total = torch.where(m > 0, kl * m, torch.zeros_like(kl)).sum()
    if reduction == "token_mean":
        return total / m.sum().clamp(min=1.0)
    if reduction == "mllmu":
        return total / kl.shape[0]
    raise ValueError(f"unknown kl_ref reduction {reduction!r}; known: 'token_mean', 'mllmu'")


def npo(logps_sum: torch.Tensor, ref_logps_sum: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization (Zhang et al., arXiv 2404.05868):

    L = −(2/β)·mean_b log σ(−β·(log π_θ(y_b|x_b) − log π_ref(y_b|x_b))) = (2/β)·mean_b log(1 + (π_θ/π_ref)^β).

    Inputs are per-sample sequence-summed answer log-probs [B] (one log-ratio per sample, then the batch mean).
    The reference is detached. At π_θ = π_ref the loss is (2/β)·ln 2 and ∂L/∂log π_θ(y_b|x_b) = 1/B, i.e. the
    gradient of GA in sequence-sum form, mean_b log π_θ(y_b|x_b); as β → 0 NPO tends to that GA plus a constant.
    """
    log_ratio = logps_sum - ref_logps_sum.detach()
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def simnpo(logps_sum: torch.Tensor, lengths: torch.Tensor, beta: float, margin: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al., arXiv 2410.07163), reference-free and length-normalised:

    L = −(2/β)·mean_b log σ(−(β/|y_b|)·log π_θ(y_b|x_b) − γ_m),   with `margin` = γ_m.

    `logps_sum` is the sequence-summed answer log-prob [B] (≤ 0), `lengths` is |y| [B]. Since −log π_θ/|y| is the
    mean answer NLL S̄ ≥ 0, the argument is β·S̄ − γ_m: minimising L raises the forget NLL. OpenUnlearning writes
    the same thing as β·(S̄ − δ), so its δ = γ_m/β (both 0 by default). Note OpenUnlearning counts |y| on unshifted
    labels; here |y| counts the predicted (shifted) answer tokens.
    """
    mean_nll = -logps_sum / lengths.clamp(min=1.0)
    return -(2.0 / beta) * F.logsigmoid(beta * mean_nll - margin).mean()
