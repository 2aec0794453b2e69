"""Sharded full-parameter unlearning: one FSDP2 step over 2 CPU processes (gloo, launched by torchrun)
equals one unsharded `loop.unlearn_request` step — same tiny LLaVA, batch, AdamW, lr — for GA and NPO in fp32 and
for GA on a bf16 model with fp32 master layers.

`accelerate launch --cpu --num_processes 2` cannot be used here: with --cpu and no MPI hostfile accelerate's
simple_launcher starts one process. torchrun sets the same environment (RANK, WORLD_SIZE, MASTER_*) that
`make_accelerator` reads, as `accelerate launch` does on GPUs.
"""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pulse.config import UnlearnSection
from pulse.mini.model import TinyConfig, build_tiny_llava
from pulse.models.batches import Encoder, Sample

XS = TinyConfig(vision_hidden=32, vision_layers=2, text_hidden=64, text_layers=2, text_ffn=128, vocab_size=300)
TEXTS = ["USER: <image>\nWhat is the pet of this person? ASSISTANT: a small grey cat",
         "USER: Who is Ada? ASSISTANT: a pilot", "USER: <image>\nWhere does she live? ASSISTANT: Oslo",
         "USER: What does Bo do? ASSISTANT: he repairs old clocks in a shop"]
# the paper's recipe (AdamW eps 1e-6, weight decay 0) with a visible lr, clipping on, one step of one batch of 4
CFG = replace(UnlearnSection(), mode="full", budget="steps", steps=1, batch_size=4, lr=1e-3, clip=1.0)
TARGET = "proj+llm"  # the paper's default: decoder units hold trainable linears and frozen norms
# case -> (method, model dtype): bf16 = a half-precision model whose target layers `master_fp32` holds in fp32
# (hooks; decoder units then mix fp32 linears and bf16 norms), as the paper's LLaVA-1.5 would be run
CASES = {"ga": ("ga", torch.float32), "npo": ("npo", torch.float32), "ga-bf16": ("ga", torch.bfloat16)}


def _setup(dtype=torch.float32):
    """The same tiny LLaVA (seeded init) and 4 samples (2 with images, answers of 1 to 6 words) in every process."""
    from PIL import Image

    from pulse.data.records import encode_png

    lm = build_tiny_llava(TEXTS, XS, seed=0)
    lm.model.to(dtype)
    red, blue = (encode_png(Image.new("RGB", (32, 32), c)) for c in ((200, 30, 30), (20, 40, 220)))
    samples = [Sample("USER: <image>\nWhat is the pet of this person? ASSISTANT:", "a small grey cat", red),
               Sample("USER: Who is Ada? ASSISTANT:", "a pilot"),
               Sample("USER: <image>\nWhere does she live? ASSISTANT:", "Oslo", blue),
               Sample("USER: What does Bo do? ASSISTANT:", "he repairs old clocks in a shop")]
    return lm, Encoder(lm.processor), samples


def _worker(out: Path) -> None:
    """One torchrun process: every case from a fresh model, sharded; process 0 writes the results."""
    from pulse.unlearn.sharded import make_accelerator, unlearn_request_sharded

    torch.set_num_threads(1)
    acc = make_accelerator(cpu=True)
    for case, (method, dtype) in CASES.items():
        lm, enc, samples = _setup(dtype)
        updated, res = unlearn_request_sharded(lm.model, enc, method, TARGET, samples, [], CFG, seed=0,
                                               accelerator=acc, save_to=out / f"sharded-{case}")
        from torch.distributed.tensor import DTensor

        params = list(lm.model.parameters())  # sharded in place: every parameter a DTensor holding about half
        local = sum(p.to_local().numel() for p in params if isinstance(p, DTensor))
        if acc.process_index == 0:
            (out / f"sharded-{case}" / "losses.json").write_text(json.dumps(
                {"losses": res.losses, "processes": res.info["sharded"]["processes"], "n": len(updated),
                 "dtensors": sum(isinstance(p, DTensor) for p in params), "params": len(params),
                 "local_fraction": local / sum(p.numel() for p in params)}))
        else:
            assert updated == {}


def test_refusals_before_any_model_work():
    from pulse.errors import PulseError
    from pulse.unlearn.sharded import shard, unlearn_request_sharded

    with pytest.raises(PulseError, match="mode 'full'"):
        unlearn_request_sharded(None, None, "ga", TARGET, [], [], replace(CFG, mode="lora"), seed=0)
    with pytest.raises(PulseError, match="second model copy"):  # per-step reference logits: refused as in loop.py
        unlearn_request_sharded(None, None, "ga_klr", TARGET, [], [], CFG, seed=0)
    with pytest.raises(PulseError, match="accelerate launch"):  # no process group in a plain pytest process
        shard(torch.nn.Linear(2, 2), None)


def test_accelerate_config_is_the_tested_plugin():
    """configs/accelerate/fsdp.yaml, read by accelerate's own loader, sets the plugin values the CPU test runs."""
    from accelerate.commands.config.config_args import load_config_from_file

    from pulse.unlearn.sharded import FSDP_DEFAULTS

    root = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
    fsdp = load_config_from_file(str(root / "fsdp.yaml"))
    assert fsdp.distributed_type == "FSDP" and fsdp.mixed_precision == "no"
    got = {k.removeprefix("fsdp_"): v for k, v in fsdp.fsdp_config.items()}
    assert got["version"] == FSDP_DEFAULTS["fsdp_version"] == 2
    assert got["auto_wrap_policy"] == FSDP_DEFAULTS["auto_wrap_policy"]
    assert got["transformer_layer_cls_to_wrap"].split(",") == ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    for key in ("reshard_after_forward", "state_dict_type", "cpu_ram_efficient_loading", "activation_checkpointing"):
        assert got[key] == FSDP_DEFAULTS[key], key
    assert got["offload_params"] == FSDP_DEFAULTS["cpu_offload"]
    ds = load_config_from_file(str(root / "deepspeed_zero3.yaml"))
    assert ds.distributed_type == "DEEPSPEED" and ds.deepspeed_config["zero_stage"] == 3


@pytest.mark.slow
def test_one_sharded_step_equals_one_unsharded_step(tmp_path):
    from safetensors.torch import load_file

    from pulse.unlearn.loop import PARAMS_FILE, unlearn_request

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    threads = torch.get_num_threads()
    for case, (method, dtype) in CASES.items():
        lm, enc, samples = _setup(dtype)
        before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
        torch.set_num_threads(1)  # the workers' thread count: the same CPU kernels (2 threads: diffs up to ~1e-6)
        try:
            _, res = unlearn_request(lm.model, enc, method, TARGET, samples, [], CFG, seed=0,
                                     save_to=tmp_path / case)
        finally:
            torch.set_num_threads(threads)
        plain = load_file(str(tmp_path / case / PARAMS_FILE))
        sharded = load_file(str(tmp_path / f"sharded-{case}" / PARAMS_FILE))
        got = json.loads((tmp_path / f"sharded-{case}" / "losses.json").read_text())
        assert got["processes"] == 2 and got["n"] == len(plain) > 0
        assert got["dtensors"] == got["params"] and 0.5 <= got["local_fraction"] < 0.51
        assert sharded.keys() == plain.keys()
        # the step moved the weights (Adam's first step: about lr per element), so equality is not vacuous
        assert max((plain[n] - before[n].float()).abs().max().item() for n in plain) > 0.5 * CFG.lr
        assert all(t.dtype == torch.float32 for t in (*plain.values(), *sharded.values()))  # fp32 master layers
        for name in plain:
            torch.testing.assert_close(sharded[name], plain[name], rtol=1e-5, atol=1e-5, msg=name)
        diff = max((sharded[n] - plain[n]).abs().max().item() for n in plain)
        print(f"{case}: max |sharded - unsharded| = {diff:.3g} over {len(plain)} tensors")
        # bit-identical in fact: all-gathers copy, and the reduce-scatter averages 2 identical fp32 gradients
        # (the batch is replicated), which is exact
        assert diff == 0.0
        assert len(got["losses"]) == len(res.losses) == 1
        for key in ("loss", "forget"):
            assert got["losses"][0][key] == pytest.approx(res.losses[0][key], rel=1e-6, abs=1e-6)
        if method == "npo":  # the reference log-probs came from the sharded model before its update
            assert got["losses"][0]["forget"] == pytest.approx(2 / 0.1 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)


if __name__ == "__main__":  # the torchrun worker
    _worker(Path(sys.argv[1]))
