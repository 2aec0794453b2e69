"""The built mini world is kept in a cache folder, keyed by its build config and by the code that builds it, so
`pulse run` trains it once; concurrent runs that need the same world build it once (the others wait for it).

Key = sha256 of (the BuildConfig, the world format, and the bytes of every source file in BUILD_MODULES — the
modules a build imports: the mini world itself, the data writers/readers, the training loop and the evaluations
whose numbers go into build.json). A test checks that a build imports no other `pulse` module. Library versions
and the thread count are not in the key (they are recorded in build.json: see `build.environment`).

The repository ships the default world already built (`worlds/mini-<key>/`, made by `pulse mini build --ship`), so
a first run needs no build: it is used in place when its key is this code's key and every file matches its
`SHA256SUMS` (sha256sum format: `cd worlds/mini-<key> && sha256sum -c SHA256SUMS` checks it by hand). A shipped
world of other code is ignored (the world is built as before); a damaged one is an error naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import PulseError
from ..fsutil import atomic_write_text
from .build import PRESETS, BuildConfig, build_into, build_mini
from .lock import build_lock
from .world import FORMAT

BUILD_MODULES = (
    "pulse", "pulse.errors", "pulse.fsutil", "pulse.progress", "pulse.provenance",
    "pulse.data", "pulse.data.mllmu", "pulse.data.mmbench", "pulse.data.records",
    "pulse.eval", "pulse.eval.generate", "pulse.eval.likelihood", "pulse.eval.mcq", "pulse.eval.mmbench",
    "pulse.eval.prompts",
    "pulse.mini", "pulse.mini.build", "pulse.mini.cache", "pulse.mini.lock", "pulse.mini.model",
    "pulse.mini.portraits", "pulse.mini.train", "pulse.mini.world",
    "pulse.models", "pulse.models.batches", "pulse.models.load", "pulse.models.targets", "pulse.models.templates",
    "pulse.unlearn", "pulse.unlearn.checkpoints", "pulse.unlearn.finetune", "pulse.unlearn.loop", "pulse.unlearn.losses",
    "pulse.unlearn.methods", "pulse.unlearn.recipe",
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


@dataclass
class MiniConfig:
    """The run config's `mini` section: which world a run uses and where built worlds are kept."""
    cache: str = "~/.cache/pulse"  # where the built mini world is kept between runs (env PULSE_CACHE wins)
    seed: int = 0
    size: str = "default"  # "default" (the targets in the README) or "small" (tests, CI: seconds)


SHIPPED = Path(__file__).resolve().parents[3] / "worlds"  # the repository's worlds/ (absent from a wheel install)
SUMS = "SHA256SUMS"


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but SHA256SUMS, by path relative to it."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SUMS}


def verify(folder: Path) -> None:
    """Every file of a shipped world matches its SHA256SUMS, and nothing is missing or extra; else PulseError."""
    listed = {}
    for line in (folder / SUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    actual = file_hashes(folder)
    for name in sorted(set(listed) | set(actual)):
        if listed.get(name) != actual.get(name):
            what = ("missing" if name not in actual else "not listed in SHA256SUMS" if name not in listed
                    else "its sha256 differs from SHA256SUMS")
            raise PulseError(f"{folder / name}: {what} — the shipped mini world is damaged; restore it "
                             f"(git checkout -- {folder}) or delete {folder} to build the world instead (~10 min)")


def ship(cfg: BuildConfig, log=print, root: Path | None = None) -> Path:
    """Build the world of `cfg` into root/mini-<key>/ with its SHA256SUMS (maintainers: after changing the code
    the key hashes, so that a first run finds it)."""
    path = (root or SHIPPED) / f"mini-{world_key(cfg)}"
    build_mini(path, cfg, log=log)
    atomic_write_text(path / SUMS, "".join(f"{h}  {name}\n" for name, h in file_hashes(path).items()))
    return path


def shipped(cfg: BuildConfig, log=print, root: Path | None = None) -> Path | None:
    """The shipped, verified world of `cfg`, or None when the repository ships none for this code."""
    root = root or SHIPPED
    path = root / f"mini-{world_key(cfg)}"
    if (path / SUMS).is_file():
        verify(path)
        log(f"mini world: the shipped copy in {path} (every file checked against its SHA256SUMS)")
        return path
    if any(root.glob("mini-*/" + SUMS)):
        log(f"the mini world shipped in {root} was built by other code (its key differs from {path.name}); "
            f"building this one")
    return None


def build_config(mini_cfg) -> BuildConfig:
    """The BuildConfig of a run config's `mini` section: its size's preset with its seed."""
    preset = PRESETS[mini_cfg.size]
    return replace(preset, world=replace(preset.world, seed=mini_cfg.seed), seed=mini_cfg.seed)


def ensure_mini(mini_cfg, log=print, build_cfg: BuildConfig | None = None) -> Path:
    """Path of the built mini world for this config, building it first when the cache lacks it. A process that
    finds another one building the same world waits for it and uses its result."""
    cfg = build_cfg or build_config(mini_cfg)
    root = Path(os.environ.get("PULSE_CACHE", mini_cfg.cache)).expanduser()
    path = root / f"mini-{world_key(cfg)}"
    if (path / "build.json").is_file():
        return path
    if (found := shipped(cfg, log=log)) is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    with build_lock(path, wait=True, log=log) as done:
        if not (path / "build.json").is_file():
            log(f"building the mini world into {path} (once; later runs reuse it)")
            build_into(path, cfg, log=log)
        done()
    return path
