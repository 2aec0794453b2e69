"""`pulse run` on the small mini world: every row present, kill-and-resume gives the same results, bad configs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pulse.config import load_config
from pulse.errors import PulseError

from ..conftest import ROOT, SMALL_CONFIG


def test_results_hold_every_cell(small_run):
    everything = pd.read_csv(small_run / "results.csv")
    df = everything[(everything.metric == "accuracy") & (everything.method != "oracle")]
    cfg = load_config(SMALL_CONFIG)
    assert not df["accuracy"].isna().any()
    cells = df.groupby(["scenario", "method", "target", "seed"])["request"].agg(["min", "max"])
    expected = {("finetuned", m, "proj+llm") for m in cfg.methods} | {("finetuned", "ga", "llm")}
    expected |= {(s, m, "proj+llm") for s in ("pretrained", "sustainability") for m in cfg.methods}
    assert {k[:3] for k in cells.index} == expected
    for (scenario, *_), row in cells.iterrows():
        assert row["min"] == 0
        assert row["max"] == (cfg.scenario.sustainability.folds if scenario == "sustainability" else 1)
    # each request has unlearn/retain (and their selection / held-out halves) x image/text/all + mmbench
    # (circular) + mmbench_vanilla; without eval.every / unlearn.stop, only request-level rows at the budget
    one = df[(df.scenario == "finetuned") & (df.method == "ga") & (df.target == "proj+llm") & (df.request == 1)]
    halves = {"unlearn_sel", "unlearn_held", "retain_sel", "retain_held",
              "unlearn_known", "unlearn_known_sel", "unlearn_known_held"}
    assert len(one) == 29 and set(one.split) == {"unlearn", "retain", "mmbench", "mmbench_vanilla"} | halves
    assert set(df["at"]) == {"budget"} and set(df.probe) == {"none"} and df.step.isna().all()
    n = one[one.modality == "all"].set_index("split")["n"]
    assert n["unlearn_sel"] + n["unlearn_held"] == n["unlearn"] and n["unlearn_sel"] == 3 * n["unlearn"] // 5
    sus = df[df.scenario == "sustainability"]
    assert set(sus[sus.request == 1].split) == {"unlearn", "retain", "mmbench", "mmbench_vanilla", "fold_current",
                                                 "folds_done", "folds_pending"} | halves
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
    from pulse.protocol.results import budget_rows

    mcq = {"predictions": []}  # no MCQ splits: only the MMBench rows
    ref = {"mcq": mcq, "mmbench": {"circular": 40.0, "vanilla": 80.0, "groups": 10}}
    now = {"circular": 10.0, "vanilla": 60.0, "groups": 10}
    rows = budget_rows({"request": 1}, {}, mcq, now, ref, "ok")
    mmb = {r["split"]: r for r in rows if r["split"].startswith("mmbench")}
    assert mmb["mmbench"]["accuracy"] == 10.0 and mmb["mmbench"]["relative"] == 25.0
    assert mmb["mmbench_vanilla"]["accuracy"] == 60.0 and mmb["mmbench_vanilla"]["relative"] == 75.0
    assert mmb["mmbench"]["n"] == mmb["mmbench_vanilla"]["n"] == 10
    r0 = {r["split"]: r["relative"] for r in budget_rows({"request": 0}, {}, mcq, now, None, "ok")}
    assert r0 == {"mmbench": 100.0, "mmbench_vanilla": 100.0}


# --- trade-off curves, matched forgetting, equal search budget ---------------------------------------------------

# 6 people, 3 to unlearn: a budget of 4 steps (30 samples, batch 8); checkpoints at 0, 3, 4 (the budget), 6 and
# 8 (the cap)
BUDGET = 4
CURVES = ["scenarios=[finetuned]", "methods=[ga]", "table3_targets=[]", "scenario.finetuned.people=6",
          "scenario.finetuned.unlearn=3", "eval.every=3", "eval.curve_mmbench_groups=4",
          "unlearn.stop.rule=never_learned", "unlearn.stop.max_steps=8", "unlearn.stop.margin=25",
          "sweep={ga: {lr: [0.01]}}"]
CELLS = ("ga", "ga@lr=0.01")


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def curve_runs(small_world, tmp_path_factory):
    """The same curve + matched + sweep run twice: uninterrupted, and killed inside a request, then resumed. The
    kill is an exception from the in-request hook right after an evaluation past the budget — before
    that evaluation's checkpoint is saved — in the first cell that trains past the budget (the reference run
    says which); if none does, at step 4. Returns (reference dir, resumed dir, what the hooks saw)."""
    from pulse.protocol import request, runner

    cfg = load_config(SMALL_CONFIG, CURVES)
    root = tmp_path_factory.mktemp("curves")
    runner.run(cfg, root / "reference", log=lambda *_: None)
    kill, saved = ("ga", 4), 3
    for method in CELLS:
        cell = json.loads((root / "reference" / "cells" / "finetuned" / f"{method}__proj+llm__seed0" /
                           "request1.json").read_text())
        later = [p["step"] for p in cell["curve"] if p["step"] > BUDGET]
        if later:
            kill, saved = (method, later[0]), max(p["step"] for p in cell["curve"] if p["step"] < later[0])
            break
    orig, seen = request.unlearn_request, {"first_k": {}, "kill": kill, "saved": saved}

    def wrapped(killing):
        def unlearn_request(*a, after_step=None, ckpt=None, **kw):
            def hook(k, in_eval):
                seen["first_k"].setdefault((killing, kw["desc"]), k)
                flag = after_step(k, in_eval)
                if killing and k == kill[1] and f" {kill[0]} " in kw["desc"]:
                    seen["checkpoints"] = sorted(p.name for p in ckpt.folder.glob("step-*"))  # + fingerprint.json
                    raise Killed
                return flag
            return orig(*a, after_step=hook, ckpt=ckpt, **kw)
        return unlearn_request

    request.unlearn_request = wrapped(True)
    try:
        with pytest.raises(Killed):
            runner.run(cfg, root / "resumed", log=lambda *_: None)
        request.unlearn_request = wrapped(False)
        runner.run(cfg, root / "resumed", log=lambda *_: None)
    finally:
        request.unlearn_request = orig
    return root / "reference", root / "resumed", seen


@pytest.mark.slow
def test_kill_inside_a_request_resumes_from_its_checkpoint_with_identical_files(curve_runs):
    reference, resumed, seen = curve_runs
    method, k = seen["kill"]
    # every evaluation is saved with a checkpoint (only the newest kept): the kill loses the evaluation at k only
    assert seen["checkpoints"] == [f"step-{seen['saved']}"]
    desc = f"finetuned {method} proj+llm seed 0 request 1/1"
    assert seen["first_k"][(True, desc)] == 0 and seen["first_k"][(False, desc)] == seen["saved"] + 1
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file()
                   and p.name not in ("manifest.json", "run.log"))
    assert Path("results.csv") in files and Path("cells/finetuned/sweep__seed0.json") in files
    assert files == sorted(p.relative_to(resumed) for p in resumed.rglob("*") if p.is_file()
                           and p.name not in ("manifest.json", "run.log"))
    for f in files:
        assert (reference / f).read_bytes() == (resumed / f).read_bytes(), f
    assert not list(resumed.rglob("*.progress"))


@pytest.mark.slow
def test_matched_point_is_the_first_checkpoint_at_or_below_the_target(curve_runs):
    from pulse.protocol.curves import first_reaching

    reference, _, _ = curve_runs
    df = pd.read_csv(reference / "results.csv")
    m = json.loads((reference / "manifest.json").read_text())
    target = m["matched_targets"]["finetuned/seed0"]["target"]
    assert m["protocol"]["matched_forgetting"]["sustainability"].startswith("fixed budget")
    for method in CELLS:
        d = df[(df.method == method) & (df.request == 1)]
        ck = d[(d["at"] == "checkpoint") & (d.split == "unlearn_sel") & (d.modality == "all")]
        points = list(zip(ck.step.astype(int), ck.accuracy))
        assert [s for s, _ in points] == [0, 3, BUDGET, 6, 8][:len(points)] and len(points) >= 3
        cell = json.loads((reference / "cells" / "finetuned" / f"{method}__proj+llm__seed0" / "request1.json")
                          .read_text())
        step = first_reaching(points, target, cap=8)
        matched = d[d["at"] == "matched"]
        assert set(matched.split) == {"unlearn_held", "retain_held", "unlearn_sel", "retain_sel", "mmbench",
                                      "mmbench_vanilla", "unlearn_known_held", "unlearn_known_sel"}
        if step is None:
            assert set(matched.status) == {"not_reached"} and matched.accuracy.isna().all()
            assert set(matched.step) == {8} and cell["training"]["steps_done"] == 8
        else:
            assert set(matched.step) == {step} and set(matched.status) == {"ok"}
            assert cell["training"]["steps_done"] == max(BUDGET, step)  # one trajectory: the budget, then the match
            sel = matched[(matched.split == "unlearn_sel") & (matched.modality == "all")].accuracy.item()
            assert sel == dict(points)[step] <= target + 1e-9
        # the budget's checkpoint is read from the budget evaluation: the same numbers
        budget = d[(d["at"] == "budget") & (d.split == "unlearn_sel") & (d.modality == "all")].accuracy.item()
        assert budget == dict(points)[BUDGET] and cell["training"]["steps"] == BUDGET
    assert not df[df["at"] == "matched"].empty


@pytest.mark.slow
def test_never_learned_reference_is_the_base_model_on_the_selection_half(curve_runs, small_world):
    """Recomputed independently: the pretrained checkpoint's full MCQ evaluation of D_unlearn restricted to the
    selection half (which also pins that scoring a subset equals the full evaluation restricted)."""
    from pulse.data.mllmu import read_people
    from pulse.eval.mcq import evaluate_mcq
    from pulse.models.load import load_model
    from pulse.protocol.halves import keys_of

    reference, _, _ = curve_runs
    m = json.loads((reference / "manifest.json").read_text())
    ids = set(m["splits"]["finetuned/seed0"]["unlearn"])
    people = [p for p in sorted(read_people(small_world / "mllmu", "Full_Set"), key=lambda p: p.id) if p.id in ids]
    full = evaluate_mcq(load_model(small_world / "models" / "pretrained"), people)
    sel = keys_of(people, "sel")
    chosen = [p for p in full.predictions if (p["person_id"], p["form"], p["index"]) in sel]
    ref = json.loads((reference / "cells" / "finetuned" / "reference__seed0.json").read_text())
    assert ref["n"] == len(chosen) == 6 * len(people)
    assert ref["reference"] == pytest.approx(100 * sum(p["correct"] for p in chosen) / len(chosen))
    assert ref["target"] == pytest.approx(ref["reference"] + 25) == m["matched_targets"]["finetuned/seed0"]["target"]


@pytest.mark.slow
def test_sweep_records_the_winner_among_configurations_reaching_the_target(curve_runs):
    from pulse.protocol.curves import pick_winner

    reference, _, _ = curve_runs
    m = json.loads((reference / "manifest.json").read_text())
    sweep = m["sweep"]["finetuned/seed0"]["ga/proj+llm"]
    assert [c["name"] for c in sweep["candidates"]] == ["ga@lr=0.01"]
    assert sweep["winner"] == pick_winner(sweep["candidates"])
    assert m["protocol"]["sweep"]["variants"]["ga@lr=0.01"] == {"method": "ga", "lr": 0.01, "params": {}}
    df = pd.read_csv(reference / "results.csv")
    for c in sweep["candidates"]:
        row = df[(df.method == c["name"]) & (df["at"] == "matched") & (df.split == "retain_sel")
                 & (df.modality == "all")]
        assert row.status.item() == ("ok" if c["reached"] else "not_reached")
        if c["reached"]:
            assert row.accuracy.item() == pytest.approx(c["retain_sel"], abs=1e-4)
    cell = json.loads((reference / "cells/finetuned/ga@lr=0.01__proj+llm__seed0/request1.json").read_text())
    assert cell["meta"]["method"] == "ga@lr=0.01" and cell["losses"][0]["lr"] == 0.01  # the variant's recipe
    base = json.loads((reference / "cells/finetuned/ga__proj+llm__seed0/request1.json").read_text())
    assert base["losses"][0]["lr"] == 0.001 and base["request_seed"] == cell["request_seed"]  # same batches, init


def test_matched_evaluation_reuses_the_checkpoint_and_equals_a_full_evaluation(small_world, tmp_path):
    """At a matched step that is neither 0 nor the budget, only the held-out half and the MMBench rows outside the
    curve subset are evaluated; the record equals a full evaluation of the same model."""
    from contextlib import contextmanager

    from pulse.protocol import curves as C
    from pulse.protocol import baseline, context, runner, track as tracking

    ctx = runner.Context(load_config(SMALL_CONFIG, CURVES), tmp_path, log=lambda *_: None)
    people = baseline.scenario_people(ctx, "finetuned", 0, None)
    unlearn, retain = people.unlearn, people.retain
    lm, enc = ctx.model("finetuned")
    model, sets = lm.model, context.eval_sets(ctx, "finetuned", unlearn, retain)
    halves = C.half_keys(unlearn + retain, 0)

    @contextmanager
    def in_eval():
        yield model

    calls = []
    ctx.mmbench_eval = lambda lm_, enc_, items, _f=ctx.mmbench_eval: calls.append(len(items)) or _f(lm_, enc_, items)
    stop = {"reference": 0.0, "margin": 100.0, "target": 100.0}  # any accuracy reaches it: matched at step 3
    track = tracking.Track(ctx, lm, enc, sets, halves, None, 4, 8, 8, stop)
    assert track.after_step(3, in_eval) == "checkpoint"
    mt, point = track.state["matched"], track.state["curve"][0]
    assert mt["step"] == 3 and mt["reached"] and mt["sel"] == point["sel"]
    assert calls == [len(ctx.curve_mmbench), len(ctx.mmbench) - len(ctx.curve_mmbench)]  # no row twice
    mcq, mmb = ctx.evaluate(lm, enc, sets)
    assert mt["sel"] == C.encode(halves["sel"], mcq["predictions"])
    assert mt["held"] == C.encode(halves["held"], mcq["predictions"]) and "-" not in mt["held"]
    assert {k: mt["mmbench"][k] for k in ("circular", "vanilla", "groups")} == \
        {k: mmb[k] for k in ("circular", "vanilla", "groups")}
    assert point["mmbench"] == context.sub_point(ctx, mmb)
    assert track.after_step(4, in_eval) == "stop"  # the budget, target met: the request ends here


@pytest.mark.slow
def test_probes_run_after_the_last_request_and_resume(small_world, tmp_path):
    """The runner calls the probes on the model after a cell's last request, once per cell, writes their rows
    (and the never-learned control once per scenario and seed) into results.csv; a run killed between the last
    request and the probes rebuilds the model from the saved requests and gives the same files."""
    import pandas as pd

    from pulse.protocol import runner

    cfg = load_config(SMALL_CONFIG, ["scenarios=[finetuned]", "methods=[ga]", "table3_targets=[]",
                                     "probes.run=[relearn,routes,quant]", "probes.scenarios=[finetuned]",
                                     "probes.relearn.steps=2", "probes.quant_bits=[4]", "save_adapters=true"])
    runner.run(cfg, tmp_path / "a", log=lambda *_: None)
    df = pd.read_csv(tmp_path / "a" / "results.csv")
    probes = set(df["probe"])
    assert {"none", "relearn", "route_image", "route_text", "route_name_only", "route_all", "quant4"} <= probes
    control = df[df["method"] == "never_learned"]
    assert len(control) and set(control["probe"]) == {"relearn"}
    assert len(control) == len(control.drop_duplicates(["split", "modality", "request"]))
    folder = tmp_path / "a" / "cells" / "finetuned" / "ga__proj+llm__seed0"
    first = (folder / "probes.json").read_bytes()
    (folder / "probes.json").unlink()  # as if killed after the last request, before the probes
    runner.run(cfg, tmp_path / "a", log=lambda *_: None)
    assert (folder / "probes.json").read_bytes() == first
    assert pd.read_csv(tmp_path / "a" / "results.csv").equals(df)


@pytest.mark.slow
def test_probes_act_on_the_budget_model_when_training_went_on_for_matched_forgetting(small_world, tmp_path,
                                                                                       monkeypatch):
    """A request trained past its budget (matched forgetting not reached) ends on another model than the one its
    budget rows describe; the probes must see the budget model, whose predictions are the cell's: kept from the
    training (its LoRA weights at the budget) or, after a resume, replayed — the same weights bit for bit."""
    import torch

    from pulse.protocol import cell as protocol_cell, runner

    seen = []

    def spy(ctx, scenario, seed, lm, enc, sets, ref, meta, forget_of, cell=None, folder=None):
        seen.append((cell, ctx.mcq(lm, enc, sets)["predictions"],
                     {k: v.clone() for k, v in lm.model.state_dict().items()}))
        return {}  # writes no probes.json: the next run calls the probes again, from the stored request

    monkeypatch.setattr(protocol_cell, "run_probes", spy)
    cfg = load_config(SMALL_CONFIG, ["scenarios=[finetuned]", "methods=[ga]", "table3_targets=[]", "eval.every=2",
                                     "unlearn.stop={rule: never_learned, margin: -100.0, max_steps: 8}",
                                     "unlearn.lr=0.01", "probes.run=[quant]", "probes.scenarios=[finetuned]"])
    first, resumed = [], []
    runner.run(cfg, tmp_path / "a", log=first.append)
    runner.run(cfg, tmp_path / "a", log=resumed.append)  # the resumed run replays the request to its budget
    assert not any("replaying" in line for line in first) and any("replaying" in line for line in resumed)
    (cell, preds, kept), (_, preds2, replayed) = seen
    assert cell["training"]["steps_done"] == 8 > cell["training"]["steps"]  # went on to the cap
    key = lambda p: (p["person_id"], p["form"], p["index"], p["prediction"])
    assert sorted(map(key, preds)) == sorted(map(key, cell["mcq"]["predictions"])) == sorted(map(key, preds2))
    assert kept.keys() == replayed.keys() and all(torch.equal(kept[k], replayed[k]) for k in kept)


@pytest.mark.slow
def test_deleted_reference_and_damaged_sweep_are_recomputed_identically(curve_runs, tmp_path):
    """cells/<scenario>/reference__seed<S>.json deleted: the rerun evaluates the never-learned reference again;
    sweep__seed<S>.json is rebuilt from the cells by every run, so a damaged one is simply rewritten. Every file
    equals the uninterrupted run's."""
    import shutil

    from pulse.protocol import runner

    reference, _, _ = curve_runs
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "cells" / "finetuned" / "reference__seed0.json").unlink()
    (run / "cells" / "finetuned" / "sweep__seed0.json").write_bytes(b"\x00garbage")
    runner.run(load_config(SMALL_CONFIG, CURVES), run, log=lambda *_: None)
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file()
                   and p.name not in ("manifest.json", "run.log"))
    assert files == sorted(p.relative_to(run) for p in run.rglob("*") if p.is_file()
                           and p.name not in ("manifest.json", "run.log"))
    for f in files:
        assert (reference / f).read_bytes() == (run / f).read_bytes(), f


def test_each_phase_keeps_one_encoder_for_fresh_models(small_world, tmp_path):
    """Context.model: a fresh model from disk every call, one encoder per phase (its caches serve every cell)."""
    from pulse.protocol import runner

    ctx = runner.Context(load_config(SMALL_CONFIG), tmp_path, log=lambda *_: None)
    (lm1, enc1), (lm2, enc2) = ctx.model("finetuned"), ctx.model("finetuned")
    lm3, enc3 = ctx.model("pretrained")
    assert lm1.model is not lm2.model and enc1 is enc2 and enc3 is not enc1
    lm1.model.lm_head.weight.data.zero_()  # the second copy is not touched
    assert lm2.model.lm_head.weight.abs().sum() > 0
