"""Loading checkpoints: the published llava-hf key layout, safetensors only, clear errors."""
import json

import pytest
import torch
from safetensors.torch import save_file

from pulse.errors import PulseError
from pulse.mini.model import TinyConfig, build_tiny_llava
from pulse.models.load import load_model

XS = TinyConfig(vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1, text_ffn=128, vocab_size=300)
TEXTS = ["USER: <image>\nWhat is the occupation of this person? ASSISTANT: doctor",
         "USER: What is the occupation of Ada Berg? ASSISTANT: nurse"]


def _old_key(key: str) -> str:
    """transformers 5 key -> the llava-hf/llava-1.5-7b-hf (transformers 4.36) key."""
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    if key.startswith("lm_head."):
        return "language_model." + key
    if key.startswith("model.vision_tower."):
        return "vision_tower.vision_model." + key[len("model.vision_tower."):]
    if key.startswith("model.multi_modal_projector."):
        return key[len("model."):]
    raise AssertionError(key)


def test_loads_published_llava_hf_key_layout(tmp_path):
    lm = build_tiny_llava(TEXTS, XS, seed=3)
    ckpt = tmp_path / "llava-1.5-tiny-hf"
    lm.processor.save_pretrained(ckpt)
    lm.model.config.save_pretrained(ckpt)
    state = {_old_key(k): v.contiguous() for k, v in lm.model.state_dict().items()}
    assert any(k.startswith("language_model.model.layers.0.") for k in state)
    assert any(k.startswith("vision_tower.vision_model.") for k in state)
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    loaded = load_model(ckpt)
    assert loaded.template.system.startswith("A chat between")  # LLaVA-1.5 defaults without a sidecar
    assert loaded.scoring == "generate"
    new = loaded.model.state_dict()
    for k, v in lm.model.state_dict().items():
        assert torch.equal(new[k], v), k


def test_sidecar_template_and_roundtrip(tmp_path):
    from pulse.models.load import save_model

    lm = build_tiny_llava(TEXTS, XS, seed=1)
    save_model(lm, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.template == lm.template and loaded.scoring == "likelihood"
    sidecar = json.loads((tmp_path / "m" / "pulse_model.json").read_text())
    assert sidecar["template"]["user"] == "USER: "


def test_refuses_pickle_only_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(PulseError, match="safetensors only"):
        load_model(tmp_path)


@pytest.mark.parametrize("make", ["missing", "no_config"])
def test_clear_errors(tmp_path, make):
    path = tmp_path / "nope"
    if make == "no_config":
        path.mkdir()
    with pytest.raises(PulseError, match="not found|no config.json"):
        load_model(path)


def test_unknown_template(tmp_path):
    lm = build_tiny_llava(TEXTS, XS)
    from pulse.models.load import save_model
    save_model(lm, tmp_path / "m")
    with pytest.raises(PulseError, match="unknown prompt template"):
        load_model(tmp_path / "m", template="vicuna-99")
