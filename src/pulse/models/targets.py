"""Which parameters an update touches: anchored LoRA regexes per update target (paper Table 3).

peft treats a *string* `target_modules` as a full-match regex. Anchoring matters: a bare suffix list such as
["q_proj", "k_proj", "v_proj"] also catches the CLIP vision tower's attention (what MLLMU-Bench's recipe does).
Module names follow transformers 5's LLaVA layout (`model.language_model.layers.N...`).
"""
from __future__ import annotations

from ..errors import PulseError

LLM = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
PROJ = r"model\.multi_modal_projector\.linear_[12]"
VISION = r"model\.vision_tower\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])"
# MLLMU-Bench's finetune.py / baselines: `find_all_linear_names` collects the leaf names of the Linear layers outside
# `multi_modal_projector` and `vision_model` (transformers 4.45 names CLIP `vision_tower.vision_model.…`), minus
# lm_head: q/k/v/o/gate/up/down_proj. peft matches a list by suffix over the whole model, so CLIP's q/k/v_proj get
# adapters too (not out_proj, fc1/fc2 or the projector). This regex is exactly that module set.
MLLMU_BENCH = rf"{LLM}|model\.vision_tower\.(vision_model\.)?encoder\.layers\.\d+\.self_attn\.(q|k|v)_proj"

TARGETS = {
    "proj+llm": f"{LLM}|{PROJ}",  # the paper's default
    "llm": LLM,  # Table 3
    "proj": PROJ,
    "vision": VISION,
    "mllmu": MLLMU_BENCH,  # MLLMU-Bench's LoRA targets as peft applies them (LLM + CLIP attention q/k/v)
}


def target_regex(target: str) -> str:
    if target not in TARGETS:
        raise PulseError(f"unknown update target {target!r}; known: {', '.join(TARGETS)} (or 'full')")
    return TARGETS[target]


def full_parameter_names(model, target: str) -> list[str]:
    """For full-parameter updates: the parameter names a target covers (same regex, any parameter below it)."""
    import re

    pattern = re.compile(target_regex(target))
    names = []
    for name, _ in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        if pattern.fullmatch(module):
            names.append(name)
    return names
