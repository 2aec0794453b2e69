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


def test_expand_to_square_matches_llava_expand2square():
    """LLaVA's expand2square: shorter side padded with int(mean * 255), image centred ((side - h) // 2 offset)."""
    from types import SimpleNamespace

    from pulse.data.records import decode_image
    from pulse.models.batches import expand_to_square

    proc = SimpleNamespace(image_processor=SimpleNamespace(image_mean=[0.48145466, 0.4578275, 0.40821073]))
    wide = Image.new("RGB", (6, 3), (10, 20, 30))
    out = decode_image(expand_to_square(encode_png(wide), proc))
    assert out.size == (6, 6)
    fill = (122, 116, 104)  # int(0.48145466 * 255), int(0.4578275 * 255), int(0.40821073 * 255)
    assert [out.getpixel((0, y)) for y in range(6)] == [fill, (10, 20, 30), (10, 20, 30), (10, 20, 30), fill, fill]
    tall = Image.new("RGB", (1, 4), (1, 2, 3))
    out = decode_image(expand_to_square(encode_png(tall), proc))
    assert [out.getpixel((x, 0)) for x in range(4)] == [fill, (1, 2, 3), fill, fill]
    square = encode_png(Image.new("RGB", (5, 5), (9, 9, 9)))
    assert expand_to_square(square, proc) == square
