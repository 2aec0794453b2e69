"""Batched greedy generation for prompts that may hold several `<image>` placeholders (few-shot demos).

Left padding; images passed in placeholder order. `stop_at_first_char=True` stops once every sequence has
produced a non-space character — enough for first-character MCQ parsing, and it gives the same prediction as
decoding all 50 tokens (the first character cannot change afterwards).
"""
from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..models.batches import Encoder, left_pad


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
    ids, attn = left_pad(rows, tok.pad_token_id if tok.pad_token_id is not None else 0)
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


@torch.no_grad()
def generate_shared_prefix(model, enc: Encoder, prefix: str, prefix_images: list[bytes], suffixes: list[str],
                           suffix_images: list[list[bytes]], *, max_new_tokens: int = 50, batch_size: int = 16,
                           stop_at_first_char: bool = True) -> list[str]:
    """Greedy continuations of `prefix + suffix` for many suffixes that share one prefix (the few-shot demos).

    The prefix — demos with their images, identical for every question of a form — is run once and its KV cache
    reused by every batch, so each question costs only its own tokens. Suffixes are left-padded *after* the prefix
    (masked), with explicit position ids. Decoding is plain greedy, as in `generate`. Each suffix's tokens are
    taken from tokenising the whole prompt; if a tokenizer merges across the prefix boundary, a ValueError tells
    the caller to use `generate` instead.
    """
    import copy

    tok = enc.tok
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    p_batch = prompt_batch(enc, [prefix], [prefix_images])
    p_ids = p_batch["input_ids"]
    n_prefix = p_ids.shape[1]
    prefix_ids = p_ids[0].tolist()
    expand = lambda t, imgs: t.replace(enc.image_token, enc.image_token * enc.n_image_tokens(imgs[0])) if imgs else t  # noqa: E731
    p_text = expand(prefix, prefix_images)
    kwargs = {"pixel_values": p_batch["pixel_values"]} if p_batch["pixel_values"] is not None else {}
    prefix_cache = model(input_ids=p_ids, attention_mask=p_batch["attention_mask"], use_cache=True, **kwargs).cache
    out = [""] * len(suffixes)
    order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = []
        for i in idx:
            full = tok(p_text + expand(suffixes[i], suffix_images[i]))["input_ids"]
            if full[:n_prefix] != prefix_ids:
                raise ValueError("the tokenizer merges tokens across the shared-prefix boundary")
            rows.append(full[n_prefix:])
        ids, smask = left_pad(rows, pad)
        cache = copy.deepcopy(prefix_cache)
        cache.reorder_cache(torch.zeros(len(idx), dtype=torch.long, device=enc.device))
        mask = torch.cat([torch.ones(len(idx), n_prefix, dtype=torch.long), smask], dim=1).to(enc.device)
        pos = (n_prefix + (smask.cumsum(-1) - 1).clamp(min=0)).to(enc.device)
        flat = [b for i in idx for b in suffix_images[i]]
        kw = {"pixel_values": torch.stack([enc.pixels(b) for b in flat]).to(enc.device, enc.dtype)} if flat else {}
        logits = model(input_ids=ids.to(enc.device), attention_mask=mask, position_ids=pos, cache=cache,
                       use_cache=True, **kw).logits[:, -1]
        generated = [[] for _ in idx]
        done = torch.zeros(len(idx), dtype=torch.bool)
        next_pos = pos[:, -1:] + 1
        for _ in range(max_new_tokens):
            nxt = logits.argmax(-1)
            for j in range(len(idx)):
                if not done[j]:
                    generated[j].append(int(nxt[j]))
                    if int(nxt[j]) == tok.eos_token_id or (
                            stop_at_first_char and tok.decode(generated[j], skip_special_tokens=True).strip()):
                        done[j] = True
            if done.all():
                break
            mask = torch.cat([mask, torch.ones(len(idx), 1, dtype=torch.long, device=enc.device)], dim=1)
            logits = model(input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=next_pos, cache=cache,
                           use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
        for j, i in enumerate(idx):
            out[i] = tok.decode(generated[j], skip_special_tokens=True)
    return out
