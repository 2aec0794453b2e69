"""Batching: answer-only labels by default, image tokens and padding never labelled, whole-sequence option."""
from PIL import Image

from pulse.data.records import encode_png
from pulse.mini.model import TinyConfig, build_tiny_llava
from pulse.models.batches import IGNORE, Encoder, Sample

XS = TinyConfig(vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1, text_ffn=128, vocab_size=300)


def test_labels_masks():
    lm = build_tiny_llava(["USER: <image>\nWho? ASSISTANT: doctor", "USER: Who is Ada? ASSISTANT: nurse"], XS)
    enc = Encoder(lm.processor)
    img = encode_png(Image.new("RGB", (32, 32), (255, 0, 0)))
    samples = [Sample(lm.template.prompt("Who?", True), "doctor", img), Sample(lm.template.prompt("Who is Ada?", False), "nurse")]
    b = enc.batch(samples)
    ids, labels = b["input_ids"], b["labels"]
    assert (ids == enc.image_token_id).sum() == 16 and b["pixel_values"].shape == (1, 3, 32, 32)
    assert (labels[ids == enc.image_token_id] == IGNORE).all()
    assert (labels[b["attention_mask"] == 0] == IGNORE).all()
    answer = [t for t in labels[0].tolist() if t != IGNORE]
    assert lm.tokenizer.decode(answer[:-1]).strip() == "doctor" and answer[-1] == lm.tokenizer.eos_token_id
    whole = enc.batch(samples, mask="sequence")["labels"]
    assert (whole != IGNORE).sum() > (labels != IGNORE).sum()
    assert (whole[ids == enc.image_token_id] == IGNORE).all()
