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

    Batches are drawn without replacement within an epoch of the weighted distribution: every sample is visited
    about `weight / mean(weight)` times per pass. Returns the loss of every step.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    p = np.asarray(weights if weights is not None else [1.0] * len(samples), dtype=float)
    p = p / p.sum()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, warmup))
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=2)
    for step in bar:
        idx = rng.choice(len(samples), size=batch_size, replace=False, p=p)
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
