"""The built mini world is kept in a cache folder, keyed by its build config and by the code that builds it, so
`pulse run` trains it once; concurrent runs that need the same world build it once (the others wait for it).

Key = sha256 of (the BuildConfig, the world format, and the bytes of every source file in BUILD_MODULES — the
modules a build imports: the mini world itself, the data writers/readers, the training loop and the evaluations
whose numbers go into build.json). A test checks that a build imports no other `pulse` module. Library versions
and the thread count are not in the key (they are recorded in build.json: see `build.environment`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from .build import PRESETS, BuildConfig, build_into
from .lock import build_lock
from .world import FORMAT

BUILD_MODULES = (
    "pulse", "pulse.config", "pulse.errors", "pulse.fsutil",
    "pulse.data", "pulse.data.mllmu", "pulse.data.mmbench", "pulse.data.records",
    "pulse.eval", "pulse.eval.generate", "pulse.eval.likelihood", "pulse.eval.mcq", "pulse.eval.mmbench",
    "pulse.eval.prompts",
    "pulse.mini", "pulse.mini.build", "pulse.mini.cache", "pulse.mini.lock", "pulse.mini.model",
    "pulse.mini.portraits", "pulse.mini.train", "pulse.mini.world",
    "pulse.models", "pulse.models.batches", "pulse.models.load", "pulse.models.targets", "pulse.models.templates",
    "pulse.unlearn", "pulse.unlearn.finetune", "pulse.unlearn.loop", "pulse.unlearn.losses", "pulse.unlearn.methods",
)


def source_files() -> list[Path]:
    """The source file of every module in BUILD_MODULES (packages: their __init__.py)."""
    root = Path(__file__).resolve().parents[1]  # src/pulse
    out = []
    for name in BUILD_MODULES:
        rel = Path(*name.split(".")[1:])
        pkg = root / rel / "__init__.py"
        out.append(pkg if pkg.is_file() else root / rel.with_suffix(".py"))
    return out


def code_hash() -> str:
    """sha256 over (path relative to src/pulse, bytes) of `source_files()`, in BUILD_MODULES order."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in source_files():
        data = f.read_bytes()
        h.update(f"{f.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def world_key(cfg: BuildConfig) -> str:
    blob = json.dumps({"config": asdict(cfg), "format": FORMAT, "code": code_hash()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_mini(mini_cfg, log=print, build_cfg: BuildConfig | None = None) -> Path:
    """Path of the built mini world for this config, building it first when the cache lacks it. A process that
    finds another one building the same world waits for it and uses its result."""
    preset = PRESETS[mini_cfg.size]
    cfg = build_cfg or replace(preset, world=replace(preset.world, seed=mini_cfg.seed), seed=mini_cfg.seed)
    root = Path(os.environ.get("PULSE_CACHE", mini_cfg.cache)).expanduser()
    path = root / f"mini-{world_key(cfg)}"
    if (path / "build.json").is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    with build_lock(path, wait=True, log=log) as done:
        if not (path / "build.json").is_file():
            log(f"building the mini world into {path} (once; later runs reuse it)")
            build_into(path, cfg, log=log)
        done()
    return path
