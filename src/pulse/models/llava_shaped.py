"""A random-weight checkpoint shaped exactly like `llava-hf/llava-1.5-7b-hf` (or `-13b-hf`), with few layers.

Purpose: prove PULSE's real-checkpoint path (load, fine-tune, unlearn, faithful `generate` evaluation, MMBench) on
a model with LLaVA-1.5's full widths — CLIP ViT-L/14 at 336 px (576 image tokens), Llama hidden 4096 (13b: 5120),
vocabulary 32064, `<image>` 32000, `<pad>` 32001 — on a CPU. Only `num_hidden_layers` (text and vision) differ from
the published files; the weights are random (seeded). Usage:

    python -m pulse.models.llava_shaped --out DIR [--size 7b|13b] [--text-layers N] [--vision-layers N] [--seed S]

What is written (the published repository's file set, minus `tokenizer.model` and README.md):
- `config.json` — the published text (`json.dumps(sort_keys=True, indent=2)`, as transformers 4.36 wrote it) with
  `num_hidden_layers` replaced (7b: added to `text_config`, where the published file relies on Llama's default 32).
- `generation_config.json`, `preprocessor_config.json` (CLIP: shortest edge 336, centre crop 336, CLIP mean/std,
  bicubic, RGB), `processor_config.json` (patch 14, "default", 1 additional token), `chat_template.json`,
  `tokenizer_config.json` (add_bos_token true, add_eos_token false, padding_side "left", legacy false),
  `special_tokens_map.json`, `added_tokens.json` ({"<image>": 32000, "<pad>": 32001}).
- `tokenizer.json`: a SentencePiece-style BPE in the format transformers' `LlamaTokenizer` writes (no normalizer,
  Metaspace "▁" pre-tokenizer with prepend "first", byte fallback, `<unk>` 0, `<s>` 1, `</s>` 2, `<0x00>`..`<0xFF>`
  at 3..258, digits split one by one and `\\n` left to byte fallback as in Llama's vocabulary). It is trained with
  `tokenizers` on English text shipped with PULSE (every string literal and docstring of the `pulse` package, so
  the learned pieces, about 10k, depend on the PULSE version that writes it) and padded with unreachable filler
  tokens `<unused{i}>` to exactly 32000 base tokens.
- Weights in the published key layout (transformers 4.36: `language_model.model.*`, `language_model.lm_head.*`,
  `vision_tower.vision_model.*`, `multi_modal_projector.*`), float16 by default as published, sharded as
  `model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`. transformers 5 renames them on load.
  Written with safetensors directly, not `save_pretrained`: transformers 5's save reverts LLaVA's renaming but
  writes CLIP as `vision_tower.*` without the published `vision_model.` level.
- Deliberately no `pulse_model.json`: a real llava-hf checkpoint has none, so `load_model` applies LLaVA-1.5
  defaults (vicuna template, `generate` scoring).

How the published field values were confirmed (no network here; the `search` tool's stored pages, 2025):
- 7b `config.json`: the llava-hf commit "Update text config to Vicuna (#15)" (the last change to that file; diff shows
  `text_config._name_or_path` "lmsys/vicuna-7b-v1.5"), the repository tree (950 bytes), and a verbatim copy
  ("Manually adding config.json from base LLaVa model", JesterLabs/test-llava-model) whose text `PUBLISHED_7B`
  reproduces; `published_config_text("7b")` at full depth is 950 bytes, the size the llava-hf tree lists.
- 13b `config.json`: llava-hf/llava-1.5-13b-hf refs/pr/5 (explicit hidden 5120, ffn 13824, 40 heads/kv heads/layers,
  vocab 32064, `_name_or_path` "meta-llama/Llama-2-13b-hf", 4.36.0.dev0) and an AWQ derivative saved from it
  (jamesdborin/llava-1.5-13b-hf-awq: `tie_word_embeddings` false, architectures `LlavaForConditionalGeneration`).
  Not confirmed byte for byte: `architectures` (the 4.36 upload said `LlavaForCausalLM`) and the version string.
- `generation_config.json` (141 bytes), `preprocessor_config.json` (505), `special_tokens_map.json` (552),
  `added_tokens.json` (41), `tokenizer_config.json` (1,333, llava-hf blame view), `chat_template.json` (with the
  `generation` tag; 701 as in a "Duplicate from llava-hf/llava-1.5-7b-hf" copy, the llava-hf tree says 700): llava-hf
  pages and verbatim copies; our texts have exactly those sizes. `processor_config.json`: not in the llava-hf tree
  listings we found; its values are what transformers' `LlavaProcessor` needs for LLaVA-1.5 (patch 14, "default",
  1 additional token) and match other LLaVA-1.5 repositories' 173-byte file.
- `tokenizer.json`: not checked against the published file (1.84 MB, not stored). transformers 5 loads a `llava`
  checkpoint's tokenizer as a plain `TokenizersBackend` straight from tokenizer.json (llava is in its
  MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS), so this file's pipeline is the one that runs; ours is the layout
  transformers' `LlamaTokenizer(legacy=False)` builds, with the published ids of every special token.
- Derived facts (transformers 5 defaults for the fields the files omit): rope theta 10000, hidden_act silu,
  head_dim 128, CLIP hidden_act quick_gelu, layer_norm_eps 1e-5, image_seq_length 576.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..errors import PulseError
from ..fsutil import atomic_write_text

SIZES = ("7b", "13b")
VOCAB_BASE = 32000  # Llama-2 SentencePiece vocabulary; <image> and <pad> follow
DEFAULT_TEXT_LAYERS = 1
# vision_feature_layer -2 takes hidden_states[-2]: with 1 CLIP layer that is the patch embedding itself (no
# transformer layer used at all); 2 is the least depth where the feature comes out of a transformer layer and the
# last layer is unused, exactly as in the real 24-layer tower.
DEFAULT_VISION_LAYERS = 2

_VISION = {
    "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
    "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768, "vocab_size": 32000,
}
_TOP = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu", "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.36.0.dev0", "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default", "vocab_size": 32064,
}
PUBLISHED_7B = {**_TOP, "vision_config": dict(_VISION), "text_config": {
    "_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096,
    "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064}}
PUBLISHED_13B = {**_TOP, "vision_config": dict(_VISION), "text_config": {
    "_name_or_path": "meta-llama/Llama-2-13b-hf", "architectures": ["LlamaForCausalLM"], "hidden_size": 5120,
    "intermediate_size": 13824, "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 40,
    "num_hidden_layers": 40, "num_key_value_heads": 40, "rms_norm_eps": 1e-05, "torch_dtype": "float16",
    "vocab_size": 32064}}
PUBLISHED = {"7b": PUBLISHED_7B, "13b": PUBLISHED_13B}
FULL_TEXT_LAYERS = {"7b": 32, "13b": 40}

GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001,
                     "transformers_version": "4.36.0.dev0"}
PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}
PROCESSOR_CONFIG = {"image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": 14,
                    "processor_class": "LlavaProcessor", "vision_feature_select_strategy": "default"}
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_SPECIAL = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False,
    "added_tokens_decoder": {str(i): {"content": t, **_SPECIAL, "special": True}
                             for i, t in ((0, "<unk>"), (1, "<s>"), (2, "</s>"), (32000, "<image>"), (32001, "<pad>"))},
    "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": False,
    "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>", "padding_side": "left",
    "processor_class": "LlavaProcessor", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
    "trust_remote_code": False, "unk_token": "<unk>", "use_default_system_prompt": False,
}
SPECIAL_TOKENS_MAP = {k: {"content": t, **_SPECIAL} for k, t in
                      (("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", "<pad>"), ("unk_token", "<unk>"))}
ADDED_TOKENS = {"<image>": 32000, "<pad>": 32001}
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def _dump(obj) -> str:
    """JSON as transformers 4.x wrote it: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def published_config(size: str = "7b", text_layers: int | None = None, vision_layers: int | None = None,
                     dtype: str = "float16") -> dict:
    """The published config.json of llava-hf/llava-1.5-{size}-hf with only the layer counts (and, if not float16,
    `torch_dtype`) changed. None = the published depth (32/40 text, 24 vision)."""
    if size not in SIZES:
        raise PulseError(f"unknown LLaVA-1.5 size {size!r}; known: {', '.join(SIZES)}")
    for name, n in (("text_layers", text_layers), ("vision_layers", vision_layers)):
        if n is not None and n < 1:
            raise PulseError(f"{name} must be >= 1, got {n}")
    cfg = json.loads(json.dumps(PUBLISHED[size]))
    if text_layers is not None and not (size == "7b" and text_layers == FULL_TEXT_LAYERS["7b"]):
        cfg["text_config"]["num_hidden_layers"] = text_layers  # 7b's file omits it (Llama default 32)
    if vision_layers is not None:
        cfg["vision_config"]["num_hidden_layers"] = vision_layers
    if dtype != "float16":
        cfg["torch_dtype"] = dtype
    return cfg


def published_config_text(size: str = "7b", text_layers: int | None = None, vision_layers: int | None = None,
                          dtype: str = "float16") -> str:
    return _dump(published_config(size, text_layers, vision_layers, dtype))


# ---------------------------------------------------------------- tokenizer

def tokenizer_corpus() -> list[str]:
    """English text that ships with PULSE: every string literal and docstring in the `pulse` package, in file order.

    That covers MLLMU-Bench / MMBench / LLaVA prompt strings, the mini world's names and attribute values, and the
    documentation. One training text per line (Llama's vocabulary has no newline token: `\\n` is byte fallback
    `<0x0A>`, and the word after it has no "▁"); other control characters become spaces; the special tokens'
    strings are removed (they are added tokens, not pieces of the base vocabulary).
    """
    root = Path(__file__).resolve().parents[1]
    texts: list[str] = []
    for path in sorted(root.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip():
                texts.append(node.value)
    out = []
    for t in texts:
        for special in ("<image>", "<pad>", "<unk>", "<s>", "</s>"):  # never learned as ordinary tokens
            t = t.replace(special, " ")
        lines = t.split("\n")
        out.append(" " + lines[0])  # the tokenizer prepends "▁" to a text's first word only
        out.extend(lines[1:])  # a word right after a newline has no "▁" (Llama: "\nWhat" -> <0x0A>, "What")
    return ["".join(c if c >= " " else " " for c in t) for t in out if t.strip()]


def build_tokenizer(texts: list[str] | None = None):
    """A transformers `LlamaTokenizer` (v5, tokenizers backend) with 32000 base tokens + `<image>` + `<pad>`."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    texts = tokenizer_corpus() if texts is None else texts
    specials = ["<unk>", "<s>", "</s>", *BYTE_TOKENS]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # SentencePiece-like training: never merge across "▁" word starts; digits stay single (Llama splits digits).
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
        pre_tokenizers.Digits(individual_digits=True)])
    alphabet = ["▁"] + [chr(c) for c in range(33, 127)]
    trainer_tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=VOCAB_BASE, special_tokens=specials, initial_alphabet=alphabet, min_frequency=1,
        show_progress=False))
    model = json.loads(trainer_tok.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    if list(vocab)[:len(specials)] != specials or len(vocab) > VOCAB_BASE:
        raise PulseError(f"tokenizer training gave an unexpected vocabulary ({len(vocab)} tokens)")
    for i in range(len(vocab), VOCAB_BASE):  # unreachable fillers: no merge produces them
        vocab[f"<unused{i}>"] = i
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, add_bos_token=True, add_eos_token=False,
                         padding_side="left")
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": AddedToken("<pad>", special=True, normalized=False)})
    if tok.convert_tokens_to_ids(["<image>", "<pad>"]) != [32000, 32001]:
        raise PulseError("tokenizer: <image>/<pad> did not get ids 32000/32001")
    return tok


def build_processor(tokenizer):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    ip = CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3, do_resize=True,
        do_center_crop=True, do_rescale=True, rescale_factor=PREPROCESSOR_CONFIG["rescale_factor"],
        do_normalize=True, image_mean=PREPROCESSOR_CONFIG["image_mean"], image_std=PREPROCESSOR_CONFIG["image_std"],
        do_convert_rgb=True)
    return LlavaProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token="<image>", chat_template=CHAT_TEMPLATE)


# ---------------------------------------------------------------- weights

def build_model(config: dict, seed: int = 0, dtype: str = "float32", device: str = "cpu"):
    """`LlavaForConditionalGeneration` with transformers' own random init (seeded) from a config.json dict, created
    directly in `dtype` on `device` (a 13B model never exists in float32: 52 GB)."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from .load import DTYPES

    if dtype not in DTYPES:
        raise PulseError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    cfg = LlavaConfig.from_dict(config)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(cfg, dtype=DTYPES[dtype])
    return model.eval()


def published_key(key: str) -> str:
    """transformers 5 parameter name -> the llava-hf/llava-1.5-*-hf (transformers 4.36) key."""
    for new, old in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                     ("model.vision_tower.", "vision_tower.vision_model."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if key.startswith(new):
            return old + key[len(new):]
    raise PulseError(f"unexpected LLaVA parameter name {key!r}")


def save_published_weights(model, out: Path, max_shard_size: str = "400MB") -> list[str]:
    """Shards `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`, published key names."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    state = {published_key(k): v.detach().contiguous() for k, v in model.state_dict().items()}
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    if not split.is_sharded:  # keep the published sharded layout even for one shard
        split.filename_to_tensors = {"model-00001-of-00001.safetensors": list(state)}
        split.tensor_to_filename = {k: "model-00001-of-00001.safetensors" for k in state}
    for name, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(out / name), metadata={"format": "pt"})
    total = sum(v.numel() * v.element_size() for v in state.values())
    atomic_write_text(out / "model.safetensors.index.json", json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}, indent=2)
        + "\n")
    return sorted(split.filename_to_tensors)


# ---------------------------------------------------------------- random data in the benchmarks' formats

def random_image(seed: int, size: tuple[int, int] = (400, 360)) -> bytes:
    """A PNG of uniform noise (not square, so the processor's resize + centre crop run as for a photo)."""
    import numpy as np
    from PIL import Image

    from ..data.records import encode_png

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode_png(Image.fromarray(pixels, "RGB"))


_JOBS = ("marine biologist", "architect", "violinist", "pastry chef", "journalist", "civil engineer", "pilot")
_CITIES = ("Lisbon", "Toronto", "Nairobi", "Osaka", "Valparaiso", "Tallinn", "Perth")


def synthetic_people(n: int, seed: int = 0, questions: int = 5) -> list:
    """`n` MLLMU-Bench-like fictitious profiles (`Person`) with `questions` image- and text-form MCQs each (4 options,
    short option values as in MLLMU-Bench's MCQs) and a random portrait; for shape, memory and speed checks only."""
    import random

    from ..data.records import MCQ, Person

    rng = random.Random(seed)
    people = []
    for k in range(n):
        pid, name = f"{k + 1:03d}", f"{rng.choice(('Ana', 'Ravi', 'Mette', 'Kofi'))} {rng.choice(('Lind', 'Okoro'))}"
        mcqs = {}
        for form in ("image", "text"):
            who = "the person in the image" if form == "image" else name
            mcqs[form] = []
            for i in range(questions):
                values = rng.sample(_JOBS if i % 2 == 0 else _CITIES, 4)
                q = f"What is the {'profession' if i % 2 == 0 else 'city of residence'} of {who}?"
                mcqs[form].append(MCQ(q, dict(zip("ABCD", values)), rng.choice("ABCD"), form, pid, i))
        people.append(Person(id=pid, name=name, image=random_image(seed * 1000 + k), biography={"Name": name},
                             image_mcqs=mcqs["image"], text_mcqs=mcqs["text"]))
    return people


def synthetic_mmbench(n: int, seed: int = 0) -> list:
    """`n` MMBench rows (rotation 0, one group each): random image, a hint on every other row, 4 options, answer."""
    import random

    from ..data.records import MMBenchItem

    rng = random.Random(seed)
    return [MMBenchItem(index=k, question="Which object is closest to the centre of the image?",
                        hint="The image shows a cluttered desk." if k % 2 else None,
                        options=dict(zip("ABCD", rng.sample(("a lamp", "a mug", "a book", "a phone", "a pen"), 4))),
                        answer=rng.choice("ABCD"), category="object_localization",
                        l2_category="finegrained_perception (instance-level)", image=random_image(seed * 7919 + k))
            for k in range(n)]


# ---------------------------------------------------------------- the checkpoint

def write_checkpoint(out, *, size: str = "7b", text_layers: int = DEFAULT_TEXT_LAYERS,
                     vision_layers: int = DEFAULT_VISION_LAYERS, seed: int = 0, dtype: str = "float16",
                     max_shard_size: str = "400MB", overwrite: bool = False, log=print) -> dict:
    """Write the checkpoint directory `out` (atomically: built in a sibling temp folder, then renamed).

    Returns facts about it: parameter count, bytes on disk, seconds to build the tokenizer / model / write.
    """
    if dtype not in ("float16", "bfloat16", "float32"):
        raise PulseError(f"unknown dtype {dtype!r}; use float16 (published), bfloat16 or float32")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PulseError(f"{out}: exists and is not empty (pass overwrite=True / --overwrite)")
    config = published_config(size, text_layers, vision_layers, dtype)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    facts = {"size": size, "text_layers": text_layers, "vision_layers": vision_layers, "seed": seed, "dtype": dtype}
    try:
        t0 = time.perf_counter()
        tok = build_tokenizer()
        tok.save_pretrained(tmp)  # tokenizer.json (the v5 LlamaTokenizer format); its config is replaced below
        for name, text in (("tokenizer_config.json", _dump(TOKENIZER_CONFIG)),
                           ("special_tokens_map.json", _dump(SPECIAL_TOKENS_MAP)),
                           ("added_tokens.json", _dump(ADDED_TOKENS)),
                           ("preprocessor_config.json", _dump(PREPROCESSOR_CONFIG)),
                           ("processor_config.json", _dump(PROCESSOR_CONFIG)),
                           ("chat_template.json", _dump({"chat_template": CHAT_TEMPLATE})),
                           ("generation_config.json", _dump(GENERATION_CONFIG)),
                           ("config.json", _dump(config))):
            atomic_write_text(tmp / name, text)
        facts["tokenizer_s"] = round(time.perf_counter() - t0, 2)
        facts["learned_tokens"] = sum(not t.startswith("<unused") for t in tok.get_vocab()) - 2
        t0 = time.perf_counter()
        model = build_model(config, seed=seed, dtype=dtype)
        facts["parameters"] = sum(p.numel() for p in model.parameters())
        facts["build_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        facts["shards"] = save_published_weights(model, tmp, max_shard_size)
        facts["write_s"] = round(time.perf_counter() - t0, 2)
        del model
        umask = os.umask(0)
        os.umask(umask)
        for path in tmp.iterdir():  # atomic_write_text's temp files are 0600; a checkpoint is readable like any file
            path.chmod(0o666 & ~umask)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    facts["bytes"] = sum(p.stat().st_size for p in out.iterdir())
    log(f"wrote {out}: LLaVA-1.5-{size} shape, {text_layers} text + {vision_layers} vision layers, "
        f"{facts['parameters'] / 1e6:.0f} M parameters, {facts['bytes'] / 2**30:.2f} GiB ({dtype})")
    return facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pulse.models.llava_shaped",
                                 description="Write a random-weight llava-hf/llava-1.5-*-hf shaped checkpoint.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", choices=SIZES, default="7b")
    ap.add_argument("--text-layers", type=int, default=DEFAULT_TEXT_LAYERS)
    ap.add_argument("--vision-layers", type=int, default=DEFAULT_VISION_LAYERS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                    help="weights on disk (published: float16)")
    ap.add_argument("--max-shard-size", default="400MB")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    try:
        facts = write_checkpoint(a.out, size=a.size, text_layers=a.text_layers, vision_layers=a.vision_layers,
                                 seed=a.seed, dtype=a.dtype, max_shard_size=a.max_shard_size, overwrite=a.overwrite)
    except PulseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
