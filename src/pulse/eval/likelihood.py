"""Option log-likelihood scoring, batched: the non-standard MCQ mode for tiny models.

Each option is scored as the continuation of the question prompt: the sum of its token log-probabilities
(no EOS). The prediction is the option with the highest sum. This is a labelled deviation from MLLMU-Bench's
letter-generation protocol (mllmu_bench.md §9.5) and from MMBench's (mmbench.md §7).

The prompt is run once per question (left-padded, KV cache kept) and the cache is shared by that question's
options, so a 4-option question costs one prompt pass plus four short continuations — not four full sequences.
`option_logps_full` is the plain version (every option a full sequence), kept as the reference for tests.
"""
from __future__ import annotations

import torch

from ..models.batches import Encoder, Sample, forward, left_pad


def _token_rows(enc: Encoder, prompt: str, image, options: list[str]) -> tuple[list[int], list[list[int]]]:
    rows = [enc.token_ids(Sample(prompt, opt, image), eos=False) for opt in options]
    n = rows[0][1]
    return rows[0][0][:n], [ids[n:] for ids, _ in rows]


@torch.no_grad()
def option_logps(model, enc: Encoder, questions: list[tuple[str, bytes | None, list[str]]],
                 batch_size: int = 64, on_batch=None) -> list[list[float]]:
    """For each (prompt, image, option texts): the sequence-summed log-prob of every option after the prompt.

    `batch_size` counts option continuations; a batch holds about batch_size / 4 prompts. `on_batch(n)`, if given,
    is called after each batch with its number of questions (progress bars).
    """
    order = sorted(range(len(questions)), key=lambda i: (questions[i][1] is None, len(questions[i][0])))
    out: list[list[float]] = [[] for _ in questions]
    per = max(1, batch_size // 4)
    pad = enc.tok.pad_token_id if enc.tok.pad_token_id is not None else 0
    for start in range(0, len(order), per):
        idx = order[start:start + per]
        prompts, options = zip(*(_token_rows(enc, *questions[i]) for i in idx))
        ids, mask = left_pad(list(prompts), pad)
        images = [questions[i][1] for i in idx if questions[i][1] is not None]
        kwargs = {"pixel_values": torch.stack([enc.pixels(b) for b in images]).to(enc.device, enc.dtype)} \
            if images else {}
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        first = model(input_ids=ids.to(enc.device), attention_mask=mask.to(enc.device),
                      position_ids=pos.to(enc.device), use_cache=True, **kwargs)
        last_logp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)
        # one row per option, sharing its question's cache
        owner = [j for j, opts in enumerate(options) for _ in opts]
        flat = [o for opts in options for o in opts]
        cache = first.cache
        cache.reorder_cache(torch.tensor(owner, device=enc.device))
        lo = max(map(len, flat))
        oids = torch.full((len(flat), lo), pad, dtype=torch.long)
        omask = torch.zeros_like(oids)
        for r, o in enumerate(flat):
            oids[r, :len(o)] = torch.tensor(o)
            omask[r, :len(o)] = 1
        owner_t = torch.tensor(owner)
        full_mask = torch.cat([mask[owner_t], omask], dim=1)
        opos = torch.tensor([len(prompts[j]) for j in owner]).unsqueeze(1) + torch.arange(lo).unsqueeze(0)
        second = model(input_ids=oids.to(enc.device), attention_mask=full_mask.to(enc.device),
                       position_ids=opos.to(enc.device), cache=cache, use_cache=True)
        logp = torch.log_softmax(second.logits[:, :-1].float(), dim=-1)
        rest = logp.gather(-1, oids[:, 1:].to(enc.device).unsqueeze(-1)).squeeze(-1) * omask[:, 1:].to(enc.device)
        scores = last_logp[owner_t, oids[:, 0]] + rest.sum(-1)
        for r, j in enumerate(owner):
            out[idx[j]].append(float(scores[r]))
        if on_batch is not None:
            on_batch(len(idx))
    return out


@torch.no_grad()
def option_logps_full(model, enc: Encoder, questions: list[tuple[str, bytes | None, list[str]]],
                      batch_size: int = 64) -> list[list[float]]:
    """Reference implementation: every option a full right-padded sequence (no cache sharing)."""
    flat = [(qi, Sample(prompt, opt, image)) for qi, (prompt, image, opts) in enumerate(questions) for opt in opts]
    scores = []
    for start in range(0, len(flat), batch_size):
        chunk = [s for _, s in flat[start:start + batch_size]]
        batch = enc.batch(chunk, mask="answer", eos=False)
        logits = forward(model, batch).float()
        labels = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        keep = labels != -100
        tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
        scores.extend(float(v) for v in tok.sum(-1))
    out = [[] for _ in questions]
    for (qi, _), s in zip(flat, scores):
        out[qi].append(s)
    return out
