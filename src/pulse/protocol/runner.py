"""`pulse run`: the PULSE protocol as one resumable, append-only run directory.

Reads top to bottom: resolve data and models -> manifest -> for every cell (seed × scenario × method × target, in
the plan's order): the scenario's shared files (request 0: the model before unlearning; the never-learned reference),
then the cell's requests, evaluating after each -> results.csv. Cells are claimed (protocol/claims.py), so any
number of processes can share one run directory (launchers: pulse/launch.py).

Run directory:
    manifest.json                 resolved config, seeds, versions, git commit, selection, splits, folds
    selection.json                pre-trained scenario: every celebrity's base accuracy and the chosen ones
    cells/<scenario>/request0__seed<S>.json                    evaluation before unlearning
    cells/<scenario>/<method>__<target>__seed<S>/request<R>.json   evaluation after request R (+ losses)
    cells/<scenario>/<method>__<target>__seed<S>/request<R>.adapter/   what request R changed (safetensors)
    cells/<scenario>/<method>__<target>__seed<S>/.request<R>.progress/ in-request checkpoints (while it runs)
    cells/<scenario>/reference__seed<S>.json                   never-learned reference (matched forgetting)
    cells/<scenario>/sweep__seed<S>.json                       equal-search-budget winners
    results.csv                   tidy table rebuilt from the cells after each one
    **/*.lock                     claims of cells and shared files being computed (removed when done)
Every file is written atomically. A rerun skips every completed evaluation; a sequence resumes from its last
completed request by re-applying the saved adapters — the same arithmetic as the uninterrupted run, so the same
results.csv. Every cell file, selection.json and in-request checkpoint carries a fingerprint of what made it (the
config parts that change it, checkpoint and data identity, versions: protocol/fingerprint.py); before a rerun
computes anything, a reused file that the current invocation would not have made is refused in one line.
Adapters are deleted at the end unless `save_adapters` is set. A damaged stored file is one line naming it and what
to delete (protocol/stored.py); deleting it is enough — where adapters are gone the requests before it are
retrained and checked against their files (`_cell`). A diverged request has empty accuracies and ends its cell.

Inside a request (issue 8 §1): every `eval.every` optimizer steps, and at step 0 and the end, a cheap evaluation —
the selection half of D_unlearn's and D_retain's questions (protocol/halves.py) and a seeded MMBench subset —
gives the trade-off curve. Step 0 is read from the evaluation before the request and the budget step from the
request's full evaluation, so neither is evaluated twice. With `unlearn.stop` (single-request scenarios), the first
checkpoint whose selection-half D_unlearn accuracy is <= the never-learned reference + margin gets a full
evaluation (held-out half + full MMBench; its selection half and subset are the checkpoint's), recorded as the
matched point; training goes on to the budget (fixed-budget rows) and, if the target is still unmet, up to
`unlearn.stop.max_steps` — one trajectory. Each evaluation is saved with a checkpoint (LoRA, optimizer, scheduler,
RNG: loop.Checkpoints), so a killed request resumes from its last checkpoint and writes the same files.
`sweep` adds, per method, one cell per grid configuration (method column `<method>@<config>`); the winner per
scenario × target × seed is recorded in the manifest and in sweep__seed<S>.json.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from .. import __version__, progress
from ..config import RunConfig, to_dict
from ..data.mllmu import read_people, read_qa_pairs
from ..data.mmbench import read_mmbench, require_answers
from ..data.records import FORMS
from ..errors import PulseError
from ..eval.mcq import evaluate_mcq, summarise
from ..eval.mmbench import circular_eval, evaluate_mmbench, subset_groups
from ..fsutil import atomic_write_json, atomic_write_text
from ..models.batches import Encoder
from ..models.load import default_scoring, load_model, resolve_device, resolve_dtype
from ..models.templates import MLLMU
from ..unlearn.loop import Checkpoints, finish, prepare, steps_for, unlearn_request
from ..unlearn.sharded import group_request
from . import claims
from . import curves as C
from . import fingerprint as F
from . import stored as S
from .probes import cell_rows as probe_cell_rows, control_rows as probe_control_rows, run_probes
from .scenarios import make_folds, mcq_samples, pair_samples, select_known, split_people

COLUMNS = ["scenario", "method", "target", "seed", "request", "split", "modality", "accuracy", "relative",
           "status", "n", "probe", "step", "at"]
MATCHED_SCENARIOS = ("finetuned", "pretrained")  # single-request scenarios; sustainability stays fixed-budget
MCQ_SUMMARY = ("circular", "vanilla", "vanilla_all_rows", "z_share", "groups", "rows", "per_category")


class Context:
    """Everything a run needs, resolved once: config, data, model paths, output folder."""

    def __init__(self, cfg: RunConfig, out: Path, log):
        self.cfg, self.out, self.log = cfg, out, log
        self.shared = {}  # (scenario, seed) -> the cells' shared inputs (runner._scenario)
        self.encoders = {}  # phase -> Encoder (`model`)
        self.group = None  # process 0 of a process group: its accelerator (requests run sharded, unlearn/sharded.py)
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
        require_answers(items, mmbench_tsv)
        self.mmbench = subset_groups(items, cfg.eval.mmbench_groups, seed=0) if cfg.eval.mmbench_groups else items
        self.curve_mmbench = subset_groups(self.mmbench, cfg.eval.curve_mmbench_groups, seed=cfg.eval.half_seed)
        self.paths = {"mllmu": str(mllmu), "mmbench": str(mmbench_tsv)}
        self.scoring = cfg.eval.scoring or default_scoring(self.models["finetuned"])
        device = resolve_device(cfg.model.device)
        self.device = {"device": str(device), "dtype": str(resolve_dtype(cfg.model.dtype, device)).split(".")[-1]}
        self.identity = F.run_identity(cfg, self.models, mllmu, mmbench_tsv, self.device, self.scoring, _versions(),
                                       _git_commit())  # fingerprints (protocol/fingerprint.py); inputs hashed once

    def model(self, phase: str):
        """A fresh copy of the phase's checkpoint from disk (every cell starts from the saved weights), and the
        phase's encoder: one per process, so its caches (token ids, pixel values) serve every cell."""
        m = self.cfg.model
        lm = load_model(self.models[phase], dtype=m.dtype, device=m.device, template=m.template,
                        trust_remote_code=m.trust_remote_code)
        if phase not in self.encoders:
            self.encoders[phase] = Encoder(lm.processor, device=lm.device, dtype=next(lm.model.parameters()).dtype,
                                           eos=self.cfg.unlearn.eos)
        return lm, self.encoders[phase]

    def evaluate(self, lm, enc, sets: dict[str, tuple[list, int]]) -> tuple[dict, dict]:
        """MCQ on each evaluated set (`mcq`), MMBench once; the MMBench record keeps every row's letter in row
        order ("letters"), from which subsets (curve points) are scored without another pass."""
        mcq = Context.mcq(self, lm, enc, sets)
        mmb = Context.mmbench_eval(self, lm, enc, self.mmbench)
        return mcq, {**{k: mmb[k] for k in MCQ_SUMMARY + ("scoring",)}, "letters": mmb["letters"]}

    def mcq(self, lm, enc, sets: dict[str, tuple[list, int]], questions: set | None = None) -> dict:
        """MCQ on each evaluated set {name: (people, demo people)} separately — as MLLMU-Bench's eval.py, one ID
        list per call, so each set draws its own demo people (seeded by eval.demo_seed) from its own IDs — merged
        into one predictions list (rows carry person_id); demo IDs and counts recorded per set. `questions`: score
        only these (person_id, form, index) keys (one half)."""
        e = self.cfg.eval
        generate = (e.scoring or lm.scoring) == "generate"
        preds, demo_ids, demo_people = [], {}, {}
        for name, (people, n_demo) in sets.items():
            res = evaluate_mcq(lm, people, scoring=e.scoring, enc=enc, demo_people=n_demo, demo_seed=e.demo_seed,
                               max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, questions=questions)
            preds += res.predictions
            demo_ids[name], demo_people[name] = res.demo_ids, n_demo if generate else 0
        return {"predictions": preds, "demo_ids": demo_ids, "demo_people": demo_people}

    def mmbench_eval(self, lm, enc, items) -> dict:
        """`evaluate_mmbench` on `items` plus "letters": the extracted letter of every row, in row order."""
        e = self.cfg.eval
        mmb = evaluate_mmbench(lm, items, scoring=e.scoring, enc=enc, batch_size=e.batch_size,
                               max_new_tokens=e.mmbench_max_new_tokens, image=e.mmbench_image)
        mmb["letters"] = "".join(r["prediction"] for r in mmb.get("records") or [])
        return mmb


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
        **_issue8_record(cfg, ctx),
    }


def _issue8_record(cfg: RunConfig, ctx: Context) -> dict:
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
                          "pretrained": C.NEVER_KNOWN_RULE},
            "reported": "held-out half (unlearn_held, retain_held) and full MMBench at the matched step; "
                        "not reached within the cap -> status not_reached, accuracy empty",
        }
    if cfg.sweep:
        out["sweep"] = {"grid": cfg.sweep, "variants": {name: v for name, v in _variants(cfg).items()},
                        "scenarios": [s for s in cfg.scenarios if s in MATCHED_SCENARIOS],
                        "rule": "per method, scenario, target and seed: among configurations reaching the target "
                                "on the selection half, the highest retain_sel accuracy at the matched point, "
                                "ties by the MMBench subset, then grid order; report its held-out rows"}
    return out


def _mcq_rows(meta: dict, split: str, now: list[dict], before: list[dict] | None, status: str) -> list[dict]:
    """Rows image / text / all of one MCQ split; `relative` against `before` (the request-0 predictions)."""
    now_s = summarise(now)
    before_s = summarise(before) if before is not None else now_s
    rows = []
    for modality in ("image", "text", "all"):
        if modality == "all":
            acc, acc0, n = C.accuracy(now), C.accuracy(before_s.predictions), len(now)
        else:
            acc, acc0, n = now_s.accuracy[modality], before_s.accuracy[modality], now_s.n[modality]
        rows.append({**meta, "split": split, "modality": modality, "accuracy": round(acc, 4),
                     "relative": _relative(acc, acc0), "status": status, "n": n})
    return rows


def _half_filters(splits: dict[str, list[str]], halves: dict | None) -> dict[str, tuple[set, set | None]]:
    """split -> (person IDs, question keys or None): the people splits, then unlearn/retain × sel/held."""
    out = {split: (set(ids), None) for split, ids in splits.items()}
    if halves:
        for base in ("unlearn", "retain"):
            for half in ("sel", "held"):
                out[f"{base}_{half}"] = (set(splits[base]), set(halves[half]))
    return out


def _pick(preds: list[dict], ids: set, keys: set | None) -> list[dict]:
    return [p for p in preds if p["person_id"] in ids
            and (keys is None or C.key(p["person_id"], p["form"], p["index"]) in keys)]


def _rows(meta: dict, splits: dict[str, list[str]], mcq: dict, mmb: dict, ref: dict | None, status: str,
          halves: dict | None = None) -> list[dict]:
    """Tidy rows of one request-level evaluation (at budget); `relative` against the request-0 evaluation on the
    same people (and the same half of their questions). No evaluation (`mcq` None: a diverged request) -> the
    same rows with accuracy, relative and n empty."""
    meta = {"probe": "none", "step": None, "at": "budget", **meta}
    if mcq is None:
        empty = {"accuracy": float("nan"), "relative": None, "status": status, "n": None}
        return [{**meta, "split": split, "modality": modality, **empty} for split in _half_filters(splits, halves)
                for modality in ("image", "text", "all")] + \
            [{**meta, "split": split, "modality": "all", **empty} for split in ("mmbench", "mmbench_vanilla")]
    rows = []
    for split, (ids, keys) in _half_filters(splits, halves).items():
        before = _pick(ref["mcq"]["predictions"], ids, keys) if ref else None
        rows += _mcq_rows(meta, split, _pick(mcq["predictions"], ids, keys), before, status)
    # MMBench: "mmbench" = CircularEval, "mmbench_vanilla" = rotation-0 rows only; n = question groups for both
    for split, key in (("mmbench", "circular"), ("mmbench_vanilla", "vanilla")):
        acc0 = ref["mmbench"][key] if ref else mmb[key]
        rows.append({**meta, "split": split, "modality": "all", "accuracy": round(mmb[key], 4),
                     "relative": _relative(mmb[key], acc0), "status": status, "n": mmb["groups"]})
    return rows


def _not_run_rows(cell: dict) -> list[dict]:
    """A sequence that stopped at a diverged request: the budget rows of each request not run (`not_run`), status
    diverged, accuracy empty (their splits: the diverged request's, folds_pending only before the last request)."""
    rows = []
    for r in cell.get("not_run") or []:
        splits = {k: v for k, v in cell["splits"].items() if k != "folds_pending"}
        if r < cell["not_run"][-1] and "folds_pending" in cell["splits"]:
            splits["folds_pending"] = []
        rows += _rows({**cell["meta"], "request": r}, splits, None, None, None, "diverged", cell.get("halves"))
    return rows


def _curve_rows(meta: dict, cell: dict, ref: dict) -> list[dict]:
    """at=checkpoint rows: unlearn_sel, retain_sel (image/text/all), mmbench_sub, mmbench_sub_vanilla per point;
    relative to request 0 on the same questions / the same MMBench subset."""
    sel = cell["halves"]["sel"]
    keys = set(sel)
    rows = []
    for point in cell.get("curve") or []:
        m = {**meta, "probe": "none", "step": point["step"], "at": "checkpoint"}
        preds = C.decode(sel, point["sel"])
        for base in ("unlearn", "retain"):
            ids = set(cell["splits"][base])
            rows += _mcq_rows(m, f"{base}_sel", _pick(preds, ids, None), _pick(ref["mcq"]["predictions"], ids, keys),
                              "ok")
        for split, key in (("mmbench_sub", "circular"), ("mmbench_sub_vanilla", "vanilla")):
            acc = point["mmbench"][key]
            rows.append({**m, "split": split, "modality": "all", "accuracy": round(acc, 4),
                         "relative": _relative(acc, ref["mmbench_sub"][key]), "status": "ok",
                         "n": point["mmbench"]["groups"]})
    return rows


MATCHED_SPLITS = ("unlearn_held", "retain_held", "unlearn_sel", "retain_sel")


def _matched_rows(meta: dict, cell: dict, ref: dict) -> list[dict]:
    """at=matched rows: held-out and selection halves, full MMBench, at the matched step; a request that never
    reached the target gets the same rows with status not_reached (or diverged), accuracy and n empty, step = the
    cap (or the steps done before divergence)."""
    mt = cell.get("matched")
    if not mt:
        return []
    m = {**meta, "probe": "none", "step": mt["step"], "at": "matched"}
    if not mt["reached"]:
        empty = {"accuracy": float("nan"), "relative": None, "status": mt["status"], "n": None}
        return [{**m, "split": split, "modality": mod, **empty}
                for split in MATCHED_SPLITS for mod in ("image", "text", "all")] + \
               [{**m, "split": split, "modality": "all", **empty} for split in ("mmbench", "mmbench_vanilla")]
    halves = cell["halves"]
    preds = C.decode(halves["sel"], mt["sel"]) + C.decode(halves["held"], mt["held"])
    rows = []
    for split in MATCHED_SPLITS:
        base, half = split.split("_")
        ids, keys = set(cell["splits"][base]), set(halves[half])
        rows += _mcq_rows(m, split, _pick(preds, ids, keys), _pick(ref["mcq"]["predictions"], ids, keys), "ok")
    for split, key in (("mmbench", "circular"), ("mmbench_vanilla", "vanilla")):
        acc = mt["mmbench"][key]
        rows.append({**m, "split": split, "modality": "all", "accuracy": round(acc, 4),
                     "relative": _relative(acc, ref["mmbench"][key]), "status": "ok", "n": mt["mmbench"]["groups"]})
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
    """Installed versions, read from package metadata: importing peft costs seconds a launcher need not spend."""
    from importlib.metadata import version
    return {"pulse": __version__, "torch": torch.__version__, "transformers": version("transformers"),
            "peft": version("peft"), "python": platform.python_version(), "torch_threads": torch.get_num_threads()}


@dataclass(frozen=True)
class Cell:
    """The unit of work: one scenario × method × target × seed, with all its requests and probes. `run_cell` runs
    it into the run directory; launchers only decide where that happens."""
    scenario: str
    method: str
    target: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.scenario}/{self.method}__{self.target}__seed{self.seed}"


def cells(cfg: RunConfig) -> list[Cell]:
    """Every cell of the run, in the plan's order (seed, scenario, then method × target as `_plan`)."""
    plan = _plan(cfg)
    return [Cell(s, m, t, seed) for seed in cfg.seeds for s in cfg.scenarios for m, t in plan[s]]


def run(cfg: RunConfig, out: str | Path, log=print, *, only: list[int] | None = None, finish: bool = True,
        launcher: dict | None = None, started: tuple | None = None, group=None) -> Path:
    """Run (or resume) the protocol into `out`: every cell of the plan (or, for an array task, the cells `only`,
    by plan index), then — with `finish` — the run's own files (sweep winners, results.csv, end of manifest).

    Safe beside other processes on the same `out` (local workers, a job array, a second `pulse run`): a cell is
    claimed while worked on (protocol/claims.py; a dead worker's claim is taken over), a shared file (selection,
    request 0, the never-learned reference) is computed by one process while the others wait, the manifest is
    updated under its own claim, and results.csv is rebuilt from the cells — the same bytes as one process.
    `started`: what `start` returned, when the caller (a launcher) already ran it. `group`: process 0's
    accelerator in a process group (`pulse run` under accelerate launch / torchrun): requests run sharded."""
    out = Path(out)
    ctx, t0 = started or start(cfg, out, log, launcher)
    ctx.group = group
    plan = cells(cfg)
    todo = plan if only is None else [plan[i] for i in only]
    bar = progress.bar(total=len(todo), desc="PULSE cells", leave=True, unit="cell")
    waiting = []
    for cell in todo:  # first pass: every cell nobody else is working on
        if run_cell(ctx, cell, wait=False):
            bar.update(1)
        else:
            waiting.append(cell)
    for cell in waiting:  # then wait for the others' cells, taking over any whose worker died
        run_cell(ctx, cell, wait=True)
        bar.update(1)
    bar.close()
    if finish:
        finish_run(ctx, t0)
    return out


def start(cfg: RunConfig, out: Path, log, launcher: dict | None = None) -> tuple[Context, float]:
    """Check what is on disk, resolve data and models, write (or amend) manifest.json; (context, start time)."""
    out.mkdir(parents=True, exist_ok=True)
    log = _tee(log, out / "run.log")
    t0 = time.time()
    resolved = to_dict(cfg)
    S.check_files(F.plan_files(out, cfg, _plan(cfg)))  # a damaged stored file: one line, before anything loads
    ctx = Context(cfg, out, log)
    for warning in F.verify(ctx, _plan(cfg)):  # before anything is computed or written; refuses a mismatch
        log(warning)

    def begin(manifest: dict) -> None:
        if not manifest:
            manifest.update({"config": resolved, "seeds": cfg.seeds, "versions": _versions(),
                             "git_commit": _git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "reference": "the model before each request (a fresh LoRA adapter per request, "
                                          "merged after it)"})
        else:
            log(f"resuming run in {out}")
        changed = F.changed_keys(manifest.get("config") or {}, resolved)
        if changed:  # e.g. a method or seed added: the manifest describes the run as it is now
            manifest.setdefault("amended", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": changed})
            manifest.update(config=resolved, seeds=cfg.seeds)
            log(f"config changed since this run started ({', '.join(changed)}); the files reused match it")
        manifest.update({"data": ctx.paths, "models": {k: str(v) for k, v in ctx.models.items()},
                         "mmbench_scoring": ctx.scoring, "mmbench_subset_groups": cfg.eval.mmbench_groups,
                         "protocol": _protocol_record(cfg, ctx)})
        if launcher:
            manifest["launcher"] = launcher
        manifest.setdefault("workers", []).append({**claims.owner(), "device": ctx.device["device"],
                                                   "torch_threads": torch.get_num_threads()})
        if ctx.world is not None:
            manifest["mini_world"] = {"path": str(ctx.world),
                                      "build": json.loads((ctx.world / "build.json").read_text())["accuracy"]}
    update_manifest(out, begin)
    return ctx, t0


def update_manifest(out: Path, change) -> None:
    """Read manifest.json, apply `change(manifest)` in place, write it back — under the manifest's claim, so
    processes sharing the run directory never lose each other's entries."""
    path = out / "manifest.json"
    with claims.claim(out / "manifest.lock"):
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        change(manifest)
        atomic_write_json(path, manifest)


def run_cell(ctx: Context, cell: Cell, wait: bool = True) -> bool:
    """Run one cell into the run directory (its scenario's shared files first), resuming whatever is on disk.
    False when `wait` is False and another live process holds the cell's claim or one of its shared files' (the
    caller goes on to another cell meanwhile)."""
    shared = _scenario(ctx, cell.scenario, cell.seed, wait)
    if shared is None:
        return False
    folder = ctx.out / "cells" / cell.scenario / f"{cell.method}__{cell.target}__seed{cell.seed}"
    with claims.claim(folder.with_name(folder.name + ".lock"), wait=wait) as held:
        if not held:
            return False
        if _cell(ctx, cell.scenario, cell.method, cell.target, cell.seed, *shared):
            ctx.log(f"done: {cell.scenario} {cell.method} {cell.target} seed {cell.seed}")
            write_results(ctx.out)
    return True


def _scenario(ctx: Context, scenario: str, seed: int, wait: bool = True) -> tuple | None:
    """The shared inputs of a scenario × seed's cells — (phase, unlearn, retain, folds, forget_of, request-0
    record, matched-forgetting target) — computed once per run directory under claims, once per process in memory.
    None when `wait` is False and another live process is computing one of them."""
    memo = ctx.shared
    if (scenario, seed) in memo:
        return memo[(scenario, seed)]
    selection = None
    if scenario == "pretrained":
        with claims.claim(ctx.out / "selection.lock", wait) as held:
            if not held:
                return None
            selection = _selection(ctx)
    unlearn, retain, folds, phase, forget_of = _scenario_sets(ctx, scenario, seed, selection)
    base = ctx.out / "cells" / scenario
    first = []
    if scenario == "sustainability" and "finetuned" in ctx.cfg.scenarios:
        first.append(("finetuned", seed))  # its request 0 is this scenario's too: compute it there first
    if seed != ctx.cfg.seeds[0]:  # later seeds reuse the first seed's MMBench: make sure it is written
        first += [(s, ctx.cfg.seeds[0]) for s in ctx.cfg.scenarios if PHASE[s] == phase][:1]
    if any(_scenario(ctx, s, k, wait) is None for s, k in first):
        return None
    with claims.claim(base / f"request0__seed{seed}.lock", wait) as held:
        if not held:
            return None
        ref = _request0(ctx, scenario, seed, phase, unlearn, retain, folds)
    with claims.claim(base / f"reference__seed{seed}.lock", wait) as held:
        if not held:
            return None
        stop = _stop_target(ctx, scenario, seed, unlearn, retain, selection)

    def record(manifest: dict) -> None:
        if selection:
            manifest["selected_celebrities"] = [{"id": i, "accuracy": selection["accuracy"][i]}
                                                for i in selection["selected"]]
        manifest.setdefault("splits", {})[f"{scenario}/seed{seed}"] = {"unlearn": [p.id for p in unlearn],
                                                                      "retain": [p.id for p in retain]}
        if folds:
            manifest.setdefault("folds", {})[f"seed{seed}"] = [[p.id for p in f] for f in folds]
        if stop:
            manifest.setdefault("matched_targets", {})[f"{scenario}/seed{seed}"] = \
                {k: stop[k] for k in ("reference", "margin", "target", "n")}
    update_manifest(ctx.out, record)
    memo[(scenario, seed)] = (phase, unlearn, retain, folds, forget_of, ref, stop)
    return memo[(scenario, seed)]


def finish_run(ctx: Context, t0: float) -> None:
    """After every cell: sweep winners, adapters and stale checkpoints cleaned up, manifest closed, results.csv."""
    cfg, out = ctx.cfg, ctx.out
    sweeps = {f"{s}/seed{seed}": _sweep(ctx, s, seed) for seed in cfg.seeds for s in cfg.scenarios
              if cfg.sweep and s in MATCHED_SCENARIOS}
    if not cfg.save_adapters:
        for folder in out.glob("cells/*/*/request*.adapter"):
            shutil.rmtree(folder, ignore_errors=True)
    for folder in out.glob("cells/*/*/.request*.progress"):  # left by a request killed and never resumed
        shutil.rmtree(folder, ignore_errors=True)

    def close(manifest: dict) -> None:
        if sweeps:
            manifest.setdefault("sweep", {}).update(sweeps)
        manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        manifest["duration_s"] = round(manifest.get("duration_s", 0) + time.time() - t0, 1)
    update_manifest(out, close)
    write_results(out)
    ctx.log(f"finished in {round(time.time() - t0, 1)} s")


def _tee(log, path: Path):
    """Log to the console (tqdm-safe) and append to the run directory's run.log."""
    def say(msg: str) -> None:
        if log is print:
            progress.write(msg)
        else:
            log(msg)
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")
    return say


def _plan(cfg: RunConfig) -> dict[str, list[tuple[str, str]]]:
    """(method, target) pairs per scenario; the fine-tuned scenario also holds Table 3's extra targets; sweep
    variants (method `<method>@<config>`) follow in the single-request scenarios, for the run's targets."""
    base = [(m, t) for t in cfg.targets for m in cfg.methods]
    extra = [(m, t) for t in cfg.table3_targets for m in cfg.table3_methods if (m, t) not in base]
    variants = [(v, t) for t in cfg.targets for v in _variants(cfg)]
    return {s: base + (extra if s == "finetuned" else []) + (variants if s in MATCHED_SCENARIOS else [])
            for s in cfg.scenarios}


def _variants(cfg: RunConfig) -> dict[str, dict]:
    """The sweep's cells: `<method>@<k>=<v>+<k>=<v>` (grid keys in their declared order, values with %g) ->
    {"method", "lr", "params": the method's own overrides}; grids as the product of the declared lists."""
    import itertools

    out = {}
    for method, grid in cfg.sweep.items():
        names = list(grid)
        for values in itertools.product(*(grid[n] for n in names)):
            chosen = dict(zip(names, values))
            label = "+".join(f"{n}={format(v, 'g') if isinstance(v, float) else v}" for n, v in chosen.items())
            out[f"{method}@{label}"] = {"method": method, "lr": chosen.pop("lr", cfg.unlearn.lr), "params": chosen}
    return out


def _recipe(ctx: Context, scenario: str, method: str):
    """(registry method name, the recipe of this cell): the run's recipe, the pre-trained scenario's own mode, and
    a sweep variant's lr and method parameters."""
    cfg = ctx.cfg
    ucfg = cfg.unlearn  # the recipe itself; the pre-trained scenario may set its own mode
    if scenario == "pretrained" and cfg.scenario.pretrained.mode:
        ucfg = replace(ucfg, mode=cfg.scenario.pretrained.mode)
    if "@" not in method:
        return method, ucfg
    v = _variants(cfg)[method]
    own = {**(ucfg.params.get(v["method"]) or {}), **v["params"]}
    return v["method"], replace(ucfg, lr=v["lr"], params={**ucfg.params, v["method"]: own})


def _selection(ctx: Context) -> dict:
    """Pre-trained scenario: the base model's accuracy on every celebrity, and the best-known ones; "correct"
    keeps every answer ({id: {form: "1"/"0" per question index}}) for the never-known reference."""
    path = ctx.out / "selection.json"
    if path.is_file():
        return S.read(path)
    pt = ctx.cfg.scenario.pretrained
    lm, enc = ctx.model("pretrained")
    ctx.log(f"selecting celebrities: evaluating the base model on {len(ctx.celebrities)}")
    e = ctx.cfg.eval
    with progress.stage("celebrity selection"):
        res = evaluate_mcq(lm, ctx.celebrities, scoring=e.scoring, enc=enc, demo_people=0,
                           max_new_tokens=e.max_new_tokens, batch_size=e.batch_size)
    accuracy = {}
    for p in ctx.celebrities:
        preds = [q for q in res.predictions if q["person_id"] == p.id]
        accuracy[p.id] = round(100.0 * sum(q["correct"] for q in preds) / len(preds), 2) if preds else 0.0
    chosen = select_known(ctx.celebrities, accuracy, pt.select, pt.min_accuracy)
    correct = {p.id: {form: C.encode([C.key(p.id, form, m.index) for m in p.mcqs(form)], res.predictions)
                      for form in FORMS} for p in ctx.celebrities}
    sel = {"rule": f"top {pt.select} by base accuracy (both forms), ties by ID, min {pt.min_accuracy}%",
           "accuracy": accuracy, "selected": [p.id for p in chosen],
           "demo_people": 0,  # celebrities zero-shot, as MLLMU-Bench's Retain_Set
           "correct": correct}
    sel = F.stamped(ctx, path, sel)
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


PHASE = {"finetuned": "finetuned", "sustainability": "finetuned", "pretrained": "pretrained"}


def _request0(ctx, scenario, seed, phase, unlearn, retain, folds) -> dict:
    """The evaluation before unlearning. Shared, not repeated: sustainability takes the fine-tuned scenario's
    (same model, same people), and every seed after the first takes the first seed's MMBench (same model, same
    rows, same batches: the same numbers)."""
    path = ctx.out / "cells" / scenario / f"request0__seed{seed}.json"
    if path.is_file():
        return S.read(path)
    shared = ctx.out / "cells" / "finetuned" / f"request0__seed{seed}.json"
    if scenario == "sustainability" and shared.is_file():  # same model, same people: reuse, do not re-evaluate
        done = S.read(shared)
        mcq, mmb = done["mcq"], done["mmbench"]
    else:
        lm, enc = ctx.model(phase)
        sets = _eval_sets(ctx, scenario, unlearn, retain)
        mmb = _earlier_mmbench(ctx, phase, seed)
        with progress.stage(f"request 0 {scenario} seed {seed}"):
            if mmb is None:
                mcq, mmb = ctx.evaluate(lm, enc, sets)
            else:
                mcq = ctx.mcq(lm, enc, sets)
    cell = {"mcq": mcq, "mmbench": mmb, "splits": _splits(scenario, unlearn, retain, folds, 0),
            "halves": C.half_keys(unlearn + retain, ctx.cfg.eval.half_seed)}
    if ctx.cfg.eval.every:
        cell["mmbench_sub"] = _sub_point(ctx, mmb)
    cell = F.stamped(ctx, path, cell)
    atomic_write_json(path, cell)
    return cell


def _earlier_mmbench(ctx, phase: str, seed: int) -> dict | None:
    """The MMBench record of the first seed's request 0 on the same model, if written."""
    first = ctx.cfg.seeds[0]
    if seed == first:
        return None
    for scenario in ctx.cfg.scenarios:
        path = ctx.out / "cells" / scenario / f"request0__seed{first}.json"
        if PHASE[scenario] == phase and path.is_file():
            mmb = S.read(path)["mmbench"]
            if "letters" in mmb:
                return mmb
    return None


def _sub_point(ctx, mmb: dict) -> dict:
    """The MMBench-subset record of a full evaluation (its letters restricted to the curve subset)."""
    by_index = dict(zip((it.index for it in ctx.mmbench), mmb["letters"]))
    return C.mmbench_point(ctx.curve_mmbench, "".join(by_index[it.index] for it in ctx.curve_mmbench))


# --- matched forgetting: the never-learned reference ----------------------------------------------------------------

def _stop_target(ctx, scenario, seed, unlearn, retain, selection) -> dict | None:
    """{reference, margin, target, n, rule, ...} of a single-request scenario under unlearn.stop, cached as
    cells/<scenario>/reference__seed<S>.json; None when matched forgetting does not apply."""
    st = ctx.cfg.unlearn.stop
    if st.rule == "none" or scenario not in MATCHED_SCENARIOS:
        return None
    path = ctx.out / "cells" / scenario / f"reference__seed{seed}.json"
    if path.is_file():
        return S.read(path)
    half_seed = ctx.cfg.eval.half_seed
    if scenario == "finetuned":  # fine-tuned knowledge: the fine-tuning base never learned these people
        sel = C.half_keys(unlearn, half_seed)["sel"]
        lm, enc = ctx.model("pretrained")
        n_demo = _eval_sets(ctx, scenario, unlearn, retain)["unlearn"][1]
        with progress.stage(f"never-learned reference {scenario} seed {seed}"):
            mcq = ctx.mcq(lm, enc, {"unlearn": (unlearn, n_demo)}, questions={C.parse_key(k) for k in sel})
        ref = {"rule": "the pretrained checkpoint on D_unlearn's selection half", "model": "pretrained",
               "people": [p.id for p in unlearn], "questions": sel, "sel": C.encode(sel, mcq["predictions"]),
               "accuracy": C.accuracy(mcq["predictions"]), "n": len(mcq["predictions"])}
    else:  # pre-trained knowledge: celebrities the base model never knew
        taken = {p.id for p in unlearn + retain}
        candidates = sorted(pid for pid in selection["correct"] if pid not in taken)
        try:
            nk = C.never_known_reference(selection["correct"], candidates, len(unlearn), half_seed)
        except ValueError as e:
            raise PulseError(f"unlearn.stop: {e} (scenario.pretrained.unlearn = {len(unlearn)})") from None
        ref = {"rule": C.NEVER_KNOWN_RULE, "model": "pretrained", **nk}
    ref.update({"reference": ref.pop("accuracy"), "margin": st.margin})
    ref["target"] = ref["reference"] + st.margin
    ref = F.stamped(ctx, path, ref)
    atomic_write_json(path, ref)
    return ref


# --- one cell: its requests, each with its curve and matched point ---------------------------------------------------

def _cell(ctx, scenario, method, target, seed, phase, unlearn, retain, folds, forget_of, ref, stop=None) -> bool:
    """All requests of one scenario × method × target × seed, resuming at the first request without a file (and
    inside a request, from its last in-request checkpoint), then the probes.

    The model before request R is rebuilt from the saved adapters of requests 1..R-1; where some are gone (cleaned
    up at the end of a run, or deleted), from the last request they allow — request 0 at worst — by retraining.
    Every retrained request is compared with its stored file (fingerprint aside): kept when equal, rewritten and
    logged when not; every request after R is recomputed and compared the same way and probes.json is recomputed
    unless the last request's file was confirmed, so a cell never mixes two trajectories. A diverged request ends
    the cell: its rows say diverged with empty accuracy, later requests of a sequence are not run (their rows in
    results.csv: status diverged, accuracy empty), the cell gets no probes; a rerun leaves it as it is.
    True when something was computed."""
    cell = _CellRun(ctx, scenario, method, target, seed, phase, unlearn, retain, folds, forget_of, ref, stop)
    n = len(cell.requests)
    end = next((r for r in sorted(cell.stored) if cell.stored[r]["status"] == "diverged"), n)
    missing = [r for r in range(1, end + 1) if r not in cell.stored]
    if not missing and not cell.probes_due():
        return False  # nothing to do: every file is on disk
    model = None
    if missing:
        model = cell.model_after(missing[0] - 1)
        for r in range(missing[0], n + 1):
            if cell.ended:
                return True
            model = cell.compute(r, model)
    if not cell.ended and cell.probes_due():
        cell.probes(model)
    return True


class _CellRun:
    """One cell's state while `_cell` runs it: the stored request files ({R: content}, damaged -> PulseError),
    the model and evaluation sets, and whether the cell ended (a diverged request)."""

    def __init__(self, ctx, scenario, method, target, seed, phase, unlearn, retain, folds, forget_of, ref, stop):
        self.ctx, self.scenario, self.method, self.target, self.seed, self.phase = \
            ctx, scenario, method, target, seed, phase
        self.unlearn, self.retain, self.folds, self.forget_of, self.ref, self.stop = \
            unlearn, retain, folds, forget_of, ref, stop
        self.folder = ctx.out / "cells" / scenario / f"{method}__{target}__seed{seed}"
        self.requests = folds or [unlearn]
        self.stored = {r: S.read(self.folder / f"request{r}.json") for r in range(1, len(self.requests) + 1)
                       if (self.folder / f"request{r}.json").is_file()}
        self.label = f"{scenario} {method} {target} seed {seed}"
        self.lm = self.enc = None
        self.changed = self.ended = False  # a recomputed request differed from its file / the cell ended
        self.lora_at_budget = None  # the last request's LoRA weights at its budget, when it trained on past it

    def probes_due(self) -> bool:
        n = len(self.requests)
        return _probes_due(self.ctx, self.scenario, self.method, self.folder) and n in self.stored \
            and self.stored[n]["status"] == "ok"

    def _load(self):
        """A fresh model of the phase (the first call also sets up the evaluation model, encoder and sets)."""
        lm, enc = self.ctx.model(self.phase)
        if self.lm is None:
            self.lm, self.enc = lm, enc
            self.registered, self.ucfg = _recipe(self.ctx, self.scenario, self.method)
            self.retain_samples = self.forget_of(self.retain, lm.template)
            self.sets = _eval_sets(self.ctx, self.scenario, self.unlearn, self.retain)
        return lm.model

    def model_after(self, k: int):
        """The model after request k: saved adapters 1..p (p <= k, as far as they go), then requests p+1..k
        retrained and checked against their files (`compute`)."""
        model = self._load()
        p = 0
        while p < k and S.adapter_present(self.folder / f"request{p + 1}.adapter"):
            p += 1
        for r in range(1, p + 1):
            model = S.apply(model, self.folder / f"request{r}.adapter")
        if p < k:
            gone = f"request {k}" if p + 1 == k else f"requests {p + 1}-{k}"
            self.ctx.log(f"{self.label}: the saved adapter of {gone} is gone; retraining from request {p + 1} "
                         f"(retrained requests are checked against their stored files)")
        for r in range(p + 1, k + 1):
            model = self.compute(r, model)
            if self.ended:
                break
        return model

    def compute(self, r: int, model):
        """Train and evaluate request r on `model` (the model after request r-1); write request<R>.json unless the
        stored one is equal; returns the model after request r."""
        ctx, folder, scenario, method, target, seed, stop = \
            self.ctx, self.folder, self.scenario, self.method, self.target, self.seed, self.stop
        lm, enc, ucfg, n = self.lm, self.enc, self.ucfg, len(self.requests)
        forget_samples = self.forget_of(self.requests[r - 1], lm.template)
        before = self.ref if r == 1 else self.stored[r - 1]
        tmp = folder / f".request{r}.adapter.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        request_seed = _seed(seed, scenario, method.split("@")[0], target, r)  # a sweep's variants share it
        budget = steps_for(len(forget_samples), ucfg)
        cap = (ctx.cfg.unlearn.stop.max_steps or budget) if stop else budget
        track = _Track(ctx, lm, enc, self.sets, self.ref["halves"], before, budget, max(budget, cap), cap, stop,
                       keep_lora=ucfg.mode == "lora" and r == n and _probes_due(ctx, scenario, method, folder))
        ckpt_dir = folder / f".request{r}.progress"
        if self.changed:  # a checkpoint of the trajectory the stored files came from
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        if ctx.cfg.eval.every or stop:  # its in-request checkpoints are resumed only under the same fingerprint
            F.stamp_folder(ctx, folder / f".request{r}.progress")
        desc = f"{scenario} {method} {target} seed {seed} request {r}/{n}"
        if ctx.group is not None:  # every process of the group, sharded
            m = ctx.cfg.model
            before = {"checkpoint": str(ctx.models[self.phase]), "dtype": m.dtype, "device": m.device,
                      "template": m.template, "trust_remote_code": m.trust_remote_code, "eos": ctx.cfg.unlearn.eos,
                      "applied": [str(folder / f"request{q}.adapter") for q in range(1, r)]}
            model, result = group_request(model, before, self.registered, target, forget_samples,
                                          self.retain_samples, ucfg, request_seed, accelerator=ctx.group, save_to=tmp,
                                          desc=desc)
        else:
            model, result = unlearn_request(model, enc, self.registered, target, forget_samples,
                                            self.retain_samples, ucfg, seed=request_seed, save_to=tmp, desc=desc,
                                            max_steps=max(budget, cap), after_step=track.after_step,
                                            ckpt=Checkpoints(ckpt_dir, every=0) if ctx.cfg.eval.every or stop
                                            else None, extra=track.state)
        final = folder / f"request{r}.adapter"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        lm.model = model
        st = track.state
        if track.lora_at_budget is not None:
            self.lora_at_budget = track.lora_at_budget
        if st["budget"] is None:  # training ended at the budget (or diverged before it): the merged model
            if result.status == "ok":
                with progress.stage(f"{scenario} {method} {target} seed {seed} request {r}/{n}"):
                    mcq, mmb = ctx.evaluate(lm, enc, self.sets)
                track.at_budget(mcq, mmb)
            else:  # diverged: nothing to measure (the rows say diverged, accuracy empty)
                mcq = mmb = None
            status = result.status
        else:  # evaluated during training, which went on past the budget
            mcq, mmb, status = st["budget"]["mcq"], st["budget"]["mmbench"], "ok"
        meta = {"scenario": scenario, "method": method, "target": target, "seed": seed, "request": r}
        cell = {"meta": meta, "status": status, "losses": result.losses, "training": result.info,
                "mcq": mcq, "mmbench": mmb, "splits": _splits(scenario, self.unlearn, self.retain, self.folds, r),
                "request_seed": request_seed, "halves": self.ref["halves"]}
        if ctx.cfg.eval.every:
            cell["curve"] = st["curve"]
        if stop:
            cell["matched"] = st["matched"] or {
                "reached": False, "status": "diverged" if result.status == "diverged" else "not_reached",
                "step": cap if result.status != "diverged" else result.info["steps_done"],
                **{k: stop[k] for k in ("reference", "margin", "target")}, "cap": cap}
        if status == "diverged" and r < n:
            cell["not_run"] = list(range(r + 1, n + 1))  # the sequence stops at a diverged request
        self._keep(r, cell)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        if status == "diverged":
            self._end(r, result)
        return model

    def _keep(self, r: int, cell: dict) -> None:
        """Write request r's file, unless the stored one equals it; a stored file that differs is rewritten and
        logged; probes.json goes when the last request was not confirmed by its stored file."""
        path = self.folder / f"request{r}.json"
        old = self.stored.get(r)
        same = old is not None and _same(cell, old)
        if not same:
            if old is not None:
                self.changed = True
                self.ctx.log(f"{path}: the recomputed request differs from the stored file; rewritten (later "
                             f"requests are recomputed too)")
            atomic_write_json(path, F.stamped(self.ctx, path, cell))
            probes = self.folder / "probes.json"
            if r == len(self.requests) and probes.is_file():
                probes.unlink()
                self.ctx.log(f"{probes}: made from another model after request {r}; recomputed")
        self.stored[r] = S.read(path)

    def _end(self, r: int, result) -> None:
        """A diverged request r ends the cell; stored files after it (another trajectory) are removed."""
        self.ended = True
        n, why = len(self.requests), result.info.get("diverged") or {}
        later = f"request {n} is" if r + 1 == n else f"requests {r + 1}-{n} are"
        rest = f"; {later} not run (status diverged in results.csv)" if r < n else ""
        self.ctx.log(f"{self.label} request {r} diverged (non-finite {why.get('reason', 'loss')} at step "
                     f"{why.get('step')}): no evaluation, no probes{rest}")
        for q in range(r + 1, n + 1):
            path = self.folder / f"request{q}.json"
            if path.is_file():
                path.unlink()
                self.ctx.log(f"{path}: removed (made after a request that now diverges)")
            shutil.rmtree(self.folder / f"request{q}.adapter", ignore_errors=True)
            self.stored.pop(q, None)
        probes = self.folder / "probes.json"
        if probes.is_file():
            probes.unlink()
            self.ctx.log(f"{probes}: removed (the cell diverged)")

    def probes(self, model) -> None:
        """Probes on the model after the last request at its budget: `model` when it is that one, else rebuilt
        (`model_after`) with the last request at its budget when it trained past it (matched forgetting): its LoRA
        weights kept at the budget step, or — after a resume, which lost them — the request replayed to there."""
        n = len(self.requests)
        cell = self.stored[n]
        with S.reading(self.folder / f"request{n}.json"):
            info = cell["training"]
            past = info.get("steps_done", info["steps"]) > info["steps"]
        if past:  # trained on past the budget (matched forgetting)
            model = self.model_after(n - 1)
            if self.ended:
                return
            ctx, lm = self.ctx, self.lm
            seed = _seed(self.seed, self.scenario, self.method.split("@")[0], self.target, n)
            if self.lora_at_budget is not None:  # this process trained it: its LoRA weights there, merged as there
                model, named, _ = prepare(model, self.target, self.ucfg, "lora", seed)
                with torch.no_grad():
                    for (_, p), kept in zip(named, self.lora_at_budget, strict=True):
                        p.copy_(kept)
                self.lora_at_budget = None
                model = finish(model, "lora", self.ucfg)
            else:  # resumed after the request was written: train it again to its budget (same seeded steps)
                ctx.log(f"probes: replaying {self.label} request {n} to its budget "
                        f"({info['steps']} of {info['steps_done']} steps)")
                model, _ = unlearn_request(model, self.enc, self.registered, self.target,
                                           self.forget_of(self.requests[n - 1], lm.template), self.retain_samples,
                                           self.ucfg, seed=seed,
                                           desc=f"{self.label} request {n} (replay)", max_steps=info["plan_steps"],
                                           after_step=lambda k, _: "stop" if k >= info["steps"] else None)
        elif model is None:
            model = self.model_after(n)
            if self.ended:
                return
        self.lm.model = model
        run_probes(self.ctx, self.scenario, self.seed, self.lm, self.enc, self.sets, self.ref, cell["meta"],
                   self.forget_of, cell=cell, folder=self.folder)


def _same(cell: dict, stored: dict) -> bool:
    """Equal request files, fingerprints aside (the JSON text, so NaN losses compare equal)."""
    return json.dumps(F.unstamped(cell)) == json.dumps(F.unstamped(stored))


def _probes_due(ctx, scenario: str, method: str, folder: Path) -> bool:
    """Probes run once per cell of `probes.scenarios` (not per sweep variant), unless probes.json is written."""
    p = ctx.cfg.probes
    return bool(p.run) and scenario in p.scenarios and "@" not in method and not (folder / "probes.json").is_file()


class _Track:
    """The in-request evaluations of one request, as `fit`'s after_step hook; `state` (JSON) is saved with every
    in-request checkpoint: {"curve": [points], "budget": full evaluation at the budget, "matched": record}.

    Points: step 0 (from `before`, the evaluation the request starts from), every `eval.every` steps, the budget
    (from its full evaluation) and the last planned step. Training stops after the budget once the target is
    reached (or without a target), else at the cap. When training ends at the budget, the budget's evaluation
    runs after the merge (`at_budget`), as a run without curves evaluates; only a request that goes on past the
    budget evaluates it in place (the adapter unmerged)."""

    def __init__(self, ctx, lm, enc, sets, halves, before, budget, end, cap, stop, keep_lora=False):
        self.ctx, self.lm, self.enc, self.sets, self.halves, self.before = ctx, lm, enc, sets, halves, before
        self.budget, self.end, self.cap, self.stop = budget, end, cap, stop
        self.keep_lora, self.lora_at_budget = keep_lora, None  # the trainable LoRA weights at the budget
        self.every = ctx.cfg.eval.every
        self.unlearn_ids = {p.id for p in sets["unlearn"][0]}
        self.state = {"curve": [], "budget": None, "matched": None}

    def _point(self, step: int, mcq: dict, mmb: dict) -> dict:
        return {"step": step, "sel": C.encode(self.halves["sel"], mcq["predictions"]),
                "mmbench": _sub_point(self.ctx, mmb)}

    def _full(self, step: int, mcq: dict, mmb: dict, point: dict) -> dict:
        return {"reached": True, "status": "ok", "step": step, "sel": point["sel"],
                "held": C.encode(self.halves["held"], mcq["predictions"]),
                "mmbench": {k: mmb[k] for k in MCQ_SUMMARY},
                **{k: self.stop[k] for k in ("reference", "margin", "target")}, "cap": self.cap}

    def after_step(self, k: int, in_eval):
        st, ctx = self.state, self.ctx
        point, evaluated = None, False
        if k == 0:
            if self.every:
                point = self._point(0, self.before["mcq"], self.before["mmbench"])
        elif k == self.budget:
            if self.stop is None or st["matched"] is not None or self.cap <= self.budget:
                return "stop"  # the budget is evaluated after the merge: `at_budget`
            with in_eval() as m, progress.stage(f"step {k} (budget)"):
                self.lm.model = m
                mcq, mmb = ctx.evaluate(self.lm, self.enc, self.sets)
                if self.keep_lora:  # for the probes, which measure the model at its budget (no replay needed)
                    self.lora_at_budget = [p.detach().clone() for p in m.parameters() if p.requires_grad]
            st["budget"] = {"mcq": mcq, "mmbench": mmb}
            point, evaluated = self._point(k, mcq, mmb), True
        elif self.every and (k % self.every == 0 or k == self.end):
            keys = {C.parse_key(q) for q in self.halves["sel"]}
            with in_eval() as m, progress.stage(f"checkpoint step {k}"):
                self.lm.model = m
                mcq = ctx.mcq(self.lm, self.enc, self.sets, questions=keys)
                letters = ctx.mmbench_eval(self.lm, self.enc, ctx.curve_mmbench)["letters"]
            point = {"step": k, "sel": C.encode(self.halves["sel"], mcq["predictions"]),
                     "mmbench": C.mmbench_point(ctx.curve_mmbench, letters)}
            evaluated = True
        if point is not None and self.every:
            st["curve"].append(point)
        if point is not None and self._reaches(k):
            st["matched"] = self._matched(k, point, in_eval)
            evaluated = True
        done = k >= self.budget and (self.stop is None or st["matched"] is not None or k >= self.cap)
        return "stop" if done else ("checkpoint" if evaluated else None)

    def at_budget(self, mcq: dict, mmb: dict) -> None:
        """Record the budget's full evaluation made after training ended there: its curve point and, if it is the
        first to reach the target, the matched point."""
        st, k = self.state, self.budget
        st["budget"] = {"mcq": mcq, "mmbench": mmb}
        point = self._point(k, mcq, mmb)
        if self.every:
            st["curve"].append(point)
        if self._reaches(k):
            st["matched"] = self._full(k, mcq, mmb, point)

    def _reaches(self, k: int) -> bool:
        """Is the checkpoint at step k (the newest curve point) the matched one — the first to reach the target?"""
        if not self.stop or self.state["matched"] is not None:
            return False
        points = [(p["step"], C.accuracy(C.decode(self.halves["sel"], p["sel"]), self.unlearn_ids))
                  for p in self.state["curve"]]
        return C.first_reaching(points, self.stop["target"], self.cap) == k

    def _matched(self, k: int, point: dict, in_eval) -> dict:
        """The full evaluation at the matched step: reused at step 0 (before) and at the budget; otherwise the
        held-out half and the MMBench rows outside the subset are evaluated, the rest is the checkpoint's."""
        if k == 0:
            return self._full(0, self.before["mcq"], self.before["mmbench"], point)
        if k == self.budget:
            return self._full(k, self.state["budget"]["mcq"], self.state["budget"]["mmbench"], point)
        ctx = self.ctx
        sub = {it.index for it in ctx.curve_mmbench}
        rest = [it for it in ctx.mmbench if it.index not in sub]
        with in_eval() as m, progress.stage(f"matched step {k}"):
            self.lm.model = m
            held = ctx.mcq(self.lm, self.enc, self.sets, questions={C.parse_key(q) for q in self.halves["held"]})
            letters = ctx.mmbench_eval(self.lm, self.enc, rest)["letters"] if rest else ""
        by_index = {**dict(zip((it.index for it in rest), letters)),
                    **dict(zip((it.index for it in ctx.curve_mmbench), point["mmbench"]["letters"]))}
        mmb = circular_eval(ctx.mmbench, by_index)
        return self._full(k, held, mmb, point)


# --- equal search budget ----------------------------------------------------------------------------------------------

def _sweep(ctx, scenario: str, seed: int) -> dict:
    """Per method and target, the winning sweep configuration (curves.pick_winner) from the variants' matched
    points — selection-half numbers only; written to cells/<scenario>/sweep__seed<S>.json and returned."""
    cfg = ctx.cfg
    variants = _variants(cfg)
    out = {}
    for target in cfg.targets:
        for method in cfg.sweep:
            candidates = []
            for name in (n for n, v in variants.items() if v["method"] == method):
                path = ctx.out / "cells" / scenario / f"{name}__{target}__seed{seed}" / "request1.json"
                cell = S.read(path)
                with S.reading(path):
                    mt, unlearn_ids = cell["matched"], set(cell["splits"]["unlearn"])
                    point = next((p for p in cell["curve"] if p["step"] == mt["step"]), None) \
                        if mt["reached"] else None
                    preds = C.decode(cell["halves"]["sel"], point["sel"]) if point else []
                    candidates.append({"name": name, "reached": mt["reached"], "step": mt["step"],
                                       "unlearn_sel": C.accuracy(preds, unlearn_ids) if point else None,
                                       "retain_sel": C.accuracy(preds, set(cell["splits"]["retain"]))
                                       if point else None,
                                       "mmbench_sub": point["mmbench"]["circular"] if point else None})
            out[f"{method}/{target}"] = {"winner": C.pick_winner(candidates), "candidates": candidates}
    atomic_write_json(ctx.out / "cells" / scenario / f"sweep__seed{seed}.json", out)
    return out


def _seed(*parts) -> int:
    """A stable 31-bit seed from the parts (Python's hash() is salted per process)."""
    import hashlib
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) % 2**31


def write_results(out: Path) -> pd.DataFrame:
    """Rebuild results.csv from every completed cell, in a fixed order (so resumed runs give the same file):
    per cell, request 0's rows, then per request its budget rows, checkpoint rows (by step) and matched rows."""
    manifest = json.loads((out / "manifest.json").read_text())
    cfg = manifest["config"]
    plan = _plan(_cfg_from_dict(cfg))
    rows = []
    for seed in cfg["seeds"]:
        for scenario in cfg["scenarios"]:
            p0 = out / "cells" / scenario / f"request0__seed{seed}.json"
            if not p0.is_file():
                continue
            ref = S.read(p0)
            for method, target in plan[scenario]:
                meta0 = {"scenario": scenario, "method": method, "target": target, "seed": seed, "request": 0}
                with S.reading(p0):
                    rows += _rows(meta0, ref["splits"], ref["mcq"], ref["mmbench"], None, "ok", ref.get("halves"))
                folder = out / "cells" / scenario / f"{method}__{target}__seed{seed}"
                paths = [p for p in folder.glob("request*.json") if p.stem[7:].isdigit()]
                for path in sorted(paths, key=lambda p: int(p.stem[7:])):
                    c = S.read(path)
                    with S.reading(path):
                        rows += _rows(c["meta"], c["splits"], c["mcq"], c["mmbench"], ref, c["status"],
                                      c.get("halves"))
                        rows += _curve_rows(c["meta"], c, ref)
                        rows += _matched_rows(c["meta"], c, ref)
                        rows += _not_run_rows(c)
                    if c["status"] == "diverged":
                        break  # the cell ended at a diverged request
                with S.reading(folder / "probes.json"):
                    rows += probe_cell_rows(folder)
            with S.reading(out / "cells" / scenario / f"probe_control__seed{seed}.json"):
                rows += probe_control_rows(out, scenario, seed)
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("step", "n"):  # integers, empty where not measured (not 3.0)
        df[col] = df[col].astype("Int64")
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    return df


def _cfg_from_dict(d: dict) -> RunConfig:
    from ..config import _build
    return _build(RunConfig, d, "manifest.json")
