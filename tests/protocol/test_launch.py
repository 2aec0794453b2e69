"""Cells fan out over processes (local workers, submitit job arrays, several `pulse run` on one directory)
and give the same results.csv, byte for byte, as one serial run; claims are taken over from dead workers."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pulse.cli import main
from pulse.protocol import claims
from pulse.protocol.runner import cells

from ..conftest import ROOT, SMALL_CONFIG

HOLD = """
import sys, time
from pulse.protocol import claims
with claims.claim(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(path, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_claim_is_exclusive_names_its_owner_and_is_removed_after(tmp_path):
    path = tmp_path / "cell.lock"
    with claims.claim(path, wait=False) as first:
        assert first
        with claims.claim(path, wait=False) as second:  # another open file description: refused, not re-entered
            assert not second
        owner = json.loads(path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] and owner["started"]
    assert not path.exists()
    assert claims.holder(path) is None


def test_a_dead_workers_claim_is_taken_over_and_a_live_one_is_waited_for(tmp_path):
    path = tmp_path / "cell.lock"
    proc = _holder(path, 60)
    assert claims.holder(path)["pid"] == proc.pid
    with claims.claim(path, wait=False) as got:
        assert not got
    proc.send_signal(signal.SIGKILL)  # the lock file stays behind, its lock is gone with the process
    proc.wait()
    assert path.exists() and claims.holder(path) is None
    with claims.claim(path, wait=False) as got:
        assert got and json.loads(path.read_text())["pid"] == os.getpid()

    proc = _holder(path, 1.0)
    t = time.time()
    with claims.claim(path, wait=True) as got:  # blocks until the holder lets go
        assert got and time.time() - t > 0.5
    assert proc.wait() == 0


def test_a_cell_whose_shared_files_are_being_computed_is_skipped_not_waited_for(small_world, tmp_path):
    """The first pass of `run` goes on to other cells while another process computes a cell's shared files
    (request 0 here), instead of blocking on them."""
    from pulse.config import load_config
    from pulse.protocol import runner

    cfg = load_config(SMALL_CONFIG, [])
    ctx, _ = runner.start(cfg, tmp_path, log=lambda *_: None)
    proc = _holder(tmp_path / "cells" / "finetuned" / "request0__seed0.lock", 60)
    try:
        for cell in cells(cfg):
            if cell.scenario in ("finetuned", "sustainability"):  # sustainability's request 0 is finetuned's
                assert not runner.run_cell(ctx, cell, wait=False), cell
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "cells" / "finetuned" / "request0__seed0.json").exists()
    assert not list((tmp_path / "cells").glob("*/*__seed0"))  # no cell was started


def _results(run):
    return (run / "results.csv").read_bytes()


def _locks(cfg, out):
    return [out / "cells" / c.scenario / f"{c.method}__{c.target}__seed{c.seed}.lock" for c in cells(cfg)]


def _kill_while_holding_a_cell(proc, locks, pids):
    """SIGKILL the process of `pids` that first holds one of the cell claims `locks`; returns its PID."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        for lock in locks:
            pid = (claims.holder(lock) or {}).get("pid")
            if pid in pids():
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.02)
    raise AssertionError("no process of interest ever held a cell")


@pytest.mark.slow
def test_local_workers_one_killed_mid_cell_give_the_serial_results(small_run, tmp_path):
    """--launcher local --workers 2; a worker SIGKILLed while it holds a cell; the launcher takes the cell over."""
    out = tmp_path / "local"
    cmd = [sys.executable, "-m", "pulse.cli", "run", str(SMALL_CONFIG), "--out", str(out), "--no-report",
           "--launcher", "local", "--workers", "2"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PULSE_PROGRESS": "0"}, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def workers():
        m = out / "manifest.json"
        return {w["pid"] for w in json.loads(m.read_text()).get("workers", [])} - {proc.pid} if m.is_file() else set()

    killed = _kill_while_holding_a_cell(proc, _locks(_cfg(), out), workers)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    assert "exited with code -9; its unfinished cells are taken over here" in log
    assert _results(out) == _results(small_run)
    m = json.loads((out / "manifest.json").read_text())
    assert m["launcher"]["name"] == "local" and m["launcher"]["workers"] == 2
    assert killed in {w["pid"] for w in m["workers"]} and all(w["host"] for w in m["workers"])
    assert not list(out.rglob("*.lock"))


@pytest.mark.slow
def test_two_runs_at_once_give_the_serial_results(small_run, tmp_path):
    """Two `pulse run` started together on one --out share the cells."""
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "pulse.cli", "run", str(SMALL_CONFIG), "--out", str(out), "--no-report"]
    env = {**os.environ, "PULSE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}  # a core each, as local workers
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert _results(out) == _results(small_run)
    assert not list(out.rglob("*.lock"))


def _cfg():
    from pulse.config import load_config
    return load_config(SMALL_CONFIG)


SUBSET = ["scenarios=[sustainability]", "methods=[ga,npo]"]  # 2 cells of the small config, 2 requests each


@pytest.mark.slow
def test_a_submitit_job_array_gives_the_serial_results(small_world, tmp_path):
    """submitit's local executor: one process per array task (as SLURM would start them), then the launcher
    finishes the run; the same bytes as a serial run."""
    serial, array = tmp_path / "serial", tmp_path / "array"
    assert main(["run", str(SMALL_CONFIG), *SUBSET, "--out", str(serial), "--no-report"]) == 0
    assert main(["run", str(SMALL_CONFIG), *SUBSET, "--out", str(array), "--no-report", "--launcher", "slurm",
                 "--slurm-cluster", "local", "--time", "30", "--cpus-per-task", "1"]) == 0
    assert _results(array) == _results(serial)
    m = json.loads((array / "manifest.json").read_text())
    assert m["launcher"]["name"] == "slurm" and m["launcher"]["cluster"] == "local"
    assert len({w["pid"] for w in m["workers"]}) == 3  # one task per cell + the launcher
    assert list((array / "slurm").glob("*_result.pkl"))  # submitit's own files stay in slurm/


def test_print_sbatch_writes_one_array_task_per_cell(small_world, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", str(SMALL_CONFIG), "seeds=[0,1]", "--out", str(out), "--print-sbatch",
                 "--partition", "gpu", "--time", "90", "--array-parallelism", "4"]) == 0
    script = capsys.readouterr().out
    n = 2 * len(cells(_cfg()))
    assert script.startswith("#!/bin/bash\n")
    for line in (f"#SBATCH --array=0-{n - 1}%4", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --requeue"):
        assert line + "\n" in script
    assert f"--out {out} --no-report --cell \"$SLURM_ARRAY_TASK_ID\"" in script
    assert "'seeds=[0,1]'" in script  # overrides quoted for the shell
    assert not out.exists()  # printing runs nothing


def test_cell_runs_one_cell_and_leaves_the_rest(small_world, tmp_path, capsys):
    out = tmp_path / "one"
    args = ["run", str(SMALL_CONFIG), "--out", str(out), "--no-report", "scenarios=[sustainability]",
            "methods=[ga,npo]"]
    assert main([*args, "--cell", "1"]) == 0
    assert (out / "cells" / "sustainability" / "npo__proj+llm__seed0" / "request2.json").is_file()
    assert not (out / "cells" / "sustainability" / "ga__proj+llm__seed0").exists()
    assert "rerun without --cell" in capsys.readouterr().out


@pytest.mark.parametrize("flags,message", [
    (["--workers", "2"], "--workers: only with --launcher local"),
    (["--partition", "gpu"], "--partition: only with --launcher slurm or --print-sbatch"),
    (["--cell", "99"], "--cell 99: this run has 10 cells (0 to 9)"),
    (["--cell", "0", "--launcher", "local"], "--cell: runs one cell in this process"),
    (["--launcher", "slurm", "--mem-gb", "nan"], "--mem-gb: must be a number > 0, got nan"),
    (["--launcher", "local", "--workers", "0"], "--workers: must be an integer >= 1, got 0"),
])
def test_launcher_flags_are_checked_before_anything_runs(small_world, tmp_path, capsys, flags, message):
    out = tmp_path / "r"
    try:
        rc = main(["run", str(SMALL_CONFIG), "--out", str(out), *flags])
    except SystemExit as e:  # argparse's own checks
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "manifest.json").exists()
