"""The tiny LLaVA of the mini world: a byte-level BPE tokenizer trained on the world's formatted strings, a
`CLIPImageProcessorPil` + `LlavaProcessor`, and a `LlavaForConditionalGeneration` built from config alone
(tiny_llava.md §2–§4). Everything offline; saved as a standard HF checkpoint directory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.load import LoadedModel
from ..models.templates import PLAIN

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]


@dataclass(frozen=True)
class TinyConfig:
    """Defaults = tiny_llava.md's "S": CLIP 128×2L at 32 px / patch 8 (16 image tokens), Llama 256×4L.

    `vision_pos_std`: CLIP's position embeddings are re-drawn from N(0, vision_pos_std²) (HF's init: std 0.02, so
    small beside the patch embeddings that the 16 positions take hundreds of steps to tell apart; at 0.5 the vision
    stage learns left/right and corners in about 400 steps instead of over 1,600). 0 keeps HF's init."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 2
    text_hidden: int = 256
    text_layers: int = 4
    text_ffn: int = 512
    heads: int = 4
    vocab_size: int = 1024
    max_positions: int = 512
    vision_pos_std: float = 0.5


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="right", model_max_length=1024)


def build_tiny_llava(texts: list[str], cfg: TinyConfig = TinyConfig(), seed: int = 0) -> LoadedModel:
    """A freshly initialised tiny LLaVA whose tokenizer covers `texts` (every string the model will see)."""
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = build_tokenizer(texts, cfg.vocab_size)
    ip = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size},
        do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True, do_convert_rgb=True)
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=cfg.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token="<image>")
    vcfg = CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=2 * cfg.vision_hidden,
                            num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.heads,
                            image_size=cfg.image_size, patch_size=cfg.patch_size,
                            projection_dim=cfg.vision_hidden, hidden_act="quick_gelu")
    tcfg = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_ffn,
                       num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.heads,
                       num_key_value_heads=cfg.heads, max_position_embeddings=cfg.max_positions,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    n_tokens = (cfg.image_size // cfg.patch_size) ** 2
    config = LlavaConfig(vision_config=vcfg, text_config=tcfg,
                         image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=n_tokens,
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    if cfg.vision_pos_std:
        torch.nn.init.normal_(model.model.vision_tower.embeddings.position_embedding.weight, std=cfg.vision_pos_std)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    return LoadedModel(model=model, processor=processor, template=PLAIN, scoring="likelihood", path=None)
