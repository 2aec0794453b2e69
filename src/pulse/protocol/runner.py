"""`pulse run`: the PULSE protocol as one resumable, append-only run directory.

The recipe: `start` checks what is on disk, resolves data and models and writes the manifest (rundir.py); every
cell of the plan (plan.py: seed × scenario × method × target) runs through `run_cell` — its scenario's baseline
first (baseline.py: the people, request 0, the never-learned reference), then its requests (cell.py, request.py,
track.py); `finish_run` picks the sweep's winners, cleans up and writes results.csv (results.py). Cells are claimed
(claims.py), so any number of processes can share one run directory (launchers: pulse/launch.py).

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
config parts that change it, checkpoint and data identity, versions: fingerprint.py); before a rerun computes
anything, a reused file that the current invocation would not have made is refused in one line. Adapters are deleted
at the end unless `save_adapters` is set. A damaged stored file is one line naming it and what to delete
(stored.py); deleting it is enough. A diverged request has empty accuracies and ends its cell.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from .. import progress
from ..config import RunConfig
from . import claims
from .baseline import baseline
from .cell import cell_folder, run_requests
from .context import Context
from .plan import MATCHED_SCENARIOS, Cell, cells
from .results import COLUMNS, sweep_winners, write_results
from .rundir import start, update_manifest

__all__ = ["run", "run_cell", "start", "finish_run", "Cell", "cells", "Context", "COLUMNS", "write_results",
           "update_manifest"]


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


def run_cell(ctx: Context, cell: Cell, wait: bool = True) -> bool:
    """Run one cell into the run directory (its scenario's baseline first), resuming whatever is on disk. False
    when `wait` is False and another live process holds the cell's claim or one of its baseline files' (the caller
    goes on to another cell meanwhile)."""
    shared = baseline(ctx, cell.scenario, cell.seed, wait)
    if shared is None:
        return False
    folder = cell_folder(ctx.out, cell)
    with claims.claim(folder.with_name(folder.name + ".lock"), wait=wait) as held:
        if not held:
            return False
        if run_requests(ctx, cell, shared):
            ctx.log(f"done: {cell.scenario} {cell.method} {cell.target} seed {cell.seed}")
            write_results(ctx.out)
    return True


def finish_run(ctx: Context, t0: float) -> None:
    """After every cell: sweep winners, adapters and stale checkpoints cleaned up, manifest closed, results.csv."""
    cfg, out = ctx.cfg, ctx.out
    sweeps = {f"{s}/seed{seed}": sweep_winners(cfg, out, s, seed) for seed in cfg.seeds for s in cfg.scenarios
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
