"""A run directory that never lies: a diverged request leaves empty accuracies and ends its sequence;
a damaged stored file is one line naming it and what to delete; deleting it is enough to recompute it."""
import json
import math
import re
import shutil

import pandas as pd
import pytest
import torch

from pulse.config import load_config
from pulse.errors import PulseError
from pulse.protocol import baseline, request, rundir, runner

from ..conftest import SMALL_CONFIG

# a two-request sequence on 6 people (folds of 2: 3 steps per request), MMBench on 4 question groups
SEQ = ["scenarios=[sustainability]", "methods=[ga]", "scenario.finetuned.people=6", "eval.mmbench_groups=4"]
CELL = "cells/sustainability/ga__proj+llm__seed0"


def _run(tmp, overrides=SEQ, logs=None):
    runner.run(load_config(SMALL_CONFIG, overrides), tmp, log=(logs.append if logs is not None else lambda *_: None))
    return tmp


def _files(run):
    return sorted(p.relative_to(run) for p in run.rglob("*") if p.is_file()
                  and p.name not in ("manifest.json", "run.log"))


def _assert_same_files(a, b):
    assert _files(a) == _files(b)
    for f in _files(a):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


@pytest.fixture(scope="module")
def seq_run(small_world, tmp_path_factory):
    """The sequence run uninterrupted (adapters cleaned up at the end, as by default)."""
    return _run(tmp_path_factory.mktemp("seq") / "run")


# --- diverged requests ---------------------------------------------------------------------------------------------

class NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient: the loss stays finite, its gradient does not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


@pytest.mark.slow
def test_a_diverged_request_ends_its_sequence_with_empty_accuracies(seq_run, tmp_path, monkeypatch):
    """Request 1's gradient is NaN at its step 1 (of 3): the update is not applied (the saved adapter is finite),
    the request is not evaluated, request 2 is not run; every row of both says diverged with empty accuracy,
    relative and n; request 0 is untouched; the report reads the table; a rerun changes nothing."""
    from pulse.report import build_report
    from pulse.report.agg import summarize
    from pulse.report.load import read_results
    from pulse.unlearn import loop

    run = tmp_path / "run"
    (run / "cells" / "sustainability").mkdir(parents=True)  # request 0 as evaluated by the uninterrupted run
    shutil.copy(seq_run / "cells/sustainability/request0__seed0.json", run / "cells/sustainability")
    calls, orig = [], loop.method_loss

    def method_loss(*a, **kw):
        loss, parts = orig(*a, **kw)
        calls.append(parts["loss"])
        return (NanGrad.apply(loss) if len(calls) == 2 else loss), parts
    monkeypatch.setattr(loop, "method_loss", method_loss)
    logs = []
    _run(run, SEQ + ["save_adapters=true"], logs)
    monkeypatch.setattr(loop, "method_loss", orig)

    cell = json.loads((run / CELL / "request1.json").read_text())
    assert cell["status"] == "diverged" and cell["mcq"] is None and cell["not_run"] == [2]
    assert cell["training"]["diverged"]["step"] == 1 and cell["training"]["diverged"]["reason"] == "gradient"
    assert [x["step"] for x in cell["losses"]] == [0, 1] and all(math.isfinite(x["loss"]) for x in cell["losses"])
    assert not (run / CELL / "request2.json").exists() and len(calls) == 2
    from safetensors.torch import load_file
    adapter = load_file(str(run / CELL / "request1.adapter" / "adapter_model.safetensors"))
    assert adapter and all(torch.isfinite(t).all() for t in adapter.values())
    assert any("request 1 diverged (non-finite gradient at step 1)" in m and "request 2 is not run" in m
               for m in logs)

    text = (run / "results.csv").read_text()
    assert "nan" not in text.lower()  # no NaN reaches the table
    df = pd.read_csv(run / "results.csv")
    ref = pd.read_csv(seq_run / "results.csv")
    ref = ref[ref.metric == "accuracy"]  # a diverged request measured nothing else
    after = df[df.request >= 1]
    assert set(after.status) == {"diverged"}
    assert after[["accuracy", "relative", "n"]].isna().all().all()
    for r in (1, 2):  # the same rows as the uninterrupted run's, emptied
        assert sorted(zip(after[after.request == r].split, after[after.request == r].modality)) == \
            sorted(zip(ref[ref.request == r].split, ref[ref.request == r].modality))
    pd.testing.assert_frame_equal(df[df.request == 0].reset_index(drop=True),
                                  ref[ref.request == 0].reset_index(drop=True), check_dtype=False)

    table = read_results(run / "results.csv")  # the report's validation accepts the empty accuracies
    c = summarize(table, scenario="sustainability", method="ga", request=2, split="unlearn", modality="all")
    assert c.n_seeds == 0 and c.n_diverged == 1
    html = build_report([run], tmp_path / "report").read_text()
    assert "Diverged measurements" in html

    def no_training(*a, **kw):
        raise AssertionError("a diverged cell was run again")
    monkeypatch.setattr(request, "unlearn_request", no_training)
    before = (run / "results.csv").read_bytes()
    _run(run, SEQ + ["save_adapters=true"])
    assert (run / "results.csv").read_bytes() == before


# --- damaged files: one line naming the file and what to delete ----------------------------------------------------

FT = ["scenarios=[finetuned]", "methods=[ga]", "table3_targets=[]"]
STORED = [  # (file, config overrides under which the run reads it)
    (f"{CELL}/request1.json", SEQ),
    ("cells/sustainability/request0__seed0.json", SEQ),
    ("cells/finetuned/reference__seed0.json", FT + ["unlearn.stop.rule=never_learned", "eval.every=3"]),
    ("cells/finetuned/ga__proj+llm__seed0/probes.json", FT + ["probes.run=[quant]", "probes.scenarios=[finetuned]"]),
    ("cells/finetuned/probe_control__seed0.json", FT),
    ("cells/finetuned/probe_routes_request0__seed0.json", FT),
    ("cells/finetuned/probe_quant_request0__seed0.json", FT),
    ("selection.json", ["scenarios=[pretrained]", "methods=[ga]"]),
]
DAMAGE = {"truncated": b'{"meta": {"scenario": "sustainability", "met', "garbage": b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
          "a list": b"[1, 2]\n", "wrong schema": b'{"meta": 1, "mcq": 1, "accuracy": 1}\n'}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("rel,overrides", STORED, ids=[f.split("/")[-1] for f, _ in STORED])
def test_a_damaged_stored_file_is_one_line_before_anything_runs(tmp_path, rel, overrides, damage, monkeypatch):
    monkeypatch.setattr(rundir, "Context", lambda *a: pytest.fail("loaded before the check"))
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(DAMAGE[damage])
    with pytest.raises(PulseError) as e:
        _run(tmp_path, overrides)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: damaged (")
    assert msg.endswith(f"delete {path} and rerun the same command to recompute it")


def test_a_request_file_of_another_cell_or_request_is_damaged(tmp_path):
    good = {"meta": {"scenario": "sustainability", "method": "ga", "target": "proj+llm", "seed": 0, "request": 2},
            "status": "ok", "mcq": {}, "mmbench": {}, "splits": {}, "halves": {}}
    path = tmp_path / CELL / "request1.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(good))  # request 2's content under request 1's name
    with pytest.raises(PulseError, match=r"request1.json: damaged \(meta.request is 2, the path says 1\); delete "):
        _run(tmp_path)
    path.write_text(json.dumps({**good, "meta": {**good["meta"], "request": 1}, "status": "ok", "mcq": None}))
    with pytest.raises(PulseError, match=r"damaged \(status ok without its evaluation\)"):
        _run(tmp_path)


def test_the_cli_says_it_in_one_line_with_exit_2(tmp_path, capsys):
    from pulse.cli import main

    path = tmp_path / CELL / "request1.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"meta": ')
    assert main(["run", str(SMALL_CONFIG), "--out", str(tmp_path), "--no-report", *SEQ]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and f"delete {path}" in err


def test_a_damaged_checkpoint_or_adapter_names_the_folder_to_delete(tmp_path):
    from pulse.config import Recipe
    from pulse.protocol import stored
    from pulse.unlearn.loop import Checkpoints, fit

    named = [("w", torch.nn.Parameter(torch.zeros(2)))]
    ckpt = Checkpoints(tmp_path / ".request1.progress", every=1)
    fit(named, [0, 1], lambda s: (named[0][1].sum(), {"loss": 0.0}), Recipe(lr=0.1), ckpt=ckpt)
    state = ckpt.latest() / "state.json"
    state.write_text(state.read_text()[:40])
    with pytest.raises(PulseError) as e:
        fit(named, [0, 1], lambda s: (named[0][1].sum(), {"loss": 0.0}), Recipe(lr=0.1), ckpt=ckpt)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{ckpt.latest()}: damaged checkpoint (")
    assert f"delete {ckpt.folder} and rerun the same command" in str(e.value)

    adapter = tmp_path / "request1.adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(PulseError, match=rf"^{re.escape(str(adapter))}: damaged \(.*\); delete "
                                         rf"{re.escape(str(adapter))} and rerun the same command"):
        stored.apply(torch.nn.Linear(2, 2), adapter)


# --- a damaged manifest, a full disk --------------------------------------------------------------------------------

def _cli_run(run) -> int:
    from pulse.cli import main
    return main(["run", str(SMALL_CONFIG), "--out", str(run), "--no-report", *SEQ])


@pytest.mark.slow
def test_a_truncated_manifest_is_one_line_and_deleting_it_recomputes_nothing(seq_run, tmp_path, capsys, monkeypatch):
    from pulse.protocol import context

    run = tmp_path / "run"
    shutil.copytree(seq_run, run)
    manifest = run / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    before = {f: (run / f).read_bytes() for f in _files(run)}
    assert _cli_run(run) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {manifest}: damaged (not valid JSON")
    assert "delete it and rerun the same command" in err
    assert {f: (run / f).read_bytes() for f in _files(run)} == before
    manifest.unlink()
    monkeypatch.setattr(context.Context, "model", lambda *a: pytest.fail("a model was loaded: something recomputed"))
    assert _cli_run(run) == 0
    _assert_same_files(seq_run, run)
    assert json.loads(manifest.read_text())["folds"]  # written anew, with the baseline's record


@pytest.mark.slow
def test_a_full_disk_while_saving_an_adapter_is_one_line_and_the_rerun_gives_the_same_files(seq_run, tmp_path, capsys,
                                                                                             monkeypatch):
    from peft import PeftModel
    from safetensors import SafetensorError

    run, saved, original = tmp_path / "run", [], PeftModel.save_pretrained

    def save_pretrained(self, *args, **kwargs):  # request 2's adapter meets a full disk
        saved.append(args[0])
        if len(saved) == 2:
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PeftModel, "save_pretrained", save_pretrained)
    assert _cli_run(run) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {run / CELL / '.request2.adapter.partial'}: cannot save what the request changed "
                          f"(no space left on device); free some space and rerun the same command")
    assert (run / CELL / "request1.json").is_file() and not (run / CELL / "request2.json").exists()
    monkeypatch.setattr(PeftModel, "save_pretrained", original)
    assert _cli_run(run) == 0
    _assert_same_files(seq_run, run)


# --- deleting is enough ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_deleting_request0_and_the_last_request_recomputes_them_identically(seq_run, tmp_path):
    """The finished sequence has no adapters left: request 0 is evaluated again, request 1 retrained (its file
    confirmed, kept), request 2 computed — every file byte-identical to the uninterrupted run's."""
    run = tmp_path / "run"
    shutil.copytree(seq_run, run)
    assert not list(run.glob("cells/*/*/*.adapter"))
    (run / "cells/sustainability/request0__seed0.json").unlink()
    (run / CELL / "request2.json").unlink()
    logs = []
    _run(run, logs=logs)
    assert any("the saved adapter of request 1 is gone; retraining from request 1" in m for m in logs)
    assert not any("differs" in m for m in logs)
    _assert_same_files(seq_run, run)


@pytest.mark.slow
def test_a_retrained_request_that_differs_from_its_file_is_rewritten(seq_run, tmp_path):
    """Request 1's file disagrees with what retraining gives (a loss edited): it is rewritten, said in the log,
    and request 2 comes from the same trajectory — the files equal the uninterrupted run's again."""
    run = tmp_path / "run"
    shutil.copytree(seq_run, run)
    path = run / CELL / "request1.json"
    cell = json.loads(path.read_text())
    cell["losses"][0]["loss"] += 1.0
    path.write_text(json.dumps(cell, indent=2) + "\n")
    (run / CELL / "request2.json").unlink()
    logs = []
    _run(run, logs=logs)
    assert f"{path}: the recomputed request differs from the stored file; rewritten (later requests are " \
           f"recomputed too)" in logs
    _assert_same_files(seq_run, run)


@pytest.mark.slow
def test_a_deleted_selection_is_recomputed_identically(small_world, tmp_path):
    """selection.json (the base model's accuracy on every celebrity) deleted: evaluated again, the same bytes."""
    ctx = runner.Context(load_config(SMALL_CONFIG, ["scenarios=[pretrained]", "methods=[ga]"]), tmp_path,
                         log=lambda *_: None)
    baseline.selection(ctx)
    first = (tmp_path / "selection.json").read_bytes()
    (tmp_path / "selection.json").unlink()
    baseline.selection(ctx)
    assert (tmp_path / "selection.json").read_bytes() == first
