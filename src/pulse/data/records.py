"""Typed records shared by readers, the mini world, evaluation and unlearning.

Images are kept as encoded bytes (PNG/JPEG) and decoded on demand with `decode_image`, so records stay cheap
to hold and hash. `form` is "image" (MLLMU-Bench `Image_Textual`: the picture is shown, "this person") or
"text" (`Pure_Text`: no picture, the person is named).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image

FORMS = ("image", "text")
MLLMU_TYPE = {"Image_Textual": "image", "Pure_Text": "text"}  # MLLMU-Bench `Type` value -> our form
MLLMU_TYPE_OF = {v: k for k, v in MLLMU_TYPE.items()}


@dataclass(frozen=True)
class MCQ:
    """One multiple-choice question. `options` maps letter -> text in letter order; `answer` is a letter."""

    question: str
    options: dict[str, str]
    answer: str
    form: str  # "image" or "text"
    person_id: str = ""
    index: int = 0  # position within the person's questions of this form


@dataclass(frozen=True)
class OpenItem:
    """A cloze (`Mask_Task`, blank marked `__`) or generation (`Generation_Task`) item."""

    question: str
    answer: str
    form: str


@dataclass
class Person:
    """One MLLMU-Bench row: a fictitious person or a real celebrity."""

    id: str
    name: str
    image: bytes | None  # encoded portrait; None only where a config has `images` instead
    biography: dict
    image_mcqs: list[MCQ]
    text_mcqs: list[MCQ]
    cloze: list[OpenItem] = field(default_factory=list)
    generation: list[OpenItem] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)  # Test_Set: several transformed portraits

    def mcqs(self, form: str) -> list[MCQ]:
        return self.image_mcqs if form == "image" else self.text_mcqs


@dataclass(frozen=True)
class QAPair:
    """One training QA pair (MLLMU-Bench training flavour: a `metadata` item). `form` "text" = train without image."""

    person_id: str
    question: str
    answer: str
    image: bytes | None
    form: str = "image"


@dataclass(frozen=True)
class MMBenchItem:
    """One MMBench TSV row (one option rotation). `group` = index % 1_000_000; `answer` is None on the test split."""

    index: int
    question: str
    hint: str | None
    options: dict[str, str]  # only the present options, in letter order
    answer: str | None
    category: str
    l2_category: str
    image: bytes

    @property
    def group(self) -> int:
        return self.index % 1_000_000


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes to an RGB PIL image."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
