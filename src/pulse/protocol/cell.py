"""One cell's sequence of requests in the run directory: what is stored, resuming from saved adapters, checking
recomputed requests against their files, a diverged request ending the cell, and the probes at the end.

The model before request R is rebuilt from the saved adapters of requests 1..R-1; where some are gone (cleaned up at
the end of a run, or deleted), from the last request they allow — request 0 at worst — by retraining. Every
retrained request is compared with its stored file (fingerprint aside): kept when equal, rewritten and logged when
not; every request after R is recomputed and compared the same way and probes.json is recomputed unless the last
request's file was confirmed, so a cell never mixes two trajectories. A diverged request ends the cell: its rows say
diverged with empty accuracy, later requests of a sequence are not run (their rows in results.csv: status diverged,
accuracy empty), the cell gets no probes; a rerun leaves it as it is.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..fsutil import atomic_write_json
from . import fingerprint, stored
from .baseline import Baseline
from .context import Context, eval_sets
from .plan import Cell, cell_recipe
from .probes import run_probes
from .request import CellSetup, at_budget_from_kept, replayed_to_budget, run_request


def cell_folder(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.scenario / f"{cell.method}__{cell.target}__seed{cell.seed}"


def run_requests(ctx: Context, cell: Cell, baseline: Baseline) -> bool:
    """All requests of one cell, resuming at the first request without a file (and inside a request, from its last
    in-request checkpoint), then the probes. True when something was computed."""
    run = CellRun(ctx, cell, baseline)
    n = len(run.requests)
    end = next((r for r in sorted(run.stored) if run.stored[r]["status"] == "diverged"), n)
    missing = [r for r in range(1, end + 1) if r not in run.stored]
    if not missing and not run.probes_due():
        return False  # nothing to do: every file is on disk
    model = None
    if missing:
        model = run.model_after(missing[0] - 1)
        for r in range(missing[0], n + 1):
            if run.ended:
                return True
            model = run.compute(r, model)
    if not run.ended and run.probes_due():
        run.probes(model)
    return True


def probes_due(ctx: Context, cell: Cell, folder: Path) -> bool:
    """Probes run once per cell of `probes.scenarios` (not per sweep variant), unless probes.json is written."""
    p = ctx.cfg.probes
    return bool(p.run) and cell.scenario in p.scenarios and "@" not in cell.method \
        and not (folder / "probes.json").is_file()


class CellRun:
    """One cell's state while `run_requests` runs it: the stored request files ({R: content}, damaged ->
    PulseError), the shared set-up of its requests, and whether the cell ended (a diverged request)."""

    def __init__(self, ctx: Context, cell: Cell, baseline: Baseline):
        self.ctx, self.cell, self.baseline = ctx, cell, baseline
        self.folder = cell_folder(ctx.out, cell)
        self.requests = baseline.people.folds or [baseline.people.unlearn]
        self.stored = {r: stored.read(self.folder / f"request{r}.json") for r in range(1, len(self.requests) + 1)
                       if (self.folder / f"request{r}.json").is_file()}
        self.setup = None  # CellSetup, made with the first model
        self.changed = self.ended = False  # a recomputed request differed from its file / the cell ended
        self.lora_at_budget = None  # the last request's LoRA weights at its budget, when it trained on past it

    def probes_due(self) -> bool:
        n = len(self.requests)
        return probes_due(self.ctx, self.cell, self.folder) and n in self.stored \
            and self.stored[n]["status"] == "ok"

    def _load(self):
        """A fresh model of the phase (the first call also sets up the evaluation model, encoder and sets)."""
        people = self.baseline.people
        lm, enc = self.ctx.model(people.phase)
        if self.setup is None:
            registered, recipe = cell_recipe(self.ctx.cfg, self.cell.scenario, self.cell.method)
            self.setup = CellSetup(self.ctx, self.cell, self.baseline, self.folder, lm, enc, registered, recipe,
                                   eval_sets(self.ctx, self.cell.scenario, people.unlearn, people.retain),
                                   people.forget_of(people.retain, lm.template))
        return lm.model

    def model_after(self, k: int):
        """The model after request k: saved adapters 1..p (p <= k, as far as they go), then requests p+1..k
        retrained and checked against their files (`compute`)."""
        model = self._load()
        p = 0
        while p < k and stored.adapter_present(self.folder / f"request{p + 1}.adapter"):
            p += 1
        for r in range(1, p + 1):
            model = stored.apply(model, self.folder / f"request{r}.adapter")
        if p < k:
            gone = f"request {k}" if p + 1 == k else f"requests {p + 1}-{k}"
            self.ctx.log(f"{self.setup.label}: the saved adapter of {gone} is gone; retraining from request {p + 1} "
                         f"(retrained requests are checked against their stored files)")
        for r in range(p + 1, k + 1):
            model = self.compute(r, model)
            if self.ended:
                break
        return model

    def compute(self, r: int, model):
        """Train and evaluate request r on `model` (the model after request r-1); write request<R>.json unless the
        stored one is equal; returns the model after request r."""
        n = len(self.requests)
        keep_lora = self.setup.recipe.mode == "lora" and r == n and probes_due(self.ctx, self.cell, self.folder)
        before = self.baseline.request0 if r == 1 else self.stored[r - 1]
        done = run_request(self.setup, r, model, before, fresh=self.changed, keep_lora=keep_lora)
        if done.lora_at_budget is not None:
            self.lora_at_budget = done.lora_at_budget
        self._keep(r, done.record)
        shutil.rmtree(self.folder / f".request{r}.progress", ignore_errors=True)
        if done.status == "diverged":
            self._end(r, done.diverged)
        return done.model

    def _keep(self, r: int, record: dict) -> None:
        """Write request r's file, unless the stored one equals it; a stored file that differs is rewritten and
        logged; probes.json goes when the last request was not confirmed by its stored file."""
        path = self.folder / f"request{r}.json"
        old = self.stored.get(r)
        if old is None or not same_record(record, old):
            if old is not None:
                self.changed = True
                self.ctx.log(f"{path}: the recomputed request differs from the stored file; rewritten (later "
                             f"requests are recomputed too)")
            atomic_write_json(path, fingerprint.stamped(self.ctx, path, record))
            probes = self.folder / "probes.json"
            if r == len(self.requests) and probes.is_file():
                probes.unlink()
                self.ctx.log(f"{probes}: made from another model after request {r}; recomputed")
        self.stored[r] = stored.read(path)

    def _end(self, r: int, why: dict) -> None:
        """A diverged request r ends the cell; stored files after it (another trajectory) are removed."""
        self.ended = True
        n = len(self.requests)
        later = f"request {n} is" if r + 1 == n else f"requests {r + 1}-{n} are"
        rest = f"; {later} not run (status diverged in results.csv)" if r < n else ""
        self.ctx.log(f"{self.setup.label} request {r} diverged (non-finite {why.get('reason', 'loss')} at step "
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
        record = self.stored[n]
        with stored.reading(self.folder / f"request{n}.json"):
            info = record["training"]
            past = info.get("steps_done", info["steps"]) > info["steps"]
        if past or model is None:
            model = self.model_after(n - 1 if past else n)
            if self.ended:
                return
        if past and self.lora_at_budget is not None:  # this process trained it: its LoRA weights there
            model, self.lora_at_budget = at_budget_from_kept(self.setup, model, self.lora_at_budget), None
        elif past:  # resumed after the request was written: train it again to its budget (same seeded steps)
            model = replayed_to_budget(self.setup, model, info)
        self.setup.lm.model = model
        run_probes(self.ctx, self.cell.scenario, self.cell.seed, self.setup.lm, self.setup.enc, self.setup.sets,
                   self.baseline.request0, record["meta"], self.baseline.people.forget_of, cell=record,
                   folder=self.folder)


def same_record(record: dict, stored_record: dict) -> bool:
    """Equal request files, fingerprints aside (the JSON text, so NaN losses compare equal)."""
    return json.dumps(fingerprint.unstamped(record)) == json.dumps(fingerprint.unstamped(stored_record))
