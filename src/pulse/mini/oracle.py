"""The retrained oracle on the mini world: the world's fine-tuning phase (mini/build.py) rerun from its pre-trained
checkpoint with the same recipe, seed, replay and sampler, on the QA pairs of the kept people only — the model that
never saw the others. Kept = every fictional person gives the world's own fine-tuned model (a test checks it).

Not part of the world's key (the build never imports this module); the oracle's record names what made it, and a
shipped oracle (`worlds/<world>-oracles/<name>/`, with SHA256SUMS) is used only when its record matches.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import PulseError
from ..fsutil import atomic_write_json
from ..models.batches import Encoder
from ..models.load import load_model, save_model
from ..models.templates import PLAIN
from ..unlearn.finetune import loss_summary, train_on
from .build import (BuildConfig, environment, finetune_mix, finetune_phase_recipe, load_world_data, mmbench_samples,
                    pretraining_weights, qa_samples)
from .cache import SHIPPED, SUMS, verify
from .train import VISION_TOWER

RECORD = "pulse_oracle.json"


def oracle_request(world: Path, keep: list[str], cfg: BuildConfig) -> dict:
    """What an oracle is made of: the world, the kept people, the fine-tuning recipe."""
    return {"world": world.name, "kept_people": sorted(keep), "recipe": asdict(finetune_phase_recipe(cfg)),
            "replay_share": cfg.replay_share, "mmbench_share": cfg.mmbench_share}


def oracle_name(request: dict) -> str:
    blob = json.dumps(request, sort_keys=True).encode()
    return f"oracle-{hashlib.sha256(blob).hexdigest()[:12]}"


def shipped_oracle(world: Path, request: dict, root: Path | None = None) -> Path | None:
    """The repository's prebuilt oracle for this request (files checked against its SHA256SUMS), or None."""
    path = (root or SHIPPED) / f"{world.name}-oracles" / oracle_name(request)
    if not (path / SUMS).is_file():
        return None
    verify(path)
    if json.loads((path / RECORD).read_text())["request"] != request:
        return None
    return path


def kept_people(world: Path, forget: list[str]) -> list[str]:
    """The world's fictional people but `forget` (each of which must be one of them)."""
    known = [p.id for p in load_world_data(world)["fictional"]]
    if missing := sorted(set(forget) - set(known)):
        raise PulseError(f"{world}: oracle: people {missing[:5]} are not in the world's Full_Set")
    return sorted(set(known) - set(forget))


def build_oracle(world: Path, keep: list[str], out: Path, cfg: BuildConfig, log=print) -> dict:
    """Retrain the fine-tuned model of `world` on the people `keep` only (kept_people); the checkpoint goes to
    `out` (built as out.partial, renamed at the end) with pulse_oracle.json. Returns that record. Deterministic
    algorithms and the build's thread count, as the world's own build (mini/build.build_into)."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _build(world, keep, out, cfg, log)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(previous[2])


def _build(world: Path, keep: list[str], out: Path, cfg: BuildConfig, log) -> dict:
    data = load_world_data(world)
    known = {p.id for p in data["fictional"]}
    kept = set(keep)
    samples = {"celebrities": qa_samples(data["pretrain_pairs"], PLAIN),
               "mmbench": mmbench_samples(data["mmbench_train"], PLAIN),
               "fictional": qa_samples([q for q in data["ft_pairs"] if q.person_id in kept], PLAIN)}
    mix, weights = finetune_mix(samples, pretraining_weights(data, samples, cfg), cfg)
    recipe = finetune_phase_recipe(cfg)
    started = time.time()
    lm = load_model(world / "models" / "pretrained", dtype="float32", device="cpu")
    log(f"oracle: fine-tuning the pre-trained model on {len(kept)} of {len(known)} fictional people "
        f"({recipe.steps} steps, the world's fine-tuning recipe)")
    frozen = (VISION_TOWER,) if cfg.vision.steps else ()
    lm.model, info = train_on(lm.model, Encoder(lm.processor), mix, recipe, weights=weights,
                              desc="oracle fine-tuning", frozen=frozen)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_model(lm, partial, extra={"phase": "oracle", "finetune": recipe.mode})
    record = {"request": oracle_request(world, keep, cfg), "samples": len(mix),
              "fictional_pairs": len(samples["fictional"]), "time_s": round(time.time() - started, 1),
              "losses": loss_summary(info["losses"], None), "environment": environment()}
    atomic_write_json(partial / RECORD, record)
    partial.rename(out)
    return record
