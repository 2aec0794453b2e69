"""Bring-your-own method: examples/my_method.py (WGA) resolved by `module:ATTRIBUTE` and by entry point, its loss
pinned by hand, run through the real unlearning loop, and every resolution / hyper-parameter error as one line."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pulse.config import load_config
from pulse.errors import PulseError
from pulse.unlearn import Method, Outputs, losses, method_loss
from pulse.unlearn.methods import METHODS, get_method

ROOT = Path(__file__).resolve().parents[2]
REF = "examples.my_method:MY_METHOD"
LN2 = math.log(2.0)


@pytest.fixture
def repo_cwd(monkeypatch):
    """Run from the repository root, as the README command does."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))


@pytest.fixture
def wga(repo_cwd) -> Method:
    return get_method(REF)


def test_resolves_the_example_by_reference(wga):
    import examples.my_method as mod

    assert wga is mod.MY_METHOD and isinstance(wga, Method)
    assert (wga.name, wga.defaults, wga.retain_loss is not None) == ("wga", {"beta": 1.0}, True)
    assert len((ROOT / "examples" / "my_method.py").read_text().splitlines()) <= 30  # README promise


def test_current_directory_is_tried_when_not_on_sys_path(monkeypatch):
    """The `pulse` console script has its own bin/ folder, not the cwd, on sys.path: get_method appends the cwd."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != str(ROOT)])
    for name in ("examples", "examples.my_method"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert get_method(REF).name == "wga"
    assert sys.path[-1] == str(ROOT)


@pytest.mark.slow  # a fresh interpreter imports torch: ~10 s on 2 busy cores
def test_console_script_imports_from_the_current_directory(tmp_path):
    """The real `pulse` script from the repository root: the module resolves (the error is about its parameter)."""
    script = Path(sys.executable).with_name("pulse")
    if not script.is_file():
        pytest.skip("no pulse console script next to this interpreter")
    env = {**os.environ, "PYTHONPATH": ""}
    res = subprocess.run([str(script), "run", f"methods=[ga,{REF}]", "unlearn.params.wga.betta=2"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "unlearn.params.wga.betta: method 'wga' has no parameter 'betta' (known: beta)" in res.stderr
    assert "Traceback" not in res.stderr


# --- the loss, by hand --------------------------------------------------------------------------------------------

# One sequence, vocabulary 2. Position 0 predicts label 0 with p = 1/2, position 1 predicts label 1 with p = 1/4.
LOGITS = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
LABELS = torch.tensor([[-100, 0, 1]])


def test_wga_loss_matches_hand_computation(wga):
    # beta 1: w = (1/2, 1/4); L = (1/2·ln 1/2 + 1/4·ln 1/4) / 2 = −ln2 / 2
    logits = LOGITS.clone().requires_grad_(True)
    _, parts = method_loss(wga, Outputs(logits, LABELS), Outputs(LOGITS, LABELS))
    assert parts["forget"] == pytest.approx(-LN2 / 2, abs=1e-6)
    assert parts["retain"] == pytest.approx(1.5 * LN2, abs=1e-6)  # NLL = (ln 2 + ln 4) / 2
    assert parts["loss"] == pytest.approx(LN2, abs=1e-6)
    # weights detached: ∂L/∂z_{0,0} = w_0/2 · (1 − p_0) = 1/8 (with gradient through w it would be ≈ 0.038)
    wga.forget_loss(Outputs(logits, LABELS, params={"beta": 1.0})).backward()
    assert logits.grad[0, 0, 0].item() == pytest.approx(0.125, abs=1e-6)
    assert logits.grad[0, 2].abs().sum() == 0  # the last position predicts nothing


@pytest.mark.parametrize("params, expected", [
    ({"beta": 2.0}, -3 * LN2 / 16),  # w = (1/4, 1/16): (1/4·ln 1/2 + 1/16·ln 1/4) / 2
    ({"wga": {"beta": 2.0}}, -3 * LN2 / 16),  # the method's own section
    ({"beta": 2.0, "wga": {"beta": 1.0}}, -LN2 / 2),  # its section wins over the flat name
    ({"margin": 7.0}, -LN2 / 2),  # a name wga does not declare is not passed to it
])
def test_params_reach_the_loss(wga, params, expected):
    _, parts = method_loss(wga, Outputs(LOGITS, LABELS, params=params), Outputs(LOGITS, LABELS, params=params))
    assert parts["forget"] == pytest.approx(expected, abs=1e-6)


# --- through the real loop on a tiny LLaVA ------------------------------------------------------------------------


def test_runs_two_steps_of_unlearn_request(wga):
    from PIL import Image

    from pulse.data.records import encode_png
    from pulse.mini.model import TinyConfig, build_tiny_llava
    from pulse.models.batches import Encoder, Sample, forward
    from pulse.config import UnlearnSection
    from pulse.unlearn.loop import unlearn_request

    qa = [("Who is Ada?", "a nurse"), ("Where does Bo live?", "in Rome"), ("What does Cy do?", "she paints"),
          ("Who is Di?", "a pilot")]
    xs = TinyConfig(vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1, text_ffn=128, vocab_size=300)
    lm = build_tiny_llava([f"USER: <image>\n{q} ASSISTANT: {a}" for q, a in qa] + [f"USER: {q} ASSISTANT: {a}"
                                                                                  for q, a in qa], xs)
    img = encode_png(Image.new("RGB", (32, 32), (200, 30, 30)))
    samples = [Sample(lm.template.prompt(q, i % 2 == 0), a, img if i % 2 == 0 else None) for i, (q, a) in enumerate(qa)]
    forget, retain = samples[:2], samples[2:]
    enc = Encoder(lm.processor)
    with torch.no_grad():  # batch = the whole set: the token-pooled loss does not depend on the sample order
        fb, rb = enc.batch(forget), enc.batch(retain)
        expected_forget = wga.forget_loss(Outputs(forward(lm.model, fb), fb["labels"], params={"beta": 2.0}))
        expected_retain = losses.nll(forward(lm.model, rb), rb["labels"])
    before = {n: p.clone() for n, p in lm.model.named_parameters()}
    model, res = unlearn_request(lm.model, enc, REF, "proj+llm", forget, retain,
                                 UnlearnSection(budget="steps", steps=2, batch_size=4, lr=1e-2,
                                                params={"wga": {"beta": 2.0}}), seed=0)
    assert res.status == "ok" and [r["step"] for r in res.losses] == [0, 1]
    assert res.losses[0]["forget"] == pytest.approx(expected_forget.item(), rel=1e-4)  # fresh LoRA: θ = θ_0
    assert res.losses[0]["retain"] == pytest.approx(expected_retain.item(), rel=1e-4)
    assert res.losses[1]["forget"] < res.losses[0]["forget"]  # it minimises its own loss
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all("vision_tower" not in n for n in changed)


# --- errors, through load_config ----------------------------------------------------------------------------------


def _error(*overrides) -> str:
    with pytest.raises(PulseError) as err:
        load_config(None, list(overrides))
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def user_modules(tmp_path, monkeypatch, repo_cwd):
    """Modules a user might write: one that fails at import, one that copies a built-in without renaming it."""
    (tmp_path / "pulse_t_boom.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "pulse_t_clash.py").write_text(
        "import dataclasses\nfrom pulse.unlearn import METHODS\n"
        "NPO = dataclasses.replace(METHODS['npo'], defaults={'beta': 0.4})\n"
        "GA = METHODS['ga']\n"
        "NPO04 = dataclasses.replace(METHODS['npo'], name='npo04', defaults={'beta': 0.4})\n"
        "BAD_DEFAULTS = dataclasses.replace(METHODS['npo'], name='npo_x', defaults={'beta': None})\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_reference_errors(user_modules):
    msg = _error("methods=[ga,examples.no_such_module:X]")
    assert "method 'examples.no_such_module:X': cannot import module 'examples.no_such_module'" in msg
    assert "No module named 'examples.no_such_module'" in msg
    assert "has no attribute 'NOPE'" in _error("methods=[examples.my_method:NOPE]")
    assert "is a function, not a pulse.unlearn.Method instance" in _error("methods=[examples.my_method:wga_loss]")
    assert "is a class Method, not a pulse.unlearn.Method instance" in _error("methods=[pulse.unlearn:Method]")
    assert "RuntimeError: boom at import" in _error("methods=[pulse_t_boom:X]")
    assert "its name 'npo' is a built-in method's" in _error("methods=[pulse_t_clash:NPO]")
    assert "defaults['beta'] = None" in _error("methods=[pulse_t_clash:BAD_DEFAULTS]")
    assert "expected a built-in name or module.path:ATTRIBUTE" in _error("methods=[a:b:c]")
    msg = _error("methods=[gradient_ascent]")
    assert "unknown unlearning method 'gradient_ascent'" in msg and "npo_klr" in msg and "module.path:ATTRIBUTE" in msg
    assert get_method("pulse_t_clash:GA") is METHODS["ga"]  # the built-in object itself is no clash
    cfg = load_config(None, ["methods=[npo,pulse_t_clash:NPO04]", "unlearn.params.npo04.beta=0.5"])
    assert cfg.unlearn.params == {"npo04": {"beta": 0.5}}


def test_two_selected_methods_with_one_name_are_refused(user_modules, tmp_path):
    (tmp_path / "pulse_t_twin.py").write_text("import dataclasses\nfrom examples.my_method import MY_METHOD\n"
                                              "TWIN = dataclasses.replace(MY_METHOD, description='other')\n")
    assert "two selected methods are named 'wga'" in _error(f"methods=[{REF},pulse_t_twin:TWIN]")


def test_param_errors_and_float_spellings(repo_cwd):
    msg = _error("methods=[ga,npo]", "unlearn.params.betta=5")
    assert "unlearn.params.betta: unknown parameter" in msg and "ga: none; npo: beta" in msg
    assert "no selected method declares it" in _error("methods=[ga]", "unlearn.params.beta=0.2")
    assert "expected a number, got 'abc'" in _error("methods=[npo]", "unlearn.params.beta=abc")
    assert "expected a number, got True" in _error("methods=[npo]", "unlearn.params.beta=true")
    assert "expected a number, got [0.1]" in _error("methods=[npo]", "unlearn.params.beta=[0.1]")
    assert "must be a finite number" in _error("methods=[npo]", "unlearn.params.beta=.nan")
    assert "must be a finite number" in _error("methods=[npo]", "unlearn.params.beta=inf")
    assert "method 'wga' has no parameter 'betta'" in _error(f"methods=[{REF}]", "unlearn.params.wga.betta=2")
    assert "no selected method is named 'simnpo'" in _error("methods=[npo]", "unlearn.params.simnpo.beta=2")
    for raw, value in (("1e-3", 1e-3), ("0.4", 0.4), ("1", 1.0), ("'2.5'", 2.5), ("1E+1", 10.0)):
        cfg = load_config(None, ["methods=[ga,npo]", f"unlearn.params.beta={raw}"])
        assert cfg.unlearn.params == {"beta": value} and type(cfg.unlearn.params["beta"]) is float
    cfg = load_config(None, [f"methods=[ga,npo,{REF}]", "unlearn.params.beta=1e-1", "unlearn.params.wga.beta=2"])
    assert cfg.unlearn.params == {"beta": 0.1, "wga": {"beta": 2.0}}


# --- entry points ---------------------------------------------------------------------------------------------------


def test_entry_point_group(tmp_path, monkeypatch, repo_cwd):
    dist = tmp_path / "pulse_wga_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pulse-wga-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[pulse.methods]\nwga = {REF}\nbroken = examples.my_method:NOPE\nmisnamed = {REF}\n"
        f"ga = examples.my_method:NOPE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import examples.my_method as mod

    assert get_method("wga") is mod.MY_METHOD
    assert get_method("ga") is METHODS["ga"]  # built-ins come first
    cfg = load_config(None, ["methods=[ga,wga]", "unlearn.params.wga.beta=3"])
    assert cfg.methods == ["ga", "wga"] and cfg.unlearn.params == {"wga": {"beta": 3.0}}
    msg = _error("methods=[broken]")
    assert "entry point 'examples.my_method:NOPE' in group pulse.methods" in msg and "loading failed" in msg
    assert "must equal the Method's name 'wga'" in _error("methods=[misnamed]")
    assert "entry points (pulse.methods): broken, ga, misnamed, wga" in _error("methods=[nothing]")
    from pulse.unlearn.methods import method_source

    src = method_source("wga")
    assert (src["distribution"], src["module"], src["builtin"]) == ("pulse-wga-plugin==1.0", "examples.my_method", False)


def test_method_source_identifies_the_file(repo_cwd):
    import hashlib

    from pulse.unlearn.methods import method_source

    assert method_source("npo") == {"method": "npo", "builtin": True}
    src = method_source(REF)
    path = ROOT / "examples" / "my_method.py"
    assert (src["module"], src["name"], Path(src["file"]).resolve()) == ("examples.my_method", "wga", path)
    assert src["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_plugin_method_goes_by_its_name_in_results_and_folders(small_world, repo_cwd, tmp_path):
    """results.csv, cell folders and the report show `Method.name` (wga); the manifest records the reference."""
    import json

    import pandas as pd

    from pulse.protocol import runner

    cfg = load_config(ROOT / "configs" / "mini" / "small.yaml",
                      ["scenarios=[finetuned]", f"methods=[{REF}]", "table3_targets=[]", "eval.mmbench_groups=4",
                       "scenario.finetuned.people=6", "scenario.finetuned.unlearn=2"])
    out = runner.run(cfg, tmp_path / "run", log=lambda *_: None)
    assert set(pd.read_csv(out / "results.csv").method) == {"wga"}
    assert (out / "cells" / "finetuned" / "wga__proj+llm__seed0" / "request1.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["method_references"] == {"wga": REF}
