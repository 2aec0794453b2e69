"""Fingerprints: what produced each file of a run directory, checked before a resume reuses it.

Every cell file (`cells/**/*.json` except `sweep__seed<S>.json`, which every run rebuilds from the cells, as it does
results.csv), selection.json and every in-request checkpoint folder (`.request<R>.progress/fingerprint.json`) holds

    "fingerprint": {"config": {dotted key: value}, "inputs": {input/file: identity},
                    "pulse": package version, "git": commit or null, "versions": {torch, transformers, ...}}

config  only the resolved settings that change that file (`config_parts`). A method cell holds the model and
        evaluation settings, the scenario sizes, its own recipe (`unlearn.*`, a sweep variant's lr and parameters
        included; `scenario.pretrained.mode` in the pre-trained scenario), its method's resolved parameters
        (defaults + overrides) and, in the single-request scenarios, `unlearn.stop`; it does not hold `methods`,
        `seeds`, `targets`, `scenarios`, other methods' parameters, the sweep grid, the probes or any path, so
        adding a method, seed, target or scenario reuses it. Device and dtype are the resolved ones (cpu/cuda).
inputs  the checkpoints and data files it read, by content (never path or mtime): a file is `<size> sha256:<hash
        of the whole file>`, except weights (.safetensors, .bin, .pt, .pth) over WEIGHTS_FULL_MAX bytes and any
        file over FULL_HASH_MAX bytes: `<size> sampled-sha256:<hash>` over its size, its first and last MiB,
        SAMPLES evenly spaced 64 KiB windows and, for .safetensors, its whole header (tensor names, dtypes,
        shapes, offsets). A retrained or replaced checkpoint changes every window; an edit confined to bytes
        outside the windows of a sampled file goes unnoticed (data files — parquet, MMBench TSV — are hashed
        whole up to 2 GiB, where one edited answer matters). A checkpoint is every file in its folder (hidden
        files aside); data are the parquet files of each MLLMU-Bench config read (`data.fictional`,
        `data.celebrities`, `data.train`, Test_Set for the routes probe) and the MMBench TSV. Hashed once per run,
        when first needed.

Resume rule (`verify`, called before anything is computed or written): a file of the current plan whose config or
inputs differ from what this invocation would write, that another pulse version made, or that has no fingerprint
(an earlier release) is refused with one line naming the file and the first differing field. A different git
commit or library version (torch, transformers, peft, python, torch threads) is a warning only: a pull that does
not touch the code paths must not make every resume fail, though numbers may differ in the last digits.
A method's code is not fingerprinted (its name and resolved parameters are).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

from .. import __version__
from ..config import to_dict
from ..data.mllmu import TEST_SET
from ..errors import PulseError
from ..fsutil import atomic_write_json
from ..unlearn.methods import get_method, method_params
from .plan import MATCHED_SCENARIOS, cell_recipe

WEIGHTS_FULL_MAX = 64 * 2**20  # bytes: weight files hashed whole up to this size, sampled above
FULL_HASH_MAX = 2 * 2**30  # bytes: any other file hashed whole up to this size
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")
SAMPLES, WINDOW, EDGE = 32, 64 * 2**10, 2**20
SCENARIO_FILES = ("request0", "reference", "oracle", "probe_control", "probe_routes_request0", "probe_quant_request0")
KEY = "fingerprint"


# --- identity of files ------------------------------------------------------------------------------------------

def file_identity(path: Path) -> str:
    """`<size> sha256:<hex>` (whole file) or `<size> sampled-sha256:<hex>` (large weights, huge files; see the
    module docstring). Modification times and names play no part."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= (WEIGHTS_FULL_MAX if path.suffix in WEIGHTS else FULL_HASH_MAX):
            while chunk := f.read(2**20):
                h.update(chunk)
            return f"{size} sha256:{h.hexdigest()}"
        h.update(str(size).encode())
        if path.suffix == ".safetensors":
            n = struct.unpack("<Q", f.read(8))[0]
            h.update(f.read(min(n, size - 8, 100 * 2**20)))  # a garbage length reads no further
        offsets = [0, size - EDGE] + [(size - WINDOW) * i // (SAMPLES - 1) for i in range(SAMPLES)]
        for off, n in zip(offsets, [EDGE, EDGE] + [WINDOW] * SAMPLES):
            f.seek(off)
            h.update(f.read(n))
    return f"{size} sampled-sha256:{h.hexdigest()}"


def folder_identity(folder: Path, pattern: str = "*") -> dict[str, str]:
    """{relative posix path: file_identity} of the files under `folder` matching `pattern` (hidden ones aside);
    a file path gives {"": identity}; a missing path {}."""
    folder = Path(folder)
    if folder.is_file():
        return {"": file_identity(folder)}
    if not folder.is_dir():
        return {}
    files = sorted(p for p in folder.rglob(pattern)
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return {p.relative_to(folder).as_posix(): file_identity(p) for p in files}


def run_identity(cfg, models: dict, mllmu, mmbench, device: dict, scoring: str, versions: dict,
                 git: str | None) -> dict:
    """What every fingerprint of this run shares: resolved device/dtype/scoring, versions, and where the inputs
    are (hashed lazily, once, by `_input`)."""
    roots = {f"model.{phase}": Path(str(p)).expanduser() for phase, p in models.items() if p is not None}
    if mllmu is not None:
        d = cfg.data
        roots.update({"data.fictional": Path(mllmu) / d.fictional, "data.celebrities": Path(mllmu) / d.celebrities,
                      "data.train": Path(mllmu) / d.train, "data.test_set": Path(mllmu) / TEST_SET})
    if mmbench is not None:
        roots["data.mmbench"] = Path(mmbench)
    return {"resolved": {"model.device": str(device.get("device", "")).split(":")[0],
                         "model.dtype": device.get("dtype"), "eval.scoring": scoring},
            "pulse": __version__, "git": git, "versions": {k: v for k, v in versions.items() if k != "pulse"},
            "roots": roots, "hashed": {}}


def _input(ident: dict, name: str) -> dict[str, str]:
    if name not in ident["hashed"]:
        root = ident["roots"].get(name)
        pattern = "train-*.parquet" if name.startswith("data.") and name != "data.mmbench" else "*"
        ident["hashed"][name] = folder_identity(root, pattern) if root is not None else {}
    return ident["hashed"][name]


# --- what a file depends on -------------------------------------------------------------------------------------

def kind_of(rel: tuple[str, ...]) -> tuple[str, str | None, str | None, int | None]:
    """(kind, scenario, method, seed) of a run-directory file from its path parts (layout: protocol/runner.py)."""
    if rel == ("selection.json",):
        return "selection", None, None, None
    if len(rel) == 3 and rel[0] == "cells" and "__seed" in rel[2]:
        name, seed = rel[2][:-len(".json")].rsplit("__seed", 1)
        if name in SCENARIO_FILES:
            return name, rel[1], None, int(seed)
    if len(rel) >= 4 and rel[0] == "cells":
        method, _target, seed = rel[2].rsplit("__", 2)
        leaf = rel[3]
        if leaf == "probes.json":
            return "probes", rel[1], method, int(seed[4:])
        if (leaf.startswith("request") and leaf.endswith(".json")) or leaf.startswith(".request"):
            return "request", rel[1], method, int(seed[4:])
    raise ValueError(f"not a fingerprinted run-directory file: {'/'.join(rel)}")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_parts(ctx, kind: str, scenario: str | None, method: str | None) -> tuple[dict, list[str]]:
    """({dotted config key: resolved value}, [input names]) that a file of `kind` depends on (module docstring)."""
    cfg, resolved = ctx.cfg, ctx.identity["resolved"]
    flat = _flat(to_dict(cfg))

    def pick(*keys):
        return {k: resolved[k] if k in resolved else flat[k] for k in keys}

    model = pick("model.device", "model.dtype", "model.template", "model.trust_remote_code")
    mcq = pick("eval.scoring", "eval.demo_people", "eval.demo_seed", "eval.max_new_tokens", "eval.batch_size",
               "eval.mia", "eval.mia_nonmembers", "eval.tasks", "eval.cloze_demo_people")
    if kind == "selection":
        return {**model, **pick("eval.scoring", "eval.max_new_tokens", "eval.batch_size", "data.celebrities",
                                "scenario.pretrained.select", "scenario.pretrained.min_accuracy")}, \
            ["model.pretrained", "data.celebrities"]
    fictional = scenario != "pretrained"
    phase_model = "model.finetuned" if fictional else "model.pretrained"
    people_data = "data.fictional" if fictional else "data.celebrities"
    if fictional:
        people = pick("data.fictional", "scenario.finetuned.people", "scenario.finetuned.unlearn",
                      *(["scenario.sustainability.folds"] if scenario == "sustainability" else []))
    else:
        people = pick("data.celebrities", "scenario.pretrained.select", "scenario.pretrained.min_accuracy",
                      "scenario.pretrained.unlearn")
    train = ["data.train"] if fictional and cfg.unlearn.data == "ft_data" else []
    if kind == "reference":
        return {**model, **mcq, **pick("eval.half_seed"), **people,
                **pick("unlearn.stop.rule", "unlearn.stop.margin", "scenario.finetuned.oracle")}, \
            ["model.pretrained", people_data]
    if kind == "probe_routes_request0":
        return {**model, **mcq, **people, **pick("probes.name_only")}, \
            [phase_model, people_data] + (["data.test_set"] if fictional else [])
    if kind == "probe_quant_request0":  # probes.quant_bits not held: the cache gains missing widths
        return {**model, **mcq, **people}, [phase_model, people_data]
    if kind == "probe_control":
        return {**model, **mcq, **people, **_recipe_parts(cfg.unlearn, fictional), **_flat(
            dataclasses.asdict(cfg.probes.relearn), "probes.relearn.")}, ["model.pretrained", people_data] + train
    request0 = {**model, **mcq, **pick("eval.mmbench_groups", "eval.mmbench_max_new_tokens", "eval.mmbench_image",
                                       "eval.every", "eval.curve_mmbench_groups", "eval.half_seed"), **people}
    inputs = [phase_model, people_data, "data.mmbench"]
    if kind == "request0":
        return request0, inputs
    if kind == "oracle":  # a built oracle starts from the pre-trained model; a given one is recorded by path
        return {**request0, **pick("scenario.finetuned.oracle")}, ["model.pretrained", people_data, "data.mmbench"]
    registered, ucfg = cell_recipe(cfg, scenario, method)
    params = method_params(get_method(registered), ucfg.params)
    parts = {**request0, **({} if fictional else pick("scenario.pretrained.mode")), **_recipe_parts(ucfg, fictional),
             **{f"unlearn.params.{registered}.{k}": v for k, v in sorted(params.items())}}
    inputs += train
    if scenario in MATCHED_SCENARIOS:
        parts.update(pick("unlearn.stop.rule", "unlearn.stop.margin", "unlearn.stop.max_steps"))
        if cfg.unlearn.stop.rule != "none":
            inputs += ["model.pretrained"] if fictional else []
    if kind == "probes":
        p = cfg.probes
        parts["probes.run"] = sorted(p.run)  # probes.json holds them in a fixed order
        if "relearn" in p.run:
            parts.update(_flat(dataclasses.asdict(p.relearn), "probes.relearn."))
            inputs += ["model.pretrained"] if fictional else []
        if "routes" in p.run:
            parts.update(pick("probes.name_only"))
            inputs += ["data.test_set"] if fictional else []
        if "quant" in p.run:
            parts.update(pick("probes.quant_bits"))
    return parts, list(dict.fromkeys(inputs))


def _recipe_parts(ucfg, fictional: bool) -> dict:
    """`unlearn.<field>` of a resolved recipe (UnlearnSection) but params and stop (held separately) and
    gradient_checkpointing (memory only: the same gradients); `unlearn.data` only where it is used (the pre-trained
    scenario always unlearns MCQs)."""
    d = dataclasses.asdict(ucfg)
    skip = {"params", "stop", "gradient_checkpointing"} | ({"data"} if not fictional else set())
    return {f"unlearn.{k}": v for k, v in d.items() if k not in skip}


def expected(ctx, rel: tuple[str, ...]) -> dict:
    """The fingerprint a file at `rel` (path parts inside the run directory) written now carries."""
    ident = ctx.identity
    kind, scenario, method, _seed = kind_of(rel)
    config, names = config_parts(ctx, kind, scenario, method)
    inputs = {f"{n}/{f}" if f else n: v for n in names for f, v in _input(ident, n).items()}
    fp = {"config": config, "inputs": inputs, "pulse": ident["pulse"], "git": ident["git"],
          "versions": ident["versions"]}
    return json.loads(json.dumps(fp))  # as it reads back: lists, not tuples


def stamped(ctx, path: Path, payload: dict) -> dict:
    """`payload` with the fingerprint of `path` added (what the writer stores and returns)."""
    return {**payload, KEY: expected(ctx, Path(path).relative_to(ctx.out).parts)}


def unstamped(payload: dict) -> dict:
    """`payload` without its fingerprint (for caches whose contents are copied into other files)."""
    return {k: v for k, v in payload.items() if k != KEY}


# --- the resume check -------------------------------------------------------------------------------------------

def _show(v) -> str:
    if isinstance(v, str):
        s = v.split(" ", 1)
        return f"{s[0]} bytes, {s[1][:27]}…" if len(s) == 2 and s[0].isdigit() and "sha256:" in s[1] else v
    return json.dumps(v)


def difference(stored: dict | None, want: dict) -> tuple[str | None, list[str]]:
    """(the first refused difference as "<key>=<old>, this run has <new>", or None; [warnings]). Order: config
    keys, inputs, pulse version; git commit and library versions only warn."""
    if not isinstance(stored, dict):
        return "no fingerprint (written by an earlier PULSE release)", []
    for section in ("config", "inputs"):
        old, new = stored.get(section) or {}, want[section]
        for k in list(new) + [k for k in old if k not in new]:
            if k not in old or k not in new or old[k] != new[k]:
                a = _show(old[k]) if k in old else "(absent)"
                b = _show(new[k]) if k in new else "(absent)"
                return f"{k}={a}, this run has {b}", []
    if stored.get("pulse") != want["pulse"]:
        return f"pulse {stored.get('pulse')}, this run has {want['pulse']}", []
    warnings = []
    if stored.get("git") != want["git"]:
        warnings.append(f"git commit {stored.get('git')}, this run has {want['git']}")
    old_v = stored.get("versions") or {}
    for k, v in want["versions"].items():
        if old_v.get(k) != v:
            warnings.append(f"{k} {old_v.get(k)}, this run has {v}")
    return None, warnings


def plan_files(out: Path, cfg, plan: dict) -> list[Path]:
    """The files of the current plan that a resume would reuse (existing or not): selection.json, the per-scenario
    files, and each cell's request<R>.json, probes.json and in-request checkpoint fingerprints."""
    out = Path(out)
    files = [out / "selection.json"] if "pretrained" in cfg.scenarios else []
    for seed in cfg.seeds:
        for scenario in cfg.scenarios:
            base = out / "cells" / scenario
            files += [base / f"{name}__seed{seed}.json" for name in SCENARIO_FILES]
            for method, target in plan[scenario]:
                folder = base / f"{method}__{target}__seed{seed}"
                if folder.is_dir():
                    files += sorted(folder.glob("request*.json"), key=lambda p: p.name)
                    files.append(folder / "probes.json")
                    files += [p / "fingerprint.json" for p in sorted(folder.glob(".request*.progress"))
                              if any(p.glob("step-*"))]
    return files


def verify(ctx, plan: dict) -> list[str]:
    """Refuse (PulseError, one line) the first file of the plan whose fingerprint differs from this invocation's;
    returns the warnings (git commit / library versions), one line per distinct difference with a file count.
    Files that do not parse are left to the code that reads them."""
    out = Path(ctx.out)
    bad, warned = [], {}
    for path in plan_files(out, ctx.cfg, plan):
        if not path.is_file():
            if path.name == "fingerprint.json":  # a checkpoint folder from before fingerprints
                bad.append((path.parent, "no fingerprint (written by an earlier PULSE release)"))
            continue
        try:
            stored = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
        if not isinstance(stored, dict):
            continue
        rel = path.relative_to(out).parts
        refused, warnings = difference(stored.get(KEY), expected(ctx, rel))
        if refused:
            bad.append((path.parent if path.name == "fingerprint.json" else path, refused))
        for w in warnings:
            warned[w] = warned.get(w, 0) + 1
    if bad:
        path, why = bad[0]
        rel = path.relative_to(out).parts
        what = "was made with" if "no fingerprint" not in why else "has"
        cell = len(rel) >= 4 and rel[-1].startswith("request")  # a request's file: its successors depend on it
        fix = f"delete the cell ({path.parent})" if cell else f"delete {path}"
        more = f" ({len(bad)} files of this run differ)" if len(bad) > 1 else ""
        raise PulseError(f"{path} {what} {why}; use a new --out or {fix}{more}")
    return [f"warning: {n} file(s) in {out} were made with {w}; reusing them" for w, n in warned.items()]


def stamp_folder(ctx, folder: Path) -> None:
    """Give an in-request checkpoint folder its fingerprint (folder/fingerprint.json), unless it has one."""
    path = Path(folder) / "fingerprint.json"
    if not path.is_file():
        atomic_write_json(path, stamped(ctx, path, {}))


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (manifest.json's `amended` record)."""
    a, b = _flat(old), _flat(new)
    return [k for k in list(b) + [k for k in a if k not in b] if a.get(k, KEY) != b.get(k, KEY)]
