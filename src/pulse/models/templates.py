"""Prompt templates. A template wraps a user message into the model's conversation format.

LLaVA-1.5 (vicuna_v1): `{system} USER: <image>\n{message} ASSISTANT:`. The system sentence is the one LLaVA-1.5
was trained with; the official MMBench script uses it too. Benchmarks whose published prompts are literal strings
(MLLMU-Bench's generate mode) do not go through a template.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class Template:
    system: str = ""
    user: str = "USER: "
    assistant: str = "ASSISTANT:"
    image_token: str = "<image>"

    def prompt(self, message: str, image: bool) -> str:
        """The full prompt up to and including the assistant tag; the answer follows after one space."""
        body = f"{self.image_token}\n{message}" if image else message
        system = f"{self.system} " if self.system else ""
        return f"{system}{self.user}{body} {self.assistant}"

    def to_dict(self) -> dict:
        return asdict(self)


LLAVA_15 = Template(system=VICUNA_SYSTEM)
PLAIN = Template()  # `USER: <image>\n{message} ASSISTANT:` — the llava-hf model card form, used by the mini model
TEMPLATES = {"llava-1.5": LLAVA_15, "plain": PLAIN}
