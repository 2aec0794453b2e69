"""A synthetic run directory: 2 seeds, all three scenarios, methods ga / ga_klr / npo (target proj+llm)
and ga with target llm in the fine-tuned scenario.

Accuracy = request-0 accuracy x keep factor. Request-0 accuracy is BASE + 2 * seed index; the keep factor
is FACTORS[...] + 0.02 * seed index (seed 0 gets the factor itself), so every cell is computable by hand.
Modality "all" is the mean of image and text (equal n).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

SEEDS = (0, 1)
METHODS = ("ga", "ga_klr", "npo")
K = 5
N = {"image": 250, "text": 250, "all": 500}

BASE = {  # request-0 accuracy of seed index 0: split -> (image, text); mmbench -> all
    "finetuned": {"unlearn": (78.0, 76.0), "retain": (70.0, 76.0), "mmbench": 75.0},
    "pretrained": {"unlearn": (90.0, 86.0), "retain": (88.0, 84.0), "mmbench": 75.0},
}
BASE["sustainability"] = BASE["finetuned"]

# Keep factors at request 1: (scenario, method, target) -> split -> (image, text) | mmbench factor
FACTORS = {
    ("finetuned", "ga", "proj+llm"): {"unlearn": (0.10, 0.50), "retain": (0.20, 0.40), "mmbench": 0.95},
    ("finetuned", "ga", "llm"): {"unlearn": (0.30, 0.45), "retain": (0.40, 0.45), "mmbench": 0.65},
    ("finetuned", "ga_klr", "proj+llm"): {"unlearn": (0.20, 0.60), "retain": (0.60, 0.70), "mmbench": 0.97},
    ("finetuned", "npo", "proj+llm"): {"unlearn": (0.15, 0.55), "retain": (0.50, 0.60), "mmbench": 0.96},
    ("pretrained", "ga", "proj+llm"): {"unlearn": (0.20, 0.40), "retain": (0.30, 0.50), "mmbench": 0.10},
    ("pretrained", "ga_klr", "proj+llm"): {"unlearn": (0.20, 0.40), "retain": (0.30, 0.50), "mmbench": 0.15},
    ("pretrained", "npo", "proj+llm"): {"unlearn": (0.20, 0.40), "retain": (0.30, 0.50), "mmbench": 0.08},
}
SUS_SLOPE = {"ga": 1.0, "ga_klr": 0.8, "npo": 0.9}  # sustainability: factor = 1 - slope * step * request


def _sus_factors(method: str, request: int) -> dict:
    s = SUS_SLOPE[method] * request
    return {"unlearn": (1 - 0.18 * s, 1 - 0.10 * s), "retain": (1 - 0.15 * s, 1 - 0.12 * s),
            "mmbench": 1 - 0.12 * s}


def _cells(scenario, factors, seed_i):
    """split -> modality -> accuracy, for one request (factors None = request 0)."""
    out = {}
    for split, base in BASE[scenario].items():
        if split == "mmbench":
            f = 1.0 if factors is None else factors["mmbench"] + 0.02 * seed_i
            out[split] = {"all": (base + 2 * seed_i) * f}
            continue
        img0, txt0 = base[0] + 2 * seed_i, base[1] + 2 * seed_i
        fi, ft = (1.0, 1.0) if factors is None else (factors[split][0] + 0.02 * seed_i,
                                                      factors[split][1] + 0.02 * seed_i)
        img, txt = img0 * fi, txt0 * ft
        out[split] = {"image": img, "text": txt, "all": (img + txt) / 2}
    return out


def make_results(seeds=SEEDS, scenarios=("finetuned", "pretrained", "sustainability"), k=K) -> pd.DataFrame:
    rows = []

    def add(scenario, method, target, seed, request, cells, cells0):
        for split, mods in cells.items():
            for modality, acc in mods.items():
                acc0 = cells0.get(split, {}).get(modality)
                rel = acc / acc0 * 100 if acc0 else None
                rows.append(dict(scenario=scenario, method=method, target=target, seed=seed, request=request,
                                 split=split, modality=modality, accuracy=round(acc, 6),
                                 relative=None if rel is None else round(rel, 6), status="ok",
                                 n=300 if split == "mmbench" else N[modality]))

    for i, seed in enumerate(seeds):
        for (scenario, method, target), factors in FACTORS.items():
            if scenario not in scenarios:
                continue
            c0 = _cells(scenario, None, i)
            add(scenario, method, target, seed, 0, c0, c0)
            add(scenario, method, target, seed, 1, _cells(scenario, factors, i), c0)
        if "sustainability" in scenarios:
            for method in METHODS:
                c0 = _cells("sustainability", None, i)
                for r in range(k + 1):
                    cells = c0 if r == 0 else _cells("sustainability", _sus_factors(method, r), i)
                    cells = dict(cells)
                    u0 = c0["unlearn"]["all"]
                    pending = {"image": u0, "text": u0, "all": u0}
                    if r >= 1:
                        cells["fold_current"] = {m: v * 0.2 for m, v in pending.items()}
                        cells["folds_done"] = {m: v * 0.3 for m, v in pending.items()}
                    if r < k:
                        cells["folds_pending"] = {m: v * (1 - 0.05 * r) for m, v in pending.items()}
                    c0x = dict(c0, folds_pending=pending)
                    add("sustainability", method, "proj+llm", seed, r, cells, c0x)
    columns = ["scenario", "method", "target", "seed", "request", "split", "modality", "accuracy", "relative",
               "status", "n"]
    return pd.DataFrame(rows, columns=columns)


# --- rows of the columns probe, step, at: checkpoints (curves), matched forgetting, probes ----------------------
# Checkpoints of request 1 at steps 0, 2, 4 (fine-tuned and pre-trained, target proj+llm): accuracy of seed index i
# = START + 2 i - SLOPE * step, splits unlearn_sel / retain_sel / mmbench_sub (and mmbench_sub_vanilla = + 10).
STEPS = (0, 2, 4)
START = {"unlearn_sel": 80.0, "retain_sel": 70.0, "mmbench_sub": 60.0}
SLOPE = {"ga": {"unlearn_sel": 15.0, "retain_sel": 5.0, "mmbench_sub": 2.0},
         "ga_klr": {"unlearn_sel": 2.5, "retain_sel": 1.0, "mmbench_sub": 0.25},
         "npo": {"unlearn_sel": 10.0, "retain_sel": 2.0, "mmbench_sub": 1.0}}
TARGET = 55.0  # unlearn_sel <= 55: GA stops at step 2, NPO at step 4, GA+KLR never (80, 75, 70): not_reached
STOP = {"ga": 2, "npo": 4}
# Matched rows (request 1, at the stop): accuracy = request-0 accuracy x (factor + 0.02 i); relative left EMPTY so
# that the report computes it from request 0 (request-0 held-out rows = the same BASE values as unlearn / retain).
MATCHED = {
    ("finetuned", "ga", "proj+llm"): {"unlearn": (0.50, 0.70), "retain": (0.80, 0.90), "mmbench": 0.98},
    ("finetuned", "npo", "proj+llm"): {"unlearn": (0.55, 0.75), "retain": (0.85, 0.90), "mmbench": 0.99},
    ("finetuned", "ga", "llm"): {"unlearn": (0.50, 0.60), "retain": (0.70, 0.80), "mmbench": 0.90},
    ("pretrained", "ga", "proj+llm"): {"unlearn": (0.60, 0.80), "retain": (0.60, 0.70), "mmbench": 0.50},
    ("pretrained", "npo", "proj+llm"): {"unlearn": (0.60, 0.80), "retain": (0.60, 0.70), "mmbench": 0.60},
}
# Probes (fine-tuned, request 1, modality all), as protocol/probes.py writes them. Routes and quant on split unlearn,
# relative to u = the unlearned D_unlearn accuracy and p = the request-0 accuracy of the same seed (index i):
# routes image u/2, text u+5, Test_Set u+2, name only u+6, all u+10+2i (request 0: p); quant8 u+1, quant4 u+8
# (request-0 baselines p-0.5, p-3: gains 1.5 and 11 points). Relearning on the measured half: request 0 p,
# request 1 u, after the attack u+(p-u)/2 (recovery 50 %); the control (method never_learned) 20 before, 26 + i after.
PROBE_PLUS = {"route_image": lambda u, i: u / 2, "route_text": lambda u, i: u + 5,
              "route_test_set": lambda u, i: u + 2, "route_name_only": lambda u, i: u + 6,
              "route_all": lambda u, i: u + 10 + 2 * i, "quant8": lambda u, i: u + 1, "quant4": lambda u, i: u + 8}
PROBE_BASE = {"route_image": 0.0, "route_text": 0.0, "route_test_set": 0.0, "route_name_only": 0.0,
              "route_all": 0.0, "quant8": -0.5, "quant4": -3.0}


def make_full(seeds=SEEDS, probes=True, matched=True, checkpoints=True) -> pd.DataFrame:
    """make_results() with the columns probe, step, at and their rows (at budget + request 0 held-out / selection
    splits, checkpoints, matched forgetting, probes)."""
    df = make_results(seeds=seeds)
    df["probe"], df["step"], df["at"] = "none", None, "budget"
    rows = []

    def row(**kw):
        base = dict(probe="none", step=None, at="budget", status="ok", relative=None, n=100)
        rows.append({**base, **kw})

    for i, seed in enumerate(seeds):
        for (scenario, method, target) in FACTORS:
            c0 = _cells(scenario, None, i)
            for half in ("held", "sel"):  # request-0 rows of the halves: same values as the whole split
                for split in ("unlearn", "retain"):
                    for modality, acc in c0[split].items():
                        row(scenario=scenario, method=method, target=target, seed=seed, request=0,
                            split=f"{split}_{half}", modality=modality, accuracy=acc, relative=100.0)
            if checkpoints and target == "proj+llm":
                for step in STEPS:
                    for split, start in START.items():
                        acc = start + 2 * i - SLOPE[method][split] * step
                        row(scenario=scenario, method=method, target=target, seed=seed, request=1, split=split,
                            modality="all", accuracy=acc, step=step, at="checkpoint")
                        if split == "mmbench_sub":
                            row(scenario=scenario, method=method, target=target, seed=seed, request=1,
                                split="mmbench_sub_vanilla", modality="all", accuracy=acc + 10, step=step,
                                at="checkpoint")
            if not matched:
                continue
            factors = MATCHED.get((scenario, method, target))
            cells = _cells(scenario, factors, i) if factors else _cells(scenario, None, i)
            for split, mods in cells.items():
                name = {"unlearn": "unlearn_held", "retain": "retain_held"}[split] if split != "mmbench" else split
                for s_name in ([name, "mmbench_vanilla"] if split == "mmbench" else [name]):
                    for modality, acc in mods.items():
                        kw = dict(scenario=scenario, method=method, target=target, seed=seed, request=1,
                                  split=s_name, modality=modality, at="matched")
                        if factors:
                            row(accuracy=acc + (10 if s_name == "mmbench_vanilla" else 0),
                                step=STOP.get(method, 4), **kw)
                        else:
                            row(accuracy=None, status="not_reached", step=STEPS[-1], **kw)
        if probes:
            for split, acc in (("relearn_measured", 20.0), ("relearn_measured_attacked", 26.0 + i)):
                row(scenario="finetuned", method="never_learned", target="proj+llm", seed=seed, request=0,
                    split=split, modality="all", accuracy=acc, probe="relearn")
            for method, target in (("ga", "proj+llm"), ("ga_klr", "proj+llm"), ("npo", "proj+llm"), ("ga", "llm")):
                c0 = _cells("finetuned", None, i)["unlearn"]["all"]
                u = _cells("finetuned", FACTORS[("finetuned", method, target)], i)["unlearn"]["all"]
                for probe, plus in PROBE_PLUS.items():
                    row(scenario="finetuned", method=method, target=target, seed=seed, request=1, split="unlearn",
                        modality="all", accuracy=plus(u, i), probe=probe)
                    row(scenario="finetuned", method=method, target=target, seed=seed, request=0, split="unlearn",
                        modality="all", accuracy=c0 + PROBE_BASE[probe], probe=probe)
                for request, split, acc in ((0, "relearn_measured", c0), (1, "relearn_measured", u),
                                            (1, "relearn_measured_attacked", u + (c0 - u) / 2)):
                    row(scenario="finetuned", method=method, target=target, seed=seed, request=request, split=split,
                        modality="all", accuracy=acc, probe="relearn")
    extra = pd.DataFrame(rows, columns=list(df.columns))
    return pd.concat([df, extra], ignore_index=True)


def manifest(name="synthetic", seeds=SEEDS) -> dict:
    return {
        "config": {"name": name, "seeds": list(seeds),
                   "model": {"name": "llava-hf/llava-1.5-13b-hf", "dtype": "bfloat16"},
                   "data": {"mllmu": "data/mllmu", "mmbench": "https://example.org/mmbench.tsv"},
                   "eval": {"every": 2, "curve_mmbench_groups": 20},
                   "unlearn": {"stop": {"rule": "never_learned", "margin": 0.0, "max_steps": 0}}},
        "seeds": list(seeds),
        "versions": {"python": "3.11", "torch": "2.13.0"},
        "git_commit": "abc1234",
        "selected_celebrities": [{"id": f"celeb_{i:03d}", "accuracy": 90.0 + i / 10} for i in range(25)],
        "folds": {"0": [[1, 2], [3, 4]], "1": [[2, 1], [4, 3]]},
        "mmbench_scoring": "likelihood",
        "matched_targets": {f"{sc}/seed{s}": {"reference": TARGET, "margin": 0.0, "target": TARGET, "n": 100}
                            for sc in ("finetuned", "pretrained") for s in seeds},
        "started": "2025-01-01T10:00:00",
        "finished": "2025-01-01T12:34:56",
    }


def write_run(path: Path, df: pd.DataFrame, man: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    df.to_csv(path / "results.csv", index=False)
    (path / "manifest.json").write_text(json.dumps(man or manifest(path.name)))
    return path


@pytest.fixture(scope="session")
def synth() -> SimpleNamespace:
    """The fixture builders, for tests that need variants (tests import no modules under --import-mode
    importlib)."""
    return SimpleNamespace(make_results=make_results, make_full=make_full, write_run=write_run, manifest=manifest,
                           TARGET=TARGET)


@pytest.fixture
def results_df() -> pd.DataFrame:
    return make_results()


@pytest.fixture
def run_dir(tmp_path, results_df) -> Path:
    return write_run(tmp_path / "run_a", results_df)
