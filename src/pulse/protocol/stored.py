"""What a run directory stores, read back: cell files (`cells/**/*.json`), selection.json, in-request checkpoints
and saved adapters.

A file that does not parse, is not a JSON object, lacks a field its reader needs (`SCHEMAS`: field -> type), holds
another cell's request (its `meta` disagrees with its path) or that its reader cannot interpret is DAMAGED: one
PulseError line naming it and what to delete. Deleting exactly that — the file, or the named folder — is enough:
a rerun of the same command recomputes it (runner._cell rebuilds the model before a missing request from the saved
adapters that remain and retrains the rest, checking the requests it recomputes against the files they replace).
`check_files` reads every stored file of a run's plan before anything is loaded or computed, so a damaged file is
reported up front, not after an hour of training.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..errors import PulseError

NUMBER = (int, float)
SCHEMAS: dict[str, dict[str, type | tuple]] = {
    # cells/<scenario>/<method>__<target>__seed<S>/request<R>.json (mcq/mmbench null: diverged before its evaluation)
    "request": {"meta": dict, "status": str, "mcq": (dict, type(None)), "mmbench": (dict, type(None)),
                "splits": dict, "halves": dict},
    "request0": {"mcq": dict, "mmbench": dict, "splits": dict, "halves": dict},  # cells/<scenario>/request0__seed<S>
    "reference": {"reference": NUMBER, "margin": NUMBER, "target": NUMBER, "n": int},  # matched-forgetting target
    "oracle": {"model": str, "mcq": dict, "mmbench": dict, "splits": dict, "halves": dict},  # the retrained oracle
    "selection": {"accuracy": dict, "selected": list, "correct": dict},  # selection.json
    "probes": {},  # {probe: payload}: checked by probes.probe_rows
    "probe_control": {"probe": str, "meta": dict, "halves": dict, "training": dict, "before": list,
                      "after_attack": list, "gain": dict},
    "probe_routes_request0": {},  # {route: [[id, index, correct]]}
    "probe_quant_request0": {},  # {bits: predictions}
    "sweep": {},  # rebuilt by every run from the cells (never read back)
    "checkpoint": {"fingerprint": dict},  # cells/.../.request<R>.progress/fingerprint.json
}
CONTAINERS = {"probes": dict, "probe_routes_request0": list, "probe_quant_request0": list}  # type of every value
STATUSES = ("ok", "diverged")
INTERPRET_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def fix_of(path: Path) -> str:
    """What to delete for a damaged `path`: the file, or for an in-request checkpoint its folder."""
    path = Path(path)
    folder = next((p for p in [path, *path.parents] if p.name.startswith(".request") and
                   p.name.endswith(".progress")), None)
    target = folder or path
    return (f"delete {target} and rerun the same command to "
            + ("restart that request from its beginning" if folder else "recompute it"))


def damaged(path: Path, why: str) -> PulseError:
    why = " ".join(str(why).split())
    return PulseError(f"{path}: damaged ({why[:160]}); {fix_of(path)}")


def kind_of(path: Path) -> str:
    """The SCHEMAS kind of a stored JSON file, from its name."""
    path = Path(path)
    name = path.name
    if name == "selection.json":
        return "selection"
    if name == "fingerprint.json" and path.parent.name.startswith(".request"):
        return "checkpoint"
    if name == "probes.json":
        return "probes"
    if name.startswith("request") and "__seed" not in name and name[7:-5].isdigit():
        return "request"
    if "__seed" in name:
        kind = name.rsplit("__seed", 1)[0]
        if kind in SCHEMAS:
            return kind
    raise ValueError(f"not a stored run file: {path}")


def read(path: Path, kind: str | None = None) -> dict:
    """The JSON object in `path`, checked against SCHEMAS[kind] (default: from the name); damaged -> PulseError."""
    path = Path(path)
    kind = kind or kind_of(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise damaged(path, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise damaged(path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except OSError as e:
        raise PulseError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(obj, dict):
        raise damaged(path, f"a JSON {type(obj).__name__}, not an object")
    for key, types in SCHEMAS[kind].items():
        if key not in obj:
            raise damaged(path, f"no field {key!r}")
        if not isinstance(obj[key], types) or isinstance(obj[key], bool) and bool not in _tuple(types):
            raise damaged(path, f"field {key!r} is {type(obj[key]).__name__}")
    if kind == "request":
        _check_request(path, obj)
    if kind in CONTAINERS:  # {name: payload or predictions}
        bad = next((k for k, v in obj.items() if k != "fingerprint" and not isinstance(v, CONTAINERS[kind])), None)
        if bad is not None:
            raise damaged(path, f"field {bad!r} is {type(obj[bad]).__name__}")
    return obj


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _check_request(path: Path, obj: dict) -> None:
    """A request file's meta must be the one its path names; an ok request must carry its evaluations."""
    if obj["status"] not in STATUSES:
        raise damaged(path, f"status {obj['status']!r}")
    if obj["status"] == "ok" and (obj["mcq"] is None or obj["mmbench"] is None):
        raise damaged(path, "status ok without its evaluation")
    parts = path.parent.name.rsplit("__", 2)
    if len(parts) != 3:  # not in a cell folder: nothing to compare
        return
    method, target, seed = parts
    want = {"scenario": path.parent.parent.name, "method": method, "target": target,
            "seed": int(seed[4:]) if seed[4:].isdigit() else seed, "request": int(path.stem[7:])}
    got = {k: obj["meta"].get(k) for k in want}
    if got != want:
        diff = next(k for k in want if got[k] != want[k])
        raise damaged(path, f"meta.{diff} is {got[diff]!r}, the path says {want[diff]!r}")


@contextlib.contextmanager
def reading(path: Path):
    """Code that interprets a stored file's contents: a missing field or wrong type inside it is a damaged file."""
    try:
        yield
    except INTERPRET_ERRORS as e:
        raise damaged(path, f"{type(e).__name__}: {e}") from None


def adapter_present(folder: Path) -> bool:
    """A saved request (runner: request<R>.adapter/) that `loop.apply_saved` can load: adapter or parameters."""
    return (folder / "adapter_config.json").is_file() or (folder / "updated_parameters.safetensors").is_file()


def apply(model, folder: Path):
    """`loop.apply_saved`, with a damaged adapter folder as one line (delete it: the request is retrained)."""
    from ..unlearn.loop import apply_saved

    try:
        return apply_saved(model, folder)
    except PulseError:
        raise
    except Exception as e:  # peft / safetensors / JSON errors of a truncated or garbled adapter
        why = " ".join(f"{type(e).__name__}: {e}".split())[:160]
        raise PulseError(f"{folder}: damaged ({why}); delete {folder} and rerun the same command to retrain "
                         f"that request") from None


def check_files(files: list[Path]) -> None:
    """Read every existing stored file in `files` (runner: fingerprint.plan_files), raising on the first damaged
    one."""
    for path in files:
        if Path(path).is_file():
            read(path)
