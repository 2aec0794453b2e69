"""Where the cells of `pulse run` execute. The runner (protocol/runner.py) knows nothing of this: every launcher
calls the same `run`, and processes sharing a run directory divide the cells through claim files.

- serial: this process runs every cell (the default).
- local:  N worker processes on this machine (each one GPU via CUDA_VISIBLE_DEVICES when there are GPUs, else an
          equal share of the CPU threads), then this process takes over what a dead worker left and finishes.
- slurm:  a submitit job array, one task per cell (requeued on preemption or timeout; the task resumes from its
          last completed request, or inside it from the last in-request checkpoint); this process waits and
          finishes. `print_sbatch` writes the same array as a plain sbatch script.
"""
from __future__ import annotations

import multiprocessing
import os
import shlex
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import PulseError
from .protocol import runner


@dataclass(frozen=True)
class Slurm:
    """The SLURM resources of one array task (one cell). `cluster`: submitit's executor — "slurm", or "local" /
    "debug" (submitit's own executors, which run the tasks on this machine: for tests and dry runs)."""
    partition: str | None = None
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 24 * 60
    array_parallelism: int = 32
    account: str | None = None
    cluster: str = "slurm"


def local(cfg, out: Path, workers: int, log=print) -> Path:
    """`workers` processes on this machine share the run; then this process completes and finishes it."""
    import torch

    gpus = torch.cuda.device_count()
    threads = torch.get_num_threads() if gpus else max(1, torch.get_num_threads() // workers)
    launcher = {"name": "local", "workers": workers, "gpus": gpus, "torch_threads_per_worker": threads}
    started = runner.start(cfg, out, log, launcher)  # checks, the mini world, the manifest: once, before any worker
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_worker, args=(cfg, out, i, str(i % gpus) if gpus else None, threads,
                                                 list(warnings.filters)),
                           name=f"pulse-worker-{i}") for i in range(workers)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    for i, p in enumerate(procs):
        if p.exitcode:
            log(f"worker {i} exited with code {p.exitcode}; its unfinished cells are taken over here")
    torch.set_num_threads(threads)  # as the workers: a cell taken over continues with the same arithmetic
    return runner.run(cfg, out, log, launcher=launcher, started=started)


def _worker(cfg, out: Path, index: int, gpu: str | None, threads: int, filters: list) -> None:
    """One local worker: its GPU (or thread share), the launcher's warning filters, no progress bars (their lines
    would interleave), every cell it can claim. A user error ends the worker with its one-line message, as the CLI
    prints it."""
    _die_with_parent()
    warnings.filters[:] = filters
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before anything initialises CUDA in this fresh process
    os.environ["PULSE_PROGRESS"] = "0"
    import torch
    torch.set_num_threads(threads)
    try:
        runner.run(cfg, out, lambda msg: print(f"[worker {index}] {msg}", flush=True), finish=False)
    except PulseError as e:
        print(f"[worker {index}] error: {e}", flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _die_with_parent() -> None:
    """Linux: end this worker (SIGTERM) when the launching process dies, even by SIGKILL — no orphan keeps working
    on a run its user believes stopped; its claims go with it. Elsewhere a no-op."""
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class CellTask:
    """One array task of the slurm launcher: the cell at a plan index. submitit calls `checkpoint` when the job is
    preempted or times out; the requeued task resumes from what the run directory holds."""

    def __init__(self, cfg, out: Path, threads: int | None = None):
        self.cfg, self.out, self.threads = cfg, Path(out), threads

    def __call__(self, index: int) -> str:
        if self.threads:  # the task's CPUs (--cpus-per-task), not every core of the node
            import torch
            torch.set_num_threads(self.threads)
        runner.run(self.cfg, self.out, print, only=[index], finish=False)
        return runner.cells(self.cfg)[index].name

    def checkpoint(self, index: int):
        import submitit
        return submitit.helpers.DelayedSubmission(CellTask(self.cfg, self.out, self.threads), index)


def slurm(cfg, out: Path, opts: Slurm, log=print) -> Path:
    """Submit one array task per cell through submitit, wait for them, then finish the run here."""
    try:
        import submitit
    except ImportError:
        raise PulseError("--launcher slurm needs submitit: pip install 'pulse-unlearn[cluster]'") from None
    launcher = {"name": "slurm", **asdict(opts)}
    started = runner.start(cfg, out, log, launcher)
    n = len(runner.cells(cfg))
    ex = submitit.AutoExecutor(folder=out / "slurm", cluster=None if opts.cluster == "slurm" else opts.cluster)
    params = {"name": f"pulse-{cfg.name}", "timeout_min": opts.time_min, "cpus_per_task": opts.cpus_per_task,
              "mem_gb": opts.mem_gb}
    if opts.cluster == "slurm":
        params.update(slurm_partition=opts.partition, slurm_gpus_per_task=opts.gpus_per_task or None,
                      slurm_array_parallelism=opts.array_parallelism, slurm_account=opts.account)
    ex.update_parameters(**params)
    jobs = ex.map_array(CellTask(cfg, out, opts.cpus_per_task), list(range(n)))
    log(f"submitted {n} cells as {jobs[0].job_id.split('_')[0] if jobs else '-'} ({opts.cluster}); waiting")
    failed = []
    for i, job in enumerate(jobs):
        try:
            log(f"done: {job.result()} (task {i}, job {job.job_id})")
        except Exception as e:  # noqa: BLE001 - submitit re-raises the task's error with its traceback
            failed.append(f"task {i} (job {job.job_id}): {str(e).strip().splitlines()[-1] if str(e) else e}")
    if failed:
        raise PulseError(f"{len(failed)} of {n} array tasks failed — first: {failed[0]}; logs in {out / 'slurm'}; "
                         "rerun the same command to resume")
    return runner.run(cfg, out, log, launcher=launcher, started=started)


def print_sbatch(cfg, out: Path, args: list[str], opts: Slurm) -> str:
    """A plain sbatch script running the run's cells as an array (task i = plan cell i); `pulse run` with the same
    arguments afterwards finishes the run (nothing left to compute)."""
    n = len(runner.cells(cfg))
    lines = ["#!/bin/bash", f"#SBATCH --job-name=pulse-{cfg.name}", f"#SBATCH --array=0-{n - 1}%{opts.array_parallelism}",
             f"#SBATCH --time={opts.time_min}", f"#SBATCH --output={out}/slurm/%A_%a.out", "#SBATCH --requeue"]
    lines += [f"#SBATCH --partition={opts.partition}"] if opts.partition else []
    lines += [f"#SBATCH --account={opts.account}"] if opts.account else []
    lines += [f"#SBATCH --gpus-per-task={opts.gpus_per_task}"] if opts.gpus_per_task else []
    lines += [f"#SBATCH --cpus-per-task={opts.cpus_per_task}"] if opts.cpus_per_task else []
    lines += [f"#SBATCH --mem={int(opts.mem_gb * 1024)}M"] if opts.mem_gb else []
    run = shlex.join(["pulse", "run", *args, "--out", str(out), "--no-report"])
    lines += ["", f"# {n} cells: " + ", ".join(c.name for c in runner.cells(cfg)[:3]) + (", …" if n > 3 else ""),
              f'{run} --cell "$SLURM_ARRAY_TASK_ID"',
              "", f"# when the array is done, finish the run (results.csv, report): {shlex.join(['pulse', 'run', *args, '--out', str(out)])}"]
    return "\n".join(lines) + "\n"
