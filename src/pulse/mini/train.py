"""The mini world's two training recipes, as data. Both phases run through `pulse.unlearn.finetune.train_on` — the
loop `pulse finetune` and unlearning use — with the mini's own recipe (recorded in build.json):

- pre-training: full parameters, 2,400 steps of 16, lr 1e-3, AdamW β (0.9, 0.98), cosine to 10 % after 100
  warm-up steps, clipping 1.0, answer-only loss with EOS; batches drawn by the weighted replay sampler (celebrity
  exposure, mini-MMBench share).
- fine-tuning: LoRA r16/α32 (dropout 0, default init) on proj+llm, 900 steps, lr 2e-3, otherwise as pre-training;
  the fictional people plus a weighted replay share of pre-training data.
MLLMU-Bench's recipe (`FinetuneSection()`'s defaults) is for real checkpoints; a tiny random model learning a world
from scratch needs these larger steps.
"""
from __future__ import annotations

from ..config import FinetuneSection


def mini_recipe(*, steps: int, lr: float, mode: str, target: str, lora_rank: int = 16,
                batch_size: int = 16) -> FinetuneSection:
    return FinetuneSection(
        budget="steps", steps=steps, lr=lr, batch_size=batch_size, schedule="cosine", warmup_steps=100,
        min_lr_ratio=0.1, clip=1.0, weight_decay=0.0, adam_betas=[0.9, 0.98], adam_eps=1e-8, lora_rank=lora_rank,
        lora_alpha=2 * lora_rank, lora_dropout=0.0, lora_init="default", master_fp32=False, mode=mode, target=target,
        mask="answer", eos=True, sampler="weighted", save_every=0)


def pretrain_recipe(steps: int = 2400, lr: float = 1e-3, batch_size: int = 16) -> FinetuneSection:
    return mini_recipe(steps=steps, lr=lr, mode="full", target="all", batch_size=batch_size)


def finetune_recipe(steps: int = 900, lr: float = 2e-3, lora_rank: int = 16, batch_size: int = 16,
                    mode: str = "lora") -> FinetuneSection:
    return mini_recipe(steps=steps, lr=lr, mode=mode, target="proj+llm" if mode == "lora" else "all",
                       lora_rank=lora_rank, batch_size=batch_size)
