"""`pulse run`: the PULSE protocol as one resumable, append-only run directory.

Reads top to bottom: resolve data and models -> manifest -> for every seed and scenario: evaluate the model before
unlearning (request 0), then for every method × target run the requests, evaluating after each -> results.csv.

Run directory:
    manifest.json                 resolved config, seeds, versions, git commit, selection, splits, folds
    selection.json                pre-trained scenario: every celebrity's base accuracy and the chosen ones
    cells/<scenario>/request0__seed<S>.json                    evaluation before unlearning
    cells/<scenario>/<method>__<target>__seed<S>/request<R>.json   evaluation after request R (+ losses)
    cells/<scenario>/<method>__<target>__seed<S>/request<R>.adapter/   what request R changed (safetensors)
    results.csv                   tidy table rebuilt from the cells after each one
Every file is written atomically. A rerun skips every completed evaluation; a sequence resumes from its last
completed request by re-applying the saved adapters — the same arithmetic as the uninterrupted run, so the same
results.csv. Adapters are deleted at the end unless `save_adapters` is set.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .. import __version__
from ..config import RunConfig, to_dict
from ..data.mllmu import read_people, read_qa_pairs
from ..data.mmbench import read_mmbench
from ..errors import PulseError
from ..eval.mcq import evaluate_mcq, summarise
from ..eval.mmbench import evaluate_mmbench, subset_groups
from ..fsutil import atomic_write_json, atomic_write_text
from ..models.batches import Encoder
from ..models.load import default_scoring, load_model, resolve_device, resolve_dtype
from ..models.templates import MLLMU
from ..unlearn.loop import apply_saved, unlearn_request
from .scenarios import make_folds, mcq_samples, pair_samples, select_known, split_people

COLUMNS = ["scenario", "method", "target", "seed", "request", "split", "modality", "accuracy", "relative",
           "status", "n"]


class Context:
    """Everything a run needs, resolved once: config, data, model paths, output folder."""

    def __init__(self, cfg: RunConfig, out: Path, log):
        self.cfg, self.out, self.log = cfg, out, log
        if cfg.uses_mini:
            from ..mini.cache import ensure_mini
            world = ensure_mini(cfg.mini, log=log)
            mllmu, mmbench_tsv = world / "mllmu", world / "mmbench.tsv"
            self.models = {"pretrained": world / "models" / "pretrained", "finetuned": world / "models" / "finetuned"}
            self.world = world
        else:
            mllmu, mmbench_tsv = Path(cfg.data.mllmu).expanduser(), Path(cfg.data.mmbench).expanduser()
            self.models = {"pretrained": cfg.model.pretrained, "finetuned": cfg.model.finetuned}
            self.world = None
        ft = cfg.scenario.finetuned
        fictional = read_people(mllmu, cfg.data.fictional)
        if len(fictional) < ft.people:
            raise PulseError(f"{mllmu}/{cfg.data.fictional}: {len(fictional)} people, "
                             f"scenario.finetuned.people asks for {ft.people}")
        self.fictional = sorted(fictional, key=lambda p: p.id)[: ft.people]
        needs = set(cfg.scenarios)
        self.celebrities = read_people(mllmu, cfg.data.celebrities) if "pretrained" in needs else []
        fictional_scenarios = needs & {"finetuned", "sustainability"}
        self.train_pairs = read_qa_pairs(mllmu, cfg.data.train) \
            if fictional_scenarios and cfg.unlearn.data == "ft_data" else []
        items = read_mmbench(mmbench_tsv)
        self.mmbench = subset_groups(items, cfg.eval.mmbench_groups, seed=0) if cfg.eval.mmbench_groups else items
        self.paths = {"mllmu": str(mllmu), "mmbench": str(mmbench_tsv)}
        self.scoring = cfg.eval.scoring or default_scoring(self.models["finetuned"])
        device = resolve_device(cfg.model.device)
        self.device = {"device": str(device), "dtype": str(resolve_dtype(cfg.model.dtype, device)).split(".")[-1]}

    def model(self, phase: str):
        """A fresh copy of the phase's checkpoint from disk (every cell starts from the saved weights)."""
        m = self.cfg.model
        lm = load_model(self.models[phase], dtype=m.dtype, device=m.device, template=m.template,
                        trust_remote_code=m.trust_remote_code)
        return lm, Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype,
                           eos=self.cfg.unlearn.eos)

    def evaluate(self, lm, enc, sets: dict[str, tuple[list, int]]) -> tuple[dict, dict]:
        """MCQ on each evaluated set {name: (people, demo people)} separately — as MLLMU-Bench's eval.py, one ID
        list per call, so each set draws its own demo people (seeded by eval.demo_seed) from its own IDs — merged
        into one predictions list (rows carry person_id); demo IDs and counts recorded per set. MMBench once."""
        e = self.cfg.eval
        generate = (e.scoring or lm.scoring) == "generate"
        preds, demo_ids, demo_people = [], {}, {}
        for name, (people, n_demo) in sets.items():
            res = evaluate_mcq(lm, people, scoring=e.scoring, enc=enc, demo_people=n_demo, demo_seed=e.demo_seed,
                               max_new_tokens=e.max_new_tokens, batch_size=e.batch_size)
            preds += res.predictions
            demo_ids[name], demo_people[name] = res.demo_ids, n_demo if generate else 0
        mcq = {"predictions": preds, "demo_ids": demo_ids, "demo_people": demo_people}
        mmb = evaluate_mmbench(lm, self.mmbench, scoring=e.scoring, enc=enc, batch_size=e.batch_size,
                               max_new_tokens=e.mmbench_max_new_tokens, image=e.mmbench_image)
        return mcq, {k: mmb[k] for k in ("circular", "vanilla", "vanilla_all_rows", "z_share", "groups", "rows",
                                         "per_category", "scoring")}


def _protocol_record(cfg: RunConfig, ctx: Context) -> dict:
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
    }


def _rows(meta: dict, splits: dict[str, list[str]], mcq: dict, mmb: dict, ref: dict | None, status: str) -> list[dict]:
    """Tidy rows of one evaluation; `relative` against the request-0 evaluation on the same people."""
    rows = []
    for split, ids in splits.items():
        now = summarise([p for p in mcq["predictions"] if p["person_id"] in set(ids)])
        before = summarise([p for p in ref["mcq"]["predictions"] if p["person_id"] in set(ids)]) if ref else now
        for modality in ("image", "text", "all"):
            if modality == "all":
                preds = now.predictions
                acc = 100.0 * sum(p["correct"] for p in preds) / len(preds) if preds else float("nan")
                acc0 = 100.0 * sum(p["correct"] for p in before.predictions) / len(before.predictions) \
                    if before.predictions else float("nan")
                n = len(preds)
            else:
                acc, acc0, n = now.accuracy[modality], before.accuracy[modality], now.n[modality]
            rows.append({**meta, "split": split, "modality": modality, "accuracy": round(acc, 4),
                         "relative": _relative(acc, acc0), "status": status, "n": n})
    # MMBench: "mmbench" = CircularEval, "mmbench_vanilla" = rotation-0 rows only; n = question groups for both
    for split, key in (("mmbench", "circular"), ("mmbench_vanilla", "vanilla")):
        acc0 = ref["mmbench"][key] if ref else mmb[key]
        rows.append({**meta, "split": split, "modality": "all", "accuracy": round(mmb[key], 4),
                     "relative": _relative(mmb[key], acc0), "status": status, "n": mmb["groups"]})
    return rows


def _relative(acc: float, acc0: float):
    return round(100.0 * acc / acc0, 4) if acc0 and acc0 == acc0 else None


def _splits(scenario: str, unlearn, retain, folds, request: int) -> dict[str, list[str]]:
    ids = lambda ps: [p.id for p in ps]  # noqa: E731
    splits = {"unlearn": ids(unlearn), "retain": ids(retain)}
    if scenario == "sustainability":
        if request >= 1:
            splits["fold_current"] = ids(folds[request - 1])
            splits["folds_done"] = [i for f in folds[:request] for i in ids(f)]
        if request < len(folds):
            splits["folds_pending"] = [i for f in folds[request:] for i in ids(f)]
    return splits


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    import peft
    import torch
    import transformers
    return {"pulse": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version(), "torch_threads": torch.get_num_threads()}


def run(cfg: RunConfig, out: str | Path, log=print) -> Path:
    """Run (or resume) the protocol into `out`. Returns the run directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = _tee(log, out / "run.log")
    manifest_path = out / "manifest.json"
    resolved = to_dict(cfg)
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("config") != resolved:
            raise PulseError(f"{out}: holds a run with a different config; resume with the same config or use "
                             f"a new --out")
        manifest = old
        log(f"resuming run in {out}")
    else:
        manifest = {"config": resolved, "seeds": cfg.seeds, "versions": _versions(), "git_commit": _git_commit(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "reference": "the model before each request (a fresh LoRA adapter per request, merged after it)"}
    t0 = time.time()
    ctx = Context(cfg, out, log)
    manifest.update({"data": ctx.paths, "models": {k: str(v) for k, v in ctx.models.items()},
                     "mmbench_scoring": ctx.scoring, "mmbench_subset_groups": cfg.eval.mmbench_groups,
                     "protocol": _protocol_record(cfg, ctx)})
    if ctx.world is not None:
        manifest["mini_world"] = {"path": str(ctx.world),
                                  "build": json.loads((ctx.world / "build.json").read_text())["accuracy"]}
    atomic_write_json(manifest_path, manifest)

    plan = _plan(cfg)
    selection = _selection(ctx) if "pretrained" in cfg.scenarios else None
    if selection:
        manifest["selected_celebrities"] = [{"id": i, "accuracy": selection["accuracy"][i]}
                                            for i in selection["selected"]]
    manifest.setdefault("splits", {})
    manifest.setdefault("folds", {})
    bar = tqdm(total=sum(len(v) for v in plan.values()) * len(cfg.seeds), desc="PULSE cells", leave=True)
    for seed in cfg.seeds:
        for scenario in cfg.scenarios:
            unlearn, retain, folds, phase, forget_of = _scenario_sets(ctx, scenario, seed, selection)
            manifest["splits"][f"{scenario}/seed{seed}"] = {"unlearn": [p.id for p in unlearn],
                                                            "retain": [p.id for p in retain]}
            if folds:
                manifest["folds"][f"seed{seed}"] = [[p.id for p in f] for f in folds]
            atomic_write_json(manifest_path, manifest)
            ref = _request0(ctx, scenario, seed, phase, unlearn, retain, folds)
            for method, target in plan[scenario]:
                _cell(ctx, scenario, method, target, seed, phase, unlearn, retain, folds, forget_of, ref)
                log(f"done: {scenario} {method} {target} seed {seed}")
                bar.update(1)
                write_results(out)
    bar.close()
    if not cfg.save_adapters:
        for folder in out.glob("cells/*/*/request*.adapter"):
            shutil.rmtree(folder)
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    manifest["duration_s"] = round(manifest.get("duration_s", 0) + time.time() - t0, 1)
    atomic_write_json(manifest_path, manifest)
    write_results(out)
    log(f"finished in {manifest['duration_s']} s")
    return out


def _tee(log, path: Path):
    """Log to the console (tqdm-safe) and append to the run directory's run.log."""
    def say(msg: str) -> None:
        if log is print:
            tqdm.write(msg)
        else:
            log(msg)
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")
    return say


def _plan(cfg: RunConfig) -> dict[str, list[tuple[str, str]]]:
    """(method, target) pairs per scenario; the fine-tuned scenario also holds Table 3's extra targets."""
    base = [(m, t) for t in cfg.targets for m in cfg.methods]
    extra = [(m, t) for t in cfg.table3_targets for m in cfg.table3_methods if (m, t) not in base]
    return {s: base + (extra if s == "finetuned" else []) for s in cfg.scenarios}


def _selection(ctx: Context) -> dict:
    """Pre-trained scenario: the base model's accuracy on every celebrity, and the best-known ones."""
    path = ctx.out / "selection.json"
    if path.is_file():
        return json.loads(path.read_text())
    pt = ctx.cfg.scenario.pretrained
    lm, enc = ctx.model("pretrained")
    ctx.log(f"selecting celebrities: evaluating the base model on {len(ctx.celebrities)}")
    e = ctx.cfg.eval
    res = evaluate_mcq(lm, ctx.celebrities, scoring=e.scoring, enc=enc, demo_people=0,
                       max_new_tokens=e.max_new_tokens, batch_size=e.batch_size)
    accuracy = {}
    for p in ctx.celebrities:
        preds = [q for q in res.predictions if q["person_id"] == p.id]
        accuracy[p.id] = round(100.0 * sum(q["correct"] for q in preds) / len(preds), 2) if preds else 0.0
    chosen = select_known(ctx.celebrities, accuracy, pt.select, pt.min_accuracy)
    sel = {"rule": f"top {pt.select} by base accuracy (both forms), ties by ID, min {pt.min_accuracy}%",
           "accuracy": accuracy, "selected": [p.id for p in chosen],
           "demo_people": 0}  # celebrities zero-shot, as MLLMU-Bench's Retain_Set
    atomic_write_json(path, sel)
    return sel


def _scenario_sets(ctx: Context, scenario: str, seed: int, selection):
    """(unlearn people, retain people, folds, model phase, forget-sample builder) for one scenario and seed."""
    cfg = ctx.cfg
    fmt = (lambda tpl: MLLMU) if cfg.unlearn.format == "mllmu" else (lambda tpl: tpl)
    if scenario == "pretrained":
        people = [p for p in ctx.celebrities if p.id in set(selection["selected"])]
        unlearn, retain = split_people(people, cfg.scenario.pretrained.unlearn, seed, "pretrained")
        return unlearn, retain, None, "pretrained", lambda ps, tpl: mcq_samples(ps, fmt(tpl))
    unlearn, retain = split_people(ctx.fictional, cfg.scenario.finetuned.unlearn, seed, "finetuned")
    folds = make_folds(unlearn, cfg.scenario.sustainability.folds, seed) if scenario == "sustainability" else None
    if cfg.unlearn.data == "ft_data":
        return unlearn, retain, folds, "finetuned", lambda ps, tpl: pair_samples(ctx.train_pairs, ps, fmt(tpl))
    return unlearn, retain, folds, "finetuned", lambda ps, tpl: mcq_samples(ps, fmt(tpl))


def _eval_sets(ctx, scenario: str, unlearn, retain) -> dict[str, tuple[list, int]]:
    """The evaluated sets with their few-shot demo people: the pre-trained scenario's celebrities zero-shot (as
    MLLMU-Bench evaluates Retain_Set, and as the selection does), the fictional sets eval.demo_people each."""
    n = 0 if scenario == "pretrained" else ctx.cfg.eval.demo_people
    return {"unlearn": (unlearn, n), "retain": (retain, n)}


def _request0(ctx, scenario, seed, phase, unlearn, retain, folds) -> dict:
    path = ctx.out / "cells" / scenario / f"request0__seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    shared = ctx.out / "cells" / "finetuned" / f"request0__seed{seed}.json"
    if scenario == "sustainability" and shared.is_file():  # same model, same people: reuse, do not re-evaluate
        done = json.loads(shared.read_text())
        mcq, mmb = done["mcq"], done["mmbench"]
    else:
        lm, enc = ctx.model(phase)
        mcq, mmb = ctx.evaluate(lm, enc, _eval_sets(ctx, scenario, unlearn, retain))
    cell = {"mcq": mcq, "mmbench": mmb, "splits": _splits(scenario, unlearn, retain, folds, 0)}
    atomic_write_json(path, cell)
    return cell


def _cell(ctx, scenario, method, target, seed, phase, unlearn, retain, folds, forget_of, ref) -> None:
    """All requests of one scenario × method × target × seed, resuming after the last completed one."""
    folder = ctx.out / "cells" / scenario / f"{method}__{target}__seed{seed}"
    requests = folds or [unlearn]
    done = [r for r in range(1, len(requests) + 1) if (folder / f"request{r}.json").is_file()]
    last = max(done, default=0)
    if last == len(requests):
        return
    lm, enc = ctx.model(phase)
    model = lm.model
    for r in range(1, last + 1):  # resume: rebuild the model after request `last`
        model = apply_saved(model, folder / f"request{r}.adapter")
    ucfg = ctx.cfg.unlearn  # the recipe itself; the pre-trained scenario may set its own mode
    if scenario == "pretrained" and ctx.cfg.scenario.pretrained.mode:
        ucfg = replace(ucfg, mode=ctx.cfg.scenario.pretrained.mode)
    retain_samples = forget_of(retain, lm.template)
    for r in range(last + 1, len(requests) + 1):
        forget_samples = forget_of(requests[r - 1], lm.template)
        tmp = folder / f".request{r}.adapter.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        request_seed = _seed(seed, scenario, method, target, r)
        model, result = unlearn_request(model, enc, method, target, forget_samples, retain_samples, ucfg,
                                        seed=request_seed, save_to=tmp,
                                        desc=f"{scenario} {method} {target} seed {seed} request {r}")
        final = folder / f"request{r}.adapter"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        lm.model = model
        mcq, mmb = ctx.evaluate(lm, enc, _eval_sets(ctx, scenario, unlearn, retain))
        meta = {"scenario": scenario, "method": method, "target": target, "seed": seed, "request": r}
        cell = {"meta": meta, "status": result.status, "losses": result.losses, "training": result.info,
                "mcq": mcq, "mmbench": mmb, "splits": _splits(scenario, unlearn, retain, folds, r),
                "request_seed": request_seed}
        atomic_write_json(folder / f"request{r}.json", cell)


def _seed(*parts) -> int:
    """A stable 31-bit seed from the parts (Python's hash() is salted per process)."""
    import hashlib
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) % 2**31


def write_results(out: Path) -> pd.DataFrame:
    """Rebuild results.csv from every completed cell, in a fixed order (so resumed runs give the same file)."""
    manifest = json.loads((out / "manifest.json").read_text())
    cfg = manifest["config"]
    plan = _plan(_cfg_from_dict(cfg))
    rows = []
    for seed in cfg["seeds"]:
        for scenario in cfg["scenarios"]:
            p0 = out / "cells" / scenario / f"request0__seed{seed}.json"
            if not p0.is_file():
                continue
            ref = json.loads(p0.read_text())
            for method, target in plan[scenario]:
                meta0 = {"scenario": scenario, "method": method, "target": target, "seed": seed, "request": 0}
                rows += _rows(meta0, ref["splits"], ref["mcq"], ref["mmbench"], None, "ok")
                folder = out / "cells" / scenario / f"{method}__{target}__seed{seed}"
                for path in sorted(folder.glob("request*.json"), key=lambda p: int(p.stem[7:])):
                    c = json.loads(path.read_text())
                    rows += _rows(c["meta"], c["splits"], c["mcq"], c["mmbench"], ref, c["status"])
    df = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    return df


def _cfg_from_dict(d: dict) -> RunConfig:
    from ..config import _build
    return _build(RunConfig, d, "manifest.json")
