"""MMBench prompt, answer extraction and CircularEval (model-free parts), plus `evaluate_mmbench`.

Reference: /work/shared/reference/mmbench.md §2-4 and §7. The prompt is the official LLaVA-1.5 one
(`llava/eval/model_vqa_mmbench.py`, `vicuna_v1`); extraction is VLMEvalKit's exact matching (`can_infer`,
vlmeval/utils/matching_util.py at commit e8e78f05, plus the "answer is X" regex its later commit a67ace50 added),
with no LLM judge: anything unresolved is `Z` and scores 0.
CircularEval runs at scoring time over the rotations already present in the TSV.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict

from pulse.data.records import MMBenchItem
from pulse.errors import PulseError
from pulse.models.templates import VICUNA_SYSTEM

SYSTEM_VICUNA = VICUNA_SYSTEM  # LLaVA `conv_vicuna_v1`: "A chat between a curious user ... the user's questions."
INSTRUCTION = "Answer with the option's letter from the given choices directly."
ROTATION_STRIDE = 1_000_000
DEFAULT_MAX_NEW_TOKENS = 1024  # LLaVA `model_vqa_mmbench.py`: max_new_tokens=1024, greedy, stops at EOS

likelihood_note = (
    "Non-standard MMBench variant: each row is scored by the log-likelihood of the option texts after the prompt "
    "instead of generating an answer and extracting it. It suits tiny models only and must never be compared "
    "with the published LLaVA-1.5 MMBench scores (64.3 for 7B / 67.7 for 13B), which come from greedy "
    "generation, answer extraction and CircularEval on the official prompt."
)

# VLMEvalKit `can_infer_option` (matching_util.py, e8e78f05): these phrasings (case-sensitive substrings) mean
# "no answer" -> Z.
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
API_FAILURE = "Failed to obtain answer via API"  # can_infer_option gives up (False) on this text
_PUNCT = ".()[],:;!*#{}"
# VLMEvalKit `_VERBOSE_ANSWER_RE` (PR #1552, 2026-06-17), verbatim: "(correct) answer is X", case-insensitive
# (the (?i) flag makes [ABCD] match a-d too), X may be wrapped in asterisks; first match in the text.
VERBOSE_ANSWER_RE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def _has_hint(hint) -> bool:
    """LLaVA `model_vqa_mmbench.is_none`: a hint is absent when missing or when it reads 'nan' / 'none' in any
    case (the TSV reader already maps pandas' NA strings such as '', 'N/A', 'None' to None)."""
    return hint is not None and str(hint) != "" and str(hint).lower() not in ("nan", "none")


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


def option_letter(prediction: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit `can_infer_option` (default settings: env VERBOSE unset): a letter, `Z`, or None (= False).

    1. text contains API_FAILURE -> None; a REFUSALS phrasing -> `Z`;
    2. the punctuation `. ( ) [ ] , : ; ! * # { }` -> spaces; whitespace tokens. Exactly one option letter is a
       token and its first occurrence is among the last four tokens -> that letter (exactly one but earlier:
       go on to 3). No option letter but a token `Z` -> `Z`. Two or more option letters: go on to 3.
    3. VERBOSE_ANSWER_RE's first match, upper-cased, if it is an option letter -> it;
    4. otherwise None. Letters are case-sensitive in step 2 ("a" is not A); step 3 is case-insensitive.
    (With VERBOSE set, VLMEvalKit also refuses a lone letter when a token "A" appears among more than three
    tokens — "A might be a quantifier"; that is a logging switch, off by default, and not reproduced.)
    """
    if API_FAILURE in prediction:
        return None
    if any(r in prediction for r in REFUSALS):
        return "Z"
    mod = prediction
    for c in _PUNCT:
        mod = mod.replace(c, " ")
    tokens = mod.split()
    found = [ch for ch in options if ch in tokens]
    if len(found) == 1:
        if tokens.index(found[0]) > len(tokens) - 5:
            return found[0]
    elif not found and "Z" in tokens:
        return "Z"
    m = VERBOSE_ANSWER_RE.search(prediction)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    return None


def option_text(prediction: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit `can_infer_text`: if the prediction is at most twice as long (characters) as all option texts
    together, and exactly one option's lower-cased text is a substring of the lower-cased prediction -> that
    letter; else None. (VLMEvalKit lower-cases the caller's dict in place; we do not mutate `options`.)"""
    low = prediction.lower()
    if len(low) > 2 * sum(len(str(v)) for v in options.values()):
        return None
    hits = [k for k, v in options.items() if str(v).lower() in low]
    return hits[0] if len(hits) == 1 else None


def extract_answer(prediction, options: dict[str, str]) -> str:
    """Map a generated MMBench answer to an option letter, or `Z` (no answer; scores 0).

    VLMEvalKit exact matching (`can_infer` = `can_infer_option` or else `can_infer_text`, on `str(prediction)`;
    `extract_answer_from_item` with no judge model turns a failure into `Z`). See `option_letter` and
    `option_text` for the rules. Examples (options red/blue/green/yellow): "B", "B.", "(C) red", "The answer is a"
    -> the letter; "A or B", "", "purple" -> `Z`; "It is red." -> A.
    """
    prediction = str(prediction)
    return option_letter(prediction, options) or option_text(prediction, options) or "Z"


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
                     max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 64,
                     image: str = "pad") -> dict:
    """Run a model on every MMBench row and score it: `circular_eval`'s dict plus "scoring", "predictions"
    ({str(index): raw output}) and "records" (one per row, in `items` order, for `--predictions`):
    {"index", "prompt" (full text, `<image>` placeholder), "output", "prediction" (letter or `Z`)}.

    `generate` is the official protocol (the model's template — LLaVA-1.5: vicuna_v1 —, greedy, at most
    `max_new_tokens` new tokens (LLaVA: 1024), stopping at EOS; the output is stripped as LLaVA's script does,
    then VLMEvalKit exact matching). HF `generate` ends a row at the model's `generation_config.eos_token_id`
    and the batch once every row has ended. `likelihood` scores each option text after the same prompt and
    is non-standard (see `likelihood_note`); its record's "output" is {"scoring": "likelihood",
    "option_logps": {letter: summed log-prob}, "chosen": letter}.
    `image`: "pad" = LLaVA-1.5's preprocessing (`image_aspect_ratio: pad`: pad to a square with the mean colour,
    then the processor), "processor" = the checkpoint's processor alone (llava-hf: resize + centre crop).
    A progress bar (pulse.progress) counts the rows.
    """
    from .. import progress
    from ..models.batches import Encoder, expand_to_square
    from .generate import generate
    from .likelihood import option_logps

    scoring = scoring or lm.scoring
    if scoring not in ("likelihood", "generate"):
        raise PulseError(f"unknown scoring {scoring!r}; known: likelihood, generate")
    if max_new_tokens < 1:
        raise PulseError(f"MMBench max_new_tokens must be >= 1, got {max_new_tokens}")
    if image not in ("pad", "processor"):
        raise PulseError(f"MMBench image preprocessing must be pad or processor, got {image!r}")
    enc = enc or Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype)
    prompts = [lm.template.prompt(mmbench_message(it), image=True) for it in items]
    images = [expand_to_square(it.image, lm.processor) if image == "pad" else it.image for it in items]
    bar = progress.bar(desc=progress.named(f"MMBench ({len(items)} rows)"), total=len(items), unit="row")
    if scoring == "likelihood":
        with bar:
            scores = option_logps(lm.model, enc, [(p, img, list(it.options.values()))
                                                  for p, img, it in zip(prompts, images, items)],
                                  batch_size=batch_size, on_batch=bar.update)
        preds, outputs = {}, []
        for it, s in zip(items, scores):
            letter = list(it.options)[max(range(len(s)), key=s.__getitem__)]
            preds[it.index] = letter
            outputs.append({"scoring": "likelihood", "option_logps": dict(zip(it.options, map(float, s))),
                            "chosen": letter})
        raw = preds
    else:
        with bar:
            texts = generate(lm.model, enc, prompts, [[img] for img in images], max_new_tokens=max_new_tokens,
                             batch_size=max(1, batch_size // 4), on_batch=bar.update)
        outputs = [t.strip() for t in texts]
        raw = {it.index: t for it, t in zip(items, outputs)}
        preds = extract_answers(items, raw)
    result = circular_eval(items, preds)
    result["scoring"] = scoring
    result["predictions"] = {str(k): v for k, v in raw.items()}
    result["records"] = [{"index": it.index, "prompt": p, "output": o, "prediction": preds[it.index]}
                         for it, p, o in zip(items, prompts, outputs)]
    if scoring == "likelihood":
        result["note"] = likelihood_note
    return result
