"""The retrained oracle of the fine-tuned scenario — fine-tuned with the same recipe on the retained people only,
never on D_unlearn: unlearning's gold standard — and the measures against it (results.py writes them):

- `oracle_gap`: accuracy points of a cell minus the oracle's, on the same split and questions;
- `forget_quality`: TOFU's forget quality from MCQ option probabilities. Per D_unlearn question the ratio of the
  mean wrong-option probability to the correct option's (from the option log-likelihoods the likelihood scoring
  keeps; TOFU: paraphrased vs perturbed answers, length-normalised), and the two-sample Kolmogorov–Smirnov test
  between the cell's and the oracle's ratios: its p-value (high = indistinguishable from the oracle).

The oracle's evaluation (same sets and settings as request 0) is `cells/finetuned/oracle__seed<S>.json`; a built
oracle's checkpoint lives in `oracles/finetuned_seed<S>/` of the run (or is the repository's shipped copy). The
pre-trained scenario has none (nothing can be retrained without the celebrities), nor does sustainability (its
forget set grows with every request).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

from .. import progress
from ..errors import PulseError
from ..data.mllmu import read_people
from ..fsutil import atomic_write_json, atomic_write_text
from ..mini.cache import SHIPPED, SUMS, build_config, ensure_mini, file_hashes
from ..mini.oracle import RECORD, build_oracle, kept_people, oracle_name, oracle_request, shipped_oracle
from ..models.load import load_model
from ..models.batches import Encoder
from . import claims, curves, fingerprint, stored
from .context import Context, eval_sets
from .scenarios import split_people, splits

FORMS_ALL = {"image": ("image",), "text": ("text",), "all": ("image", "text")}


def oracle_checkpoint(ctx: Context, seed: int, unlearn_ids: list[str]) -> Path | None:
    """The oracle's checkpoint for a split seed: the configured directory, or (build) the shipped or built one."""
    spec = ctx.cfg.scenario.finetuned.oracle
    if spec is None:
        return None
    if spec != "build":
        path = Path(spec.replace("{seed}", str(seed))).expanduser()
        if not (path / "config.json").is_file():
            raise PulseError(f"scenario.finetuned.oracle: {path}: no checkpoint (config.json) there")
        return path
    cfg = build_config(ctx.cfg.mini)
    keep = kept_people(ctx.world, unlearn_ids)
    found = shipped_oracle(ctx.world, oracle_request(ctx.world, keep, cfg))
    if found is not None:
        return found
    out = ctx.out / "oracles" / f"finetuned_seed{seed}"
    if not (out / RECORD).is_file():
        with progress.stage(f"oracle seed {seed}"):
            build_oracle(ctx.world, keep, out, cfg, log=ctx.log)
    return out


def ship_oracles(cfg, log=print, root: Path | None = None) -> list[Path]:
    """Maintainers: the oracles of `cfg`'s fine-tuned split seeds on its mini world, built (once) into the
    repository's worlds/<world>-oracles/<name>/ with SHA256SUMS, where `oracle_checkpoint` finds them."""
    world = ensure_mini(cfg.mini, log=log)
    people = sorted(read_people(world / "mllmu", cfg.data.fictional), key=lambda p: p.id)
    people = people[:cfg.scenario.finetuned.people]
    bcfg, out = build_config(cfg.mini), []
    for seed in cfg.seeds:
        unlearn, _ = split_people(people, cfg.scenario.finetuned.unlearn, seed, "finetuned")
        keep = kept_people(world, [p.id for p in unlearn])
        path = (root or SHIPPED) / f"{world.name}-oracles" / oracle_name(oracle_request(world, keep, bcfg))
        if not (path / SUMS).is_file():
            build_oracle(world, keep, path, bcfg, log=log)
            atomic_write_text(path / SUMS, "".join(f"{h}  {name}\n" for name, h in file_hashes(path).items()))
        out.append(path)
    return out


def oracle_eval(ctx: Context, seed: int, unlearn, retain, wait: bool = True) -> dict | bool | None:
    """The oracle's evaluation record (cached in cells/finetuned/oracle__seed<S>.json); None without an oracle,
    False when `wait` is False and another process is computing it."""
    if ctx.cfg.scenario.finetuned.oracle is None or "finetuned" not in ctx.cfg.scenarios:
        return None
    path = ctx.out / "cells" / "finetuned" / f"oracle__seed{seed}.json"
    with claims.claim(path.with_suffix(".lock"), wait) as held:
        if not held:
            return False
        if path.is_file():
            return stored.read(path)
        model_dir = oracle_checkpoint(ctx, seed, [p.id for p in unlearn])
        m = ctx.cfg.model
        lm = load_model(model_dir, dtype=m.dtype, device=m.device, template=m.template,
                        trust_remote_code=m.trust_remote_code)
        enc = Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype, eos=ctx.cfg.unlearn.eos)
        with progress.stage(f"oracle evaluation seed {seed}"):
            mcq, mmb = ctx.evaluate(lm, enc, eval_sets(ctx, "finetuned", unlearn, retain))
        record = json.loads((model_dir / RECORD).read_text()) if (model_dir / RECORD).is_file() else {}
        cell = {"model": _where(ctx, model_dir), "oracle": record.get("request"),  # what made it, not when
                "mcq": mcq, "mmbench": mmb,
                "splits": splits("finetuned", unlearn, retain, None, 0),
                "halves": curves.half_keys(unlearn + retain, ctx.cfg.eval.half_seed)}
        cell = fingerprint.stamped(ctx, path, cell)
        atomic_write_json(path, cell)
        return cell


def _where(ctx: Context, model_dir: Path) -> str:
    """The oracle checkpoint as the cell file names it: inside the run directory or the repository's shipped
    copies by a relative name (the same bytes in every clone and run directory), else the configured path."""
    for root, prefix in ((ctx.out, ""), (SHIPPED, "worlds/")):
        if model_dir.is_relative_to(root):
            return prefix + model_dir.relative_to(root).as_posix()
    return str(model_dir)


def truth_ratios(predictions: list[dict], ids: set, forms: tuple[str, ...]) -> dict[str, float]:
    """{question key: log(mean wrong-option probability / correct-option probability)} of the predictions that
    carry option scores (log-likelihoods, in option order A, B, ...)."""
    out = {}
    for p in predictions:
        if p["person_id"] not in ids or p["form"] not in forms or "scores" not in p:
            continue
        scores = p["scores"]
        correct = ord(p["answer"]) - ord("A")
        wrong = [s for i, s in enumerate(scores) if i != correct]
        top = max(wrong)
        out[curves.key(p["person_id"], p["form"], p["index"])] = \
            top + math.log(sum(math.exp(s - top) for s in wrong) / len(wrong)) - scores[correct]
    return out


def forget_quality(predictions: list[dict], oracle: list[dict], ids: set, forms: tuple[str, ...]) -> tuple[float, int]:
    """(KS p-value, questions) between the truth ratios of `predictions` and the oracle's on the same questions;
    NaN when either has none (generate scoring keeps no option scores)."""
    mine, theirs = truth_ratios(predictions, ids, forms), truth_ratios(oracle, ids, forms)
    common = sorted(set(mine) & set(theirs))
    if not common:
        return float("nan"), 0
    return float(ks_2samp(np.array([mine[k] for k in common]), np.array([theirs[k] for k in common])).pvalue), \
        len(common)
