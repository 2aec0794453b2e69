"""Turn (prompt, answer, image) samples into model batches.

One code path for training, unlearning and likelihood scoring: the prompt is tokenised with its `<image>`
placeholder expanded to the model's number of image tokens, the answer follows. Labels are -100 everywhere
except the answer tokens (mask "answer", the default) or every real text token (mask "sequence", MLLMU-Bench's
recipe). Image tokens and padding are never labelled.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..data.records import decode_image
from ..errors import PulseError

IGNORE = -100


@dataclass(frozen=True)
class Sample:
    prompt: str  # fully templated; contains the image token iff `image` is set
    answer: str
    image: bytes | None = None


class Encoder:
    """Tokeniser + image processor with caches (pixel values per image, image-token count, token ids per sample:
    evaluations and training epochs tokenise the same prompts again and again).

    `eos`: whether training/unlearning batches end each answer with EOS (MLLMU-Bench appends none; the mini model
    was trained with it). Likelihood scoring never appends it.
    """

    def __init__(self, processor, device="cpu", dtype=torch.float32, eos: bool = True):
        self.processor = processor
        self.eos = eos
        self.tok = processor.tokenizer
        self.image_token = processor.image_token
        self.image_token_id = self.tok.convert_tokens_to_ids(self.image_token)
        self.device, self.dtype = device, dtype
        self._pixels: dict[str, torch.Tensor] = {}
        self._n_image_tokens: int | None = None
        self._ids: dict[tuple, tuple[tuple[int, ...], int]] = {}

    def pixels(self, image: bytes) -> torch.Tensor:
        key = hashlib.sha1(image).hexdigest()
        if key not in self._pixels:
            out = self.processor.image_processor(images=[decode_image(image)], return_tensors="pt")
            self._pixels[key] = out["pixel_values"][0]
        return self._pixels[key]

    def n_image_tokens(self, image: bytes) -> int:
        if self._n_image_tokens is None:
            ids = self.processor(text=self.image_token, images=[decode_image(image)], return_tensors="pt")["input_ids"]
            self._n_image_tokens = int((ids == self.image_token_id).sum())
        return self._n_image_tokens

    def expand(self, prompt: str, image: bytes | None) -> str:
        count = prompt.count(self.image_token)
        if (image is None) != (count == 0) or count > 1:
            raise PulseError(f"prompt has {count} image placeholders but {'an' if image else 'no'} image: {prompt[:60]!r}")
        return prompt if image is None else prompt.replace(self.image_token, self.image_token * self.n_image_tokens(image))

    def token_ids(self, sample: Sample, eos: bool) -> tuple[tuple[int, ...], int]:
        """Token ids of prompt + " " + answer (+ EOS) and the number of prompt tokens (cached per sample)."""
        key = (sample.prompt, sample.answer, sample.image is not None, eos)
        if key not in self._ids:
            self._ids[key] = self._token_ids(sample, eos)
        return self._ids[key]

    def _token_ids(self, sample: Sample, eos: bool) -> tuple[tuple[int, ...], int]:
        prompt = self.expand(sample.prompt, sample.image)
        p_ids = self.tok(prompt)["input_ids"]
        full = self.tok(prompt + " " + sample.answer)["input_ids"] if sample.answer else list(p_ids)
        if full[: len(p_ids)] != p_ids:  # tokeniser merged across the boundary: fall back to concatenation
            full = p_ids + self.tok(" " + sample.answer, add_special_tokens=False)["input_ids"]
        if eos and self.tok.eos_token_id is not None:
            full = full + [self.tok.eos_token_id]
        return tuple(full), len(p_ids)

    def batch(self, samples: list[Sample], *, mask: str = "answer", eos: bool | None = None,
              side: str = "right") -> dict:
        """Padded batch: input_ids, attention_mask, labels, pixel_values (images in sample order, or None).

        Loss tokens (labels != -100): mask "answer" = the answer tokens (+ EOS when appended); mask "sequence" =
        every text token after BOS (MLLMU-Bench's labels: USER:, question, ASSISTANT:, answer). Never image
        tokens or padding. `eos` None = the encoder's default.
        """
        if mask not in ("answer", "sequence"):
            raise PulseError(f"unknown loss mask {mask!r}; use 'answer' or 'sequence'")
        eos = self.eos if eos is None else eos
        rows = [self.token_ids(s, eos) for s in samples]
        width = max(len(ids) for ids, _ in rows)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, n_prompt) in enumerate(rows):
            start = 0 if side == "right" else width - len(ids)
            t = torch.tensor(ids)
            input_ids[i, start:start + len(ids)] = t
            attn[i, start:start + len(ids)] = 1
            lab = t.clone()
            if mask == "answer":
                lab[:n_prompt] = IGNORE
            lab[t == self.image_token_id] = IGNORE
            if mask == "sequence" and self.tok.bos_token_id is not None:
                lab[t == self.tok.bos_token_id] = IGNORE
            labels[i, start:start + len(ids)] = lab
        images = [s.image for s in samples if s.image is not None]
        pixel_values = torch.stack([self.pixels(b) for b in images]).to(self.device, self.dtype) if images else None
        return {"input_ids": input_ids.to(self.device), "attention_mask": attn.to(self.device),
                "labels": labels.to(self.device), "pixel_values": pixel_values}


def expand_to_square(image: bytes, processor) -> bytes:
    """LLaVA-1.5's `image_aspect_ratio: pad` (llava/mm_utils.py `expand2square`): pad the shorter side to a square,
    image centred, filled with the image processor's mean colour; then the processor resizes/crops as usual.

    The llava-hf processor alone resizes the shortest edge and centre-crops (cutting the long side); LLaVA's own
    MMBench script pads first. Returns PNG bytes (lossless); a square image is returned unchanged.
    """
    from PIL import Image

    from ..data.records import encode_png

    img = decode_image(image)
    w, h = img.size
    if w == h:
        return image
    mean = getattr(processor.image_processor, "image_mean", None) or [0.0, 0.0, 0.0]
    side = max(w, h)
    out = Image.new(img.mode, (side, side), tuple(int(x * 255) for x in mean))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return encode_png(out)


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows left-padded to one width: (input_ids, attention_mask)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def forward(model, batch: dict):
    """Model logits for a batch from `Encoder.batch` (labels are not passed: losses are ours)."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if batch["pixel_values"] is not None:
        kwargs["pixel_values"] = batch["pixel_values"]
    return model(**kwargs).logits
