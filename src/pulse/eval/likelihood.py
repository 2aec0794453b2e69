"""Option log-likelihood scoring, batched: the non-standard MCQ mode for tiny models.

Each option is scored as the continuation of the question prompt: the sum of its token log-probabilities
(no EOS). The prediction is the option with the highest sum. This is a labelled deviation from MLLMU-Bench's
letter-generation protocol (mllmu_bench.md §9.5) and from MMBench's (mmbench.md §7).
"""
from __future__ import annotations

import torch

from ..models.batches import Encoder, Sample, forward


@torch.no_grad()
def option_logps(model, enc: Encoder, questions: list[tuple[str, bytes | None, list[str]]],
                 batch_size: int = 64) -> list[list[float]]:
    """For each (prompt, image, option texts): the sequence-summed log-prob of every option after the prompt."""
    flat = [(qi, Sample(prompt, opt, image)) for qi, (prompt, image, opts) in enumerate(questions) for opt in opts]
    # sort by length so batches pad little; results are put back in order
    order = sorted(range(len(flat)), key=lambda i: (flat[i][1].image is None, len(flat[i][1].prompt)))
    scores = [0.0] * len(flat)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = enc.batch([flat[i][1] for i in idx], mask="answer", eos=False)
        logits = forward(model, batch).float()
        labels = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        mask = labels != -100
        tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        for j, i in enumerate(idx):
            scores[i] = float(tok[j].sum())
    out = [[] for _ in questions]
    for (qi, _), s in zip(flat, scores):
        out[qi].append(s)
    return out
