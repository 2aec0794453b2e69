"""`pulse run` on the small mini world: every row present, kill-and-resume gives the same results, bad configs."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from pulse.config import load_config
from pulse.errors import PulseError

from ..conftest import ROOT, SMALL_CONFIG


def test_results_hold_every_cell(small_run):
    df = pd.read_csv(small_run / "results.csv")
    cfg = load_config(SMALL_CONFIG)
    assert not df["accuracy"].isna().any()
    cells = df.groupby(["scenario", "method", "target", "seed"])["request"].agg(["min", "max"])
    expected = {("finetuned", m, "proj+llm") for m in cfg.methods} | {("finetuned", "ga", "llm")}
    expected |= {(s, m, "proj+llm") for s in ("pretrained", "sustainability") for m in cfg.methods}
    assert {k[:3] for k in cells.index} == expected
    for (scenario, *_), row in cells.iterrows():
        assert row["min"] == 0
        assert row["max"] == (cfg.scenario.sustainability.folds if scenario == "sustainability" else 1)
    # each request has unlearn/retain x image/text/all + mmbench (circular) + mmbench_vanilla
    one = df[(df.scenario == "finetuned") & (df.method == "ga") & (df.target == "proj+llm") & (df.request == 1)]
    assert len(one) == 8 and set(one.split) == {"unlearn", "retain", "mmbench", "mmbench_vanilla"}
    sus = df[df.scenario == "sustainability"]
    assert set(sus[sus.request == 1].split) == {"unlearn", "retain", "mmbench", "mmbench_vanilla", "fold_current",
                                                 "folds_done", "folds_pending"}
    assert "folds_pending" not in set(sus[sus.request == sus.request.max()].split)
    r0 = df[df.request == 0]
    assert (r0.relative == 100).all()
    assert set(df.status) <= {"ok", "diverged"}


def test_manifest_records_seeds_selection_and_folds(small_run):
    m = json.loads((small_run / "manifest.json").read_text())
    cfg = load_config(SMALL_CONFIG)
    assert m["seeds"] == cfg.seeds and m["config"]["methods"] == cfg.methods
    assert len(m["selected_celebrities"]) == cfg.scenario.pretrained.select
    assert all({"id", "accuracy"} <= set(s) for s in m["selected_celebrities"])
    folds = m["folds"]["seed0"]
    assert len(folds) == cfg.scenario.sustainability.folds
    assert sum(map(len, folds)) == cfg.scenario.finetuned.unlearn
    assert {"torch", "transformers", "peft"} <= set(m["versions"]) and m["finished"]
    assert not list(small_run.glob("cells/*/*/request*.adapter"))
    assert "finished in" in (small_run / "run.log").read_text()  # adapters removed unless save_adapters


def _run_cmd(out, *extra):
    return [sys.executable, "-m", "pulse.cli", "run", str(SMALL_CONFIG), "--out", str(out), "--no-report",
            "scenarios=[sustainability]", "methods=[ga]", *extra]


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_results(small_world, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "uninterrupted"
    subprocess.run(_run_cmd(reference), check=True, env=env, cwd=ROOT, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_run_cmd(killed), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = killed / "cells" / "sustainability" / "ga__proj+llm__seed0" / "request1.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert first.exists(), "the run never completed its first request"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "cells" / "sustainability" / "ga__proj+llm__seed0" / "request2.json").exists()
    subprocess.run(_run_cmd(killed), check=True, env=env, cwd=ROOT, capture_output=True)
    a = (reference / "results.csv").read_text()
    b = (killed / "results.csv").read_text()
    assert a == b and len(a.splitlines()) > 10


@pytest.mark.parametrize("override,message", [
    ("bogus=1", "unknown key 'bogus'"),
    ("unlearn.bogus=1", "unknown key 'bogus'"),
    ("methods=[ga,nope]", "unknown unlearning method 'nope'"),
    ("targets=[vision_only]", "unknown update target"),
    ("scenario.sustainability.folds=3", "does not divide"),
    ("data.mllmu=/no/such/dir", "real-data runs need"),
    ("unlearn.steps=0", "unlearn.steps"),
    ("seeds=[1,1]", "duplicate seed"),
])
def test_bad_configs_are_one_line_errors_before_training(override, message):
    with pytest.raises(PulseError, match=message) as e:
        load_config(SMALL_CONFIG, [override])
    assert "\n" not in str(e.value)


def test_missing_paths_in_a_real_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {mllmu: /no/mllmu, mmbench: /no/mmbench.tsv}\n"
                   "model: {pretrained: /no/base, finetuned: /no/ft}\n")
    with pytest.raises(PulseError, match="path not found"):
        load_config(cfg)


def test_rerun_with_another_config_refuses_and_keeps_results(small_run, tmp_path):
    from pulse.cli import main
    before = (small_run / "results.csv").read_bytes()
    assert main(["run", str(SMALL_CONFIG), "--out", str(small_run), "--no-report", "unlearn.steps=9"]) == 2
    assert (small_run / "results.csv").read_bytes() == before


def test_paper_configs_validate_with_user_paths(tmp_path):
    for name in ("finetuned", "pretrained", "sustainability", "table3"):
        path = ROOT / "configs" / "paper" / f"{name}.yaml"
        for p in ("mllmu", "ft", "base"):
            (tmp_path / p).mkdir(exist_ok=True)
        (tmp_path / "mmbench.tsv").write_text("")
        cfg = load_config(path, [f"data.mllmu={tmp_path}/mllmu", f"data.mmbench={tmp_path}/mmbench.tsv",
                                 f"model.finetuned={tmp_path}/ft", f"model.pretrained={tmp_path}/base"])
        assert cfg.model.dtype == "bfloat16" and cfg.eval.scoring == "generate"


def test_builtin_defaults_match_the_documented_default_config():
    """`pulse run` without a config reads configs/mini/default.yaml, shipped in the package (pulse/configs); the
    dataclass defaults are the paper/MLLMU-Bench recipe, the mini's own recipe is in its YAML."""
    from importlib.resources import files

    from pulse.config import UnlearnSection, builtin_config_path
    assert builtin_config_path().read_text() == (ROOT / "configs" / "mini" / "default.yaml").read_text()
    assert str(builtin_config_path()).startswith(str(files("pulse")))
    assert load_config(None) == load_config(ROOT / "configs" / "mini" / "default.yaml")
    mini = load_config(None).unlearn
    assert (mini.budget, mini.epochs, mini.lr, mini.format, mini.eos) == ("epochs", 2, 1e-3, "model", True)
    assert (UnlearnSection().budget, UnlearnSection().epochs, UnlearnSection().lr) == ("epochs", 1, 2e-5)
    assert (UnlearnSection().format, UnlearnSection().eos, UnlearnSection().data) == ("mllmu", False, "mcq")


def test_rows_give_circular_and_vanilla_mmbench():
    """results.csv rows for MMBench: "mmbench" is CircularEval, "mmbench_vanilla" rotation 0; each relative to
    request 0's own metric."""
    from pulse.protocol.runner import _rows

    mcq = {"predictions": []}  # no MCQ splits: only the MMBench rows
    ref = {"mcq": mcq, "mmbench": {"circular": 40.0, "vanilla": 80.0, "groups": 10}}
    now = {"circular": 10.0, "vanilla": 60.0, "groups": 10}
    rows = _rows({"request": 1}, {}, mcq, now, ref, "ok")
    mmb = {r["split"]: r for r in rows if r["split"].startswith("mmbench")}
    assert mmb["mmbench"]["accuracy"] == 10.0 and mmb["mmbench"]["relative"] == 25.0
    assert mmb["mmbench_vanilla"]["accuracy"] == 60.0 and mmb["mmbench_vanilla"]["relative"] == 75.0
    assert mmb["mmbench"]["n"] == mmb["mmbench_vanilla"]["n"] == 10
    r0 = {r["split"]: r["relative"] for r in _rows({"request": 0}, {}, mcq, now, None, "ok")}
    assert r0 == {"mmbench": 100.0, "mmbench_vanilla": 100.0}
