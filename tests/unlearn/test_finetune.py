"""The shared optimisation recipe and training loop: MLLMU-Bench's defaults, epochs budget, linear schedule,
MLLMU-Bench's LoRA module set, fp32 master layers under bf16, train-mode LoRA dropout, gradient checkpointing,
bitwise resume after an interruption, and `pulse finetune` end to end on a tiny model."""
import copy
import io
import json
import math
from dataclasses import replace

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pulse.config import FinetuneSection, Recipe, UnlearnSection, load_config, load_finetune
from pulse.errors import PulseError
from pulse.mini.model import TinyConfig, build_tiny_llava
from pulse.models.batches import Encoder, Sample, forward
from pulse.models.targets import TARGETS
from pulse.models.templates import MLLMU
from pulse.unlearn.finetune import train_on
from pulse.unlearn.loop import (batch_plan, eval_mode, finish, fit, lr_factor, prepare, steps_for,
                                unlearn_request)

ROOT = Path(__file__).resolve().parents[2]
TINY = TinyConfig(image_size=16, patch_size=8, vision_hidden=32, vision_layers=2, text_hidden=32, text_layers=2,
                  text_ffn=64, heads=2, vocab_size=400, max_positions=256)
FACTS = [("Who is this?", "Ada Quill, a painter."), ("Where was Ada Quill born?", "In Lisbon."),
         ("What does Ada Quill do?", "She paints harbours."), ("Who is this person?", "Bo Lark, a chef."),
         ("Where was Bo Lark born?", "In Oslo."), ("What does Bo Lark cook?", "Fish soup.")]


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny():
    samples = [Sample(MLLMU.prompt(q, image=True), a, _png((40 * i, 90, 200 - 30 * i))) for i, (q, a) in enumerate(FACTS)]
    lm = build_tiny_llava([f"{s.prompt} {s.answer}" for s in samples], TINY, seed=0)
    return lm, samples


def _fresh(tiny, dtype=torch.float32):
    lm, samples = tiny
    return copy.deepcopy(lm.model).to(dtype), Encoder(lm.processor, dtype=dtype, eos=False), samples


# --- the recipe as data ------------------------------------------------------------------------------------------

def test_recipe_defaults_are_mllmu_bench_baselines():
    r = Recipe()
    assert (r.budget, r.epochs, r.lr, r.batch_size, r.schedule, r.warmup_steps, r.clip) == \
        ("epochs", 1, 2e-5, 4, "linear", 0, None)
    assert (r.lora_rank, r.lora_alpha, r.lora_dropout, r.lora_init) == (16, 16, 0.05, "gaussian")
    assert (r.weight_decay, r.adam_betas, r.adam_eps) == (0.0, [0.9, 0.999], 1e-6)  # transformers.AdamW
    assert r.master_fp32 and not r.gradient_checkpointing
    ft = FinetuneSection()
    assert (ft.epochs, ft.target, ft.mask, ft.eos, ft.people) == (5, "mllmu", "sequence", False, 100)
    assert isinstance(UnlearnSection(), Recipe)


def test_mini_and_paper_configs_carry_their_recipes():
    mini = load_config(None).unlearn
    assert (mini.budget, mini.epochs, mini.lr, mini.batch_size, mini.schedule, mini.clip) == \
        ("epochs", 2, 1e-3, 16, "constant", 1.0)
    assert (mini.lora_rank, mini.lora_alpha, mini.lora_dropout, mini.lora_init) == (8, 16, 0.0, "default")
    for name in ("finetuned", "pretrained", "sustainability", "table3"):
        text = (ROOT / "configs" / "paper" / f"{name}.yaml").read_text()
        u = UnlearnSection(**{k: v for k, v in yaml.safe_load(text)["unlearn"].items()})
        assert (u.budget, u.epochs, u.lr, u.batch_size, u.schedule, u.clip, u.lora_dropout, u.lora_init) == \
            ("epochs", 1, 2e-5, 4, "linear", None, 0.05, "gaussian"), name


@pytest.mark.parametrize("override,key", [
    ("unlearn.lr=0", "unlearn.lr"), ("unlearn.lr=.nan", "unlearn.lr"), ("unlearn.epochs=0", "unlearn.epochs"),
    ("unlearn.steps=0", "unlearn.steps"), ("unlearn.batch_size=0", "unlearn.batch_size"),
    ("unlearn.lora_rank=0", "unlearn.lora_rank"), ("unlearn.lora_dropout=1.0", "unlearn.lora_dropout"),
    ("unlearn.schedule=step", "unlearn.schedule"), ("unlearn.budget=tokens", "unlearn.budget"),
    ("unlearn.lora_init=kaiming", "unlearn.lora_init"), ("unlearn.clip=-1", "unlearn.clip"),
    ("unlearn.adam_betas=[0.9]", "unlearn.adam_betas"), ("unlearn.warmup_steps=-1", "unlearn.warmup_steps"),
])
def test_every_recipe_value_is_checked(override, key):
    with pytest.raises(PulseError, match=key.replace(".", r"\.")) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override,key", [
    ("budget=steps", "finetune.steps"), ("target=everything", "finetune.target"), ("mask=all", "finetune.mask"),
    ("sampler=weighted", "finetune.sampler"), ("people=0", "finetune.people"), ("save_every=-1", "finetune.save_every"),
    ("save_dtype=int8", "finetune.save_dtype"), ("lr=-1", "finetune.lr"), ("nope=1", "nope"),
])
def test_finetune_overrides_are_validated(override, key):
    with pytest.raises(PulseError, match=key.replace(".", r"\.")):
        load_finetune([override])
    assert load_finetune(["lr=1e-4", "epochs=2"]).lr == 1e-4


# --- batches and schedule ------------------------------------------------------------------------------------------

def test_epoch_budget_is_a_shuffled_dataloader_per_epoch():
    r = replace(Recipe(), epochs=2, batch_size=4)
    plan = batch_plan(10, r, [7, 0])
    assert steps_for(10, r) == len(plan) == 2 * math.ceil(10 / 4) == 6
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2]  # drop_last=False
    first, second = sum(plan[:3], []), sum(plan[3:], [])
    assert sorted(first) == sorted(second) == list(range(10)) and first != second  # reshuffled each epoch
    assert batch_plan(10, r, [7, 0]) == plan
    steps = batch_plan(10, replace(r, budget="steps", steps=5), [7, 0])
    assert [len(b) for b in steps] == [4] * 5


def test_linear_schedule_is_transformers_linear_stepped_every_batch():
    from transformers import get_linear_schedule_with_warmup
    r = Recipe()
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_linear_schedule_with_warmup(opt, 0, 7)
    assert [lr_factor(s, 7, r) for s in range(8)] == pytest.approx([hf.lr_lambdas[0](s) for s in range(8)])
    assert [lr_factor(s, 4, r) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    cos = replace(r, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    assert [lr_factor(s, 4, cos) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.55])
    p = torch.nn.Parameter(torch.ones(2))
    losses, status = fit([("p", p)], [0, 1, 2, 3], lambda _: ((p ** 2).sum(), {"loss": 0.0}), replace(r, lr=0.1))
    assert status == "ok" and [x["lr"] for x in losses] == pytest.approx([0.1, 0.075, 0.05, 0.025])


def test_sequential_requests_get_the_epochs_over_their_own_fold(tiny):
    model, enc, samples = _fresh(tiny)
    r = replace(UnlearnSection(), epochs=2, batch_size=2, lr=1e-3)
    steps = []
    for fold in (samples[:3], samples[3:]):  # two sequential requests (3 samples each)
        model, res = unlearn_request(model, enc, "ga_klr", "llm", fold, samples, r, seed=0)
        assert res.status == "ok"
        steps.append((res.info["steps"], len(res.losses)))
    assert steps == [(4, 4), (4, 4)]  # 2 epochs × ceil(3 / 2), not a global step budget


def test_npo_reference_pass_uses_the_recipe_batch_size(tiny, monkeypatch):
    model, enc, samples = _fresh(tiny)
    sizes = []
    original = Encoder.batch
    monkeypatch.setattr(Encoder, "batch", lambda self, xs, **kw: sizes.append(len(xs)) or original(self, xs, **kw))
    r = replace(UnlearnSection(), budget="steps", steps=1, batch_size=2)
    _, res = unlearn_request(model, enc, "npo", "llm", samples, [], r, seed=0)
    assert sizes == [2, 2, 2, 2] and res.info["reference_batch_size"] == 2  # 3 reference batches + 1 step


def test_mini_world_phases_record_their_recipes(small_world):
    """Both phases of the mini build ran through `train_on` with the mini's own recipe, recorded in build.json."""
    build = json.loads((small_world / "build.json").read_text())
    pre, ft = build["recipes"]["pretrain"], build["recipes"]["finetune"]
    assert (pre["mode"], pre["target"], pre["steps"], pre["lr"]) == ("full", "all", 300, 1e-3)
    assert (ft["mode"], ft["target"], ft["steps"], ft["lr"], ft["lora_rank"], ft["lora_alpha"]) == \
        ("lora", "proj+llm", 300, 2e-3, 8, 16)
    for r in (pre, ft):
        assert (r["sampler"], r["schedule"], r["warmup_steps"], r["min_lr_ratio"], r["clip"], r["adam_betas"]) == \
            ("weighted", "cosine", 100, 0.1, 1.0, [0.9, 0.98])
    assert ft["seed"] == pre["seed"] + 1


# --- MLLMU-Bench's LoRA module set ----------------------------------------------------------------------------------

def test_mllmu_target_is_exactly_the_peft_suffix_match(tiny):
    """find_all_linear_names (MLLMU-Bench) + peft's list matching == our anchored `mllmu` regex."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    lm, _ = tiny
    names = set()
    for name, module in lm.model.named_modules():  # transformers 4.45 names CLIP `vision_tower.vision_model.…`
        if any(k in name for k in ("multi_modal_projector", "vision_model", "vision_tower")):
            continue
        if isinstance(module, torch.nn.Linear):
            names.add(name.split(".")[-1])
    names.discard("lm_head")
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    def wrapped(targets):
        m = get_peft_model(copy.deepcopy(lm.model), LoraConfig(r=2, target_modules=targets))
        return {n.removeprefix("base_model.model.") for n, x in m.named_modules() if isinstance(x, LoraLayer)}
    by_suffix, by_regex = wrapped(sorted(names)), wrapped(TARGETS["mllmu"])
    assert by_suffix == by_regex
    assert "model.vision_tower.encoder.layers.0.self_attn.q_proj" in by_regex  # CLIP q/k/v are caught
    assert not any(n.endswith(("out_proj", "fc1", "fc2", "linear_1", "linear_2", "lm_head")) for n in by_regex)
    assert len(by_regex) == 7 * TINY.text_layers + 3 * TINY.vision_layers


# --- bf16: fp32 master layers --------------------------------------------------------------------------------------

def _merge_error(tiny, master_fp32: bool) -> float:
    """Relative error of the merged update for a known LoRA delta of rms 1e-4 on a bf16 model."""
    model, _, _ = _fresh(tiny, torch.bfloat16)
    r = replace(Recipe(), lora_dropout=0.0, master_fp32=master_fp32)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    peft_model, _, _ = prepare(model, "llm", r, "lora", seed=0)
    gen = torch.Generator().manual_seed(0)
    expected = {}
    for name, m in peft_model.named_modules():
        if hasattr(m, "lora_A") and "default" in m.lora_A:
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            with torch.no_grad():
                a.copy_(torch.randn(a.shape, generator=gen))
                b.copy_(torch.randn(b.shape, generator=gen))
                delta = (b.float() @ a.float()) * m.scaling["default"]
                b.mul_(1e-4 / delta.pow(2).mean().sqrt())
                expected[name.removeprefix("base_model.model.") + ".weight"] = \
                    (b.float() @ a.float()) * m.scaling["default"]
    merged = finish(peft_model, "lora", r)
    after = dict(merged.named_parameters())
    err = sum(((after[n].float() - before[n]) - d).pow(2).sum() for n, d in expected.items())
    return math.sqrt(err / sum(d.pow(2).sum() for d in expected.values()))


def test_bf16_merge_keeps_a_small_update_only_with_fp32_master_layers(tiny):
    master, native = _merge_error(tiny, True), _merge_error(tiny, False)
    print(f"\nrelative merge error of a 1e-4-rms LoRA update on bf16: master_fp32 {master:.2e}, native bf16 {native:.3f}")
    assert master < 1e-5  # fp32 arithmetic
    assert native > 0.15  # the bf16 merge rounds away a large part of the update


def test_fp32_master_layers_train_and_persist_across_requests(tiny, tmp_path):
    from pulse.unlearn.loop import apply_saved
    model, enc, samples = _fresh(tiny, torch.bfloat16)
    base = copy.deepcopy(model)
    r = replace(UnlearnSection(), epochs=1, batch_size=3, lr=1e-3)
    q = "model.language_model.layers.0.self_attn.q_proj"
    for i in (1, 2):
        model, res = unlearn_request(model, enc, "ga", "llm", samples[:3], [], r, seed=i, save_to=tmp_path / f"r{i}")
        layer = model.get_submodule(q)
        assert layer.weight.dtype == torch.float32 and len(layer._forward_hooks) == 1  # held once, kept
        assert res.info["master_fp32_modules"] == (14 if i == 1 else 0)
    assert model.get_submodule("model.multi_modal_projector.linear_1").weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert forward(model, enc.batch(samples[:2], mask="sequence")).dtype == torch.bfloat16
    for i in (1, 2):  # resume: the saved requests rebuild the same fp32 weights
        base = apply_saved(base, tmp_path / f"r{i}")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), base.state_dict().items()):
        assert k == k2 and v.dtype == v2.dtype and torch.equal(v, v2), k


# --- train mode, gradient checkpointing ---------------------------------------------------------------------------

def test_lora_dropout_applies_in_train_mode_and_nothing_else_is_random(tiny):
    model, enc, samples = _fresh(tiny)
    peft_model, _, info = prepare(model, "llm", replace(Recipe(), lora_dropout=0.5), "lora", seed=0)
    assert info["train_mode_dropout"] == {"lora": [0.5], "other": {}}  # LLaVA configs: attention dropout 0
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    batch = enc.batch(samples[:2], mask="sequence")
    with torch.no_grad():
        a, b = forward(peft_model, batch), forward(peft_model, batch)
        assert not torch.equal(a, b)  # adapter dropout is live while training
        with eval_mode(peft_model):
            c, d = forward(peft_model, batch), forward(peft_model, batch)
        assert torch.equal(c, d)
        with peft_model.disable_adapter():  # without the adapter, train mode is deterministic
            assert torch.equal(forward(peft_model, batch), forward(peft_model, batch))


def test_gradient_checkpointing_gives_the_same_training(tiny):
    out = {}
    for gc in (False, True):
        model, enc, samples = _fresh(tiny)
        r = replace(FinetuneSection(), epochs=1, batch_size=3, lr=1e-3, lora_dropout=0.0, gradient_checkpointing=gc,
                    target="llm")
        model, info = train_on(model, enc, samples, r)
        out[gc] = ([x["loss"] for x in info["losses"]], model.state_dict())
        assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-5)
    assert out[True][0][0] != out[True][0][1]  # it trained
    for k, v in out[False][1].items():
        torch.testing.assert_close(out[True][1][k], v, rtol=1e-5, atol=1e-6)


# --- checkpoints: an interrupted run resumes to the same weights ---------------------------------------------------

def test_interrupted_training_resumes_to_bitwise_equal_weights(tiny, tmp_path):
    r = replace(FinetuneSection(), epochs=3, batch_size=2, lr=1e-3, target="mllmu", save_every=2)  # 9 steps

    def run(ckpt, stop_at=None):
        model, enc, samples = _fresh(tiny)

        def on_step(step):
            if step == stop_at:
                raise KeyboardInterrupt
        return train_on(model, enc, samples, r, ckpt_dir=ckpt, on_step=on_step)

    straight, info = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=5)  # killed during step 5: the checkpoint after step 4 is on disk
    saved = sorted(p.name for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert saved == ["optimizer.safetensors", "rng.safetensors", "state.json", "trainable.safetensors"]
    assert json.loads(next((tmp_path / "b").rglob("state.json")).read_text())["step"] == 4
    resumed, info_b = run(tmp_path / "b")
    assert info["steps"] == 9 and [x["loss"] for x in info_b["losses"]] == [x["loss"] for x in info["losses"]]
    for (k, v), (k2, v2) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_checkpoint_of_another_training_is_refused(tiny, tmp_path):
    r = replace(FinetuneSection(), epochs=1, batch_size=2, lr=1e-3, target="llm", save_every=1)
    model, enc, samples = _fresh(tiny)
    train_on(model, enc, samples, r, ckpt_dir=tmp_path)
    model, enc, samples = _fresh(tiny)
    with pytest.raises(PulseError, match="another training"):
        train_on(model, enc, samples, replace(r, seed=1), ckpt_dir=tmp_path)


# --- `pulse finetune` -------------------------------------------------------------------------------------------

def test_pulse_finetune_end_to_end_resumes_and_never_overwrites(small_world, tmp_path):
    from pulse.cli import main
    from pulse.data.mllmu import read_qa_pairs
    from pulse.models.load import load_model
    from pulse.unlearn.finetune import run_finetune

    base, data = small_world / "models" / "pretrained", small_world / "mllmu"
    args = ["finetune", "--model", str(base), "--data", str(data), "--people", "3", "--epochs", "1",
            "--device", "cpu", "--dtype", "float32", "batch_size=8", "save_every=2", "lr=1e-3"]
    out = tmp_path / "ft"
    assert main(args + ["--out", str(out)]) == 0
    rec = json.loads((out / "pulse_finetune.json").read_text())
    n_pairs = sum(q.person_id in {"001", "002", "003"} for q in read_qa_pairs(data, "ft_Data"))
    assert rec["people"] == ["001", "002", "003"] and rec["data"]["pairs"] == n_pairs
    assert rec["training"]["steps"] == math.ceil(n_pairs / 8) and rec["recipe"]["lora_rank"] == 16
    assert rec["data"]["files"][0]["sha256"] and rec["versions"]["torch"] and "mcq_accuracy" in rec
    assert rec["sample_format"] == "USER: <image>\\n{question}\\nASSISTANT: {answer}" and rec["eos"] is False
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "pulse_model.json"}
    assert not (tmp_path / "ft.partial").exists() and not list(out.rglob("*.bin"))
    assert main(args + ["--out", str(out)]) == 2  # never overwrites a finished one

    ft = load_finetune(["people=3", "epochs=1", "batch_size=8", "save_every=2", "lr=1e-3"])

    def stop(step):
        if step == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_finetune(base, data, tmp_path / "again", ft, device="cpu", dtype="float32", on_step=stop, log=lambda _: 0)
    assert (tmp_path / "again.partial" / "checkpoints").is_dir()
    with pytest.raises(PulseError, match="other arguments"):
        run_finetune(base, data, tmp_path / "again", replace(ft, lr=2e-3), device="cpu", dtype="float32")
    run_finetune(base, data, tmp_path / "again", ft, device="cpu", dtype="float32", log=lambda _: 0)
    a, b = load_model(out).model.state_dict(), load_model(tmp_path / "again").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "again" / "pulse_finetune.json").read_text())["mcq_accuracy"] == rec["mcq_accuracy"]


def test_pulse_finetune_exclude_makes_the_oracle_of_a_split(small_world, tmp_path, capsys):
    from pulse.cli import main

    base, data = small_world / "models" / "pretrained", small_world / "mllmu"
    (tmp_path / "unlearn.txt").write_text("002\n")
    args = ["finetune", "--model", str(base), "--data", str(data), "--people", "3", "--epochs", "1",
            "--device", "cpu", "--dtype", "float32", "batch_size=8"]
    assert main(args + ["--exclude", f"@{tmp_path / 'unlearn.txt'}", "--out", str(tmp_path / "oracle")]) == 0
    rec = json.loads((tmp_path / "oracle" / "pulse_finetune.json").read_text())
    assert rec["people"] == ["001", "003"] and rec["excluded"] == ["002"]
    (tmp_path / "far.txt").write_text("009\n")
    assert main(args + ["--exclude", f"@{tmp_path / 'far.txt'}", "--out", str(tmp_path / "x")]) == 2
    assert "not among the first 3 of Full_Set" in capsys.readouterr().err
