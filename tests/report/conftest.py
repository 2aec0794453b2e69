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


def manifest(name="synthetic", seeds=SEEDS) -> dict:
    return {
        "config": {"name": name, "seeds": list(seeds),
                   "model": {"name": "llava-hf/llava-1.5-13b-hf", "dtype": "bfloat16"},
                   "data": {"mllmu": "data/mllmu", "mmbench": "https://example.org/mmbench.tsv"}},
        "seeds": list(seeds),
        "versions": {"python": "3.11", "torch": "2.13.0"},
        "git_commit": "abc1234",
        "selected_celebrities": [{"id": f"celeb_{i:03d}", "accuracy": 90.0 + i / 10} for i in range(25)],
        "folds": {"0": [[1, 2], [3, 4]], "1": [[2, 1], [4, 3]]},
        "mmbench_scoring": "likelihood",
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
    return SimpleNamespace(make_results=make_results, write_run=write_run, manifest=manifest)


@pytest.fixture
def results_df() -> pd.DataFrame:
    return make_results()


@pytest.fixture
def run_dir(tmp_path, results_df) -> Path:
    return write_run(tmp_path / "run_a", results_df)
