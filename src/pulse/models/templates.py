"""Prompt templates. A template wraps a user message into the model's conversation format.

LLaVA-1.5 (vicuna_v1): `{system} USER: <image>\n{message} ASSISTANT:`. The system sentence is the one LLaVA-1.5
was trained with; the official MMBench script uses it too. Benchmarks whose published prompts are literal strings
(MLLMU-Bench's generate mode) do not go through a template. `MLLMU` is the sample format of MLLMU-Bench's fine-tuning and
unlearning scripts, which PULSE uses for fine-tuning and unlearning real checkpoints (`unlearn.format: mllmu`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

# LLaVA `llava/conversation.py`, `conv_vicuna_v1` (LLaVA-1.5 trains with `--version v1` and evaluates MMBench
# with `--conv-mode vicuna_v1`). "curious human" belongs to the older vicuna_v0 / llava_v1 templates.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Template:
    system: str = ""
    user: str = "USER: "
    assistant: str = "ASSISTANT:"
    image_token: str = "<image>"
    sep: str = " "  # between the message and the assistant tag

    def prompt(self, message: str, image: bool) -> str:
        """The full prompt up to and including the assistant tag; the answer follows after one space."""
        body = f"{self.image_token}\n{message}" if image else message
        system = f"{self.system} " if self.system else ""
        return f"{system}{self.user}{body}{self.sep}{self.assistant}"

    def to_dict(self) -> dict:
        return asdict(self)


LLAVA_15 = Template(system=VICUNA_SYSTEM)
PLAIN = Template()  # `USER: <image>\n{message} ASSISTANT:` — the llava-hf model card form, used by the mini model
# MLLMU-Bench's training/unlearning sample (finetune.py, baselines/): `USER: <image>\n{q}\nASSISTANT: {a}`, no system
# sentence; text-only samples (which MLLMU-Bench never trains) drop the image line: `USER: {q}\nASSISTANT: {a}`.
MLLMU = Template(sep="\n")
TEMPLATES = {"llava-1.5": LLAVA_15, "plain": PLAIN, "mllmu": MLLMU}
