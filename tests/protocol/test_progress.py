"""Progress bars: every long phase of `pulse run` and the mini build has one, named after the phase;
PULSE_PROGRESS switches them; log lines and errors always start a line of their own, never glued to a bar.

What a terminal shows is rebuilt from the raw bytes by `render` (carriage return, newline, tqdm's cursor-up)."""
import io
import re
import sys

import pytest
from tqdm import tqdm

import pulse.progress as progress
from pulse.cli import main
from pulse.config import load_config
from pulse.errors import PulseError

from ..conftest import SMALL_CONFIG

UP = "\x1b[A"


def render(raw: str) -> list[str]:
    """The screen lines a terminal shows for `raw`: "\\r" returns to column 0, "\\n" starts the next line at column
    0 (a tty's ONLCR), ESC[A (tqdm's cursor-up for nested bars) moves up a line; any other character overwrites."""
    assert set(re.findall(r"\x1b\[?.", raw)) <= {UP}, "an escape sequence render does not know"
    lines, row, col, i = [[]], 0, 0, 0
    while i < len(raw):
        if raw.startswith(UP, i):
            row, i = max(0, row - 1), i + len(UP)
            continue
        ch, i = raw[i], i + 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
            lines += [[] for _ in range(row + 1 - len(lines))]
        else:
            line = lines[row]
            line += [" "] * (col - len(line))
            line[col:col + 1] = [ch]
            col += 1
    return ["".join(x).rstrip() for x in lines]


def raw_line_start(raw: str, text: str) -> str:
    """What is written on the raw line of the first `text` before it (since the previous newline), without the
    blanking that clears a bar (carriage returns, spaces, cursor-up): "" = nothing visible is glued to it."""
    at = raw.index(text)
    return raw[raw.rfind("\n", 0, at) + 1:at].replace(UP, "").strip("\r ")


def test_render_overwrites_like_a_terminal():
    assert render("abcdef\rXY\nline2\n") == ["XYcdef", "line2", ""]
    assert render("top\n\rinner\x1b[A\r     \rerr\n") == ["err", "inner"]


def on_terminal(monkeypatch) -> io.StringIO:
    """From now on stdout and stderr both write into one buffer, as on a terminal; bars forced on (that buffer is
    not a tty). Called in the test body: pytest's capture sets sys.stdout/err again after fixtures run."""
    term = io.StringIO()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setenv("PULSE_PROGRESS", "1")
    return term


@pytest.mark.parametrize("value,disable", [(None, None), ("", None), ("0", True), ("1", False)])
def test_pulse_progress_switch(monkeypatch, value, disable):
    if value is None:
        monkeypatch.delenv("PULSE_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("PULSE_PROGRESS", value)
    assert progress.disabled() is disable


def test_bars_follow_tqdm_on_a_non_terminal_and_the_switch(monkeypatch):
    """Unset: tqdm's disable=None — nothing at all on a stream that is not a tty (CI logs stay clean); 1: shown."""
    for value, shown in ((None, False), ("0", False), ("1", True)):
        if value is None:
            monkeypatch.delenv("PULSE_PROGRESS", raising=False)
        else:
            monkeypatch.setenv("PULSE_PROGRESS", value)
        err = io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        with progress.bar(desc="phase", total=2) as b:
            b.update(2)
        assert ("phase" in err.getvalue()) is shown, (value, err.getvalue())


def test_bad_pulse_progress_is_a_one_line_error_before_anything_runs(monkeypatch, capsys):
    import pulse.cli as cli
    monkeypatch.setattr(cli, "cmd_run", lambda a: pytest.fail("the command ran"))
    monkeypatch.setenv("PULSE_PROGRESS", "yes")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: PULSE_PROGRESS=yes: must be 0") and err.count("\n") == 1


def test_stage_labels_nest_and_end_with_their_block():
    assert progress.named("MCQ") == "MCQ"
    with progress.stage("quant probe finetuned ga llm seed 0"):
        with progress.stage("4-bit"):
            assert progress.named("MCQ (4 people)") == "quant probe finetuned ga llm seed 0 · 4-bit: MCQ (4 people)"
        assert progress.named("x") == "quant probe finetuned ga llm seed 0: x"
    assert progress.named("x") == "x"


def test_a_log_line_is_a_line_of_its_own_while_bars_are_active(monkeypatch, tmp_path):
    """The runner's console log (`tee` with print) clears the bars, writes its line, redraws them."""
    from pulse.protocol.rundir import tee

    terminal = on_terminal(monkeypatch)

    say = tee(print, tmp_path / "run.log")
    outer = progress.bar(desc="PULSE cells", total=4, leave=True)
    inner = progress.bar(desc="training", total=10)
    inner.update(3)
    say("done: finetuned ga proj+llm seed 0")
    inner.close()
    outer.update(1)
    outer.close()
    raw = terminal.getvalue()
    assert raw_line_start(raw, "done: ") == ""  # no bar text before it on its raw line
    screen = render(raw)
    assert "done: finetuned ga proj+llm seed 0" in screen
    assert any(line.startswith("PULSE cells:") and "1/4" in line for line in screen)
    assert "done: finetuned" in (tmp_path / "run.log").read_text()


def test_close_all_leaves_the_outer_bar_and_a_fresh_line(monkeypatch):
    terminal = on_terminal(monkeypatch)
    outer = progress.bar(desc="PULSE cells", total=4, leave=True)
    progress.bar(desc="training", total=10).update(2)
    progress.bar(desc="checkpoint step 2: MCQ (6 people)", total=60).update(5)
    progress.close_all()
    print("error: boom", file=sys.stderr)
    assert not tqdm._instances and outer.disable
    raw = terminal.getvalue()
    assert raw_line_start(raw, "error: ") == ""
    screen = [line for line in render(raw) if line]
    assert screen[-1] == "error: boom" and screen[-2].startswith("PULSE cells:")
    assert not any("training" in line or "checkpoint" in line for line in screen)  # inner bars cleared


@pytest.mark.slow
def test_an_error_mid_evaluation_starts_its_own_line(small_world, monkeypatch, tmp_path):
    """A real `pulse run` on the small world, bars on: the first cell logs its "done:" line while the outer bar is
    shown; in the second cell a PulseError is raised inside a checkpoint evaluation — with the outer bar, the
    training bar and the evaluation bar open. The error is the last line on the screen, at its start; only the
    outer bar's last state stays above it; no bar is left open."""
    import pulse.eval.mcq as mcq

    terminal = on_terminal(monkeypatch)
    real = mcq.option_logps

    def failing(*a, on_batch=None, **k):
        if "checkpoint step" in progress.named("") and "done: " in terminal.getvalue():
            on_batch(1)
            raise PulseError("boom in a checkpoint evaluation")
        return real(*a, on_batch=on_batch, **k)

    monkeypatch.setattr(mcq, "option_logps", failing)
    bars = []
    monkeypatch.setattr(progress, "tqdm", type("Seen", (tqdm,), {
        "__init__": lambda self, *a, **k: bars.append(k["desc"]) or tqdm.__init__(self, *a, **k)}))
    rc = main(["run", str(SMALL_CONFIG), "--out", str(tmp_path / "run"), "--no-report", "scenarios=[finetuned]",
               "methods=[ga,npo]", "table3_targets=[]", "scenario.finetuned.people=4", "scenario.finetuned.unlearn=2",
               "eval.every=2", "eval.mmbench_groups=4", "eval.curve_mmbench_groups=2"])
    raw = terminal.getvalue()
    assert rc == 2, raw[-2000:]
    assert "finetuned npo proj+llm seed 0 request 1/1" in bars and "checkpoint step 2: MCQ (2 people)" in bars
    assert raw[raw.index("error: ") - 1] == "\n"  # the outer bar ended its line: nothing at all before the error
    assert raw_line_start(raw, "done: finetuned ga") == ""
    screen = [line for line in render(raw) if line]
    assert screen[-1] == "error: boom in a checkpoint evaluation"
    assert screen[-2].startswith("PULSE cells:") and "1/2" in screen[-2]
    assert "done: finetuned ga proj+llm seed 0" in screen
    assert not tqdm._instances


class Recorder(tqdm):
    """Records every bar's description and whether it was closed; shows nothing."""
    seen: list = []

    def __init__(self, *a, **k):
        self.pulse_desc, self.pulse_closed = k["desc"], False
        Recorder.seen.append(self)
        super().__init__(*a, **{**k, "disable": True})

    def close(self):
        self.pulse_closed = True
        super().close()


@pytest.fixture
def recorder(monkeypatch):
    Recorder.seen = []
    monkeypatch.setattr(progress, "tqdm", Recorder)
    return Recorder


def _descs(rec) -> list[str]:
    return [b.pulse_desc for b in rec.seen]


# every phase once, as small as it goes: 2 people to unlearn and 2 to retain, 4 MMBench groups (2 at checkpoints)
PHASES = ["seeds=[0]", "methods=[ga]", "table3_targets=[]", "scenario.finetuned.people=4",
          "scenario.finetuned.unlearn=2", "scenario.sustainability.folds=2", "scenario.pretrained.select=4",
          "scenario.pretrained.unlearn=2", "eval.every=2", "eval.mmbench_groups=4", "eval.curve_mmbench_groups=2",
          "unlearn.stop.rule=never_learned", "probes.run=[relearn,routes,quant]", "probes.scenarios=[finetuned]",
          "probes.relearn.steps=1", "probes.quant_bits=[4]"]


@pytest.mark.slow
def test_every_long_phase_of_a_run_has_a_bar(small_world, recorder, tmp_path, monkeypatch):
    """A run through every phase; option scoring is stubbed (every option scores 0, batches reported as done) —
    this test is about which bars exist, and the stub keeps it to the training steps."""
    import pulse.eval.likelihood
    import pulse.eval.mcq
    from pulse.data.mmbench import read_mmbench
    from pulse.eval.mmbench import subset_groups
    from pulse.protocol.runner import run

    def zeros(model, enc, questions, batch_size=64, on_batch=None):
        on_batch(len(questions))
        return [[0.0] * len(options) for _, _, options in questions]
    monkeypatch.setattr(pulse.eval.likelihood, "option_logps", zeros)
    monkeypatch.setattr(pulse.eval.mcq, "option_logps", zeros)

    run(load_config(SMALL_CONFIG, PHASES), tmp_path / "run", log=lambda *_: None)
    descs = set(_descs(recorder))
    items = subset_groups(read_mmbench(small_world / "mmbench.tsv"), 4, seed=0)
    rows, sub = f"MMBench ({len(items)} rows)", f"MMBench ({len(subset_groups(items, 2, seed=0))} rows)"
    cell = "finetuned ga proj+llm seed 0"
    expected = [
        "PULSE cells",
        "celebrity selection: MCQ (10 people)",
        "request 0 finetuned seed 0: MCQ (2 people)",
        f"request 0 finetuned seed 0: {rows}",
        "request 0 pretrained seed 0: MCQ (2 people)",
        "never-learned reference finetuned seed 0: MCQ (2 people)",
        f"{cell} request 1/1", f"{cell} request 1/1: MCQ (2 people)", f"{cell} request 1/1: {rows}",
        "checkpoint step 2: MCQ (2 people)", f"checkpoint step 2: {sub}",
        "sustainability ga proj+llm seed 0 request 1/2", "sustainability ga proj+llm seed 0 request 2/2",
        "sustainability ga proj+llm seed 0 request 2/2: MCQ (2 people)",
        "pretrained ga proj+llm seed 0 request 1/1",
        "relearn control finetuned seed 0", f"relearn probe {cell} · never-learned control finetuned seed 0: MCQ "
                                            "(2 people)",
        f"relearn probe {cell} · never-learned control finetuned seed 0 · after the attack: MCQ (2 people)",
        "relearn ga proj+llm seed 0", f"relearn probe {cell} · after the attack: MCQ (2 people)",
        f"routes probe {cell} · request-0 model: MCQ (2 people)", f"routes probe {cell}: MCQ (2 people)",
        f"quant probe {cell} · request-0 model · 4-bit: MCQ (2 people)", f"quant probe {cell} · 4-bit: MCQ (2 people)",
    ]
    assert [d for d in expected if d not in descs] == []
    assert all(b.pulse_closed for b in recorder.seen)  # a finished run leaves no bar open


@pytest.mark.slow
def test_the_mini_builds_evaluations_have_bars(recorder, tmp_path):
    from pulse.mini.build import build_mini

    from ..mini.test_build import MICRO

    from pulse.data.mmbench import read_mmbench

    build_mini(tmp_path / "w", MICRO, log=lambda *_: None)
    descs = set(_descs(recorder))
    rows = len(read_mmbench(tmp_path / "w" / "mmbench.tsv"))
    for model in ("pre-trained", "fine-tuned"):
        assert f"mini build, {model} model: MCQ (4 people)" in descs
        assert f"mini build, {model} model: MMBench ({rows} rows)" in descs
    assert {"vision pre-training", "pre-training", "fine-tuning"} <= descs
    assert all(b.pulse_closed for b in recorder.seen)
