"""Training the tiny LLaVA: a plain loop (batches in, NLL on answer tokens, AdamW step), used for the two
knowledge phases of the mini world: pre-training (celebrities + mini-MMBench skills, full parameters) and
fine-tuning (fictional people, LoRA by default).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from ..models.batches import Encoder, Sample, forward
from ..unlearn.losses import nll


def cosine_lr(step: int, steps: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def train(model, enc: Encoder, samples: list[Sample], *, steps: int, lr: float, seed: int,
          batch_size: int = 16, weights: list[float] | None = None, warmup: int = 100, desc: str = "train",
          log_every: int = 100) -> list[float]:
    """Train on `samples` for a fixed number of steps (reproducible), sampling by `weights` (default uniform).

    Every batch is homogeneous — text-only samples or image samples of one prompt length class — so short samples
    are not padded to the longest (a 2–3× speed-up on CPU): each step picks a group with probability equal to its
    share of the total weight, then draws `batch_size` distinct samples within it by weight. Returns every loss.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    w = np.asarray(weights if weights is not None else [1.0] * len(samples), dtype=float)
    groups = _groups(samples, w, batch_size)
    group_p = np.array([w[g].sum() for g in groups])
    group_p /= group_p.sum()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, warmup))
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=2)
    for step in bar:
        g = groups[rng.choice(len(groups), p=group_p)]
        idx = rng.choice(g, size=batch_size, replace=False, p=w[g] / w[g].sum())
        batch = enc.batch([samples[i] for i in idx])
        loss = nll(forward(model, batch), batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.3f}")
    model.eval()
    return losses


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
