"""Fingerprints of run-directory files (protocol/fingerprint.py): identity rules, which config parts a file holds,
and `pulse run` refusing a resume that would mix runs."""
import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from pulse.config import load_config
from pulse.errors import PulseError
from pulse.protocol import fingerprint as F

from ..conftest import SMALL_CONFIG

CELL = ("cells", "finetuned", "ga__proj+llm__seed0", "request1.json")


# --- identity of files ------------------------------------------------------------------------------------------

def test_small_file_is_its_size_and_full_sha256_whatever_its_mtime(tmp_path):
    f = tmp_path / "config.json"
    f.write_bytes(b'{"a": 1}')
    assert F.file_identity(f) == "8 sha256:" + hashlib.sha256(b'{"a": 1}').hexdigest()
    before = F.file_identity(f)
    os.utime(f, (1, 1))
    assert F.file_identity(f) == before
    f.write_bytes(b'{"a": 2}')  # same size, other content
    assert F.file_identity(f) != before


def test_large_file_is_sampled_header_windows_and_size(tmp_path, monkeypatch):
    """Weights above WEIGHTS_FULL_MAX: size + first/last EDGE bytes + SAMPLES windows (+ a safetensors header); a
    byte outside every window is not seen (the documented limit), one inside is. Data files are hashed whole."""
    monkeypatch.setattr(F, "WEIGHTS_FULL_MAX", 1000)
    monkeypatch.setattr(F, "EDGE", 16)
    monkeypatch.setattr(F, "WINDOW", 8)
    monkeypatch.setattr(F, "SAMPLES", 3)  # windows at 0, (size - 8) // 2, size - 8
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    data = bytearray(struct.pack("<Q", len(header)) + header + bytes(4000))
    f = tmp_path / "model.safetensors"
    f.write_bytes(data)
    ident = F.file_identity(f)
    size = len(data)
    assert ident.startswith(f"{size} sampled-sha256:")
    h = hashlib.sha256(str(size).encode() + header)
    for off, n in [(0, 16), (size - 16, 16), (0, 8), ((size - 8) // 2, 8), (size - 8, 8)]:
        h.update(bytes(data[off:off + n]))
    assert ident == f"{size} sampled-sha256:{h.hexdigest()}"
    unseen = (size - 8) // 4  # between the first and the middle window
    data[unseen] = 1
    f.write_bytes(data)
    assert F.file_identity(f) == ident
    data[(size - 8) // 2 + 3] = 1  # inside the middle window
    f.write_bytes(data)
    assert F.file_identity(f) != ident
    tsv = tmp_path / "mmbench.tsv"
    tsv.write_bytes(bytes(data))
    assert F.file_identity(tsv) == f"{size} sha256:{hashlib.sha256(bytes(data)).hexdigest()}"


def test_folder_identity_skips_hidden_files_and_keeps_relative_names(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"x")
    (tmp_path / ".lock").write_bytes(b"y")
    (tmp_path / "b.json").write_bytes(b"")
    assert list(F.folder_identity(tmp_path)) == ["b.json", "sub/a.bin"]
    assert F.folder_identity(tmp_path / "missing") == {}
    assert list(F.folder_identity(tmp_path / "b.json")) == [""]


# --- what a file holds ------------------------------------------------------------------------------------------

def _ctx(tmp_path, *overrides):
    cfg = load_config(SMALL_CONFIG, list(overrides))
    ident = F.run_identity(cfg, {}, None, None, {"device": "cpu", "dtype": "float32"}, "likelihood",
                           {"torch": "2"}, "abc")
    return SimpleNamespace(cfg=cfg, out=tmp_path, identity=ident)


def _fp(tmp_path, rel, *overrides):
    return F.expected(_ctx(tmp_path, *overrides), rel)


def test_a_method_cell_ignores_other_methods_seeds_targets_and_probes(tmp_path):
    base = _fp(tmp_path, CELL)
    assert base["config"]["unlearn.lr"] == 0.001 and base["config"]["model.device"] == "cpu"
    for same in (["methods=[ga,npo]"], ["seeds=[0,1]"], ["targets=[proj+llm,llm]"], ["unlearn.params.npo.beta=0.5"],
                 ["probes.run=[quant]"], ["name=other", "save_adapters=true"], ["scenarios=[finetuned]"]):
        if "npo" in same[0]:
            same = ["methods=[ga,npo]", *same]
        assert _fp(tmp_path, CELL, *same) == base, same
    for key, value, shown in (("unlearn.lr", "0.002", "0.002"), ("scenario.finetuned.unlearn", "2", "2"),
                              ("eval.batch_size", "3", "3"), ("unlearn.lora_rank", "4", "4")):
        refused, _ = F.difference(base, _fp(tmp_path, CELL, f"{key}={value}"))
        assert refused.startswith(f"{key}=") and refused.endswith(f"this run has {shown}"), refused


def test_method_parameters_resolved_with_defaults_and_request0_independent_of_the_recipe(tmp_path):
    npo = ("cells", "finetuned", "npo__proj+llm__seed0", "request1.json")
    base = _fp(tmp_path, npo, "methods=[ga,npo]")
    beta = base["config"]["unlearn.params.npo.beta"]  # NPO's default, resolved
    assert _fp(tmp_path, npo, "methods=[ga,npo]", f"unlearn.params.npo.beta={beta}") == base  # explicit default
    refused, _ = F.difference(base, _fp(tmp_path, npo, "methods=[ga,npo]", "unlearn.params.npo.beta=0.25"))
    assert refused == f"unlearn.params.npo.beta={beta}, this run has 0.25"
    r0 = ("cells", "finetuned", "request0__seed0.json")
    assert _fp(tmp_path, r0, "unlearn.lr=0.5") == _fp(tmp_path, r0)
    assert _fp(tmp_path, r0, "eval.demo_seed=3") != _fp(tmp_path, r0)
    sus = ("cells", "sustainability", "ga__proj+llm__seed0", "request2.json")
    assert _fp(tmp_path, sus, "unlearn.stop.margin=5") == _fp(tmp_path, sus)  # fixed budget only
    assert _fp(tmp_path, sus, "scenario.sustainability.folds=4") != _fp(tmp_path, sus)


def test_difference_refuses_config_inputs_and_version_but_warns_on_git_and_libraries(tmp_path):
    want = _fp(tmp_path, CELL)
    assert F.difference(want, want) == (None, [])
    other = {**want, "git": "def", "versions": {"torch": "3"}}
    assert F.difference(other, want) == (None, ["git commit def, this run has abc", "torch 3, this run has 2"])
    assert F.difference({**want, "pulse": "0.0.1"}, want)[0].startswith("pulse 0.0.1, this run has ")
    assert "no fingerprint" in F.difference(None, want)[0]
    a = {**want, "inputs": {"model.finetuned/model.safetensors": "10 sha256:" + "a" * 64}}
    b = {**want, "inputs": {"model.finetuned/model.safetensors": "10 sha256:" + "b" * 64}}
    assert F.difference(a, b)[0] == ("model.finetuned/model.safetensors=10 bytes, sha256:aaaaaaaaaaaaaaaaaaaa…, "
                                     "this run has 10 bytes, sha256:bbbbbbbbbbbbbbbbbbbb…")


# --- `pulse run` on the small mini world ------------------------------------------------------------------------

BASE = ["scenarios=[finetuned]", "methods=[ga]", "table3_targets=[]"]
GA = Path("cells/finetuned/ga__proj+llm__seed0")


@pytest.fixture(scope="module")
def base_run(small_world, tmp_path_factory) -> Path:
    """One finished run (fine-tuned scenario, GA, seed 0) that each test copies."""
    from pulse.protocol.runner import run

    out = tmp_path_factory.mktemp("fingerprint-runs") / "base"
    run(load_config(SMALL_CONFIG, BASE), out, log=lambda *_: None)
    return out


def _copy(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base, out)
    return out


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a run directory but run.log and manifest.json (which each invocation appends to / rewrites)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("run.log", "manifest.json")}


@pytest.fixture
def no_compute(monkeypatch):
    """Fail if anything loads a model (every evaluation and training starts with Context.model)."""
    from pulse.protocol import runner

    def boom(*_a, **_k):
        raise AssertionError("a model was loaded: something was recomputed")
    monkeypatch.setattr(runner.Context, "model", boom)


def _run(out, *overrides, log=None):
    from pulse.protocol.runner import run
    return run(load_config(SMALL_CONFIG, [*BASE, *overrides]), out, log=log or (lambda *_: None))


def _edit(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_resume_after_changing_the_lr_is_refused_naming_file_and_key(base_run, tmp_path, capsys):
    from pulse.cli import main

    out = _copy(base_run, tmp_path)
    before, manifest = _files(out), (out / "manifest.json").read_bytes()
    assert main(["run", str(SMALL_CONFIG), "--out", str(out), "--no-report", *BASE, "unlearn.lr=0.002"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err == (f"error: {out / GA}/request1.json was made with unlearn.lr=0.001, this run has 0.002; use a new "
                   f"--out or delete the cell ({out / GA})\n")
    assert _files(out) == before and (out / "manifest.json").read_bytes() == manifest  # nothing written


def test_deleting_the_manifest_does_not_relabel_cells(base_run, tmp_path, no_compute):
    out = _copy(base_run, tmp_path)
    (out / "manifest.json").unlink()
    with pytest.raises(PulseError, match=r"request1\.json was made with unlearn\.lr=0\.001, this run has 0\.002"):
        _run(out, "unlearn.lr=0.002")
    with pytest.raises(PulseError, match=r"cells/finetuned/request0__seed0\.json was made with eval\.batch_size=64, "
                                         r"this run has 3; use a new --out or delete .*request0__seed0\.json "
                                         r"\(2 files"):
        _run(out, "eval.batch_size=3")  # request 0 is checked too (and the GA cell, which compares against it)
    assert not (out / "manifest.json").exists()


def test_a_replaced_checkpoint_is_refused_and_an_identical_copy_accepted(small_world, base_run, tmp_path,
                                                                          no_compute):
    world = tmp_path / "world"
    shutil.copytree(small_world, world)
    paths = [f"data.mllmu={world}/mllmu", f"data.mmbench={world}/mmbench.tsv",
             f"model.pretrained={world}/models/pretrained", f"model.finetuned={world}/models/finetuned"]
    out = _copy(base_run, tmp_path)
    before = _files(out)
    _run(out, *paths)  # the same bytes elsewhere: identity is content, not path
    assert _files(out) == before
    shutil.rmtree(out / GA)  # killed before the GA cell finished; then the fine-tuned weights change
    weights = world / "models" / "finetuned" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the lowest bits of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(PulseError, match=r"request0__seed0\.json was made with model\.finetuned/model\.safetensors="):
        _run(out, *paths)
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    paths[-1] = f"model.finetuned={world}/models/pretrained"  # another checkpoint
    with pytest.raises(PulseError, match=r"request0__seed0\.json was made with model\.finetuned/"):
        _run(out, *paths)


@pytest.mark.slow
def test_adding_a_method_and_a_seed_reuses_every_cell_byte_for_byte(base_run, tmp_path):
    out = _copy(base_run, tmp_path)
    before = _files(out)
    logs = []
    _run(out, "methods=[ga,npo]", "seeds=[0,1]", log=logs.append)
    after = _files(out)
    assert {k: after[k] for k in before if k != "results.csv"} == {k: v for k, v in before.items()
                                                                   if k != "results.csv"}
    for new in ("cells/finetuned/npo__proj+llm__seed0/request1.json", "cells/finetuned/ga__proj+llm__seed1/"
                "request1.json", "cells/finetuned/npo__proj+llm__seed1/request1.json",
                "cells/finetuned/request0__seed1.json"):
        assert new in after
    df = pd.read_csv(out / "results.csv")
    old = pd.read_csv(base_run / "results.csv")
    assert set(df.method) == {"ga", "npo"} and set(df.seed) == {0, 1}
    pd.testing.assert_frame_equal(df[(df.method == "ga") & (df.seed == 0)].reset_index(drop=True), old)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["methods"] == ["ga", "npo"] and manifest["seeds"] == [0, 1]
    assert manifest["amended"][-1]["changed"] == ["methods", "seeds"]
    assert any("config changed since this run started (methods, seeds)" in m for m in logs)


def test_rerunning_the_same_command_recomputes_nothing(base_run, tmp_path, no_compute):
    out = _copy(base_run, tmp_path)
    before = _files(out)
    logs = []
    _run(out, log=logs.append)
    assert _files(out) == before
    assert not any("warning" in m or "config changed" in m for m in logs)


def test_old_release_cells_other_versions_and_checkpoints(base_run, tmp_path, no_compute):
    """No fingerprint or another pulse version: refused; another git commit: a warning, the cell reused; an
    in-request checkpoint made with another lr (or without a fingerprint): refused, naming its folder."""
    out = _copy(base_run, tmp_path)
    cell = out / GA / "request1.json"
    original = cell.read_bytes()
    _edit(cell, lambda d: d.pop("fingerprint"))
    with pytest.raises(PulseError, match=r"request1\.json has no fingerprint \(written by an earlier PULSE release\)"
                                         r"; use a new --out or delete the cell"):
        _run(out)
    cell.write_bytes(original)
    _edit(cell, lambda d: d["fingerprint"].update(pulse="0.0.1"))
    with pytest.raises(PulseError, match=r"request1\.json was made with pulse 0\.0\.1, this run has "):
        _run(out)
    cell.write_bytes(original)
    _edit(cell, lambda d: d["fingerprint"].update(git="0" * 40))
    logs = []
    _run(out, log=logs.append)
    assert [m for m in logs if m.startswith("warning")] == \
        [f"warning: 1 file(s) in {out} were made with git commit {'0' * 40}, this run has "
         f"{json.loads(original)['fingerprint']['git']}; reusing them"]
    fp = json.loads(original)["fingerprint"]
    cell.unlink()  # killed inside request 1, which had written an in-request checkpoint with lr 0.005
    progress = out / GA / ".request1.progress"
    (progress / "step-2").mkdir(parents=True)
    (progress / "fingerprint.json").write_text(json.dumps({"fingerprint": {**fp, "config": {
        **fp["config"], "unlearn.lr": 0.005}}}))
    with pytest.raises(PulseError, match=rf"{re.escape(str(progress))} was made with unlearn\.lr=0\.005, this run has "
                                         rf"0\.001; use a new --out or delete {re.escape(str(progress))}$"):
        _run(out)
    (progress / "fingerprint.json").unlink()
    with pytest.raises(PulseError, match=rf"{re.escape(str(progress))} has no fingerprint"):
        _run(out)
