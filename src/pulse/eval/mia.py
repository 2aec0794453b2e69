"""Membership inference on people's QA pairs (`ft_Data`, image and text forms): four per-pair scores, and the AUC
of members against non-members.

Each pair is written as the model trains on it (its template; the portrait for an image pair) and only the answer
tokens are scored, as TOFU/open-unlearning score QA (the question is not the person's data). From the answer tokens'
log-probabilities ℓ_t:

- `loss`: the mean negative log-likelihood −mean(ℓ_t);
- `zlib`: the loss over the zlib-compressed length (bytes) of the answer text (Carlini et al. 2021);
- `mink`: Min-K% Prob (Shi et al. 2024): −mean of the k·n lowest ℓ_t (at least one), k = 0.4 (MUSE's PrivLeak);
- `minkpp`: Min-K%++ (Zhang et al. 2025): each ℓ_t standardised by the mean μ_t and standard deviation σ_t of the
  log-probability under the model's own next-token distribution, then −mean of the k·n lowest.

Every score is signed like the loss: lower = more member-like. `auc` is the probability that a random member scores
lower than a random non-member (ties count one half): 0.5 = indistinguishable, 1 = every member exposed.
MUSE's PrivLeak = (AUC of the model − AUC of the retrained oracle) / AUC of the oracle × 100 (`privleak`).
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F

from .. import progress
from ..data.records import QAPair
from ..models.batches import Encoder, Sample, forward

ATTACKS = ("loss", "zlib", "mink", "minkpp")
K = 0.4


def answer_token_stats(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per row: (ℓ_t, μ_t, σ_t) of its labelled tokens (shifted the Hugging Face way)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    out = []
    for b in range(logp.shape[0]):
        pos = (target[b] != -100).nonzero().squeeze(-1)
        lp = logp[b, pos]  # [n, V]
        p = lp.exp()
        mu = (p * lp).sum(-1)
        sigma = ((p * lp.square()).sum(-1) - mu.square()).clamp(min=1e-6).sqrt()
        tok = lp.gather(-1, target[b, pos].unsqueeze(-1)).squeeze(-1)
        out.append((tok.numpy(), mu.numpy(), sigma.numpy()))
    return out


def scores_of(tok: np.ndarray, mu: np.ndarray, sigma: np.ndarray, answer: str, k: float = K) -> dict[str, float]:
    """The four attack scores of one pair from its answer tokens' statistics (module docstring)."""
    loss = float(-tok.mean())
    n = max(1, int(len(tok) * k))
    return {"loss": loss, "zlib": loss / len(zlib.compress(answer.encode("utf-8"))),
            "mink": float(-np.sort(tok)[:n].mean()), "minkpp": float(-np.sort((tok - mu) / sigma)[:n].mean())}


@torch.no_grad()
def pair_scores(model, enc: Encoder, template, pairs: list[QAPair], batch_size: int = 16) -> list[dict]:
    """One record per pair: person_id, form, question, answer and the four scores."""
    samples = [Sample(template.prompt(q.question, image=q.form == "image"), q.answer,
                      q.image if q.form == "image" else None) for q in pairs]
    out = []
    with progress.bar(desc=progress.named("membership inference"), total=len(pairs), unit="pair") as bar:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            batch = enc.batch(chunk, mask="answer", eos=False)
            stats = answer_token_stats(forward(model, batch), batch["labels"])
            for q, st in zip(pairs[i:i + batch_size], stats):
                out.append({"person_id": q.person_id, "form": q.form, "question": q.question, "answer": q.answer,
                            **scores_of(*st, q.answer)})
            bar.update(len(chunk))
    return out


def auc(members: list[float], nonmembers: list[float]) -> float:
    """P(member score < non-member score) + ½ P(tie): the Mann–Whitney AUC; NaN when either side is empty."""
    if not members or not nonmembers:
        return float("nan")
    m, h = np.asarray(members)[:, None], np.asarray(nonmembers)[None, :]
    return float(((m < h).sum() + 0.5 * (m == h).sum()) / (m.size * h.size))


def aucs(records: list[dict], members: set, nonmembers: set, forms=("image", "text")) -> dict[str, float]:
    """{attack: AUC} of the members' pairs against the non-members' (of the given forms)."""
    pick = lambda ids, a: [r[a] for r in records if r["person_id"] in ids and r["form"] in forms]  # noqa: E731
    return {a: auc(pick(members, a), pick(nonmembers, a)) for a in ATTACKS}


def privleak(auc_model: float, auc_oracle: float) -> float:
    """MUSE's PrivLeak in percent: (AUC − AUC_oracle) / AUC_oracle × 100."""
    return 100.0 * (auc_model - auc_oracle) / auc_oracle if auc_oracle == auc_oracle and auc_oracle else float("nan")
