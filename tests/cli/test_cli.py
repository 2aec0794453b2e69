"""The `pulse` command as a user runs it: help, data check, eval, mmbench, errors without tracebacks."""
import json
import subprocess
import sys

from pulse.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for name, desc in COMMANDS.items():
        assert name in out and desc[:30] in out


def test_data_check_json(small_world, capsys):
    assert main(["data", "check", str(small_world / "mllmu"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # 10 fine-tuned fictional people and 20 held out (never trained on)
    assert res["configs"]["Full_Set"] == {"people": 30, "image_mcq": 150, "text_mcq": 150} | {
        k: v for k, v in res["configs"]["Full_Set"].items() if k not in ("people", "image_mcq", "text_mcq")}
    assert main(["data", "check", str(small_world / "mmbench.tsv"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["questions"] == 24 and res["rows"] > 24


def test_data_check_invalid_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tquestion\n0\tq\n")
    proc = subprocess.run([sys.executable, "-m", "pulse.cli", "data", "check", str(bad)], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "bad.tsv" in proc.stderr


def test_eval_and_mmbench_json(small_world, capsys):
    model = str(small_world / "models" / "finetuned")
    assert main(["eval", "--model", model, "--data", str(small_world / "mllmu"), "--config", "Full_Set",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"image", "text"} <= set(res) and res["scoring"] == "likelihood"
    assert main(["mmbench", "--model", model, "--tsv", str(small_world / "mmbench.tsv"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"circular", "vanilla", "per_category"} <= set(res)
