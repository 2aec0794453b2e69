"""Probe table (routes, quantization with request-0 baselines, relearning with its never-learned control) and the
plain statements P1-P3, on hand-made rows."""
import csv
import io

import pandas as pd
import pytest

from pulse.report.findings import probe_findings
from pulse.report.load import Run, load_run
from pulse.report.probes import probe_rows, to_csv, to_markdown

T1 = 12.706205
COLS = ["scenario", "method", "target", "seed", "request", "split", "modality", "accuracy", "relative", "status",
        "n", "probe", "step", "at"]


def _row(method, seed, request, acc, probe="none", split="unlearn"):
    return ["finetuned", method, "proj+llm", seed, request, split, "all", acc, None, "ok", 100, probe, None, "budget"]


def hand_rows(att=(50.0, 56.0), ctl=(20.0, 26.0), pre=(80.0, 80.0), unl=(20.0, 20.0)):
    """Two seeds of GA: D_unlearn (and its measured half) 80 before, 20 after unlearning; the measured half
    `att` after the relearning attack; the control (never learned) `ctl` before / after the same attack; image
    route 12 and all routes 35 after; quant4 30 after, 77 before unlearning."""
    rows = []
    for s in (0, 1):
        rows += [_row("ga", s, 0, pre[s]), _row("ga", s, 1, unl[s]),
                 _row("ga", s, 0, pre[s], "relearn", "relearn_measured"),
                 _row("ga", s, 1, unl[s], "relearn", "relearn_measured"),
                 _row("ga", s, 1, att[s], "relearn", "relearn_measured_attacked"),
                 _row("never_learned", s, 0, ctl[0], "relearn", "relearn_measured"),
                 _row("never_learned", s, 0, ctl[1], "relearn", "relearn_measured_attacked"),
                 _row("ga", s, 1, 12.0, "route_image"), _row("ga", s, 1, 35.0, "route_all"),
                 _row("ga", s, 0, pre[s], "route_all"),
                 _row("ga", s, 1, 30.0, "quant4"), _row("ga", s, 0, 77.0, "quant4")]
    return pd.DataFrame(rows, columns=COLS)


def _run(df) -> Run:
    return Run(label="h", path=None, df=df, manifest={"config": {}})


def test_recovery_ratio_and_control_by_hand():
    pre, ga = probe_rows([_run(hand_rows())])
    assert pre.method == "(pre-unlearning)" and ga.method == "ga" and ga.request == 1
    # recovery = 100 (att - unl) / (pre - unl): seed 0 100 x 30 / 60 = 50, seed 1 100 x 36 / 60 = 60
    assert ga.per_seed["relearn_recovery"] == pytest.approx({0: 50.0, 1: 60.0})
    c = ga.cells["relearn_recovery"]
    assert (c.mean, c.half, c.n_seeds) == pytest.approx((55.0, T1 * 5.0, 2))
    # control = the attack's gain on the never-learned model, same scale: 100 (26 - 20) / 60 = 10; excess = 45
    assert ga.per_seed["relearn_control"] == pytest.approx({0: 10.0, 1: 10.0})
    assert ga.cells["relearn_excess"].mean == pytest.approx(45.0)
    assert ga.cells["relearn_control_acc"].mean == pytest.approx(26.0)
    # routes: leak = all routes - image route = 35 - 12
    assert ga.cells["route_leak"].mean == pytest.approx(23.0) and ga.cells["route_leak"].half == pytest.approx(0.0)
    # quant4 gain = (30 - 20) - (77 - 80) = 13; baseline shown on the pre-unlearning row
    assert ga.cells["quant4_gain"].mean == pytest.approx(13.0)
    assert pre.cells["quant4"].mean == pytest.approx(77.0) and pre.cells["unlearned"].mean == pytest.approx(80.0)
    assert "quant8" not in ga.cells and not ga.cells["route_text"].has_data
    assert pre.cells["relearn_unlearned"].mean == pytest.approx(80.0)


def test_nothing_forgotten_has_no_ratio():
    _pre, ga = probe_rows([_run(hand_rows(unl=(20.0, 80.0)))])  # seed 1 forgot nothing: pre - unl = 0
    assert ga.per_seed["relearn_recovery"] == pytest.approx({0: 50.0})
    assert ga.cells["relearn_recovery"].n_seeds == 1 and ga.cells["relearn_recovery"].half is None


def test_probe_findings_say_what_reproduces():
    p1, p2, p3 = probe_findings(probe_rows([_run(hand_rows())]))
    assert [p["id"] for p in (p1, p2, p3)] == ["P1", "P2", "P3"]
    assert p1["holds"] is True and "23.0 \u00b1 0.0" in p1["evidence"]
    assert p2["holds"] is True and "quant4: finetuned GA proj+llm request 1: 13.0 \u00b1 0.0" in p2["evidence"]
    assert p3["holds"] is True and "Recovery (control)" in p3["evidence"] and p3["evidence"].endswith("Reproduces.")
    # the attack brings the unlearned model back no further than the never-learned control: does not reproduce
    same = probe_findings(probe_rows([_run(hand_rows(att=(26.0, 26.0)))]))[2]  # gain 6 points, as the control
    assert same["holds"] is False and same["evidence"].endswith("Does not reproduce.")
    assert same["numbers"]["finetuned GA proj+llm request 1"]["mean"] == pytest.approx(0.0)


def test_no_probe_rows(tmp_path, synth):
    run = load_run(synth.write_run(tmp_path / "r", synth.make_results(scenarios=("finetuned",))))
    assert probe_rows([run]) == []
    assert "No probe rows" in to_markdown([])
    assert [f["holds"] for f in probe_findings([])] == [None, None, None]


def test_probe_table_of_the_synthetic_run(tmp_path, synth):
    run = load_run(synth.write_run(tmp_path / "p", synth.make_full(matched=False, checkpoints=False)))
    rows = probe_rows([run])
    assert [(r.method, r.target) for r in rows] == [("(pre-unlearning)", ""), ("ga", "proj+llm"),
                                                   ("ga_klr", "proj+llm"), ("npo", "proj+llm"), ("ga", "llm")]
    md = to_markdown(rows)
    # GA: D_unlearn all = (78 x 0.10 + 76 x 0.50) / 2 = 22.9 and (80 x 0.12 + 78 x 0.52) / 2 = 25.08 -> 24.0;
    # image route u / 2 -> 12.0; relearn recovery 50 % in every seed; the control's gain (26 + i - 20) over the
    # forgotten gap p - u: 6 / 54.1 and 7 / 53.92 -> 100 x mean = 12.04
    assert "| GA | proj+llm | 1 | 24.0 \u00b1 13.8 | 12.0 \u00b1 6.9 |" in md
    assert "| 50.0 \u00b1 0.0 | 12.0 \u00b1 " in md
    # pre-unlearning row: quantization baselines (77 - 0.5, 79 - 0.5 -> 77.5; 77 - 3, 79 - 3 -> 75.0)
    assert "| (pre-unlearning) |  | 0 | 78.0 \u00b1 12.7 |" in md
    assert "|  | 77.5 \u00b1 12.7 |  | 75.0 \u00b1 12.7 |  |" in md  # no gain on the pre-unlearning row
    table = list(csv.DictReader(io.StringIO(to_csv(rows))))
    gain = {(r["method"], r["target"]): float(r["mean"]) for r in table if r["measure"] == "quant4_gain"}
    assert gain == pytest.approx({("ga", "proj+llm"): 11.0, ("ga_klr", "proj+llm"): 11.0,
                                  ("npo", "proj+llm"): 11.0, ("ga", "llm"): 11.0})
