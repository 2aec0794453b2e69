"""The run table names the world, the models and the data (never "None"), and each plugin method's reference; a
plugin method's registered name goes through figures and tables like a built-in one. The MMBench label is short
everywhere and defined once, in the definitions box."""
import re

import pandas as pd
import pytest

from pulse.report import build_report
from pulse.report.figures import figure4, figure5
from pulse.report.load import load_run
from pulse.report.mmbench import definition, label, select_metric
from pulse.report.runinfo import config_rows
from pulse.report.tables import table3, to_markdown

WORLD = "/repo/worlds/mini-e00766b406e4"


def mini_manifest(synth, name="mini") -> dict:
    """As the default mini run writes it: config model / data null, the resolved paths in models / data."""
    man = synth.manifest(name)
    man["config"]["model"] = {"pretrained": None, "finetuned": None, "dtype": "float32", "device": "cpu",
                              "template": None, "trust_remote_code": False}
    man["config"]["data"] = {"mllmu": None, "mmbench": None, "fictional": "Full_Set", "celebrities": "Retain_Set"}
    man["config"]["mini"] = {"cache": "~/.cache/pulse", "seed": 0, "size": "default"}
    man.update({"mini_world": {"path": WORLD, "build": {}}, "mmbench_subset_groups": 80,
                "models": {"pretrained": f"{WORLD}/models/pretrained", "finetuned": f"{WORLD}/models/finetuned"},
                "data": {"mllmu": f"{WORLD}/mllmu", "mmbench": f"{WORLD}/mmbench.tsv"}})
    return man


def real_manifest(synth, name="real") -> dict:
    man = synth.manifest(name)
    man["config"]["model"] = {"pretrained": "ckpt/pre", "finetuned": "ckpt/ft", "dtype": "bfloat16",
                              "template": None}
    man["config"]["data"] = {"mllmu": "data/mllmu", "mmbench": "data/mmbench.tsv"}
    man.update({"models": {"pretrained": "/abs/ckpt/pre", "finetuned": "/abs/ckpt/ft"},
                "data": {"mllmu": "/abs/data/mllmu", "mmbench": "/abs/data/mmbench.tsv"}})
    return man


def rows_of(run) -> dict[str, str]:
    return dict(config_rows(select_metric(run, "circular")))


def test_mini_run_names_its_world_models_and_data(tmp_path, synth):
    run = load_run(synth.write_run(tmp_path / "mini", synth.make_results(), mini_manifest(synth)))
    rows = rows_of(run)
    assert rows["World"] == f"built-in mini world mini-e00766b406e4 (size default, seed 0), at {WORLD}"
    assert rows["Model"].startswith("tiny LLaVA of mini world mini-e00766b406e4: "
                                    f"pretrained {WORLD}/models/pretrained; finetuned {WORLD}/models/finetuned")
    assert "template: the checkpoint's own" in rows["Model"]
    assert rows["Data"].startswith(f"the sets of mini world mini-e00766b406e4: MLLMU-style {WORLD}/mllmu, "
                                   f"mini-MMBench {WORLD}/mmbench.tsv")
    assert not [k for k, v in rows.items() if "None" in v], rows


def test_older_mini_manifest_without_world_record_says_mini_world(tmp_path, synth):
    man = mini_manifest(synth)
    for key in ("mini_world", "models", "data"):
        man.pop(key)
    rows = rows_of(load_run(synth.write_run(tmp_path / "old", synth.make_results(), man)))
    assert rows["World"] == "the built-in mini world (size default, seed 0)"
    assert rows["Model"].startswith("tiny LLaVA of the built-in mini world: pretrained and finetuned; dtype")
    assert rows["Data"].startswith("the sets of the built-in mini world: MLLMU-style set, mini-MMBench; fictional")
    assert not [k for k, v in rows.items() if "None" in v], rows


def test_real_run_names_its_checkpoints_and_data(tmp_path, synth):
    rows = rows_of(load_run(synth.write_run(tmp_path / "real", synth.make_results(), real_manifest(synth))))
    assert rows["World"].startswith("real data")
    assert rows["Model"] == ("pretrained: /abs/ckpt/pre; finetuned: /abs/ckpt/ft; dtype: bfloat16; "
                             "template: the checkpoint's own")
    assert rows["Data"] == "mllmu: /abs/data/mllmu; mmbench: /abs/data/mmbench.tsv"
    assert not [k for k, v in rows.items() if "None" in v], rows


def test_plugin_method_goes_through_and_the_run_table_shows_its_reference(tmp_path, synth):
    df = synth.make_results()
    df.loc[df.method == "ga_klr", "method"] = "wga"  # results.csv holds the registered name, Method.name
    man = synth.manifest("plugin")
    man["method_references"] = {"wga": "examples.my_method:MY_METHOD"}
    run = select_metric(load_run(synth.write_run(tmp_path / "plugin", df, man)), "circular")
    assert rows_of(run)["Methods"] == "GA, WGA (examples.my_method:MY_METHOD), NPO"
    assert ("proj+llm", "wga") in table3([run]).rows
    assert "| proj+llm | WGA |" in to_markdown(table3([run]))
    assert "WGA" in [ax.get_title() for ax in figure4([run]).axes]
    assert "WGA" in [t.get_text() for box in figure5([run]).legends for t in box.get_texts()]


def test_report_names_mmbench_short_and_defines_it_once(tmp_path, synth):
    run_dir = synth.write_run(tmp_path / "mini", synth.make_full(), mini_manifest(synth))
    html = build_report([run_dir], tmp_path / "out").read_text()
    text = definition(select_metric(load_run(run_dir), "circular"), "circular")
    assert html.count(text.replace("'", "&#x27;")) == 1  # once, in the definitions box
    box = re.search(r'<section id="definitions".*?</section>', html, re.S).group(0)
    assert "<dt>mini-MMBench (CE)</dt>" in box and html.index(box) < html.index('id="configuration"')
    for heading in ("Figure 4: fine-tuned vs pre-trained knowledge (mini-MMBench (CE))",
                    "Table 3: performance by task modality (mini-MMBench (CE))"):
        assert heading in html
    assert "not comparable with published MMBench)" not in html and "CircularEval, likelihood-scored" not in html
    assert "built-in mini world mini-e00766b406e4" in html and "None" not in box
    md = (tmp_path / "out" / "table3.md").read_text()  # the standalone table carries the definition itself
    assert "MMBench column: mini-MMBench (CE). mini-MMBench (CE): CircularEval accuracy" in md


@pytest.mark.parametrize("metric, tag", [("circular", "CE"), ("vanilla", "vanilla")])
def test_mini_label_is_short_in_figures(tmp_path, synth, metric, tag):
    df = synth.make_results()
    van = df[df.split == "mmbench"].assign(split="mmbench_vanilla")
    run = select_metric(load_run(synth.write_run(tmp_path / "m", pd.concat([df, van]), mini_manifest(synth))),
                        metric)
    name = label([run], metric)
    assert name == f"mini-MMBench ({tag})"
    ticks = [t.get_text() for ax in figure4([run], name).axes for t in ax.get_xticklabels()]
    assert f"mini-MMBench\n({tag})\nkept (%)" in ticks
    assert name in [ax.get_title() for ax in figure5([run], name).axes]
