"""Build the mini world end to end: data on disk, then a tiny LLaVA that learns it in three stages.

0. *Vision stage*: the CLIP tower alone learns the mini-MMBench training scenes (mini/train.py `pretrain_vision`),
   a stand-in for the CLIP pre-training a real LLaVA starts from; the tower stays frozen afterwards, as LLaVA keeps
   CLIP frozen.
1. *Pre-training* (every other parameter): the celebrities (both question forms; sampled by their uneven
   exposure) and the mini-MMBench skills (the same training scenes as questions) — the base model's "pre-trained
   knowledge".
2. *Fine-tuning* (LoRA by default, merged afterwards; `full` optional): the fictional people from `ft_Data`, with a
   replay share of pre-training data (as LLaVA-style instruction tuning mixes general data) so the fine-tuned model
   keeps its celebrity and MMBench ability.
Every stage runs PULSE's one training loop; the two LLaVA phases through the fine-tuning code of `pulse finetune`
(`unlearn.finetune.train_on`), with the mini's own recipes (mini/train.py) recorded in build.json.

Reproducibility: the build runs with `torch.use_deterministic_algorithms(True)` and `BuildConfig.threads` torch
threads; the same config, code, library versions and CPU instruction set give byte-identical files (build.json's
timings aside). build.json records what may still differ between machines (`environment`).

Everything is read back from disk through the same readers as the real datasets. The result:
    out/mllmu/ out/mmbench.tsv out/pretrain/ out/world.json      (data, see world.py)
    out/models/pretrained/  out/models/finetuned/                  (standard HF checkpoints, safetensors)
    out/build.json                                                 (config, timings, accuracies)
The whole folder is built under a temporary name and renamed at the end: a failed build leaves nothing half-made.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import progress
from ..data.mllmu import read_people, read_qa_pairs
from ..data.mmbench import read_mmbench
from ..data.records import QAPair
from ..errors import PulseError
from ..eval.mcq import evaluate_mcq
from ..eval.mmbench import evaluate_mmbench, mmbench_message
from ..eval.prompts import mcq_prompt
from ..models.batches import Encoder, Sample
from ..models.load import save_model
from ..models.templates import PLAIN
from ..unlearn.finetune import train_on
from ..unlearn.recipe import FinetuneSection
from .lock import build_lock
from .model import TinyConfig, build_tiny_llava
from .train import VISION_TOWER, finetune_recipe, pretrain_recipe, pretrain_vision, vision_recipe
from .world import WorldConfig, make_world, write_world


@dataclass(frozen=True)
class BuildConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    model: TinyConfig = field(default_factory=TinyConfig)
    seed: int = 0  # the recipes' seeds are replaced by seed (vision stage, pre-training) and seed + 1 (fine-tuning)
    mmbench_share: float = 0.4  # share of pre-training samples that are mini-MMBench questions
    replay_share: float = 0.4  # share of fine-tuning samples replayed from pre-training data
    # stage 0: the CLIP tower alone (train.py); steps 0 = no stage, the tower then trains with the language model
    vision: FinetuneSection = field(default_factory=vision_recipe)
    pretrain: FinetuneSection = field(default_factory=pretrain_recipe)  # vision tower frozen
    finetune: FinetuneSection = field(default_factory=finetune_recipe)  # mode lora (proj+llm) or full
    # torch intra-op threads during the build: the weights' bits depend on it (0 = keep torch's current setting)
    threads: int = 2


PRESETS = {
    "default": BuildConfig(),
    # seconds, not minutes: for tests and CI (plumbing, not accuracy targets)
    "small": BuildConfig(world=WorldConfig(n_fictional=10, n_celebrities=10, n_famous=5, n_mmbench=24,
                                           n_mmbench_train=300),
                         model=TinyConfig(vision_hidden=64, text_hidden=128, text_layers=2, text_ffn=256,
                                          vocab_size=512),
                         vision=vision_recipe(steps=200), pretrain=pretrain_recipe(steps=300),
                         finetune=finetune_recipe(steps=300, lora_rank=8)),
}


def qa_samples(pairs: list[QAPair], template) -> list[Sample]:
    return [Sample(template.prompt(p.question, image=p.form == "image"), p.answer,
                   p.image if p.form == "image" else None) for p in pairs]


def mmbench_samples(items, template) -> list[Sample]:
    return [Sample(template.prompt(mmbench_message(it), image=True), it.options[it.answer], it.image) for it in items]


def tokenizer_texts(samples, people, mmbench, template) -> list[str]:
    """Every string the tiny model will see, formatted (tiny_llava.md §2), incl. the faithful MCQ prompts."""
    texts = [f"{s.prompt} {s.answer}" for s in samples]
    for p in people:
        for m in p.image_mcqs + p.text_mcqs:
            texts.append(mcq_prompt(m, []))
            texts.extend(f"{template.prompt(m.question, image=m.form == 'image')} {o}" for o in m.options.values())
    texts.extend(f"{template.prompt(mmbench_message(it), image=True)} {o}" for it in mmbench for o in it.options.values())
    return texts


def evaluate_world(lm, enc, data: dict) -> dict:
    """Accuracies of one model on the mini world: fictional, famous / all celebrities, mini-MMBench."""
    famous = [p for p in data["celebrities"] if data["exposure"][p.id] >= 1.0]
    mmb = evaluate_mmbench(lm, data["mmbench"], enc=enc)
    return {"fictional": evaluate_mcq(lm, data["fictional"], enc=enc).accuracy,
            "celebrities_famous": evaluate_mcq(lm, famous, enc=enc).accuracy,
            "celebrities_all": evaluate_mcq(lm, data["celebrities"], enc=enc).accuracy,
            "mmbench": {"circular": mmb["circular"], "vanilla": mmb["vanilla"], "scoring": mmb["scoring"],
                        "per_category": {k: round(v["circular"], 1) for k, v in mmb["per_category"].items()}}}


def load_world_data(root: Path) -> dict:
    """The world's training and evaluation data; the held-out people (never trained on) apart, under "holdout"."""
    mllmu = root / "mllmu"
    summary = json.loads((root / "world.json").read_text())
    held = set(summary.get("holdout", ()))
    everyone, pairs = read_people(mllmu, "Full_Set"), read_qa_pairs(mllmu, "ft_Data")
    return {"fictional": [p for p in everyone if p.id not in held], "celebrities": read_people(mllmu, "Retain_Set"),
            "holdout": [p for p in everyone if p.id in held],
            "ft_pairs": [q for q in pairs if q.person_id not in held],
            "pretrain_pairs": read_qa_pairs(root / "pretrain", "Celebrities"),
            "mmbench": read_mmbench(root / "mmbench.tsv"), "mmbench_train": read_mmbench(root / "pretrain" / "mmbench_train.tsv"),
            "exposure": summary["exposure"]}


def build_mini(out, cfg: BuildConfig = BuildConfig(), log=print) -> dict:
    """Build the mini world into `out` (must not exist). Returns the build report (also in out/build.json).
    A second process building the same `out` at the same time gets a one-line error (see mini/lock.py)."""
    out = Path(out)
    with build_lock(out, wait=False) as done:
        if out.exists():
            raise PulseError(f"{out}: already exists; choose a new --out or delete it")
        report = build_into(out, cfg, log=log)
        done()
    return report


def environment() -> dict:
    """What a build's bits depend on besides its config and code (recorded in build.json, not in the cache key):
    library versions, torch's thread count and the CPU kernels it dispatches to (AVX2 / AVX-512 kernels sum in
    other orders), and the PNG encoder (Pillow's zlib decides the image bytes, not the pixels)."""
    import platform

    import numpy
    import peft
    import PIL
    import pyarrow
    import safetensors
    import tokenizers
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "peft": peft.__version__, "safetensors": safetensors.__version__, "numpy": numpy.__version__,
            "pillow": PIL.__version__, "pyarrow": pyarrow.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


REPRODUCIBILITY = ("bitwise identical for the same config (incl. threads), code, library versions and CPU "
                   "instruction set (cpu_capability); another thread count, library version or instruction set "
                   "changes the trained weights' last bits, which training amplifies into accuracy differences")


def build_into(out: Path, cfg: BuildConfig, log=print) -> dict:
    """The build proper, into `out` via `out`.partial; the caller holds the build lock of `out`."""
    import torch

    if cfg.threads < 0:
        raise PulseError(f"BuildConfig, field threads: must be >= 0 (got {cfg.threads})")
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _build(Path(out), cfg, log)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(previous[2])


def _build(out: Path, cfg: BuildConfig, log) -> dict:
    """The build as a recipe: world, tokenizer and model, then the vision stage, pre-training and fine-tuning, each
    trained model saved and evaluated; build.json records recipes, timings and accuracies."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    timings = {}
    write_world(make_world(cfg.world), tmp)
    data = load_world_data(tmp)
    timings["world_s"] = round(time.time() - t0, 1)
    samples = {"celebrities": qa_samples(data["pretrain_pairs"], PLAIN),
               "mmbench": mmbench_samples(data["mmbench_train"], PLAIN),
               "fictional": qa_samples(data["ft_pairs"], PLAIN)}
    texts = tokenizer_texts(samples["celebrities"] + samples["mmbench"] + samples["fictional"],
                            data["fictional"] + data["celebrities"], data["mmbench"], PLAIN)
    lm = build_tiny_llava(texts, cfg.model, seed=cfg.seed)
    enc = Encoder(lm.processor)
    n_params = sum(p.numel() for p in lm.model.parameters())
    log(f"tiny LLaVA: {n_params / 1e6:.2f} M parameters, vocabulary {len(lm.tokenizer)}")
    vision, vision_info, frozen = _vision_stage(lm, enc, data, cfg, timings, log)
    pretrain, metrics, pretrain_weights = _pretrain_stage(lm, enc, data, samples, cfg, frozen, tmp, timings, log)
    finetune = _finetune_stage(lm, enc, data, samples, pretrain_weights, cfg, frozen, tmp, timings, metrics, log)
    timings["total_s"] = round(time.time() - t0, 1)
    report = {"config": asdict(cfg), "recipes": {"vision": asdict(vision), "pretrain": asdict(pretrain),
                                                  "finetune": asdict(finetune)},
              "vision_stage": vision_info, "parameters": n_params, "timings": timings, "accuracy": metrics,
              "environment": environment(), "reproducibility": REPRODUCIBILITY}
    (tmp / "build.json").write_text(json.dumps(report, indent=2))
    tmp.rename(out)
    return report


def _vision_stage(lm, enc, data, cfg: BuildConfig, timings: dict, log):
    """Phase 0: the vision tower alone on the mini-MMBench training scenes (stand-in for CLIP's pre-training);
    vision.steps 0: no stage, the tower trains with the language model. (recipe, record, frozen prefixes)."""
    t = time.time()
    vision = replace(cfg.vision, seed=cfg.seed)
    vision_info, frozen = None, ()
    if vision.steps:
        vision_info, frozen = pretrain_vision(lm.model, enc, data["mmbench_train"], vision), (VISION_TOWER,)
        log(f"vision stage: {vision_info['train_accuracy']:.1f}% of the training scenes' {vision_info['classes']} "
            f"classes")
    timings["vision_s"] = round(time.time() - t, 1)
    return vision, vision_info, frozen


def _pretrain_stage(lm, enc, data, samples, cfg: BuildConfig, frozen, tmp: Path, timings: dict, log):
    """Phase 1: pre-training (celebrities by exposure + mini-MMBench skills), vision tower frozen; the model saved
    and evaluated. (recipe, {"pretrained": accuracies}, the pre-training samples' weights)."""
    t = time.time()
    pretrain_samples = samples["celebrities"] + samples["mmbench"]
    weights = pretraining_weights(data, samples, cfg)
    pretrain = replace(cfg.pretrain, seed=cfg.seed)
    lm.model, _ = train_on(lm.model, enc, pretrain_samples, pretrain, weights=weights, desc="pre-training",
                           frozen=frozen)
    timings["pretrain_s"] = round(time.time() - t, 1)
    save_model(lm, tmp / "models" / "pretrained", extra={"phase": "pretrained"})
    t = time.time()
    with progress.stage("mini build, pre-trained model"):
        metrics = {"pretrained": evaluate_world(lm, enc, data)}
    timings["eval_pretrained_s"] = round(time.time() - t, 1)
    log(f"pre-trained: {_fmt(metrics['pretrained'])}")
    return pretrain, metrics, weights


def _finetune_stage(lm, enc, data, samples, pretrain_weights, cfg: BuildConfig, frozen, tmp: Path, timings: dict,
                    metrics: dict, log):
    """Phase 2: fine-tuning on the fictional people (+ replay of pre-training data); saved and evaluated into
    `metrics["finetuned"]`. Returns the recipe."""
    t = time.time()
    mix, weights = finetune_mix(samples, pretrain_weights, cfg)
    finetune = finetune_phase_recipe(cfg)
    lm.model, _ = train_on(lm.model, enc, mix, finetune, weights=weights, desc="fine-tuning", frozen=frozen)
    timings["finetune_s"] = round(time.time() - t, 1)
    save_model(lm, tmp / "models" / "finetuned", extra={"phase": "finetuned", "finetune": finetune.mode})
    with progress.stage("mini build, fine-tuned model"):
        metrics["finetuned"] = evaluate_world(lm, enc, data)
    log(f"fine-tuned:  {_fmt(metrics['finetuned'])}")
    return finetune


def pretraining_weights(data: dict, samples: dict, cfg: BuildConfig) -> list[float]:
    """The pre-training sampler's weights: each celebrity QA pair by its person's exposure, then the mini-MMBench
    scenes, rescaled to `cfg.mmbench_share` of the total weight."""
    exposure = [data["exposure"][p.person_id] for p in data["pretrain_pairs"]]
    return _rescale(exposure + [1.0] * len(samples["mmbench"]), len(samples["celebrities"]), cfg.mmbench_share)


def finetune_mix(samples: dict, pretrain_weights: list[float], cfg: BuildConfig) -> tuple[list, list[float]]:
    """The fine-tuning phase's samples and sampler weights: the fictional QA pairs (weight 1 each), then the
    pre-training data replayed with `cfg.replay_share` of the total weight."""
    replay = samples["celebrities"] + samples["mmbench"]
    weights = _rescale([1.0] * len(samples["fictional"]) + pretrain_weights, len(samples["fictional"]),
                       cfg.replay_share)
    return samples["fictional"] + replay, weights


def finetune_phase_recipe(cfg: BuildConfig) -> FinetuneSection:
    """The fine-tuning phase's recipe: `cfg.finetune` with seed `cfg.seed + 1`."""
    finetune = replace(cfg.finetune, seed=cfg.seed + 1)
    if finetune.mode not in ("lora", "full"):
        raise PulseError(f"unknown finetune mode {finetune.mode!r}; use 'lora' or 'full'")
    return finetune


def _rescale(weights: list[float], n_main: int, share: float) -> list[float]:
    """Scale the tail (after `n_main`) so that it receives `share` of the total weight."""
    head, tail = sum(weights[:n_main]), sum(weights[n_main:])
    if not tail or share <= 0:
        return weights
    k = share / (1 - share) * head / tail
    return weights[:n_main] + [w * k for w in weights[n_main:]]


def _fmt(m: dict) -> str:
    f = lambda d: f"{d['image']:.0f}/{d['text']:.0f}"  # noqa: E731
    return (f"fictional {f(m['fictional'])}, famous celebrities {f(m['celebrities_famous'])}, all celebrities "
            f"{f(m['celebrities_all'])} (image/text %), mini-MMBench circular {m['mmbench']['circular']:.1f}%")
