"""The mini world's three training recipes, as data, and its vision stage. Every stage runs the one training loop
of PULSE (`pulse.unlearn.loop.fit`); the two LLaVA phases through `pulse.unlearn.finetune.train_on`, the loop
`pulse finetune` and unlearning use. All recipes are recorded in build.json.

- vision stage (stand-in for the CLIP pre-training LLaVA starts from): the CLIP tower alone, 1,200 steps of 32,
  lr 1e-3, cosine to 10 % after 100 warm-up steps, clipping 1.0, AdamW β (0.9, 0.98) — see `pretrain_vision`.
- pre-training (LLaVA's vision tower stays frozen, as LLaVA keeps CLIP frozen): every other parameter, 1,600 steps
  of 16, lr 1e-3, otherwise as the vision stage; answer-only loss with EOS; batches drawn by the weighted replay
  sampler (celebrity exposure, mini-MMBench share).
- fine-tuning: LoRA r16/α32 (dropout 0, default init) on proj+llm, 700 steps, lr 2e-3, otherwise as pre-training;
  the fictional people plus a weighted replay share of pre-training data.
(Before the vision stage existed: 2,400 pre-training and 900 fine-tuning steps, and mini-MMBench near chance on
counting, localisation and spatial relation.)
MLLMU-Bench's recipe (`FinetuneSection()`'s defaults) is for real checkpoints; a tiny random model learning a world
from scratch needs these larger steps.
"""
from __future__ import annotations

import torch

from ..errors import PulseError
from ..unlearn.loop import batch_plan, fit
from ..unlearn.recipe import FinetuneSection

VISION_TOWER = "model.vision_tower."  # parameter-name prefix of LLaVA's CLIP tower (transformers 5 layout)


def mini_recipe(*, steps: int, lr: float, mode: str, target: str, lora_rank: int = 16,
                batch_size: int = 16) -> FinetuneSection:
    return FinetuneSection(
        budget="steps", steps=steps, lr=lr, batch_size=batch_size, schedule="cosine", warmup_steps=100,
        min_lr_ratio=0.1, clip=1.0, weight_decay=0.0, adam_betas=[0.9, 0.98], adam_eps=1e-8, lora_rank=lora_rank,
        lora_alpha=2 * lora_rank, lora_dropout=0.0, lora_init="default", master_fp32=False, mode=mode, target=target,
        mask="answer", eos=True, sampler="weighted", save_every=0)


def vision_recipe(steps: int = 1200, lr: float = 1e-3, batch_size: int = 32) -> FinetuneSection:
    from dataclasses import replace
    return replace(mini_recipe(steps=steps, lr=lr, mode="full", target="vision", batch_size=batch_size),
                   sampler="shuffle", warmup_steps=min(100, max(1, steps // 4)))


def pretrain_recipe(steps: int = 1600, lr: float = 1e-3, batch_size: int = 16) -> FinetuneSection:
    return mini_recipe(steps=steps, lr=lr, mode="full", target="all", batch_size=batch_size)


def finetune_recipe(steps: int = 700, lr: float = 2e-3, lora_rank: int = 16, batch_size: int = 16,
                    mode: str = "lora") -> FinetuneSection:
    return mini_recipe(steps=steps, lr=lr, mode=mode, target="proj+llm" if mode == "lora" else "all",
                       lora_rank=lora_rank, batch_size=batch_size)


def scene_classes(items) -> tuple[list[str], list[int]]:
    """The vision stage's classes: one per distinct (question, correct option text) of the training scenes, sorted;
    returns (class names, class index of each item)."""
    keys = [f"{it.question}|{it.options[it.answer]}" for it in items]
    names = sorted(set(keys))
    index = {k: i for i, k in enumerate(names)}
    return names, [index[k] for k in keys]


def pretrain_vision(model, enc, items, r: FinetuneSection, desc: str = "vision pre-training") -> dict:
    """Stage 0: train LLaVA's CLIP tower alone to tell the training scenes' `scene_classes` apart, by cross-entropy
    of a linear head on the mean of the patch features LLaVA passes on (last layer, CLS dropped); the head is
    thrown away, the tower is left frozen (requires_grad off). A real LLaVA starts from a CLIP tower pre-trained on
    image-text pairs; a tiny tower learnt only through the language model sees too few scenes in a CPU budget to
    learn counting and positions (mini-MMBench near chance), and through this direct, cheap objective (no
    language model in the loop) it learns them in about a minute. Batches: `r.steps` full batches cycling through
    seeded permutations; head initialised under `r.seed`. Returns a record for build.json."""

    if not items:
        raise PulseError("vision pre-training: no mini-MMBench training questions (n_mmbench_train = 0)")
    tower = model.model.vision_tower
    names, labels = scene_classes(items)
    pixels = torch.stack([enc.pixels(it.image) for it in items])
    y = torch.tensor(labels)
    torch.manual_seed(r.seed)
    head = torch.nn.Linear(tower.config.hidden_size, len(names))
    named = [(VISION_TOWER + n, p) for n, p in tower.named_parameters()] + \
        [(f"head.{n}", p) for n, p in head.named_parameters()]
    for _, p in named:
        p.requires_grad_(True)
    tower.train()

    def features(x):
        return tower(pixel_values=x).last_hidden_state[:, 1:].mean(1)

    def loss_fn(idx):
        loss = torch.nn.functional.cross_entropy(head(features(pixels[idx])), y[idx])
        return loss, {"loss": loss.item()}

    losses, status = fit(named, batch_plan(len(items), r, [r.seed, 0]), loss_fn, r, desc=desc)
    if status != "ok":
        raise PulseError(f"{desc}: the loss became non-finite at step {losses[-1]['step']}; lower the lr")
    for p in tower.parameters():
        p.requires_grad_(False)
    tower.eval()
    with torch.no_grad():
        hits = sum(int((head(features(pixels[i:i + 256])).argmax(-1) == y[i:i + 256]).sum())
                   for i in range(0, len(items), 256))
    return {"classes": len(names), "steps": len(losses), "loss_first": losses[0]["loss"],
            "loss_last_50": sum(x["loss"] for x in losses[-50:]) / len(losses[-50:]),
            "train_accuracy": round(100 * hits / len(items), 2)}
