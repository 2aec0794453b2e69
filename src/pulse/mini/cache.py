"""The built mini world is kept in a cache folder, keyed by its build config, so `pulse run` trains it once."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from .build import PRESETS, BuildConfig, build_mini


def world_key(cfg: BuildConfig) -> str:
    from .. import __version__
    blob = json.dumps({"config": asdict(cfg), "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_mini(mini_cfg, log=print, build_cfg: BuildConfig | None = None) -> Path:
    """Path of the built mini world for this config, building it first when the cache lacks it."""
    preset = PRESETS[mini_cfg.size]
    cfg = build_cfg or replace(preset, world=replace(preset.world, seed=mini_cfg.seed), seed=mini_cfg.seed)
    root = Path(os.environ.get("PULSE_CACHE", mini_cfg.cache)).expanduser()
    path = root / f"mini-{world_key(cfg)}"
    if (path / "build.json").is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    log(f"building the mini world into {path} (once; later runs reuse it)")
    build_mini(path, cfg, log=log)
    return path
