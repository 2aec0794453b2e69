"""Data-parallel evaluation with accelerate: every process scores a shard of the rows, the shards are gathered
(`accelerate.utils.gather_object`) and put back in the one-process order, and the summary is recomputed from the
gathered rows with the one-process functions (`mcq.summarise`, `mmbench.circular_eval`).

Launch: `accelerate launch --multi_gpu --num_processes N -m pulse.cli eval|mmbench ...` (torchrun underneath; on a
machine without GPUs the processes run on the CPU with the gloo backend) or `torchrun --nproc_per_node N -m pulse.cli
...`. (`accelerate launch --cpu` starts ONE process unless an MPI hostfile is given: accelerate's simple launcher.)
Without such a launch (WORLD_SIZE unset or 1) `evaluate_mcq` / `evaluate_mmbench` here are a plain call to the
originals.

Sharding (round-robin, so every process gets a mix of image and text rows):
- MCQ by question key (person_id, form, index), through `evaluate_mcq(questions=...)`, with the full people list
  on every process: the few-shot demo draw and the demo exclusion are those of the whole set (mcq.py), so each
  question's prompt is the one-process prompt.
- MMBench by question group (`index % 1_000_000`): a group's rotations stay on one process, since
  `evaluate_mmbench` scores its rows with CircularEval, which needs every group whole.
Prompts and decoding are unchanged; only which rows share a batch differs from one process (batches are formed per
process, sorted by length), so padded lengths differ and float scores may differ in the last bits; the test
(tests/eval/test_parallel.py) pins that the predictions and accuracies are identical on the small mini world.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from collections import defaultdict, deque
from datetime import timedelta

from .. import progress
from ..data.records import FORMS
from ..errors import PulseError
from . import mcq as _mcq
from . import mmbench as _mmbench


def _world_size() -> int:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def state(cpu: bool | None = None):
    """accelerate's `PartialState` when this process is one of several (a torchrun / `accelerate launch` launch sets
    WORLD_SIZE), else None. `cpu` (default: no CUDA, or ACCELERATE_USE_CPU set) makes accelerate use the CPU with
    gloo; accelerate treats a CPU-only multi-process launch as non-distributed without it. The state is a
    process-wide singleton: the first call decides."""
    if _world_size() <= 1:
        return None
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    if cpu is None:
        cpu = not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    st = PartialState(cpu=cpu)
    if st.num_processes > 1 and not _closing:
        _closing.append(atexit.register(_close_group))
    return st if st.num_processes > 1 else None


_closing: list = []


def _close_group() -> None:
    """At exit: on the CPU (gloo) wait for every process — at most 5 minutes, so a process that failed alone still
    exits — then close the process group, so no process leaves while another one's communication threads still
    talk to it (gloo aborts the process left behind)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo":
        with contextlib.suppress(Exception):
            dist.monitored_barrier(timeout=timedelta(minutes=5))
    dist.destroy_process_group()


def is_main() -> bool:
    """True on the main process of a data-parallel launch, and always without one."""
    st = state()
    return st is None or st.is_main_process


def rank_device(requested: str) -> str:
    """The device this process loads its model on: `requested` without a launch; under one, "auto" and a bare
    device type (e.g. "cuda") mean this process's own device (`PartialState().device`: cuda:<local rank>, or cpu
    under a CPU launch); an explicit one (cpu, cuda:N) is kept."""
    if _world_size() <= 1:
        return requested
    st = state(cpu=True if requested == "cpu" else None)
    if st is None:
        return requested
    if requested == "auto" or requested == st.device.type:
        return str(st.device)
    return requested


def shard(n: int, rank: int, world: int) -> list[int]:
    """Positions of `n` rows that process `rank` of `world` scores: rank, rank + world, ... (round-robin; shard
    sizes differ by at most one; empty when rank >= n)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of {world} processes")
    return list(range(rank, n, world))


def merge(order: list, parts: list[list], key) -> list:
    """The rows of `parts` (one list per process, each in `order`'s relative order) put in `order`: for each key of
    `order`, the next unused row with that key; keys no part has are skipped (MCQ demo questions, which
    `evaluate_mcq` does not score). A duplicated key is taken in its order within the parts. Every row must be
    placed."""
    queues: dict = defaultdict(deque)
    for part in parts:
        for row in part:
            queues[key(row)].append(row)
    out = [queues[k].popleft() for k in order if queues.get(k)]
    if sum(map(len, queues.values())):
        raise RuntimeError("data-parallel evaluation: a gathered row has no place in the one-process order")
    return out


@contextlib.contextmanager
def _quiet(st):
    """No progress bars on the non-main processes (one bar per launch, the main process's)."""
    if st.is_main_process:
        yield
        return
    old = os.environ.get(progress.ENV)
    os.environ[progress.ENV] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(progress.ENV, None)
        else:
            os.environ[progress.ENV] = old


def _run_and_gather(st, fn) -> list:
    """fn() on this process, then every process's result in rank order (`gather_object`). A failure on any process
    is raised on every process (none is left waiting in a collective): the original exception where it happened,
    a PulseError with its message elsewhere."""
    from accelerate.utils import gather_object

    try:
        with _quiet(st):
            mine, err = fn(), None
    except Exception as e:  # noqa: BLE001 - re-raised below, after the other processes learnt of it
        mine, err = None, e
    failure = None if err is None else (isinstance(err, PulseError), str(err), type(err).__name__)
    parts = gather_object([(mine, failure)])
    if err is not None:
        raise err
    for rank, (_, f) in enumerate(parts):
        if f is not None:
            user_error, text, kind = f  # a user error reads as it would from one process
            raise PulseError(text if user_error else
                             f"data-parallel evaluation: process {rank} of {len(parts)} failed: {kind}: {text}")
    return [p for p, _ in parts]


def _mcq_key(row) -> tuple:
    return row["person_id"], row["form"], row["index"]


def mcq_order(people, forms=FORMS, questions: set | None = None) -> list[tuple]:
    """The (person_id, form, index) keys in the order one process scores them (mcq.py: form, then person, then
    question; restricted to `questions`). Generate scoring leaves the demo questions out, inside `evaluate_mcq`."""
    order = [(m.person_id, m.form, m.index) for form in forms for p in people for m in p.mcqs(form)]
    return order if questions is None else [k for k in order if k in questions]


def mcq_shard(order: list[tuple], rank: int, world: int) -> set:
    """The question keys process `rank` scores: round-robin over the distinct keys of `order`."""
    keys = list(dict.fromkeys(order))
    return {keys[i] for i in shard(len(keys), rank, world)}


def mmbench_shard(items, rank: int, world: int) -> list:
    """The rows process `rank` scores, in row order: whole question groups (`item.group`), round-robin over the
    groups in order of first appearance."""
    groups = list(dict.fromkeys(it.group for it in items))
    mine = {groups[i] for i in shard(len(groups), rank, world)}
    return [it for it in items if it.group in mine]


def evaluate_mcq(lm, people, **kwargs) -> _mcq.McqResult:
    """`mcq.evaluate_mcq` (same arguments), data-parallel under a multi-process launch (module docstring): this
    process scores its round-robin shard of the question keys, the predictions are gathered and ordered as one
    process orders them (form, then person, then question), and `mcq.summarise` recomputes the accuracies."""
    st = state()
    if st is None:
        return _mcq.evaluate_mcq(lm, people, **kwargs)
    order = mcq_order(people, kwargs.get("forms", FORMS), kwargs.get("questions"))
    mine = mcq_shard(order, st.process_index, st.num_processes)

    def run():
        res = _mcq.evaluate_mcq(lm, people, **{**kwargs, "questions": mine})
        return res.predictions, res.demo_ids

    parts = _run_and_gather(st, run)
    demo_ids = parts[0][1]
    if any(d != demo_ids for _, d in parts):
        raise RuntimeError("data-parallel evaluation: the processes drew different demo people")
    return _mcq.summarise(merge(order, [p for p, _ in parts], _mcq_key), demo_ids)


def evaluate_mmbench(lm, items, **kwargs) -> dict:
    """`mmbench.evaluate_mmbench` (same arguments), data-parallel under a multi-process launch: whole question
    groups, round-robin, per process; the records and raw predictions are gathered into row order and
    `circular_eval` scores all rows, so the dict is the one-process dict (same keys, same order)."""
    st = state()
    if st is None or not items:
        return _mmbench.evaluate_mmbench(lm, items, **kwargs)
    rows = mmbench_shard(items, st.process_index, st.num_processes)

    def run():
        if not rows:
            return None
        res = _mmbench.evaluate_mmbench(lm, rows, **kwargs)
        return {k: res[k] for k in ("scoring", "predictions", "records")}

    parts = [p for p in _run_and_gather(st, run) if p is not None]
    records = merge([it.index for it in items], [p["records"] for p in parts], lambda r: r["index"])
    raw = {k: v for p in parts for k, v in p["predictions"].items()}
    scoring = parts[0]["scoring"]
    result = _mmbench.circular_eval(items, {r["index"]: r["prediction"] for r in records})
    result["scoring"] = scoring
    result["predictions"] = {str(it.index): raw[str(it.index)] for it in items}
    result["records"] = records
    if scoring == "likelihood":
        result["note"] = _mmbench.likelihood_note
    return result
