"""The run directory's own files: manifest.json (what the run is and what made it) and run.log; `start` checks
what is on disk, resolves the run and writes the manifest before anything is computed."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import progress
from ..config import RunConfig, method_references, to_dict
from ..errors import PulseError
from ..fsutil import atomic_write_json
from ..models.templates import MLLMU
from ..provenance import git_commit, versions
from . import claims, curves, fingerprint, stored
from .context import Context
from .plan import MATCHED_SCENARIOS, plan, variants

MANIFEST = "manifest.json"


def start(cfg: RunConfig, out: Path, log, launcher: dict | None = None) -> tuple[Context, float]:
    """Check what is on disk, resolve data and models, write (or amend) manifest.json; (context, start time)."""
    out.mkdir(parents=True, exist_ok=True)
    read_manifest(out)  # a damaged manifest: one line, before anything loads
    log = tee(log, out / "run.log")
    t0 = time.time()
    stored.check_files(fingerprint.plan_files(out, cfg, plan(cfg)))  # a damaged stored file: one line, up front
    ctx = Context(cfg, out, log)
    for warning in fingerprint.verify(ctx, plan(cfg)):  # before anything is computed or written; refuses a mismatch
        log(warning)
    resolved = to_dict(cfg)

    def begin(manifest: dict) -> None:
        if not manifest:
            manifest.update({"config": resolved, "seeds": cfg.seeds, "versions": versions(),
                             "git_commit": git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "reference": "the model before each request (a fresh LoRA adapter per request, "
                                          "merged after it)"})
        else:
            log(f"resuming run in {out}")
        changed = fingerprint.changed_keys(manifest.get("config") or {}, resolved)
        if changed:  # e.g. a method or seed added: the manifest describes the run as it is now
            manifest.setdefault("amended", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": changed})
            manifest.update(config=resolved, seeds=cfg.seeds)
            log(f"config changed since this run started ({', '.join(changed)}); the files reused match it")
        describe(manifest, ctx, launcher)
    update_manifest(out, begin)
    return ctx, t0


def describe(manifest: dict, ctx: Context, launcher: dict | None) -> None:
    """What this invocation adds to the manifest: data, models, the protocol record, method references, this
    worker, the mini world."""
    cfg = ctx.cfg
    manifest.update({"data": ctx.paths, "models": {k: str(v) for k, v in ctx.models.items()},
                     "mmbench_scoring": ctx.scoring, "mmbench_subset_groups": cfg.eval.mmbench_groups,
                     "protocol": protocol_record(cfg, ctx)})
    references = method_references(cfg.methods + cfg.table3_methods)
    if references:
        manifest["method_references"] = references
    if launcher:
        manifest["launcher"] = launcher
    manifest.setdefault("workers", []).append({**claims.owner(), "device": ctx.device["device"],
                                               "torch_threads": torch.get_num_threads()})
    if ctx.world is not None:
        manifest["mini_world"] = {"path": str(ctx.world),
                                  "build": json.loads((ctx.world / "build.json").read_text())["accuracy"]}


def protocol_record(cfg: RunConfig, ctx: Context) -> dict:
    """The recipe details that change numbers, resolved and spelled out for the manifest (the config has the keys)."""
    u = cfg.unlearn
    template = MLLMU if u.format == "mllmu" else None
    fmt = (f"{template.prompt('{question}', image=True)} {{answer}} / {template.prompt('{question}', image=False)} "
           f"{{answer}}" if template else "the checkpoint's own prompt template, answer after one space")
    data = {}
    for s in cfg.scenarios:
        if s == "pretrained" or u.data == "mcq":
            data[s] = ("each person's MCQs as QA (question -> correct option text), image and text forms "
                       "(paper Table 2)") + (" — MLLMU-Bench has no training-flavour data for celebrities"
                                             if s == "pretrained" and u.data == "ft_data" else "")
        else:
            data[s] = f"training-flavour QA pairs ({cfg.data.train}) of the people to unlearn"
    mode = {s: (cfg.scenario.pretrained.mode or u.mode) if s == "pretrained" else u.mode for s in cfg.scenarios}
    budget = (f"{u.epochs} epoch(s) over each request's forget set (sustainability: over its own fold)"
              if u.budget == "epochs" else f"{u.steps} steps per request, every request")
    return {
        "unlearning_data": data,
        "sample_format": fmt + (" + EOS" if u.eos else " (no EOS)"),
        "loss_tokens": ("answer tokens" + (" + EOS" if u.eos else "") if u.mask == "answer"
                        else "every text token after BOS (MLLMU-Bench)") + "; never image tokens or padding",
        "update_mode": mode,
        "budget": budget,
        "mcq": {"scoring": ctx.scoring, "demo_people": {"fictional sets": cfg.eval.demo_people, "celebrities": 0},
                "demo_person": "drawn per evaluated set from its own IDs (seed eval.demo_seed)"},
        "mmbench": {"scoring": ctx.scoring, "image": cfg.eval.mmbench_image,
                    "max_new_tokens": cfg.eval.mmbench_max_new_tokens, "subset_groups": cfg.eval.mmbench_groups},
        "device": ctx.device,
        "learned_before": "a D_unlearn question is known when request 0 answered its MCQ correctly (split "
                          "unlearn_known); the report flags a scenario x seed below 80 % known",
        "oracle": {"checkpoint": cfg.scenario.finetuned.oracle, "scenario": "finetuned",
                   "forget_quality": "KS p-value between the cell's and the oracle's per-question log(mean wrong-"
                                     "option probability / correct-option probability), D_unlearn, option "
                                     "log-likelihood sums (likelihood scoring)"} if cfg.scenario.finetuned.oracle
        else None,
        "membership_inference": {"pairs": f"{cfg.data.train} QA pairs (fictional), MCQs as QA (celebrities); answer "
                                           "tokens", "attacks": "loss, zlib, Min-K% and Min-K%++ (k = 0.4)",
                                 "nonmembers": f"Full_Set after the first {cfg.scenario.finetuned.people} by ID, at "
                                               f"most {cfg.eval.mia_nonmembers}", "privleak": "Min-K% vs the oracle"}
        if cfg.eval.mia else None,
        **curves_record(cfg, ctx),
    }


def curves_record(cfg: RunConfig, ctx: Context) -> dict:
    """Curves, matched forgetting and the sweep, spelled out for the manifest's protocol record."""
    e, st = cfg.eval, cfg.unlearn.stop
    out = {"halves": {"seed": e.half_seed, "rule": "per person and form, questions ranked by sha256(f'{seed}:"
                      "{person_id}:{form}:{index}'); the first ceil(n/2) are the selection half, the rest held out"},
           "curves": {"every": e.every, "points": "step 0 (the evaluation before the request), every eval.every "
                      "steps, the budget (its full evaluation), the last step trained",
                      "mcq": "selection half of D_unlearn and D_retain", "mmbench_subset_groups":
                      len({it.group for it in ctx.curve_mmbench}), "mmbench_subset_seed": e.half_seed}
           if e.every else None}
    if st.rule != "none":
        out["matched_forgetting"] = {
            "rule": st.rule, "margin": st.margin, "max_steps": st.max_steps or "the budget",
            "scenarios": [s for s in cfg.scenarios if s in MATCHED_SCENARIOS],
            "sustainability": "fixed budget only (sequential requests have no single stop point)",
            "target": "never-learned reference accuracy on the selection half + margin (percentage points); stop "
                      "at the first checkpoint whose selection-half D_unlearn accuracy (both forms) is <= target",
            "reference": {"finetuned": "the fine-tuning base (the pretrained checkpoint) on D_unlearn's selection "
                                       "half, same evaluation settings",
                          "pretrained": curves.NEVER_KNOWN_RULE},
            "reported": "held-out half (unlearn_held, retain_held) and full MMBench at the matched step; "
                        "not reached within the cap -> status not_reached, accuracy empty",
        }
    if cfg.sweep:
        out["sweep"] = {"grid": cfg.sweep, "variants": variants(cfg),
                        "scenarios": [s for s in cfg.scenarios if s in MATCHED_SCENARIOS],
                        "rule": "per method, scenario, target and seed: among configurations reaching the target "
                                "on the selection half, the highest retain_sel accuracy at the matched point, "
                                "ties by the MMBench subset, then grid order; report its held-out rows"}
    return out


def read_manifest(out: Path) -> dict:
    """manifest.json of a run directory ({} when there is none yet); a damaged one is one line saying what to do."""
    path = out / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PulseError(f"{path}: damaged (not valid JSON: {e}); delete it and rerun the same command — it is "
                         f"written anew from the config, and every cell file is still checked against its own "
                         f"fingerprint (the manifest's history of amendments and durations is lost)") from None
    if not isinstance(manifest, dict):
        raise PulseError(f"{path}: damaged (not a JSON object); delete it and rerun the same command")
    return manifest


def update_manifest(out: Path, change) -> None:
    """Read manifest.json, apply `change(manifest)` in place, write it back — under the manifest's claim, so
    processes sharing the run directory never lose each other's entries."""
    with claims.claim(out / "manifest.lock"):
        manifest = read_manifest(out)
        change(manifest)
        atomic_write_json(out / MANIFEST, manifest)


def tee(log, path: Path):
    """Log to the console (tqdm-safe) and append to the run directory's run.log."""
    def say(msg: str) -> None:
        if log is print:
            progress.write(msg)
        else:
            log(msg)
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")
    return say
