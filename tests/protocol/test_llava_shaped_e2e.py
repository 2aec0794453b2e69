"""The real-checkpoint path end to end on a LLaVA-1.5-7B-shaped model (full widths: CLIP ViT-L/14-336 -> 576 image
tokens, Llama hidden 4096, vocab 32064; 1 text + 2 vision layers, random weights), as a researcher runs it:

    pulse finetune -> pulse run configs/paper/*.yaml -> pulse eval --scoring generate -> pulse mmbench

On 2 CPU cores one image question costs seconds (576 image tokens through a 4096-wide layer), so the data is the
small mini world trimmed to MLLMU-Bench's format with few people and one MCQ per form: this proves the plumbing and
the shapes, not accuracy. Every command runs as its own process; its peak memory (ru_maxrss) is recorded in the
test report (user properties) and printed (`pytest -s`).
"""
import json
import subprocess
import sys
import time
from dataclasses import replace

import pandas as pd
import pytest
from transformers import AutoConfig

from pulse.config import load_config
from pulse.data.mllmu import read_people, read_qa_pairs, write_people, write_qa_pairs
from pulse.data.mmbench import read_mmbench, write_mmbench

from ..conftest import ROOT

pytestmark = pytest.mark.slow
PAPER = ROOT / "configs" / "paper"

WRAP = """import resource, sys
from pulse.cli import main
try:
    rc = main(sys.argv[2:])
finally:
    open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def trimmed(small_world, tmp_path_factory):
    """3 fictional people and 2 celebrities with 1 image + 1 text MCQ, cloze and generation item each, their
    ft_Data pairs, forget_10 = 2 of them, and one MMBench question group — in MLLMU-Bench's / MMBench's on-disk
    formats."""
    root = tmp_path_factory.mktemp("trimmed")
    src = small_world / "mllmu"
    def one(p):
        first = lambda items: [next(i for i in items if i.form == f) for f in ("image", "text")]  # noqa: E731
        return replace(p, image_mcqs=p.image_mcqs[:1], text_mcqs=p.text_mcqs[:1], cloze=first(p.cloze),
                       generation=first(p.generation))
    people = [one(p) for p in sorted(read_people(src, "Full_Set"), key=lambda p: p.id)[:3]]
    write_people(root / "mllmu", "Full_Set", people)
    write_people(root / "mllmu", "forget_10", people[:2])
    write_people(root / "mllmu", "Retain_Set", [one(p) for p in read_people(src, "Retain_Set")[:2]])
    ids = {p.id for p in people}
    pairs = [q for q in read_qa_pairs(src, "ft_Data") if q.person_id in ids]
    write_qa_pairs(root / "mllmu", "ft_Data", [q for i, q in enumerate(pairs) if i % 4 == 0])
    items = read_mmbench(small_world / "mmbench.tsv")
    group = min({it.group for it in items}, key=lambda g: sum(it.group == g for it in items))
    write_mmbench(root / "mmbench.tsv", [it for it in items if it.group == group])
    return root


def _pulse(tmp_path, record_property, name, *args):
    peak, t0 = tmp_path / f"{name}.peak", time.time()
    proc = subprocess.run([sys.executable, "-c", WRAP, str(peak), *map(str, args)], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    mib = int(peak.read_text()) / 1024
    record_property(f"peak_rss_mib_{name}", round(mib))
    print(f"{name}: peak RSS {mib:.0f} MiB, {time.time() - t0:.0f} s")
    return proc.stdout


def test_every_paper_config_validates_with_real_paths(llava15_shaped, trimmed):
    paths = [f"data.mllmu={trimmed / 'mllmu'}", f"data.mmbench={trimmed / 'mmbench.tsv'}",
             f"model.pretrained={llava15_shaped}", f"model.finetuned={llava15_shaped}"]
    for path in sorted(PAPER.glob("*.yaml")):
        cfg = load_config(path, paths)
        u = cfg.unlearn
        assert (u.format, u.data, u.budget, u.epochs, u.lr, u.batch_size) == ("mllmu", "mcq", "epochs", 1, 2e-5, 4)
        assert (u.schedule, u.clip, u.lora_rank, u.lora_alpha, u.lora_dropout, u.lora_init) == \
            ("linear", None, 16, 16, 0.05, "gaussian")
        assert cfg.eval.scoring == "generate" and cfg.model.dtype == "bfloat16"


def test_finetune_run_eval_mmbench(llava15_shaped, trimmed, tmp_path, record_property):
    mllmu, tsv = trimmed / "mllmu", trimmed / "mmbench.tsv"
    cpu = ["--device", "cpu", "--dtype", "float32"]
    ft = tmp_path / "llava-ft"
    out = _pulse(tmp_path, record_property, "finetune", "finetune", "--model", llava15_shaped, "--data", mllmu,
                 "--out", ft, "--people", 3, "budget=steps", "steps=1", "batch_size=1", *cpu)
    assert (ft / "config.json").is_file() and list(ft.glob("*.safetensors")) and "image" in out
    info = json.loads((ft / "pulse_finetune.json").read_text())
    assert len(info["people"]) == 3 and info["people"] == sorted(info["people"])
    cfg, src = (AutoConfig.from_pretrained(d) for d in (ft, llava15_shaped))
    assert cfg.text_config.hidden_size == src.text_config.hidden_size == 4096
    assert cfg.text_config.vocab_size == 32064 and cfg.image_token_index == 32000
    assert cfg.vision_config.image_size == 336 and cfg.vision_feature_layer == -2

    # one run through the fine-tuned and pre-trained scenarios of the paper configs (they differ only in
    # `scenarios` and `name`); sustainability's sequence is the same request code, run on the mini world
    run_dir = tmp_path / "run"
    _pulse(tmp_path, record_property, "run", "run", PAPER / "finetuned.yaml", "--out", run_dir, "--no-report",
           f"data.mllmu={mllmu}", f"data.mmbench={tsv}", f"model.pretrained={llava15_shaped}",
           f"model.finetuned={ft}", "model.device=cpu", "model.dtype=float32", "seeds=[0]",
           "scenarios=[finetuned,pretrained]", "methods=[ga_klr]", "table3_methods=[npo]",
           "table3_targets=[llm]", "scenario.finetuned.people=3", "scenario.finetuned.unlearn=2",
           "scenario.pretrained.select=2", "scenario.pretrained.unlearn=1",
           "unlearn.batch_size=1", "eval.demo_people=0", "eval.cloze_demo_people=0", "eval.max_new_tokens=3",
           "eval.mmbench_max_new_tokens=3")
    df = pd.read_csv(run_dir / "results.csv")
    assert set(df.scenario) == {"finetuned", "pretrained"}
    assert set(df[df.scenario == "finetuned"].method) == {"ga_klr", "npo"}
    assert {"unlearn", "retain", "mmbench", "mmbench_vanilla"} <= set(df.split)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["unlearn"]["format"] == "mllmu"
    cells = [json.loads(p.read_text()) for p in (run_dir / "cells").glob("*/*/request1.json")]
    assert len(cells) == 3 and all(c["status"] == "ok" for c in cells)
    # the paper configs score MLLMU-Bench's cloze and generation at every evaluation, through the same prompts
    assert {"cloze", "rouge1", "rouge2", "rougeL", "bleu"} <= set(df.metric)
    assert {"unlearn", "retain"} <= set(df[df.metric == "cloze"].split)
    assert all(set(c["mcq"]["open"]) == {"cloze", "generation"} for c in cells)

    preds = tmp_path / "preds.json"
    out = _pulse(tmp_path, record_property, "eval_generate", "eval", "--model", ft, "--data", mllmu, "--config",
                 "forget_10", "--scoring", "generate", "--demo-people", 1, "--predictions", preds, "--json", *cpu)
    res = json.loads(out.strip().splitlines()[-1])
    assert res["scoring"] == "generate" and res["n"] == {"image": 1, "text": 1}
    assert len(json.loads(preds.read_text())) == 2

    mpreds = tmp_path / "mmbench.jsonl"
    out = _pulse(tmp_path, record_property, "mmbench", "mmbench", "--model", ft, "--tsv", tsv, *cpu,
                 "--max-new-tokens", 3, "--predictions", mpreds, "--json")
    res = json.loads(out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in mpreds.read_text().splitlines()]
    assert len(rows) == res["rows"] and {"index", "prompt", "output", "prediction"} <= set(rows[0])
    assert rows[0]["prompt"].startswith("A chat between a curious user and an artificial intelligence assistant.")
