"""results.csv with the columns probe, step, at (added after the first release), the ordinary view, and up-front
validation (every problem one error naming the file, row and field)."""
import math
import re

import pandas as pd
import pytest

from pulse.errors import PulseError
from pulse.report.findings import check_findings
from pulse.report.figures import figure4
from pulse.report.load import load_run
from pulse.report.tables import table3, to_csv, to_markdown


def test_old_results_without_new_columns_load_as_budget_rows(tmp_path, synth):
    old = synth.make_results(scenarios=("finetuned",))
    assert "probe" not in old.columns
    run = load_run(synth.write_run(tmp_path / "old", old))
    assert set(run.full["probe"]) == {"none"} and set(run.full["at"]) == {"budget"}
    assert run.full["step"].isna().all()
    assert len(run.df) == len(run.full) == len(old)


def test_new_rows_leave_the_fixed_budget_outputs_unchanged(tmp_path, synth):
    old = load_run(synth.write_run(tmp_path / "run", synth.make_results()))
    new = load_run(synth.write_run(tmp_path / "new" / "run", synth.make_full()))
    halves = new.df["split"].str.endswith(("_held", "_sel"))
    assert len(new.full) > len(new.df) and (~halves).sum() == len(old.df)
    assert set(new.full["at"]) == {"budget", "checkpoint", "matched"}
    assert set(new.df["probe"]) == {"none"} and set(new.df["at"]) == {"budget"}
    # Table 3, findings and Figure 4 read the same numbers (the new run also has request-0 held-out rows, which
    # the fixed-budget outputs do not read)
    assert to_markdown(table3([old])) == to_markdown(table3([new]))
    assert to_csv(table3([old])) == to_csv(table3([new]))
    assert [f["evidence"] for f in check_findings(old.df)] == [f["evidence"] for f in check_findings(new.full)]
    bars = [sorted(round(p.get_height(), 6) for ax in figure4([r]).axes for p in ax.patches) for r in (old, new)]
    assert bars[0] == bars[1]


def _mutate(tmp_path, synth, change):
    df = synth.make_full(seeds=(0,), checkpoints=False, probes=False).astype(object)
    df = change(df)
    run = synth.write_run(tmp_path / "r", df)
    with pytest.raises(PulseError) as e:
        load_run(run)
    msg = str(e.value)
    assert "results.csv" in msg and "\n" not in msg
    return msg


def _set(i, column, value):
    def change(df):
        df.loc[i, column] = value
        return df
    return change


@pytest.mark.parametrize("change, expected", [
    (_set(4, "accuracy", 100.5), "row 5, field accuracy: outside 0..100 (got '100.5')"),
    (_set(6, "accuracy", -1), "row 7, field accuracy: outside 0..100"),
    (_set(2, "scenario", "finetune"), "row 3, field scenario: unknown value; must be one of finetuned, "),
    (_set(3, "split", "unlearn_hold"), "row 4, field split: unknown value"),
    (_set(8, "probe", "route_video"), "row 9, field probe: unknown value"),
    (_set(8, "probe", "quant"), "row 9, field probe: unknown value"),
    (_set(9, "at", "final"), "row 10, field at: unknown value; must be one of budget, checkpoint, matched"),
    (_set(1, "modality", "video"), "row 2, field modality: unknown value"),
    (_set(5, "step", 2.5), "row 6, field step: not a non-negative integer"),
    (_set(0, "status", "not_reached"), "row 1, field status: not_reached outside a matched-forgetting row"),
])
def test_validation_names_file_row_and_field(tmp_path, synth, change, expected):
    assert expected in _mutate(tmp_path, synth, change)


def test_matched_row_without_step_is_an_error(tmp_path, synth):
    def change(df):
        i = int(df.index[df["at"] == "matched"][0])
        df.loc[i, "step"] = None
        return df
    msg = _mutate(tmp_path, synth, change)
    assert re.search(r"row \d+, field step: empty for a row at matched", msg)


def test_empty_accuracy_needs_a_reason(tmp_path, synth):
    msg = _mutate(tmp_path, synth, _set(3, "accuracy", None))
    assert "row 4, field accuracy: empty for a row with status ok and n > 0" in msg
    df = synth.make_full(seeds=(0,), checkpoints=False, probes=False)
    df.loc[3, ["accuracy", "n"]] = [None, 0]  # nothing measured: allowed, and no number is shown
    run = load_run(synth.write_run(tmp_path / "n0", df))
    assert run.full["accuracy"].isna().sum() == 1 + (run.full["status"] == "not_reached").sum()


def test_duplicate_rows_name_both_rows(tmp_path, synth):
    def change(df):
        return pd.concat([df, df.iloc[[3]]], ignore_index=True)  # the last row repeats data row 4
    msg = _mutate(tmp_path, synth, change)
    n = len(synth.make_full(seeds=(0,), checkpoints=False, probes=False)) + 1
    key = "scenario,method,target,seed,request,split,modality,metric,probe,step,at"
    assert f"row {n}, field {key}: duplicate of row 4" in msg


def test_any_quantization_width_is_a_known_probe(tmp_path, synth):
    df = synth.make_full(seeds=(0,), checkpoints=False, matched=False)
    df.loc[df["probe"] == "quant4", "probe"] = "quant3"  # probes.quant_bits may hold other widths
    assert "quant3" in set(load_run(synth.write_run(tmp_path / "q", df)).full["probe"])


def test_same_key_at_other_steps_is_not_a_duplicate(tmp_path, synth):
    run = load_run(synth.write_run(tmp_path / "r", synth.make_full(seeds=(0,), probes=False, matched=False)))
    ck = run.full[run.full["at"] == "checkpoint"]
    assert sorted(set(ck["step"])) == [0, 2, 4]


def test_not_reached_rows_load_with_empty_accuracy(tmp_path, synth):
    run = load_run(synth.write_run(tmp_path / "r", synth.make_full(seeds=(0,), probes=False, checkpoints=False)))
    nr = run.full[run.full["status"] == "not_reached"]
    assert set(nr["method"]) == {"ga_klr"} and set(nr["at"]) == {"matched"}
    assert nr["accuracy"].isna().all() and (nr["step"] == 4).all()
    assert not math.isnan(run.full.loc[run.full["status"] == "ok", "accuracy"].max())
