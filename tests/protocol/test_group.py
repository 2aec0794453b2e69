"""`pulse run` in a process group: under `accelerate launch` / torchrun, process 0 runs the protocol and
every process joins its full-parameter requests, sharded with FSDP2 (unlearn/sharded.py). Two gloo CPU processes
give the serial, unsharded run's results.csv byte for byte."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pulse.cli import main
from pulse.config import load_config

from ..conftest import SMALL_CONFIG

# a sustainability cell: a sequence (the model before request 2 is rebuilt from request 1's saved parameters in every
# process) after request 0's shared evaluations; NPO for its reference log-probs
GROUP = ["unlearn.mode=full", "methods=[npo]", "table3_targets=[]", "scenarios=[sustainability]"]


@pytest.mark.slow
def test_a_process_group_run_gives_the_serial_results(small_world, tmp_path):
    from pulse.protocol import runner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the group's thread count (torchrun: OMP_NUM_THREADS=1), the same CPU kernels
    try:
        runner.run(load_config(SMALL_CONFIG, GROUP), tmp_path / "serial", log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PULSE_PROGRESS": "0",
           "PULSE_CACHE": str(small_world.parent)}
    group = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "pulse.cli", "run", str(SMALL_CONFIG), *GROUP, "--out", str(tmp_path / "group"),
                            "--no-report"], env=env, capture_output=True, text=True, timeout=300)
    assert group.returncode == 0, group.stderr[-3000:]
    assert (tmp_path / "group" / "results.csv").read_bytes() == (tmp_path / "serial" / "results.csv").read_bytes()
    manifest = json.loads((tmp_path / "group" / "manifest.json").read_text())
    assert manifest["launcher"]["name"] == "process group" and manifest["launcher"]["processes"] == 2
    request = json.loads((tmp_path / "group" / "cells" / "sustainability" / "npo__proj+llm__seed0" /
                          "request2.json").read_text())
    assert request["training"]["sharded"]["processes"] == 2


@pytest.mark.parametrize("extra, message", [
    ([], "unlearn.mode is 'lora'"),
    (["unlearn.mode=full", "methods=[ga]", "eval.every=2"], "eval.every"),
    (["unlearn.mode=full", "methods=[ga]", "eval.every=2", "unlearn.stop={rule: never_learned}"], "eval.every"),
    (["unlearn.mode=full", "methods=[ga]", "--launcher", "local"], "its own launcher"),
])
def test_a_process_group_refuses_what_it_cannot_shard(cache_dir, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", str(SMALL_CONFIG), *extra, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "WORLD_SIZE=2" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything is written
