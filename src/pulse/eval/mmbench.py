"""MMBench prompt, answer extraction and CircularEval (model-free parts).

Reference: /work/shared/reference/mmbench.md §2-4 and §7. The prompt is the official LLaVA-1.5 one
(`model_vqa_mmbench.py`, `vicuna_v1`); extraction follows VLMEvalKit's exact-matching order (refusal, option
letter, "answer is X", option text), with no LLM judge: anything unresolved is `Z` and scores 0. CircularEval
runs at scoring time over the rotations already present in the TSV.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict

from pulse.data.records import MMBenchItem
from pulse.errors import PulseError

SYSTEM_VICUNA = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
INSTRUCTION = "Answer with the option's letter from the given choices directly."
ROTATION_STRIDE = 1_000_000

likelihood_note = (
    "Non-standard MMBench variant: each row is scored by the log-likelihood of the option letters instead of "
    "generating an answer and extracting it. It suits tiny models only and must never be compared with the "
    "published LLaVA-1.5 MMBench scores (64.3 for 7B / 67.7 for 13B), which come from greedy generation, "
    "answer extraction and CircularEval on the official prompt."
)

# VLMEvalKit `can_infer_option`: these phrasings (case-sensitive substrings) mean "no answer".
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_PUNCT = ".()[],:;!*#{}"
_ANSWER_IS = re.compile(r"(?i:\b(?:correct\s+)?answer\s*(?:is\s*:?|:)\s*)[(\[]?([A-Z])[)\]]?(?![A-Za-z0-9])")


def _has_hint(hint) -> bool:
    return hint is not None and str(hint).strip() != "" and str(hint).strip().lower() != "nan"


def mmbench_message(item: MMBenchItem) -> str:
    """The user message of the official LLaVA script, without `<image>\\n` and the conversation wrapper.

    `{hint}\\n{question}` (hint only when present), one `\\n{L}. {text}` per present option in letter order,
    then `\\n` + INSTRUCTION. The caller builds `f"{system} USER: <image>\\n{message} ASSISTANT:"` (vicuna_v1,
    separator a space) or its model family's equivalent; see `official_llava_prompt`.
    """
    text = f"{item.hint}\n{item.question}" if _has_hint(item.hint) else item.question
    for letter, option in item.options.items():
        text += f"\n{letter}. {option}"
    return f"{text}\n{INSTRUCTION}"


def official_llava_prompt(item: MMBenchItem, system: str = SYSTEM_VICUNA) -> str:
    """The full official LLaVA-1.5 MMBench prompt (mmbench.md §2): vicuna_v1 with the image token first."""
    return f"{system} USER: <image>\n{mmbench_message(item)} ASSISTANT:"


def _letter_match(prediction: str, letters: list[str]) -> str | None:
    """VLMEvalKit step: punctuation -> spaces, tokens; exactly one standalone option letter within the last
    four tokens -> it; no option letter but a standalone `Z` -> `Z`; else None."""
    mod = prediction
    for c in _PUNCT:
        mod = mod.replace(c, " ")
    tokens = mod.split()
    found = [ch for ch in letters if ch in tokens]
    if len(found) == 1:
        ch = found[0]
        return ch if tokens.index(ch) > len(tokens) - 5 else None
    if not found and "Z" in tokens:
        return "Z"
    return None


def _answer_is_match(prediction: str, letters: list[str]) -> str | None:
    """`(correct) answer is X` / `answer: (X)`: the letter when exactly one distinct option letter is named."""
    hits = {m.group(1) for m in _ANSWER_IS.finditer(prediction)} & set(letters)
    return hits.pop() if len(hits) == 1 else None


def _text_match(prediction: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit `can_infer_text`: exactly one option text inside the lower-cased prediction, and the
    prediction no longer than twice the options' total length."""
    low = prediction.lower()
    if len(low) > 2 * sum(len(str(v)) for v in options.values()):
        return None
    hits = [k for k, v in options.items() if str(v).lower() in low]
    return hits[0] if len(hits) == 1 else None


def extract_answer(prediction: str, options: dict[str, str]) -> str:
    """Map a generated MMBench answer to an option letter, or `Z` (no answer; scores 0).

    Exact matching in VLMEvalKit order (mmbench.md §3 steps 1-3 and 5; the LLM judge of step 4 is not run):
    1. a known refusal phrasing (REFUSALS) -> `Z`;
    2. punctuation `. ( ) [ ] , : ; ! * # { }` -> spaces; if exactly one option letter is a standalone token
       (within the last four tokens) -> it; a standalone `Z` with no option letter -> `Z`;
       else the pattern "(correct) answer is X" naming exactly one option letter -> it;
    3. exactly one option's text occurs in the lower-cased prediction, and the prediction is at most twice as
       long as all option texts together -> that letter;
    5. otherwise `Z`.
    Examples: "B", "B.", "(C) red", "The answer is A" -> the letter; "A or B", "", "I cannot answer" -> `Z`.
    """
    if prediction is None:
        return "Z"
    prediction = str(prediction)
    letters = list(options)
    if any(r in prediction for r in REFUSALS):
        return "Z"
    for step in (_letter_match(prediction, letters), _answer_is_match(prediction, letters)):
        if step:
            return step
    return _text_match(prediction, options) or "Z"


def extract_answers(items: list[MMBenchItem], generations: dict[int, str]) -> dict[int, str]:
    """`extract_answer` for every row that has a generation: row index -> letter or `Z`."""
    by_index = {it.index: it for it in items}
    return {int(i): extract_answer(g, by_index[int(i)].options) for i, g in generations.items() if int(i) in by_index}


def subset_groups(items: list[MMBenchItem], n_groups: int | None, seed: int) -> list[MMBenchItem]:
    """A fixed, seeded subset of whole groups (all rotations kept), for quick runs; label results as a subset.

    `n_groups` None or >= the number of groups returns all rows. Groups are drawn from the sorted group keys with
    `random.Random(seed)`; rows keep their input order.
    """
    keys = sorted({it.group for it in items})
    if n_groups is None or n_groups >= len(keys):
        return list(items)
    if n_groups < 0:
        raise PulseError(f"MMBench subset size must be >= 0, got {n_groups}")
    chosen = set(random.Random(seed).sample(keys, n_groups))
    return [it for it in items if it.group in chosen]


def _pct(num: int, den: int) -> float:
    return 100.0 * num / den if den else 0.0


def circular_eval(items: list[MMBenchItem], predictions: dict[int, str]) -> dict:
    """Score MMBench rows with CircularEval (primary) and the labelled non-circular accuracies.

    `predictions` maps row index (int, or str as read back from JSON) -> extracted letter or `Z`; keys for rows
    not in `items` are ignored. A group (rows sharing `index % 1_000_000`) scores 1 only if every rotation in it
    is answered correctly. Returns percentages (0-100):
    `circular` (mean over groups), `vanilla` (rotation-0 rows only, index < 1_000_000), `vanilla_all_rows`,
    `z_share` (rows answered `Z`), counts `groups` and `rows`, and `per_category` / `per_l2_category`:
    {name: {"circular", "vanilla", "n" (groups)}}, named after each group's rotation-0 row.
    Raises PulseError for rows without an answer (the test split is scored only by the official server), rows
    without a prediction, duplicate indices, and groups without their rotation-0 row.
    """
    if not items:
        raise PulseError("MMBench: no rows to score")
    preds = {int(k): v for k, v in predictions.items()}
    groups: dict[int, list[MMBenchItem]] = defaultdict(list)
    seen: set[int] = set()
    for it in items:
        if it.index in seen:
            raise PulseError(f"MMBench: row index {it.index} appears twice")
        seen.add(it.index)
        if it.answer is None:
            raise PulseError(
                f"MMBench: row index {it.index}, field answer is missing; the test split cannot be scored "
                "locally (submit predictions to the official OpenCompass server)"
            )
        if it.index not in preds:
            raise PulseError(f"MMBench: row index {it.index} has no prediction")
        groups[it.group].append(it)

    correct = {it.index: preds[it.index] == it.answer for it in items}
    cats: dict[str, dict[str, list]] = {"per_category": defaultdict(list), "per_l2_category": defaultdict(list)}
    group_ok, orig_ok = [], []
    for g, rows in groups.items():
        originals = [r for r in rows if r.index < ROTATION_STRIDE]
        if not originals:
            raise PulseError(f"MMBench: group {g} has no rotation-0 row (index < {ROTATION_STRIDE})")
        ok = all(correct[r.index] for r in rows)
        o = originals[0]
        group_ok.append(ok)
        orig_ok.append(correct[o.index])
        cats["per_category"][o.category].append((ok, correct[o.index]))
        cats["per_l2_category"][o.l2_category].append((ok, correct[o.index]))

    def summarise(pairs: list) -> dict:
        return {
            "circular": _pct(sum(c for c, _ in pairs), len(pairs)),
            "vanilla": _pct(sum(v for _, v in pairs), len(pairs)),
            "n": len(pairs),
        }

    return {
        "circular": _pct(sum(group_ok), len(group_ok)),
        "vanilla": _pct(sum(orig_ok), len(orig_ok)),
        "vanilla_all_rows": _pct(sum(correct.values()), len(items)),
        "z_share": _pct(sum(preds[it.index] == "Z" for it in items), len(items)),
        "groups": len(groups),
        "rows": len(items),
        "per_category": {k: summarise(v) for k, v in sorted(cats["per_category"].items())},
        "per_l2_category": {k: summarise(v) for k, v in sorted(cats["per_l2_category"].items())},
    }


def evaluate_mmbench(lm, items: list[MMBenchItem], *, scoring: str | None = None, enc=None,
                     max_new_tokens: int = 16, batch_size: int = 64) -> dict:
    """Run a model on every MMBench row and score it: `circular_eval`'s dict plus "scoring" and raw predictions.

    `generate` is the official protocol (the model's template — LLaVA-1.5: the vicuna system sentence —, greedy,
    exact-match extraction). `likelihood` scores each option text after the same prompt and is non-standard
    (see `likelihood_note`).
    """
    from ..models.batches import Encoder
    from .generate import generate
    from .likelihood import option_logps

    scoring = scoring or lm.scoring
    if scoring not in ("likelihood", "generate"):
        raise PulseError(f"unknown scoring {scoring!r}; known: likelihood, generate")
    enc = enc or Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype)
    prompts = [lm.template.prompt(mmbench_message(it), image=True) for it in items]
    if scoring == "likelihood":
        scores = option_logps(lm.model, enc, [(p, it.image, list(it.options.values()))
                                              for p, it in zip(prompts, items)], batch_size=batch_size)
        preds = {it.index: list(it.options)[max(range(len(s)), key=s.__getitem__)] for it, s in zip(items, scores)}
        raw = preds
    else:
        texts = generate(lm.model, enc, prompts, [[it.image] for it in items], max_new_tokens=max_new_tokens,
                         batch_size=max(1, batch_size // 4))
        raw = {it.index: t for it, t in zip(items, texts)}
        preds = extract_answers(items, raw)
    result = circular_eval(items, preds)
    result["scoring"] = scoring
    result["predictions"] = {str(k): v for k, v in raw.items()}
    if scoring == "likelihood":
        result["note"] = likelihood_note
    return result
