"""The mini build: bitwise reproducible, cache key follows the building code, one builder per world; the shipped
world is used in place when its key is this code's and every file matches SHA256SUMS, a damaged copy is a one-line
error naming the file, a copy built by other code is ignored."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from pulse.mini.cache import MiniConfig
from pulse.errors import PulseError
from pulse.mini import build, cache
from pulse.mini.build import PRESETS, BuildConfig, build_mini
from pulse.mini.lock import build_lock, lock_path
from pulse.mini.model import TinyConfig
from pulse.mini.train import finetune_recipe, pretrain_recipe, vision_recipe
from pulse.mini.world import WorldConfig

# a world that builds in seconds: every phase runs, nothing is learned
MICRO = BuildConfig(world=WorldConfig(n_fictional=4, n_celebrities=4, n_famous=2, n_mmbench=10, n_mmbench_train=20),
                    model=TinyConfig(vision_hidden=32, text_hidden=32, text_layers=1, text_ffn=64, vocab_size=400),
                    vision=vision_recipe(steps=4, batch_size=4), pretrain=pretrain_recipe(steps=6, batch_size=4),
                    finetune=finetune_recipe(steps=4, lora_rank=2, batch_size=4))
SRC = Path(__file__).resolve().parents[2] / "src"
# a child process: MICRO built through ensure_mini into PULSE_CACHE; prints its path and the pulse modules it loaded
CHILD = textwrap.dedent(f"""
    import json, sys, torch
    sys.path.insert(0, {str(SRC)!r})
    torch.set_num_threads(int(sys.argv[1]))
    from pulse.mini.cache import MiniConfig, ensure_mini
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_build import MICRO
    path = ensure_mini(MiniConfig(), log=lambda m: print(m, flush=True), build_cfg=MICRO)
    print("RESULT", json.dumps({{"path": str(path), "modules": sorted(m for m in sys.modules
                                                                    if m.split(".")[0] == "pulse")}}), flush=True)
""")


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "build.json"}


def child(cache_dir: Path, threads: int, hash_seed: str = "0") -> subprocess.Popen:
    env = {**os.environ, "PULSE_CACHE": str(cache_dir), "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(threads)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def result(proc: subprocess.Popen, timeout: float = 300) -> tuple[dict, str]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT ")), out


@pytest.mark.slow
def test_same_seed_same_threads_gives_identical_files_and_hashes_what_it_imports(tmp_path):
    """One build here, one in another process with another str-hash seed and another ambient torch thread count
    (the build pins BuildConfig.threads): every file but build.json (timings) is byte-identical — parquet, TSV,
    world.json, tokenizer, both models' safetensors. The other process also shows that a build imports no pulse
    module outside the cache key's BUILD_MODULES."""
    import torch

    threads = torch.get_num_threads()
    proc = child(tmp_path / "cache", 3 - min(threads, 2), hash_seed="12345")
    report = build_mini(tmp_path / "here", MICRO, log=lambda *_: None)
    info, _ = result(proc)
    there = Path(info["path"])
    assert there.name == f"mini-{cache.world_key(MICRO)}"
    mine, theirs = file_hashes(tmp_path / "here"), file_hashes(there)
    assert {"models/pretrained/model.safetensors", "models/finetuned/model.safetensors", "mmbench.tsv",
            "mllmu/Full_Set/train-00000-of-00001.parquet"} <= set(mine)
    assert mine == theirs
    env = report["environment"]
    assert env["torch_threads"] == MICRO.threads == 2 and env["torch"] == torch.__version__
    assert env["deterministic_algorithms"]
    assert json.loads((there / "build.json").read_text())["environment"]["torch_threads"] == 2
    # the build restores the global settings
    assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == threads
    assert set(info["modules"]) <= set(cache.BUILD_MODULES), set(info["modules"]) - set(cache.BUILD_MODULES)


def test_cache_key_follows_config_and_building_code(tmp_path, monkeypatch):
    files = cache.source_files()
    names = {f.relative_to(SRC / "pulse").as_posix() for f in files}
    assert {"mini/world.py", "mini/build.py", "mini/portraits.py", "unlearn/loop.py", "unlearn/finetune.py",
            "models/batches.py", "data/records.py", "eval/mmbench.py"} <= names
    assert all(f.is_file() for f in files)
    key = cache.world_key(MICRO)
    assert key == cache.world_key(replace(MICRO)) and len(key) == 12
    assert key != cache.world_key(replace(MICRO, seed=1))
    # a one-byte change in any building source changes the key
    copies = []
    for f in files:
        c = tmp_path / f.relative_to(SRC)
        c.parent.mkdir(parents=True, exist_ok=True)
        c.write_bytes(f.read_bytes())
        copies.append(c)
    monkeypatch.setattr(cache, "source_files", lambda: copies)
    monkeypatch.setattr(cache, "__file__", str(tmp_path / "pulse" / "mini" / "cache.py"))
    assert cache.world_key(MICRO) == key  # same bytes, same key
    loop = next(c for c in copies if c.as_posix().endswith("unlearn/loop.py"))
    loop.write_bytes(loop.read_bytes() + b"\n")
    assert cache.world_key(MICRO) != key


def test_build_lock_refuses_a_second_builder_and_is_released(tmp_path):
    out = tmp_path / "world"
    with build_lock(out, wait=False):
        assert lock_path(out).read_text() == str(os.getpid())
        with pytest.raises(PulseError, match=r"world: being built by another process \(pid \d+"):
            build_mini(out, MICRO, log=lambda *_: None)
        with pytest.raises(PulseError, match="being built"):
            with build_lock(out, wait=False):
                pass
    assert not out.exists() and not out.with_name("world.partial").exists()  # the refused builder touched nothing
    with build_lock(out, wait=False) as done:  # released on exit
        done()
    assert not lock_path(out).exists()


@pytest.mark.slow
def test_concurrent_runs_build_the_same_world_once(tmp_path):
    """Two processes need the same world while a third holds its build lock: both wait, then exactly one builds
    and the other uses its result (before: the second rmtree'd the first one's .partial and one run died)."""
    root = tmp_path / "cache"
    path = root / f"mini-{cache.world_key(MICRO)}"
    root.mkdir()
    with build_lock(path, wait=False):
        procs = [child(root, 1), child(root, 1)]
        for p in procs:  # both reached the lock and wait
            line = p.stdout.readline()
            while "waiting for another process" not in line:
                assert line, "child ended before waiting"
                line = p.stdout.readline()
    outs = [result(p) for p in procs]
    assert {info["path"] for info, _ in outs} == {str(path)}
    assert sum(out.count("building the mini world") for _, out in outs) == 1
    assert (path / "build.json").is_file() and not path.with_name(path.name + ".partial").exists()
    assert not lock_path(path).exists()


def test_scene_classes_are_question_answer_pairs():
    from pulse.data.records import MMBenchItem
    from pulse.mini.train import scene_classes

    def item(q, opts, ans):
        return MMBenchItem(0, q, None, dict(zip("ABCD", opts)), ans, "c", "l2", b"")
    items = [item("Which shape is shown?", ["circle", "square"], "B"), item("How many?", ["2", "1"], "A"),
             item("Which shape is shown?", ["square", "cross"], "A"), item("How many?", ["1", "2"], "A")]
    names, labels = scene_classes(items)
    assert names == ["How many?|1", "How many?|2", "Which shape is shown?|square"]
    assert labels == [2, 1, 2, 0]


def test_vision_stage_then_frozen_tower(tmp_path, monkeypatch):
    """The vision stage trains the tower; pre-training and fine-tuning leave it exactly as the stage left it."""
    from safetensors.torch import load_file

    from pulse.mini import build

    after_stage = {}
    original = build.pretrain_vision

    def spy(model, enc, items, r):
        info = original(model, enc, items, r)
        after_stage.update({n: p.detach().clone() for n, p in model.model.vision_tower.named_parameters()})
        assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
        return info
    monkeypatch.setattr(build, "pretrain_vision", spy)
    report = build_mini(tmp_path / "w", MICRO, log=lambda *_: None)
    assert report["vision_stage"]["steps"] == 4 and report["vision_stage"]["classes"] >= 10
    assert report["recipes"]["vision"]["batch_size"] == 4 and report["timings"]["vision_s"] >= 0
    for phase in ("pretrained", "finetuned"):
        state = load_file(str(tmp_path / "w" / "models" / phase / "model.safetensors"))
        tower = {k.split("vision_tower.", 1)[1]: v for k, v in state.items() if "vision_tower." in k}
        assert set(tower) == set(after_stage)
        assert all(torch_equal(tower[k], after_stage[k]) for k in tower), phase


def torch_equal(a, b) -> bool:
    import torch
    return bool(torch.equal(a, b))


def test_without_vision_stage_the_tower_trains_with_the_language_model(tmp_path, monkeypatch):
    from pulse.mini import build

    calls = []
    original = build.train_on
    monkeypatch.setattr(build, "pretrain_vision", lambda *a, **k: pytest.fail("vision stage ran"))
    monkeypatch.setattr(build, "train_on", lambda *a, **k: calls.append(k["frozen"]) or original(*a, **k))
    report = build_mini(tmp_path / "w", replace(MICRO, vision=vision_recipe(steps=0)), log=lambda *_: None)
    assert report["vision_stage"] is None and calls == [(), ()]
    calls.clear()
    monkeypatch.setattr(build, "pretrain_vision", lambda *a, **k: {"train_accuracy": 0.0, "classes": 1})
    build_mini(tmp_path / "w2", MICRO, log=lambda *_: None)
    assert calls == [("model.vision_tower.",), ("model.vision_tower.",)]


# --- the shipped world ---

@pytest.fixture(scope="module")
def shipped_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("worlds")
    path = cache.ship(MICRO, log=lambda *_: None, root=root)
    assert path == root / f"mini-{cache.world_key(MICRO)}"
    return root


def test_a_first_run_uses_the_shipped_world_without_building(shipped_root, tmp_path, monkeypatch):
    path = shipped_root / f"mini-{cache.world_key(MICRO)}"
    listed = [line.split("  ")[1] for line in (path / cache.SUMS).read_text().splitlines()]
    assert "build.json" in listed and "models/finetuned/model.safetensors" in listed
    assert listed == sorted(cache.file_hashes(path))
    monkeypatch.setattr(cache, "SHIPPED", shipped_root)
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "build_into", lambda *a, **k: pytest.fail("built although a copy is shipped"))
    logs = []
    assert cache.ensure_mini(MiniConfig(), log=logs.append, build_cfg=MICRO) == path
    assert "SHA256SUMS" in logs[0] and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage, what", [
    (lambda p: (p / "models/finetuned/model.safetensors").write_bytes(b"x"), "its sha256 differs"),
    (lambda p: (p / "mmbench.tsv").unlink(), "missing"),
    (lambda p: (p / "notes.txt").write_text("extra"), "not listed in SHA256SUMS"),
])
def test_a_damaged_shipped_world_is_a_one_line_error_naming_the_file(shipped_root, tmp_path, damage, what):
    copy = tmp_path / "worlds"
    shutil.copytree(shipped_root, copy)
    damage(copy / f"mini-{cache.world_key(MICRO)}")
    with pytest.raises(PulseError, match=what) as e:
        cache.shipped(MICRO, log=lambda *_: None, root=copy)
    assert "\n" not in str(e.value) and str(copy) in str(e.value)


def test_a_world_shipped_by_other_code_is_ignored(shipped_root):
    other = replace(MICRO, seed=1)
    logs = []
    assert cache.shipped(other, log=logs.append, root=shipped_root) is None
    assert "built by other code" in logs[0]


def test_the_repository_ships_the_default_world_of_this_code():
    """The shipped copy is what makes a first `make run` skip the ~10 min build: it must be this code's."""
    preset = PRESETS["default"]
    key = cache.world_key(replace(preset, world=replace(preset.world, seed=0), seed=0))
    found = sorted(p.name for p in cache.SHIPPED.glob("mini-*") if not p.name.endswith("-oracles"))
    assert found == [f"mini-{key}"], (f"worlds/ holds {found}, this code's default world is mini-{key}: rebuild it "
                                      f"with `pulse mini build --ship` and delete the old one")
    cache.verify(cache.SHIPPED / f"mini-{key}")
    # the retrained oracles of the default config's split seeds, shipped beside it (pulse mini oracles --ship)
    oracles = sorted(cache.SHIPPED.glob("mini-*-oracles/*"))
    assert {p.parent.name for p in oracles} == {f"mini-{key}-oracles"} and len(oracles) == 3
    for path in oracles:
        cache.verify(path)
        assert json.loads((path / "pulse_oracle.json").read_text())["request"]["world"] == f"mini-{key}"
    assert build.PRESETS["default"].threads == 2  # the thread count it was built with (its bits depend on it)
