"""How a model is optimised: the recipe types shared by unlearning and fine-tuning, and their checks. The config
(`pulse.config`) composes them; the training code reads them. Each value is a named field recorded in manifests."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import PulseError


@dataclass
class Recipe:
    """How a model is optimised, shared by unlearning and fine-tuning. Defaults = MLLMU-Bench's `baselines/` and
    `finetune.py`: AdamW (transformers' AdamW: eps 1e-6, weight decay 0), lr 2e-5, batch 4, 1 epoch, linear decay
    to 0 stepped every batch with no warm-up (`get_scheduler("linear", 0, total)`), no clipping, LoRA r16 / α16 /
    dropout 0.05 / Gaussian init, trained against fp32 weights (their `prepare_model_for_kbit_training` casts the
    model to fp32; here `master_fp32` holds only the updated layers in fp32).
    """
    budget: str = "epochs"  # "epochs": epochs × ceil(n / batch_size) steps per request; "steps": `steps` batches
    epochs: int = 1
    steps: int | None = None  # used only when budget = steps
    lr: float = 2e-5
    batch_size: int = 4
    schedule: str = "linear"  # "linear" (to 0, HF get_linear_schedule_with_warmup), "constant", "cosine"
    warmup_steps: int = 0  # lr × (s + 1) / warmup_steps for the first steps
    min_lr_ratio: float = 0.0  # linear / cosine decay to this fraction of lr (mini: 0.1 with cosine)
    clip: float | None = None  # max gradient norm; None = no clipping
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-6  # transformers.AdamW's default, which MLLMU-Bench uses (torch's is 1e-8)
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_init: str = "gaussian"  # peft init_lora_weights: "gaussian" (MLLMU-Bench) or "default" (Kaiming A, B = 0)
    master_fp32: bool = True  # half-precision models: the updated Linear layers are held (and merged) in fp32
    gradient_checkpointing: bool = False


@dataclass
class StopRule:
    """Matched forgetting (protocol/track.py): a request's matched point is the first checkpoint
    (every eval.every steps, step 0, the budget, the cap) whose selection-half D_unlearn accuracy (both forms)
    is <= the never-learned reference on that half + `margin`. Single-request scenarios only."""
    rule: str = "none"  # "none" or "never_learned"
    margin: float = 0.0  # percentage points above the reference
    max_steps: int = 0  # step cap of the search; 0 = the configured budget. Above the budget: schedule constant


@dataclass
class UnlearnSection(Recipe):
    mode: str = "lora"
    mask: str = "answer"
    params: dict = field(default_factory=dict)
    # what one request unlearns and how a sample is written (the lead's area; see protocol/scenarios.py)
    data: str = "mcq"  # "mcq": each person's 10 MCQs as QA, half text, half image (paper Table 2); "ft_data"
    format: str = "mllmu"  # "mllmu": `USER: <image>\n{q}\nASSISTANT: {a}` (MLLMU-Bench); "model": its template
    eos: bool = False  # append EOS after the answer (MLLMU-Bench appends none)
    stop: StopRule = field(default_factory=StopRule)


@dataclass
class FinetuneSection(Recipe):
    """`pulse finetune` (MLLMU-Bench `finetune.py`, README command): the recipe with 5 epochs, LoRA on the modules
    peft matches for MLLMU-Bench's target names (`mllmu`), loss on the whole sequence, no EOS appended."""
    epochs: int = 5
    mode: str = "lora"  # "lora" (merged at the end) or "full"
    target: str = "mllmu"  # an update target (models/targets.py); "all" = every parameter (mode full only)
    mask: str = "sequence"  # MLLMU-Bench labels = input_ids with pads -100 (image tokens: we mask them too)
    eos: bool = False  # MLLMU-Bench appends no EOS
    sampler: str = "shuffle"  # "shuffle": shuffled epochs (DataLoader shuffle=True); "weighted": mini replay draws
    people: int = 100  # the first N Full_Set people by ID (paper: 100)
    seed: int = 0  # batch order, LoRA init, dropout
    save_every: int = 200  # checkpoint (resume) every N optimizer steps, and at the end; 0 = only at the end
    save_dtype: str | None = None  # None = as trained (fp32 updated layers under master_fp32); or a dtype name
    eval_batch_size: int = 16  # the final MCQ evaluation


SCHEDULES = ("linear", "constant", "cosine")
LORA_INITS = ("gaussian", "default")


def validate_recipe(r: Recipe, section: str, where: str) -> None:
    """Every recipe value checked; one-line errors naming the key (e.g. `unlearn.lr`)."""
    def bad(key: str, rule: str):
        raise PulseError(f"{where}: {section}.{key} must be {rule}, got {getattr(r, key)!r}")

    def positive_int(key: str):
        v = getattr(r, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            bad(key, "an integer >= 1")

    if r.budget not in ("epochs", "steps"):
        bad("budget", "epochs or steps")
    positive_int("epochs")
    positive_int("batch_size")
    positive_int("lora_rank")
    if r.steps is not None or r.budget == "steps":
        positive_int("steps")
    if not (math.isfinite(r.lr) and r.lr > 0):
        bad("lr", "a finite number > 0")
    if r.schedule not in SCHEDULES:
        bad("schedule", " or ".join(SCHEDULES))
    if r.warmup_steps < 0:
        bad("warmup_steps", ">= 0")
    if not 0.0 <= r.min_lr_ratio <= 1.0:
        bad("min_lr_ratio", "in [0, 1]")
    if r.clip is not None and not (math.isfinite(r.clip) and r.clip > 0):
        bad("clip", "null (no clipping) or a finite number > 0")
    if not (math.isfinite(r.weight_decay) and r.weight_decay >= 0):
        bad("weight_decay", "a finite number >= 0")
    if len(r.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in r.adam_betas):
        bad("adam_betas", "two numbers in [0, 1)")
    if not (math.isfinite(r.adam_eps) and r.adam_eps > 0):
        bad("adam_eps", "a finite number > 0")
    if not (math.isfinite(r.lora_alpha) and r.lora_alpha > 0):
        bad("lora_alpha", "> 0")
    if not 0.0 <= r.lora_dropout < 1.0:
        bad("lora_dropout", "in [0, 1)")
    if r.lora_init not in LORA_INITS:
        bad("lora_init", " or ".join(LORA_INITS))
