"""Data-parallel evaluation (eval/parallel.py): the shard / reassemble functions on hand-made rows, the plain call
without a launch, and 2 CPU processes (gloo, `accelerate launch`) giving the one-process predictions and accuracies
of `pulse eval` and `pulse mmbench` on the small mini world."""
import json
import os
import socket
import subprocess
import sys
import types

import pytest

from pulse.data.records import MCQ, MMBenchItem, Person
from pulse.eval import parallel


def test_shard_is_round_robin_and_covers_every_row_once():
    assert parallel.shard(7, 0, 3) == [0, 3, 6]
    assert parallel.shard(7, 2, 3) == [2, 5]
    assert parallel.shard(1, 0, 2) == [0] and parallel.shard(1, 1, 2) == []
    assert [parallel.shard(2, r, 5) for r in range(5)] == [[0], [1], [], [], []]
    for n, world in [(0, 2), (1, 1), (6, 2), (7, 3), (3, 8)]:
        parts = [parallel.shard(n, r, world) for r in range(world)]
        assert sorted(i for p in parts for i in p) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        parallel.shard(3, 2, 2)


def _person(pid, n_image, n_text):
    def q(form, i):
        return MCQ(f"{pid} {form} {i}?", {"A": "a", "B": "b"}, "A", form, pid, i)
    return Person(pid, pid, b"", {}, [q("image", i) for i in range(n_image)], [q("text", i) for i in range(n_text)])


PEOPLE = [_person("p1", 2, 1), _person("p2", 0, 2), _person("p3", 1, 1)]


def test_mcq_order_is_form_then_person_then_question():
    assert parallel.mcq_order(PEOPLE) == [
        ("p1", "image", 0), ("p1", "image", 1), ("p3", "image", 0),
        ("p1", "text", 0), ("p2", "text", 0), ("p2", "text", 1), ("p3", "text", 0)]
    assert parallel.mcq_order(PEOPLE, forms=("text",), questions={("p2", "text", 1), ("p3", "image", 0)}) == \
        [("p2", "text", 1)]


@pytest.mark.parametrize("world", [1, 2, 3, 7, 10])
def test_mcq_shards_gathered_back_in_one_process_order(world):
    """Uneven splits, one key per process (7) and more processes than keys (10); keys a process does not score
    (the demo questions of generate scoring) are left out as one process leaves them out."""
    order = parallel.mcq_order(PEOPLE)
    demo = {("p2", "text", 0)}
    row = lambda k: {"person_id": k[0], "form": k[1], "index": k[2], "prediction": "A"}  # noqa: E731
    shards = [parallel.mcq_shard(order, r, world) for r in range(world)]
    assert set().union(*shards) == set(order) and sum(map(len, shards)) == len(order)
    # what evaluate_mcq(questions=shard) returns on each process: its keys, in the one-process relative order
    parts = [[row(k) for k in order if k in s and k not in demo] for s in shards]
    assert parallel.merge(order, parts, parallel._mcq_key) == [row(k) for k in order if k not in demo]


def test_merge_places_one_row_duplicates_and_refuses_a_stray_row():
    key = lambda r: r[0]  # noqa: E731
    assert parallel.merge(["a"], [[], [("a", 1)], []], key) == [("a", 1)]
    # a key listed twice (a person evaluated twice) takes its rows in order
    assert parallel.merge(["a", "b", "a"], [[("a", 1), ("a", 2)], [("b", 3)]], key) == [("a", 1), ("b", 3), ("a", 2)]
    with pytest.raises(RuntimeError):
        parallel.merge(["a"], [[("a", 1)], [("z", 2)]], key)


def _item(index):
    return MMBenchItem(index, "q", None, {"A": "x", "B": "y"}, "A", "cat", "l2", b"")


def test_mmbench_shards_keep_question_groups_whole():
    items = [_item(i) for i in (0, 1, 1_000_000, 2, 1_000_001, 2_000_000, 3)]
    idx = lambda rows: [it.index for it in rows]  # noqa: E731
    assert [idx(parallel.mmbench_shard(items, r, 3)) for r in range(3)] == \
        [[0, 1_000_000, 2_000_000, 3], [1, 1_000_001], [2]]
    assert [idx(parallel.mmbench_shard(items, r, 5)) for r in range(5)] == \
        [[0, 1_000_000, 2_000_000], [1, 1_000_001], [2], [3], []]
    assert idx(parallel.mmbench_shard(items[:1], 1, 2)) == []
    for world in (1, 2, 3, 5):
        parts = [[{"index": it.index} for it in parallel.mmbench_shard(items, r, world)] for r in range(world)]
        assert idx(items) == [r["index"] for r in parallel.merge(idx(items), parts, lambda r: r["index"])]


def test_without_a_launch_the_wrappers_are_the_plain_functions(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []
    monkeypatch.setattr(parallel._mcq, "evaluate_mcq", lambda lm, people, **kw: calls.append(kw) or "mcq")
    monkeypatch.setattr(parallel._mmbench, "evaluate_mmbench", lambda lm, items, **kw: calls.append(kw) or "mmb")
    assert parallel.evaluate_mcq(None, PEOPLE, scoring="generate") == "mcq"
    assert parallel.evaluate_mmbench(None, [], batch_size=3) == "mmb"
    assert calls == [{"scoring": "generate"}, {"batch_size": 3}]
    assert parallel.state() is None and parallel.is_main() and parallel.rank_device("auto") == "auto"


def test_a_failure_on_any_process_is_raised_on_every_process(monkeypatch):
    """`_run_and_gather` with accelerate's gather replaced by what 2 processes would send: the failing process
    raises its own exception, the others a PulseError with its message (user errors read as from one process);
    a non-main process runs without progress bars."""
    import accelerate.utils

    from pulse.errors import PulseError

    monkeypatch.delenv("PULSE_PROGRESS", raising=False)
    other = types.SimpleNamespace(value=None)  # what the other process (rank 1) sends
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: mine + [other.value])
    main, worker = types.SimpleNamespace(is_main_process=True), types.SimpleNamespace(is_main_process=False)

    other.value = ("theirs", None)
    assert parallel._run_and_gather(worker, lambda: os.environ["PULSE_PROGRESS"]) == ["0", "theirs"]
    assert "PULSE_PROGRESS" not in os.environ
    with pytest.raises(KeyError):  # the failing process: its own exception
        parallel._run_and_gather(main, lambda: {}["x"])
    other.value = (None, (True, "MMBench: row index 3 appears twice", "PulseError"))
    with pytest.raises(PulseError, match=r"^MMBench: row index 3 appears twice$"):
        parallel._run_and_gather(main, lambda: "mine")
    other.value = (None, (False, "out of memory", "RuntimeError"))
    with pytest.raises(PulseError, match=r"process 1 of 2 failed: RuntimeError: out of memory"):
        parallel._run_and_gather(main, lambda: "mine")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DRIVER = """import json, sys
from pulse.cli import main
for argv in json.loads(sys.argv[1]):
    assert main(argv) == 0, argv
"""


@pytest.mark.slow
def test_two_cpu_processes_give_the_one_process_predictions(small_world, tmp_path, capsys):
    """`pulse eval` (likelihood; generate with a seeded demo person) and `pulse mmbench` (likelihood; generate; one
    question group) in
    one `accelerate launch` of 2 CPU processes (gloo) against the same commands in this process: every row's
    prediction (and generated text) in order and every accuracy equal; float scores within 1e-3 (batch
    composition changes the last bits)."""
    model, data, tsv = small_world / "models" / "finetuned", small_world / "mllmu", small_world / "mmbench.tsv"
    common = ["--model", str(model), "--device", "cpu", "--json"]
    runs = {"mcq_ll": ["eval", "--data", str(data), "--config", "Full_Set"],
            "mcq_gen": ["eval", "--data", str(data), "--config", "Full_Set", "--scoring", "generate",
                        "--demo-people", "1", "--seed", "3"],
            "mmb_ll": ["mmbench", "--tsv", str(tsv)],
            "mmb_gen": ["mmbench", "--tsv", str(tsv), "--scoring", "generate", "--max-new-tokens", "8"],
            "mmb_one": ["mmbench", "--tsv", str(tsv), "--groups", "1"]}  # process 1 has no rows

    def argvs(tag):
        return [[*argv, *common, "--predictions", str(tmp_path / f"{tag}-{name}")] for name, argv in runs.items()]

    from pulse.cli import main
    for argv in argvs("one"):
        assert main(argv) == 0
    one = capsys.readouterr().out.splitlines()

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PULSE_PROGRESS": "0"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    proc = subprocess.run([*launch, str(driver), json.dumps(argvs("two"))], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = proc.stdout.splitlines()
    assert len(two) == len(runs)  # one JSON line per command: only the main process prints
    assert [json.loads(x) for x in two] == [json.loads(x) for x in one]  # every accuracy, count, demo ID
    demo = json.loads(two[1])["demo_ids"]
    assert len(demo["image"]) == 1 and demo["image"] == demo["text"]  # the one-process seeded draw, on both

    def rows(tag, name):
        text = (tmp_path / f"{tag}-{name}").read_text()
        return json.loads(text) if name.startswith("mcq") else [json.loads(line) for line in text.splitlines()]

    for name in runs:
        a, b = rows("one", name), rows("two", name)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            sx, sy = x.pop("scores", None), y.pop("scores", None)
            if isinstance(x.get("output"), dict):  # MMBench likelihood: {"option_logps": ...}
                sx, sy = x["output"].pop("option_logps"), y["output"].pop("option_logps")
                sx, sy = list(sx.values()), list(sy.values())
            assert x == y  # key, prompt, prediction, correctness, generated text and first token
            assert (sx is None) == (sy is None) and (sx is None or sx == pytest.approx(sy, abs=1e-3))
