"""Batched greedy generation for prompts that may hold several `<image>` placeholders (few-shot demos).

Left padding; images passed in placeholder order. `stop_at_first_char=True` stops a row once MLLMU-Bench's
first-character parse of its continuation can no longer change (`prompts.answer_settled`: a non-space character
that is not the start of a generated `ASSISTANT:`), or at EOS — the same prediction as decoding all 50 tokens.

Memory. A row's KV cache costs `kv_bytes_per_token(model)` = 2 (K and V) × layers × kv_heads × head_dim × dtype
bytes per token (LLaVA-1.5-7B bf16: 0.5 MiB; 13B: 0.78 MiB). `generate_shared_prefix` keeps the few-shot prefix's
cache ONCE (batch 1) and broadcasts it to the rows when attention reads it (`SharedPrefixLayer`), so a row stores
only its own tokens; the ~3,500-token demo prefix (≈ 1.8 GB at 7B, 2.9 GB at 13B per copy) is never copied per row
across layers. Attention still needs one layer's prefix keys/values per row while it runs (transformers' cache API
returns concatenated tensors), so batch rows are capped from free memory by `rows_that_fit` (see `row_bytes`).
"""
from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from ..models.batches import Encoder, left_pad
from .prompts import answer_settled

MEMORY_FRACTION = 0.7  # share of the free memory a batch may plan to use (the rest: allocator slack, activations)


class FirstCharacter(StoppingCriteria):
    """Per row: stop once `answer_settled(continuation)` or the row has produced EOS."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tok, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        gen = input_ids[:, self.prompt_len:]
        texts = self.tok.batch_decode(gen, skip_special_tokens=True)
        done = torch.tensor([answer_settled(t) for t in texts], device=input_ids.device)
        if self.tok.eos_token_id is not None:
            done |= (gen == self.tok.eos_token_id).any(-1)
        return done


# ---------------------------------------------------------------- memory


def kv_bytes_per_token(model) -> int:
    """KV-cache bytes of one token in one row: 2 × layers × kv_heads × head_dim × bytes per element."""
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


def row_bytes(model, *, stored: int, attended: int, queries: int) -> int:
    """Peak bytes one batch row adds: its stored KV (`stored` tokens, every layer), one layer's K/V over the
    `attended` tokens built for attention, and float32 attention scores heads × `queries` × `attended` (the
    unfused-kernel worst case) plus hidden/MLP activations of `queries` tokens. An upper estimate."""
    cfg = model.config.get_text_config()
    per_token = kv_bytes_per_token(model)
    layer_view = per_token // cfg.num_hidden_layers * attended
    scores = cfg.num_attention_heads * queries * attended * 4
    acts = queries * (cfg.hidden_size * 4 + getattr(cfg, "intermediate_size", 4 * cfg.hidden_size) * 3) * 4
    return per_token * stored + layer_view + scores + acts


def free_memory(device) -> int | None:
    """Bytes available on `device`: CUDA free + reserved-but-unused; CPU MemAvailable (psutil or /proc/meminfo);
    None when unknown (no cap)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rows_that_fit(wanted: int, per_row: int, device, free: int | None = None) -> int:
    """min(wanted, MEMORY_FRACTION × free // per_row), at least 1 (`free` defaults to `free_memory(device)`)."""
    free = free_memory(device) if free is None else free
    if free is None or per_row <= 0:
        return max(1, wanted)
    return max(1, min(wanted, int(free * MEMORY_FRACTION) // per_row))


# ---------------------------------------------------------------- plain batched generation


def prompt_batch(enc: Encoder, prompts: list[str], images: list[list[bytes]], token_rows=None) -> dict:
    """Left-padded batch of prompts (no answer); every `<image>` expanded; pixel values in order."""
    tok = enc.tok
    rows = token_rows or [tok(_expand(enc, p, imgs))["input_ids"] for p, imgs in zip(prompts, images)]
    ids, attn = left_pad(rows, tok.pad_token_id if tok.pad_token_id is not None else 0)
    flat = [b for imgs in images for b in imgs]
    pixels = torch.stack([enc.pixels(b) for b in flat]).to(enc.device, enc.dtype) if flat else None
    return {"input_ids": ids.to(enc.device), "attention_mask": attn.to(enc.device), "pixel_values": pixels}


def _expand(enc: Encoder, text: str, imgs: list[bytes]) -> str:
    if text.count(enc.image_token) != len(imgs):
        raise ValueError(f"prompt has {text.count(enc.image_token)} image placeholders, {len(imgs)} images")
    return text.replace(enc.image_token, enc.image_token * enc.n_image_tokens(imgs[0])) if imgs else text


def _first(ids: list[int]) -> int | None:
    return ids[0] if ids else None


@torch.no_grad()
def generate(model, enc: Encoder, prompts: list[str], images: list[list[bytes]], *, max_new_tokens: int = 50,
             batch_size: int = 16, stop_at_first_char: bool = False, return_first_token: bool = False,
             on_batch=None):
    """Greedy continuations (decoded, special tokens skipped), in prompt order.

    Rows per batch: at most `batch_size`, fewer when the rows' full KV caches would not fit in free memory
    (`rows_that_fit`, sized for the longest prompt). With `return_first_token`, (text, first generated token id)
    pairs. `on_batch(n)`, if given, is called after each batch with its number of prompts (progress bars).
    """
    tok = enc.tok
    token_rows = [tok(_expand(enc, p, imgs))["input_ids"] for p, imgs in zip(prompts, images)]
    order = sorted(range(len(prompts)), key=lambda i: len(token_rows[i]))
    longest = max(map(len, token_rows), default=0)
    rows = rows_that_fit(batch_size, row_bytes(model, stored=longest + max_new_tokens,
                                               attended=longest + max_new_tokens, queries=longest), enc.device)
    out: list = [None] * len(prompts)
    for start in range(0, len(order), rows):
        idx = order[start:start + rows]
        batch = prompt_batch(enc, [prompts[i] for i in idx], [images[i] for i in idx], [token_rows[i] for i in idx])
        kwargs = {k: v for k, v in batch.items() if v is not None}
        width = batch["input_ids"].shape[1]
        stops = StoppingCriteriaList([FirstCharacter(tok, width)]) if stop_at_first_char else None
        seqs = model.generate(**kwargs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              stopping_criteria=stops, pad_token_id=tok.pad_token_id)
        gen = seqs[:, width:]
        texts = tok.batch_decode(gen, skip_special_tokens=True)
        for j, (i, t) in enumerate(zip(idx, texts)):
            out[i] = (t, _first(gen[j].tolist())) if return_first_token else t
        if on_batch is not None:
            on_batch(len(idx))
    return out


# ---------------------------------------------------------------- shared few-shot prefix


class SharedPrefixLayer(CacheLayerMixin):
    """One layer's cache for a batch whose rows share a prefix: the prefix keys/values are stored once (batch 1)
    and broadcast (`expand`, no copy) to the rows; only the rows' own tokens are stored per row. `update` returns
    the concatenation attention reads (one layer at a time, freed after the layer)."""

    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.prefix_keys, self.prefix_values = keys, values  # [1, kv_heads, prefix_len, head_dim]
        self.device = keys.device
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:  # the prefix initialises the layer
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        if self.keys is None:
            self.keys, self.values = key_states, value_states
        else:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
        b = key_states.shape[0]
        return (torch.cat([self.prefix_keys.expand(b, -1, -1, -1), self.keys], dim=-2),
                torch.cat([self.prefix_values.expand(b, -1, -1, -1), self.values], dim=-2))

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + (0 if self.keys is None else self.keys.shape[-2])

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = None


def shared_prefix_cache(prefix_cache) -> Cache:
    """A fresh cache over the (batch-1) prefix cache's tensors, which it never modifies (so no deepcopy)."""
    if not all(type(layer) is DynamicLayer for layer in prefix_cache.layers):
        raise ValueError("shared-prefix generation needs plain (non-sliding) dynamic cache layers")
    return Cache(layers=[SharedPrefixLayer(layer.keys, layer.values) for layer in prefix_cache.layers])


@torch.no_grad()
def generate_shared_prefix(model, enc: Encoder, prefix: str, prefix_images: list[bytes], suffixes: list[str],
                           suffix_images: list[list[bytes]], *, max_new_tokens: int = 50, batch_size: int = 16,
                           stop_at_first_char: bool = True, return_first_token: bool = False, on_batch=None):
    """Greedy continuations of `prefix + suffix` for many suffixes that share one prefix (the few-shot demos).

    The prefix — demos with their images, identical for every question of a form — is run once; its KV cache is
    shared by every batch and row without copies (`SharedPrefixLayer`), so each question costs only its own
    tokens. Suffixes are left-padded *after* the prefix (masked), with explicit position ids. Decoding is plain
    greedy, as in `generate`; rows stop as `FirstCharacter` does. Rows per batch: at most `batch_size`, fewer when
    `rows_that_fit` says so. Each suffix's tokens are taken from tokenising the whole prompt; if a tokenizer merges
    across the prefix boundary, a ValueError tells the caller to use `generate` instead.
    With `return_first_token`, (text, first generated token id) pairs. `on_batch(n)`: as in `generate`.
    """
    if not suffixes:
        return []
    tok = enc.tok
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    p_batch = prompt_batch(enc, [prefix], [prefix_images])
    p_ids = p_batch["input_ids"]
    n_prefix = p_ids.shape[1]
    token_rows = _suffix_tokens(enc, p_ids[0].tolist(), _expand(enc, prefix, prefix_images), suffixes, suffix_images)
    kwargs = {"pixel_values": p_batch["pixel_values"]} if p_batch["pixel_values"] is not None else {}
    prefix_cache = model(input_ids=p_ids, attention_mask=p_batch["attention_mask"], use_cache=True,
                         logits_to_keep=1, **kwargs).cache
    longest = max(map(len, token_rows), default=0)
    rows = rows_that_fit(batch_size, row_bytes(model, stored=longest + max_new_tokens,
                                               attended=n_prefix + longest + max_new_tokens, queries=longest),
                         enc.device)
    out: list = [None] * len(suffixes)
    order = sorted(range(len(suffixes)), key=lambda i: len(token_rows[i]))
    for start in range(0, len(order), rows):
        idx = order[start:start + rows]
        ids, smask = left_pad([token_rows[i] for i in idx], pad)
        cache = shared_prefix_cache(prefix_cache)
        mask = torch.cat([torch.ones(len(idx), n_prefix, dtype=torch.long), smask], dim=1).to(enc.device)
        pos = (n_prefix + (smask.cumsum(-1) - 1).clamp(min=0)).to(enc.device)
        flat = [b for i in idx for b in suffix_images[i]]
        kw = {"pixel_values": torch.stack([enc.pixels(b) for b in flat]).to(enc.device, enc.dtype)} if flat else {}
        logits = model(input_ids=ids.to(enc.device), attention_mask=mask, position_ids=pos, cache=cache,
                       use_cache=True, logits_to_keep=1, **kw).logits[:, -1]
        generated = _greedy(model, tok, logits, mask, pos[:, -1:] + 1, cache, max_new_tokens, stop_at_first_char)
        del cache
        for j, i in enumerate(idx):
            text = tok.decode(generated[j], skip_special_tokens=True)
            out[i] = (text, _first(generated[j])) if return_first_token else text
        if on_batch is not None:
            on_batch(len(idx))
    return out


def _suffix_tokens(enc: Encoder, prefix_ids: list[int], prefix_text: str, suffixes: list[str],
                   suffix_images: list[list[bytes]]) -> list[list[int]]:
    """Each suffix's token ids, taken from tokenising the whole prompt (prefix + suffix); a ValueError when the
    tokenizer merges tokens across the prefix boundary."""
    rows = []
    for suffix, imgs in zip(suffixes, suffix_images):
        full = enc.tok(prefix_text + _expand(enc, suffix, imgs))["input_ids"]
        if full[:len(prefix_ids)] != prefix_ids:
            raise ValueError("the tokenizer merges tokens across the shared-prefix boundary")
        rows.append(full[len(prefix_ids):])
    return rows


def _greedy(model, tok, logits, mask, next_pos, cache, max_new_tokens: int, stop_at_first_char: bool):
    """Plain greedy decoding of a batch from its first next-token `logits`: the generated ids per row, each row
    stopping at EOS or (`stop_at_first_char`) once its answer letter is settled."""
    generated = [[] for _ in range(logits.shape[0])]
    done = [False] * len(generated)
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)
        for j, t in enumerate(nxt.tolist()):
            if not done[j]:
                generated[j].append(t)
                done[j] = t == tok.eos_token_id or (
                    stop_at_first_char and answer_settled(tok.decode(generated[j], skip_special_tokens=True)))
        if all(done):
            break
        mask = torch.cat([mask, torch.ones(len(generated), 1, dtype=torch.long, device=mask.device)], dim=1)
        logits = model(input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=next_pos, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        next_pos = next_pos + 1
    return generated
