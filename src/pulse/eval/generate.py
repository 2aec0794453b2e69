"""Batched greedy generation for prompts that may hold several `<image>` placeholders (few-shot demos).

Left padding; images passed in placeholder order. `stop_at_first_char=True` stops once every sequence has
produced a non-space character — enough for first-character MCQ parsing, and it gives the same prediction as
decoding all 50 tokens (the first character cannot change afterwards).
"""
from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..models.batches import Encoder


class FirstCharacter(StoppingCriteria):
    def __init__(self, tokenizer, prompt_len: int):
        self.tok, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tok.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        eos = (input_ids[:, self.prompt_len:] == self.tok.eos_token_id).any(-1) if self.tok.eos_token_id is not None \
            else torch.zeros(len(texts), dtype=torch.bool)
        done = torch.tensor([bool(t.strip()) for t in texts], device=input_ids.device)
        return done | eos.to(input_ids.device)


def prompt_batch(enc: Encoder, prompts: list[str], images: list[list[bytes]]) -> dict:
    """Left-padded batch of prompts (no answer); every `<image>` expanded; pixel values in order."""
    tok = enc.tok
    rows = []
    for prompt, imgs in zip(prompts, images):
        if prompt.count(enc.image_token) != len(imgs):
            raise ValueError(f"prompt has {prompt.count(enc.image_token)} image placeholders, {len(imgs)} images")
        text = prompt.replace(enc.image_token, enc.image_token * enc.n_image_tokens(imgs[0])) if imgs else prompt
        rows.append(tok(text)["input_ids"])
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        attn[i, width - len(r):] = 1
    flat = [b for imgs in images for b in imgs]
    pixels = torch.stack([enc.pixels(b) for b in flat]).to(enc.device, enc.dtype) if flat else None
    return {"input_ids": ids.to(enc.device), "attention_mask": attn.to(enc.device), "pixel_values": pixels}


@torch.no_grad()
def generate(model, enc: Encoder, prompts: list[str], images: list[list[bytes]], *, max_new_tokens: int = 50,
             batch_size: int = 16, stop_at_first_char: bool = False) -> list[str]:
    """Greedy continuations (decoded, special tokens skipped), in prompt order."""
    out: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    tok = enc.tok
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = prompt_batch(enc, [prompts[i] for i in idx], [images[i] for i in idx])
        kwargs = {k: v for k, v in batch.items() if v is not None}
        width = batch["input_ids"].shape[1]
        stops = StoppingCriteriaList([FirstCharacter(tok, width)]) if stop_at_first_char else None
        seqs = model.generate(**kwargs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              stopping_criteria=stops, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(seqs[:, width:], skip_special_tokens=True)
        for i, t in zip(idx, texts):
            out[i] = t
    return out
