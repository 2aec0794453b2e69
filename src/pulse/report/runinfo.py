"""The run table of report.html: what ran (scenarios, methods with the reference of each plugin method, targets,
seeds), on which world, models and data, how MMBench was measured, when and with which code.

World, models and data come from the manifest's `mini_world`, `models` and `data` records (the resolved paths; the
config as written as a fallback), so a mini run names its built-in world and the tiny LLaVA checkpoints of that
world, and a real run its checkpoint and data paths. No row reads "None".
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .agg import method_name, target_name
from .load import Run, stop_rule, uses_mini_world
from .mmbench import curve_label, metric_name

DASH = "\u2013"
PHASES = ("pretrained", "finetuned")
OWN_TEMPLATE = "the checkpoint's own"  # model.template null: the checkpoint's pulse_model.json, else LLaVA-1.5


def brief(value, limit: int = 300) -> str:
    """A value in one line: lists joined by commas, dicts as 'key: value' (keys whose value is None left out),
    cut at `limit` characters."""
    if value is None:
        return DASH
    if isinstance(value, (list, tuple)):
        text = ", ".join(brief(v, limit) for v in value)
    elif isinstance(value, dict):
        text = "; ".join(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in value.items()
                         if v is not None)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _duration(started, finished) -> str | None:
    try:
        seconds = (datetime.fromisoformat(str(finished)) - datetime.fromisoformat(str(started))).total_seconds()
    except (TypeError, ValueError):
        return None
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _celebrities(value) -> str | None:
    if not value:
        return None
    items = []
    for c in value:
        if isinstance(c, dict):
            acc = c.get("accuracy")
            acc = f" ({acc:.1f}%)" if isinstance(acc, (int, float)) else ""
            items.append(f"{c.get('id', '?')}{acc}")
        else:
            items.append(str(c))
    more = f" \u2026 and {len(items) - 20} more" if len(items) > 20 else ""
    return f"{len(items)}: " + ", ".join(items[:20]) + more


def _section(manifest: dict, key: str) -> dict:
    cfg = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    value = cfg.get(key)
    return value if isinstance(value, dict) else {}


def _record(manifest: dict, key: str) -> dict:
    value = manifest.get(key)
    return value if isinstance(value, dict) else {}


def world_name(manifest: dict) -> str:
    """'mini world mini-<key>' (the built world's folder), or 'the built-in mini world' when the manifest
    records no path."""
    path = _record(manifest, "mini_world").get("path")
    return f"mini world {Path(str(path)).name}" if path else "the built-in mini world"


def world(manifest: dict) -> str | None:
    """'built-in mini world mini-<key> (size default, seed 0), at <path>'; None for a real-data run."""
    if not uses_mini_world(manifest):
        return None
    mini = _section(manifest, "mini")
    settings = ", ".join(f"{k} {mini[k]}" for k in ("size", "seed") if mini.get(k) is not None)
    path = _record(manifest, "mini_world").get("path")
    head = f"built-in {world_name(manifest)}" if path else world_name(manifest)
    return head + (f" ({settings})" if settings else "") + (f", at {path}" if path else "")


def models(manifest: dict) -> str:
    """The checkpoints per phase (manifest `models`, else config model.<phase>) and the model settings; a mini run:
    'tiny LLaVA of mini world mini-<key>: pretrained <path>; finetuned <path>; dtype: ...'."""
    cfg = _section(manifest, "model")
    recorded = _record(manifest, "models")
    phases = {p: recorded.get(p) or cfg.get(p) for p in dict.fromkeys([*PHASES, *recorded])}
    mini = uses_mini_world(manifest)
    named = [f"{p} {v}" if mini else f"{p}: {v}" for p, v in phases.items() if v]
    settings = [f"{k}: {v}" for k, v in cfg.items() if k not in phases and k != "template" and v is not None]
    settings.append(f"template: {cfg.get('template') or OWN_TEMPLATE}")
    if mini:
        what = f"tiny LLaVA of {world_name(manifest)}"
        return f"{what}: " + "; ".join([*(named or [" and ".join(PHASES)]), *settings])
    return "; ".join(named + settings)


def data(manifest: dict) -> str:
    """The question sets: manifest `data` paths (else the config's), then the config's set names; a mini run names
    its world's sets."""
    cfg = _section(manifest, "data")
    recorded = _record(manifest, "data")
    paths = {k: recorded.get(k) or cfg.get(k) for k in ("mllmu", "mmbench")}
    names = [f"{k}: {v}" for k, v in cfg.items() if k not in paths and v is not None]
    if uses_mini_world(manifest):
        sets = [f"MLLMU-style {paths['mllmu']}" if paths["mllmu"] else "MLLMU-style set",
                f"mini-MMBench {paths['mmbench']}" if paths["mmbench"] else "mini-MMBench"]
        return f"the sets of {world_name(manifest)}: " + "; ".join([", ".join(sets), *names])
    return "; ".join([f"{k}: {v}" for k, v in paths.items() if v] + names)


def methods(run: Run) -> str:
    """The methods in the results, each plugin method with its reference (manifest `method_references`)."""
    refs = _record(run.manifest, "method_references")
    out = []
    for method in dict.fromkeys(run.df["method"]):
        ref = refs.get(str(method).partition("@")[0])
        out.append(method_name(method) + (f" ({ref})" if ref else ""))
    return ", ".join(out) or "none"


def config_rows(run: Run) -> list[tuple[str, str]]:
    m, cfg, df = run.manifest, run.manifest.get("config", {}), run.df
    seeds = m.get("seeds", cfg.get("seeds"))
    data_seeds = sorted(df["seed"].unique().tolist())
    rows = [
        ("Name", cfg.get("name")),
        ("Run directory", str(run.path)),
        ("Scenarios", ", ".join(dict.fromkeys(df["scenario"])) or "none"),
        ("Methods", methods(run)),
        ("Update targets", ", ".join(target_name(x) for x in dict.fromkeys(df["target"])) or "none"),
        ("Seeds", f"{brief(seeds)} (in results: {', '.join(map(str, data_seeds)) or 'none'})"),
        ("World", world(m) or "real data (config data.mllmu, data.mmbench)"),
        ("Model", models(m)),
        ("Data", data(m)),
        ("MMBench scoring", m.get("mmbench_scoring")),
        ("MMBench metric shown", metric_name(run.mmbench)),
        ("MMBench measured as", run.measure or None),
        ("Checkpoint MMBench", curve_label(run, run.mmbench) if (run.full["split"] == "mmbench_sub").any()
         else None),
        ("Matched-forgetting target", stop_rule(m) or None),
        ("Selected celebrities", _celebrities(m.get("selected_celebrities"))),
        ("Folds", brief(m.get("folds"))),
        ("Started", m.get("started")),
        ("Finished", m.get("finished")),
        ("Duration", _duration(m.get("started"), m.get("finished"))),
        ("Git commit", m.get("git_commit")),
        ("Versions", brief(m.get("versions"))),
        ("Measurements", f"{len(df)} rows, {int((df['status'] == 'diverged').sum())} diverged"),
    ]
    return [(k, DASH if v in (None, "") else str(v)) for k, v in rows]
