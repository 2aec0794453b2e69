"""The LLaVA-1.5-shaped random checkpoint: published config and file layout, Llama-format tokenizer, LLaVA processor.

Fast tests build the tokenizer / processor in memory; the slow ones use the session checkpoint (`llava15_shaped`).
"""
import json

import pytest
import torch
from PIL import Image

from pulse.errors import PulseError
from pulse.models import llava_shaped as L

PROMPT = "USER: <image>\nHi ASSISTANT:"
PUBLISHED_FILES = {  # llava-hf/llava-1.5-7b-hf's files, minus README.md / tokenizer.model, shards as we cut them
    "added_tokens.json", "chat_template.json", "config.json", "generation_config.json", "model.safetensors.index.json",
    "preprocessor_config.json", "processor_config.json", "special_tokens_map.json", "tokenizer.json",
    "tokenizer_config.json"}


def _diff(a, b, path=""):
    """Paths where two JSON-like dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b)) for p in _diff(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [path]


@pytest.fixture(scope="module")
def tok():
    return L.build_tokenizer()


@pytest.fixture(scope="module")
def processor(tok):
    return L.build_processor(tok)


# ---------------------------------------------------------------- config

def test_full_depth_config_is_the_published_file():
    text = L.published_config_text("7b")
    assert len(text.encode()) == 950  # the size of llava-hf/llava-1.5-7b-hf/config.json in the hub's file listing
    cfg = json.loads(text)
    assert "num_hidden_layers" not in cfg["text_config"]  # the published 7b file relies on Llama's default (32)
    assert cfg["text_config"]["_name_or_path"] == "lmsys/vicuna-7b-v1.5"
    assert list(cfg) == sorted(cfg) and text.startswith('{\n  "architectures": [\n    "LlavaForConditionalGeneration"')


@pytest.mark.parametrize("size, hidden, ffn, heads, layers",
                         [("7b", 4096, 11008, 32, 32), ("13b", 5120, 13824, 40, 40)])
def test_published_values_as_transformers_reads_them(size, hidden, ffn, heads, layers):
    from transformers import LlavaConfig

    c = LlavaConfig.from_dict(L.published_config(size))
    t, v = c.text_config, c.vision_config
    assert (t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads, t.num_hidden_layers) \
        == (hidden, ffn, heads, heads, layers)
    assert (t.vocab_size, t.rms_norm_eps, t.max_position_embeddings, t.rope_parameters["rope_theta"], t.hidden_act) \
        == (32064, 1e-5, 4096, 10000.0, "silu")
    assert (v.hidden_size, v.intermediate_size, v.num_attention_heads, v.num_hidden_layers, v.patch_size,
            v.image_size, v.projection_dim, v.hidden_act) == (1024, 4096, 16, 24, 14, 336, 768, "quick_gelu")
    assert (c.image_token_id, c.pad_token_id, c.vision_feature_layer, c.vision_feature_select_strategy,
            c.projector_hidden_act, c.tie_word_embeddings, c.image_seq_length) \
        == (32000, 32001, -2, "default", "gelu", False, 576)


@pytest.mark.parametrize("size", L.SIZES)
def test_shallow_config_differs_only_in_layer_counts(size):
    full, shallow = L.published_config(size), L.published_config(size, text_layers=1, vision_layers=2)
    assert _diff(full, shallow) == ["text_config.num_hidden_layers", "vision_config.num_hidden_layers"]
    assert (shallow["text_config"]["num_hidden_layers"], shallow["vision_config"]["num_hidden_layers"]) == (1, 2)
    assert _diff(full, L.published_config(size, dtype="float32")) == ["torch_dtype"]


def test_one_clip_layer_would_leave_no_transformer_layer_under_feature_layer_minus_2():
    """Why the default is 2 vision layers: hidden_states[-2] of a 1-layer CLIP is the (pre-LN) patch embedding."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    px = torch.randn(1, 3, 28, 28)
    for layers in (1, 2):
        m = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                             num_attention_heads=4, image_size=28, patch_size=14)).eval()
        with torch.no_grad():
            hs = m(pixel_values=px, output_hidden_states=True).hidden_states
        assert len(hs) == layers + 1
        assert torch.equal(hs[-2], hs[0]) == (layers == 1)


def test_bad_arguments(tmp_path):
    with pytest.raises(PulseError, match="unknown LLaVA-1.5 size"):
        L.published_config("70b")
    with pytest.raises(PulseError, match="text_layers must be >= 1"):
        L.published_config("7b", text_layers=0)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("")
    with pytest.raises(PulseError, match="not empty"):
        L.write_checkpoint(tmp_path / "x")
    with pytest.raises(PulseError, match="unknown dtype"):
        L.write_checkpoint(tmp_path / "y", dtype="int8")


def test_published_key_names():
    assert L.published_key("model.language_model.layers.0.mlp.up_proj.weight") == \
        "language_model.model.layers.0.mlp.up_proj.weight"
    assert L.published_key("lm_head.weight") == "language_model.lm_head.weight"
    assert L.published_key("model.vision_tower.encoder.layers.1.self_attn.q_proj.bias") == \
        "vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.bias"
    assert L.published_key("model.multi_modal_projector.linear_2.weight") == "multi_modal_projector.linear_2.weight"
    with pytest.raises(PulseError):
        L.published_key("something.else")


# ---------------------------------------------------------------- tokenizer and processor

def test_tokenizer_ids_as_llama_and_llava_hf(tok):
    assert len(tok) == 32002 and tok.vocab_size == 32000
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<0x00>", "<0x0A>", "<0xFF>", "<image>", "<pad>"]) \
        == [0, 1, 2, 3, 13, 258, 32000, 32001]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 32001, 0)
    ids = tok("USER: <image>\nWhat is 1987?")["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert ids[0] == 1 and ids[-1] != 2  # add_bos_token true, add_eos_token false
    assert ids.count(32000) == 1 and 13 in ids  # "\n" is byte fallback <0x0A>, as in Llama's vocabulary
    assert pieces[pieces.index("<0x0A>") + 1] == "What"  # no "▁" after a newline
    assert [p for p in pieces if p.strip("▁").isdigit()] == ["1", "9", "8", "7"]  # digits one by one
    assert all(p.startswith("▁") for p in tok.convert_ids_to_tokens(tok("the person", add_special_tokens=False)
                                                                     ["input_ids"])[:1])


@pytest.mark.parametrize("text", [
    "A chat between a curious user and an artificial intelligence assistant.",
    "USER:\nQuestion: What is the occupation of Zoë Ørsted-Ng?\nA: baker\nB: pilot\nCorrect Answer: B\n",
    "Temperatures of 37.5 °C — 42% of 1,024 cases ✓ 日本",
])
def test_tokenizer_round_trips(tok, text):
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids  # byte fallback: nothing is unknown
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_processor_gives_576_image_tokens(processor):
    img = Image.new("RGB", (500, 375), (200, 40, 90))  # not square: resize shortest edge, then centre crop
    out = processor(text=PROMPT, images=[img], return_tensors="pt")
    assert int((out["input_ids"] == 32000).sum()) == 576 == (336 // 14) ** 2
    assert tuple(out["pixel_values"].shape) == (1, 3, 336, 336)
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert processor.apply_chat_template(chat, add_generation_prompt=True) == "USER: <image>\nHi ASSISTANT:"


# ---------------------------------------------------------------- the written checkpoint

@pytest.mark.slow
def test_checkpoint_has_the_published_files_and_key_layout(llava15_shaped):
    from safetensors import safe_open

    files = {p.name for p in llava15_shaped.iterdir()}
    shards = {f for f in files if f.startswith("model-")}
    assert files - shards == PUBLISHED_FILES and len(shards) > 1
    assert (llava15_shaped / "config.json").read_text() == L.published_config_text("7b", 1, 2)
    for name, obj in (("tokenizer_config.json", L.TOKENIZER_CONFIG), ("preprocessor_config.json",
                                                                       L.PREPROCESSOR_CONFIG)):
        assert json.loads((llava15_shaped / name).read_text()) == obj
    index = json.loads((llava15_shaped / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    prefixes = ("language_model.model.", "language_model.lm_head.", "vision_tower.vision_model.",
                "multi_modal_projector.")
    assert all(k.startswith(prefixes) for k in weight_map) and set(weight_map.values()) == shards
    with safe_open(str(llava15_shaped / weight_map["language_model.model.embed_tokens.weight"]), "pt") as f:
        emb = f.get_tensor("language_model.model.embed_tokens.weight")
        assert f.metadata() == {"format": "pt"}
    assert emb.shape == (32064, 4096) and emb.dtype == torch.float16
    assert "vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight" in weight_map
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in weight_map
    assert "language_model.model.layers.1.self_attn.q_proj.weight" not in weight_map


@pytest.mark.slow
def test_checkpoint_loads_as_llava_hf_does(llava15_shaped, tok):
    """No missing/unexpected keys under transformers 5's renaming, bitwise weights, LLaVA-1.5 defaults, a forward
    pass with 576 image features for 576 image tokens."""
    from safetensors import safe_open

    from pulse.models.load import load_model

    lm = load_model(llava15_shaped)
    assert lm.template.system.startswith("A chat between a curious user") and lm.scoring == "generate"
    state = lm.model.state_dict()
    index = json.loads((llava15_shaped / "model.safetensors.index.json").read_text())["weight_map"]
    assert sorted(L.published_key(k) for k in state) == sorted(index)
    for key in ("model.language_model.layers.0.mlp.down_proj.weight",
                "model.vision_tower.encoder.layers.0.mlp.fc1.bias", "lm_head.weight"):
        with safe_open(str(llava15_shaped / index[L.published_key(key)]), "pt") as f:
            assert torch.equal(state[key], f.get_tensor(L.published_key(key)).float())
    p = lm.processor
    assert (p.patch_size, p.num_additional_image_tokens, p.vision_feature_select_strategy) == (14, 1, "default")
    assert type(p.image_processor).__name__ == "CLIPImageProcessorPil"  # "CLIPImageProcessor" without torchvision
    assert p.tokenizer("Correct Answer: B")["input_ids"] == tok("Correct Answer: B")["input_ids"]
    assert p.tokenizer.padding_side == "left" and len(p.tokenizer) == 32002
    batch = p(text=PROMPT, images=[Image.new("RGB", (336, 336), (10, 120, 30))], return_tensors="pt")
    with torch.no_grad():
        logits = lm.model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], 32064) and torch.isfinite(logits).all()


def test_paper_scale_benchmark_refuses_without_a_gpu(monkeypatch, capsys):
    """benchmarks/paper_scale.py: a CPU needs an explicit smoke-size request; it never starts a 13B build there."""
    import importlib.util

    from ..conftest import ROOT

    spec = importlib.util.spec_from_file_location("paper_scale", ROOT / "benchmarks" / "paper_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--device", "cpu"]) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err
    assert bench.unlearn_config(4, {}).steps == 1 and bench.unlearn_config(4, {}).batch_size == 4
