"""Every bad input a clear error: one line on stderr, exit 2, naming the file / row / field / config
key, found before any build, model load or evaluation; Ctrl-C exits 130 with one line. No model is trained here:
the protocol, the mini-world build and (where the error must come first) the model load are replaced by stubs that
fail the test if they are reached."""
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import pulse.cli as cli
from pulse.cli import INTERRUPTED, main
from pulse.config import load_config
from pulse.data.mllmu import write_people
from pulse.data.mmbench import write_mmbench
from pulse.data.records import MCQ, MMBenchItem, OpenItem, Person
from pulse.errors import PulseError
from pulse.fsutil import atomic_write_text
from pulse.mini.build import PRESETS

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "configs" / "mini" / "small.yaml"


def _reached(what):
    def stub(*args, **kwargs):
        raise AssertionError(f"{what} was reached: the error should have been found up front")
    return stub


@pytest.fixture(autouse=True)
def up_front(monkeypatch, tmp_path):
    """No protocol run and no mini-world build; a private PULSE_CACHE; the test's folder as working directory."""
    import pulse.mini.cache
    import pulse.protocol.runner

    monkeypatch.setattr(pulse.protocol.runner, "run", _reached("the protocol (runner.run)"))
    monkeypatch.setattr(pulse.mini.cache, "ensure_mini", _reached("the mini-world build"))
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_model_load(monkeypatch):
    monkeypatch.setattr(cli, "_load", _reached("the model load"))


def error_line(capsys, argv: list[str]) -> str:
    """Run `pulse argv`; assert exit 2 and exactly one line on stderr, no traceback; return that line."""
    try:
        rc = main([str(x) for x in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


def png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def fake_checkpoint(path: Path) -> Path:
    """A directory that passes the header-level checks (config.json, one small valid safetensors file)."""
    from safetensors.torch import save_file
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    save_file({"w": torch.zeros(3, 2)}, str(path / "model.safetensors"))
    return path


def mmbench_tsv(path: Path, answers: bool = True) -> Path:
    items = [MMBenchItem(index=i, question=f"q{i}?", hint=None, options={"A": "red", "B": "blue"},
                         answer="A" if answers else None, category="colour", l2_category="perception", image=png())
             for i in range(3)]
    write_mmbench(path, items)
    return path


# ------------------------------------------------------------------ config: YAML, overrides, values, keys

@pytest.mark.parametrize("overrides,message", [
    (["methods=[ga,"], "override methods=[ga,: invalid YAML value"),
    (["=3"], "override =3: empty key"),
    (["unlearn.lr=.nan"], "small.yaml: unlearn.lr must be a finite number > 0, got nan"),
    (["unlearn.lr=inf"], "unlearn.lr must be a finite number > 0, got inf"),
    (["unlearn.lr=abc"], "small.yaml: unlearn.lr: expected float, got 'abc'"),
    (["unlearn.epochs=two"], "small.yaml: unlearn.epochs: expected int, got 'two'"),
    (["unlearn.params={beta: abc}"], "unlearn.params.beta: expected a number, got 'abc'"),
    (["unlearn.batch_size=0"], "unlearn.batch_size must be an integer >= 1, got 0"),
    (["unlearn.batch_size=-4"], "unlearn.batch_size must be an integer >= 1, got -4"),
    (["eval.batch_size=0"], "eval.batch_size must be an integer >= 1, got 0"),
    (["eval.max_new_tokens=0"], "eval.max_new_tokens must be an integer >= 1, got 0"),
    (["unlearn.lora_rank=0"], "unlearn.lora_rank must be an integer >= 1, got 0"),
    (["unlearn.bogus=1"], "unknown key 'bogus' in unlearn"),
    (["model.device=gpu7"], "model.device: unknown device 'gpu7'"),
    (["model.device=cuda:x"], "model.device: unknown device 'cuda:x'"),
    (["model.dtype=int8"], "model.dtype: unknown dtype 'int8'"),
    (["name=../escape"], "name must be a plain folder name under runs/"),
    (["name=/tmp/escape"], "name must be a plain folder name under runs/"),
    (["name=a/b"], "name must be a plain folder name under runs/"),
    (["name=.."], "name must be a plain folder name under runs/"),
    (["eval.mmbench_groups=0"], "eval.mmbench_groups must be null (all groups) or an integer >= 1, got 0"),
    (["mini.seed=-1"], "mini.seed must be an integer >= 0, got -1"),
])
def test_bad_config_values_are_one_line_naming_the_key(capsys, overrides, message):
    assert message in error_line(capsys, ["run", SMALL, *overrides])


def test_mmbench_groups_beyond_the_mini_worlds_groups(capsys):
    n = PRESETS["small"].world.n_mmbench
    line = error_line(capsys, ["run", SMALL, f"eval.mmbench_groups={n + 1}"])
    assert f"eval.mmbench_groups={n + 1}: the small mini world's MMBench has only {n} question groups" in line


def test_yaml_list_as_config_plus_override(capsys, tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    line = error_line(capsys, ["run", tmp_path / "list.yaml", "seeds=[0]"])
    assert "list.yaml: expected a mapping of key: value at the top level, got list" in line


def test_non_utf8_config_names_file_and_line(capsys, tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(b"# PULSE\nname: caf\xe9\n")
    assert "latin1.yaml, line 2: not UTF-8 text (byte 0xe9)" in error_line(capsys, ["run", tmp_path / "latin1.yaml"])


def test_config_that_is_a_directory(capsys, tmp_path):
    assert "is a directory, not a YAML config file" in error_line(capsys, ["run", tmp_path])


@pytest.mark.parametrize("spelling", ["1e-3", "1E-3", ".001", "0.001", "1.0e-3", "+1e-3", "1e-03", "0.1e-2"])
def test_every_float_spelling_is_accepted(spelling):
    """YAML 1.1 (PyYAML) reads 1e-3 and 1E-3 as strings and .001 as a float; all mean 0.001."""
    cfg = load_config(SMALL, [f"unlearn.lr={spelling}", f"unlearn.adam_eps={spelling}",
                              f"unlearn.params={{beta: {spelling}}}"])
    assert cfg.unlearn.lr == 0.001 and cfg.unlearn.adam_eps == 0.001 and cfg.unlearn.params == {"beta": 0.001}


def test_float_spellings_in_a_yaml_file(tmp_path):
    (tmp_path / "c.yaml").write_text("unlearn: {lr: 1e-3, adam_betas: [0.9, 1E-3], clip: .5}\n")
    u = load_config(tmp_path / "c.yaml").unlearn
    assert (u.lr, u.adam_betas, u.clip) == (0.001, [0.9, 0.001], 0.5)


def test_plain_run_names_are_accepted():
    assert load_config(SMALL, ["name=my-run_2.v1"]).name == "my-run_2.v1"


# ------------------------------------------------------------------ --debug, argparse

@pytest.mark.parametrize("argv", [["--debug", "run", SMALL, "methods=[ga,"], ["run", SMALL, "methods=[ga,", "--debug"],
                                  ["run", "--debug", SMALL, "methods=[ga,"]])
def test_debug_before_or_after_the_subcommand_shows_the_traceback(argv):
    with pytest.raises(PulseError, match=r"override methods=\[ga,"):
        main([str(x) for x in argv])


@pytest.mark.parametrize("argv,message", [
    (["mini", "build", "--out", "w", "--seed", "-1"],
     "pulse mini build: argument --seed: must be an integer >= 0, got -1"),
    (["eval", "--model", "m", "--data", "d", "--config", "Full_Set", "--batch-size", "0"],
     "pulse eval: argument --batch-size: must be an integer >= 1, got 0"),
    (["mmbench", "--model", "m", "--tsv", "t.tsv", "--batch-size", "-2"],
     "pulse mmbench: argument --batch-size: must be an integer >= 1, got -2"),
    (["mmbench", "--model", "m", "--tsv", "t.tsv", "--groups", "zero"],
     "pulse mmbench: argument --groups: expected an integer >= 1, got 'zero'"),
    (["run", SMALL, "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_are_one_line(capsys, argv, message):
    assert message in error_line(capsys, argv)


# ------------------------------------------------------------------ devices

def test_cuda_without_cuda(capsys, monkeypatch, no_model_load):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = error_line(capsys, ["run", SMALL, "model.device=cuda"])
    assert line == "error: model.device: device 'cuda': CUDA is not available on this machine (use auto or cpu)"
    line = error_line(capsys, ["eval", "--model", "m", "--data", "d", "--config", "Full_Set", "--device", "cuda"])
    assert "device 'cuda': CUDA is not available" in line
    assert "unknown device 'tpu'" in error_line(capsys, ["mmbench", "--model", "m", "--tsv", "t", "--device", "tpu"])


# ------------------------------------------------------------------ output folders, cache, predictions

def test_out_that_is_a_file(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert "--out afile: exists and is not a directory" in error_line(capsys, ["run", SMALL, "--out", "afile"])
    assert "--out afile/x: afile is a file, not a directory" in error_line(capsys, ["run", SMALL, "--out", "afile/x"])
    line = error_line(capsys, ["mini", "build", "--out", "afile"])
    assert "--out afile: already exists" in line


def test_out_that_is_read_only(capsys, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    assert f"--out {ro}/run: {ro} is not writable" in error_line(capsys, ["run", SMALL, "--out", ro / "run"])
    assert f"--predictions {ro}/p.json: {ro} is not writable" in error_line(
        capsys, ["mmbench", "--model", "m", "--tsv", "t", "--predictions", ro / "p.json"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_that_is_read_only_for_real(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "is not writable" in error_line(capsys, ["run", SMALL, "--out", ro / "run"])
    finally:
        ro.chmod(0o755)


def test_pulse_cache_that_is_a_file_or_unwritable(capsys, tmp_path, monkeypatch):
    (tmp_path / "cachefile").write_text("x")
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path / "cachefile"))
    line = error_line(capsys, ["run", SMALL])
    assert f"PULSE_CACHE={tmp_path}/cachefile: {tmp_path}/cachefile is a file, not a directory" in line
    ro = tmp_path / "rocache"
    ro.mkdir()
    monkeypatch.setenv("PULSE_CACHE", str(ro))
    real = os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    assert f"PULSE_CACHE={ro}: {ro} is not writable" in error_line(capsys, ["run", SMALL])


@pytest.mark.parametrize("command", ["eval", "mmbench"])
def test_predictions_on_a_directory(capsys, tmp_path, command, no_model_load):
    data = ["--data", "d", "--config", "Full_Set"] if command == "eval" else ["--tsv", "t.tsv"]
    line = error_line(capsys, [command, "--model", "m", *data, "--predictions", tmp_path])
    assert line == (f"error: --predictions {tmp_path}: is a directory; give a file name "
                    f"(e.g. {tmp_path}/predictions.json)")


# ------------------------------------------------------------------ disk full, Ctrl-C, out of memory

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    target.write_text("earlier results\n")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(PulseError, match=r"results\.csv: cannot write \(No space left on device\)"):
        atomic_write_text(target, "new results\n")
    assert target.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_disk_full_during_a_run_is_one_line_and_earlier_results_stay(capsys, tmp_path, monkeypatch):
    import pulse.protocol.runner
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").write_text("earlier results\n")

    def run(cfg, out, **launch):
        monkeypatch.setattr(os, "fsync", _enospc)
        atomic_write_text(out / "results.csv", "new\n")

    monkeypatch.setattr(pulse.protocol.runner, "run", run)
    line = error_line(capsys, ["run", SMALL, "--out", out])
    assert f"{out}/results.csv: cannot write (No space left on device)" in line
    assert "free some space and rerun the same command to resume" in line
    assert (out / "results.csv").read_text() == "earlier results\n"

    def log_write(cfg, out, **launch):  # a write outside fsutil (e.g. the run log): the OSError itself
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "run.log"))

    monkeypatch.setattr(pulse.protocol.runner, "run", log_write)
    line = error_line(capsys, ["run", SMALL, "--out", out])
    assert line.startswith(f"error: {out}/run.log: No space left on device; free some space and rerun")


def test_ctrl_c_in_process(capsys, monkeypatch, tmp_path):
    def interrupted(a):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_run", interrupted)
    assert main(["run"]) == 130
    assert capsys.readouterr().err == INTERRUPTED + "\n"
    import pulse.unlearn.finetune
    monkeypatch.setattr(pulse.unlearn.finetune, "run_finetune", lambda *a, **k: interrupted(a))
    assert main(["finetune", "--model", "m", "--data", "d", "--out", str(tmp_path / "ft")]) == 130
    assert capsys.readouterr().err == f"{INTERRUPTED} from the last checkpoint in {tmp_path}/ft.partial\n"


def test_ctrl_c_from_a_real_sigint():
    script = ("import sys, time\nimport pulse.cli as c\n"
              "def slow(a):\n    print('ready', flush=True)\n    time.sleep(60)\n"
              "c.cmd_run = slow\nsys.exit(c.main(['run']))\n")
    # a shell's background job starts with SIGINT ignored, which Python inherits: restore the default, as in a
    # terminal, so the test also holds when the suite itself runs in the background
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err == INTERRUPTED + "\n"


def test_errors_start_on_their_own_line_after_a_progress_bar(capsys, monkeypatch):
    from tqdm import tqdm
    bars = []

    def fails(a):
        bars.append(tqdm(total=3, desc="cells", file=sys.stderr))
        bars[0].update(1)
        raise PulseError("something is wrong")
    monkeypatch.setattr(cli, "cmd_run", fails)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    bars[0].close()
    assert "cells" in err and err.split("\n")[-2] == "error: something is wrong"


def test_out_of_memory_is_one_line(capsys, monkeypatch):
    def oom(a):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(cli, "cmd_run", oom)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory on the device: lower eval.batch_size" in err


# ------------------------------------------------------------------ checkpoints

@pytest.fixture
def real_config(tmp_path):
    """Overrides of a real-data config whose paths exist: MLLMU folder, MMBench TSV and two checkpoints."""
    (tmp_path / "mllmu").mkdir()
    mmbench_tsv(tmp_path / "mmb.tsv")
    pre = fake_checkpoint(tmp_path / "pretrained")
    fine = fake_checkpoint(tmp_path / "finetuned")
    return {"data.mllmu": tmp_path / "mllmu", "data.mmbench": tmp_path / "mmb.tsv",
            "model.pretrained": pre, "model.finetuned": fine}


def run_real(capsys, real_config, **changes) -> str:
    return error_line(capsys, ["run", SMALL, *(f"{k}={v}" for k, v in {**real_config, **changes}.items())])


def test_truncated_and_garbage_safetensors(capsys, real_config):
    f = real_config["model.finetuned"] / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-5])
    line = run_real(capsys, real_config)
    assert line == (f"error: model.finetuned: {f}: truncated or not a safetensors file; copy or download it again "
                    f"(its tensors need 24 bytes of data, the file holds 19)")  # 3 x 2 float32 = 24 bytes
    f.write_bytes(os.urandom(64))
    assert f"{f}: truncated or not a safetensors file" in run_real(capsys, real_config)
    f.write_bytes((20).to_bytes(8, "little") + b"not json at all here" + b"\0" * 8)
    assert "its header is not safetensors JSON" in run_real(capsys, real_config)


def test_shard_index_naming_a_missing_file(capsys, real_config):
    ckpt = real_config["model.pretrained"]
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00002.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}))
    assert "names model-00002-of-00002.safetensors, which is not in" in run_real(capsys, real_config)


@pytest.mark.parametrize("sidecar,message", [
    ('{"template": ', "pulse_model.json: not valid JSON (Expecting value: line 1 column 14"),
    ('["plain"]', "pulse_model.json: expected a JSON object, got list"),
    ('{"scoring": "logits"}', "pulse_model.json, field scoring: must be likelihood or generate, got 'logits'"),
    ('{"template": "vicuna-9"}', "pulse_model.json, field template: unknown prompt template 'vicuna-9'"),
])
def test_malformed_pulse_model_json(capsys, real_config, sidecar, message):
    (real_config["model.finetuned"] / "pulse_model.json").write_text(sidecar)
    assert message in run_real(capsys, real_config)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A loadable, randomly initialised tiny LLaVA (no training), saved as safetensors."""
    from pulse.mini.model import TinyConfig, build_tiny_llava
    from pulse.models.load import save_model
    out = tmp_path_factory.mktemp("tiny") / "model"
    lm = build_tiny_llava(["red blue"], TinyConfig(vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1,
                                                   text_ffn=64, heads=2, vocab_size=300, max_positions=64))
    save_model(lm, out)
    return out


def test_mismatched_weight_shapes(capsys, tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    weights = load_file(str(bad / "model.safetensors"))
    key = "language_model.model.layers.0.mlp.down_proj.weight"
    assert tuple(weights[key].shape) == (32, 64)
    weights[key] = torch.zeros(33, 64)
    save_file(weights, str(bad / "model.safetensors"), metadata={"format": "pt"})
    line = error_line(capsys, ["mmbench", "--model", bad, "--tsv", mmbench_tsv(tmp_path / "m.tsv")])
    assert line == (f"error: {bad}: weight model.language_model.layers.0.mlp.down_proj.weight is [33, 64] in the "
                    f"safetensors but config.json makes it [32, 64] (1 mismatched weights): weights and config.json "
                    f"do not belong together")


# ------------------------------------------------------------------ data files

def test_mmbench_without_answers_is_refused_before_the_model_is_loaded(capsys, tmp_path, no_model_load,
                                                                       real_config):
    tsv = mmbench_tsv(tmp_path / "test.tsv", answers=False)
    line = error_line(capsys, ["mmbench", "--model", "m", "--tsv", tsv])
    assert line.startswith(f"error: {tsv}, index 0, field answer: no answer (3 of 3 rows); PULSE scores MMBench")
    line = run_real(capsys, real_config, **{"data.mmbench": tsv})  # pulse run: before the mini world / any model
    assert line.startswith(f"error: {tsv}, field answer: missing column; PULSE scores MMBench locally")


def test_mmbench_groups_beyond_the_tsv(capsys, tmp_path, real_config, no_model_load):
    line = run_real(capsys, real_config, **{"eval.mmbench_groups": 4})
    tsv = real_config["data.mmbench"]
    assert line == f"error: eval.mmbench_groups=4: {tsv} has only 3 question groups (null = all)"
    line = error_line(capsys, ["mmbench", "--model", "m", "--tsv", real_config["data.mmbench"], "--groups", "4"])
    assert line == f"error: --groups 4: {real_config['data.mmbench']} has only 3 question groups"


def person(pid: str) -> Person:
    mcqs = {form: [MCQ(f"{form} q{i}?", {"A": "a", "B": "b", "C": "c", "D": "d"}, "A", form, pid, i)
                   for i in range(2)] for form in ("image", "text")}
    return Person(id=pid, name=f"Person {pid}", image=png(), biography={"Name": f"Person {pid}", "Born": "Town"},
                  image_mcqs=mcqs["image"], text_mcqs=mcqs["text"],
                  cloze=[OpenItem("This person works as a __.", "baker", "image")],
                  generation=[OpenItem("Where was this person born?", "In Town.", "image")], images=[])


def test_non_utf8_parquet_string_names_file_row_and_field(capsys, tmp_path, no_model_load):
    write_people(tmp_path / "mllmu", "Full_Set", [person("1"), person("2")])
    file, = (tmp_path / "mllmu" / "Full_Set").glob("*.parquet")
    table = pq.read_table(file)
    bio = table.column("biography").to_pylist()
    raw = pa.array([bio[0].encode(), b'{"Name": "Caf\xe9"}'], type=pa.binary()).view(pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("biography"), "biography", raw), file)
    line = error_line(capsys, ["eval", "--model", "m", "--data", tmp_path / "mllmu", "--config", "Full_Set"])
    assert line == (f"error: {file}, row 1 (ID 2), field biography: text is not valid UTF-8 (byte 0xe9 at position "
                    f"13); re-export the file with UTF-8 strings")
