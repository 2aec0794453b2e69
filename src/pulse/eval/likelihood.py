"""Option log-likelihood scoring, batched: the non-standard MCQ mode for tiny models.

Each option is scored as the continuation of the question prompt: the sum of its token log-probabilities
(no EOS). The prediction is the option with the highest sum. This is a labelled deviation from MLLMU-Bench's
letter-generation protocol (mllmu_bench.md §9.5) and from MMBench's (mmbench.md §7).

Each option is a continuation of its question's cached prompt, so a 4-option question costs one prompt pass plus
four short continuations — not four full sequences. Questions about one image (a person's image MCQs, MMBench's
circular rotations of one question) also share their prompts' longest common token prefix, which holds the image:
in each batch it runs once per image, its cache is copied to the questions, and each question runs only the rest
of its prompt. Images are batched in order of their longest prompt, so little of a batch is padding. An option's
first token is scored from the prompt's last logits, so only options of two or more tokens run a continuation
(`benchmarks/likelihood_speed.py` times it against full sequences). Same tokens, same positions, same causal
attention as one pass over each prompt: the log-probs agree up to float rounding (the test: 1e-4).
`option_logps_full` is the plain version (every option a full sequence), kept as the reference for tests.
"""
from __future__ import annotations

import hashlib

import torch

from ..models.batches import Encoder, Sample, forward, left_pad


def _token_rows(enc: Encoder, prompt: str, image, options: list[str]) -> tuple[list[int], list[list[int]]]:
    rows = [enc.token_ids(Sample(prompt, opt, image), eos=False) for opt in options]
    n = rows[0][1]
    return rows[0][0][:n], [ids[n:] for ids, _ in rows]


def _groups(prompts: list[list[int]], images: list, image_token: int) -> list[tuple[list[int], int]]:
    """Consecutive rows with the same image (text-only rows: None) as (row indices, shared prefix length): their
    longest common token prefix, which must hold every image token of the rows and leave each row at least one
    token of its own; a group where it cannot is split into single rows (prefix: all but the last token)."""
    runs: list[list[int]] = []
    for r, img in enumerate(images):
        if runs and images[runs[-1][0]] == img:
            runs[-1].append(r)
        else:
            runs.append([r])
    done = []
    for rows in runs:
        first = prompts[rows[0]]
        n = min(len(prompts[r]) for r in rows) - 1
        for r in rows[1:]:
            n = next((i for i, (x, y) in enumerate(zip(first[:n], prompts[r])) if x != y), n)
        last_image = max((i for r in rows for i, t in enumerate(prompts[r]) if t == image_token), default=-1)
        if n > last_image and n > 0:
            done.append((rows, n))
        else:
            for r in rows:
                if len(prompts[r]) < 2 or image_token in prompts[r][-1:]:
                    raise ValueError("likelihood scoring needs prompts of at least two tokens that do not end with "
                                     "an image token")
                done.append(([r], len(prompts[r]) - 1))
    return done


def _left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """left_pad plus position ids (0 for the padding)."""
    ids, mask = left_pad(rows, pad)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def option_logps(model, enc: Encoder, questions: list[tuple[str, bytes | None, list[str]]],
                 batch_size: int = 64, on_batch=None) -> list[list[float]]:
    """For each (prompt, image, option texts): the sequence-summed log-prob of every option after the prompt.

    `batch_size` counts option continuations; a batch holds about batch_size / 4 prompts. `on_batch(n)`, if given,
    is called after each batch with its number of questions (progress bars).
    """
    keys = [None if q[1] is None else hashlib.sha1(q[1]).hexdigest() for q in questions]
    tokens = [_token_rows(enc, *q) for q in questions]
    order = _batch_order(keys, tokens)
    out: list[list[float]] = [[] for _ in questions]
    per = max(1, batch_size // 4)
    pad = enc.tok.pad_token_id if enc.tok.pad_token_id is not None else 0
    for start in range(0, len(order), per):
        idx = order[start:start + per]
        prompts = [tokens[i][0] for i in idx]
        options = [tokens[i][1] for i in idx]
        cache, mask, last_logp = _prompts_run(model, enc, prompts, [keys[i] for i in idx],
                                              [questions[i][1] for i in idx], pad)
        owner = [j for j, opts in enumerate(options) for _ in opts]
        scores = _option_scores(model, cache, mask, last_logp, prompts, options, owner, pad, enc.device)
        for r, j in enumerate(owner):
            out[idx[j]].append(float(scores[r]))
        if on_batch is not None:
            on_batch(len(idx))
    return out


def _batch_order(keys: list[str | None], tokens: list[tuple[list[int], list]]) -> list[int]:
    """Question order for batching: questions about one image together, images by their longest prompt (so a
    batch holds prompts of similar length), text-only questions last."""
    longest: dict[str | None, int] = {}
    for k, (prompt, _) in zip(keys, tokens):
        longest[k] = max(longest.get(k, 0), len(prompt))
    return sorted(range(len(keys)), key=lambda i: (keys[i] is None, longest[keys[i]], keys[i] or "",
                                                   len(tokens[i][0])))


def _prompts_run(model, enc: Encoder, prompts: list[list[int]], keys: list, images: list, pad: int):
    """Run a batch's prompts: each group's shared prefix once, with its image, then the rest of each prompt after
    its group's prefix (the cache copied to the rows). (cache, attention mask, log-probs after each prompt)."""
    dev = enc.device
    groups = _groups(prompts, keys, enc.image_token_id)
    p_ids, p_mask, p_pos = _left([prompts[rows[0]][:n] for rows, n in groups], pad)
    pics = [images[rows[0]] for rows, _ in groups if keys[rows[0]] is not None]
    kwargs = {"pixel_values": torch.stack([enc.pixels(b) for b in pics]).to(dev, enc.dtype)} if pics else {}
    cache = model(input_ids=p_ids.to(dev), attention_mask=p_mask.to(dev), position_ids=p_pos.to(dev),
                  use_cache=True, logits_to_keep=1, **kwargs).cache
    group_of = [g for g, (rows, _) in enumerate(groups) for _ in rows]  # groups are consecutive runs of rows
    g_t = torch.tensor(group_of)
    cache.reorder_cache(g_t.to(dev))
    lens = torch.tensor([groups[g][1] for g in group_of])
    s_ids, s_mask, s_pos = _left([p[groups[g][1]:] for p, g in zip(prompts, group_of)], pad)
    mask = torch.cat([p_mask[g_t], s_mask], dim=1)
    last = model(input_ids=s_ids.to(dev), attention_mask=mask.to(dev),
                 position_ids=(lens.unsqueeze(1) + s_pos).to(dev), cache=cache, use_cache=True, logits_to_keep=1)
    return cache, mask, torch.log_softmax(last.logits[:, -1].float(), dim=-1)


def _option_scores(model, cache, mask, last_logp, prompts, options, owner, pad: int, dev) -> torch.Tensor:
    """Summed log-prob of every option (flattened, `owner[r]` = its question): the first token scored by the
    prompt's last logits; an option of n > 1 tokens runs its first n - 1 tokens as a continuation of its question's
    cache (one row per option), which scores the rest."""
    flat = [o for opts in options for o in opts]
    if not all(flat):
        raise ValueError("likelihood scoring: an option text has no tokens")
    scores = last_logp[torch.tensor(owner), torch.tensor([o[0] for o in flat])]
    multi = [r for r, o in enumerate(flat) if len(o) > 1]
    if not multi:
        return scores
    rows_t = torch.tensor([owner[r] for r in multi])
    cache.reorder_cache(rows_t.to(dev))
    lo = max(len(flat[r]) for r in multi) - 1
    oids = torch.full((len(multi), lo), pad, dtype=torch.long)
    target = torch.zeros_like(oids)
    omask = torch.zeros_like(oids)
    for k, r in enumerate(multi):
        o = flat[r]
        oids[k, :len(o) - 1], target[k, :len(o) - 1] = torch.tensor(o[:-1]), torch.tensor(o[1:])
        omask[k, :len(o) - 1] = 1
    full_mask = torch.cat([mask[rows_t], omask], dim=1)
    opos = torch.tensor([len(prompts[owner[r]]) for r in multi]).unsqueeze(1) + torch.arange(lo)
    cont = model(input_ids=oids.to(dev), attention_mask=full_mask.to(dev), position_ids=opos.to(dev),
                 cache=cache, use_cache=True)
    logp = torch.log_softmax(cont.logits.float(), dim=-1)
    rest = logp.gather(-1, target.to(dev).unsqueeze(-1)).squeeze(-1) * omask.to(dev)
    scores[torch.tensor(multi)] += rest.sum(-1)
    return scores


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
