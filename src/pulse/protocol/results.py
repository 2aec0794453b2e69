"""results.csv: tidy rows rebuilt from the cells' files (request 0, the budget, curve checkpoints, the matched
point, requests not run, probes) in a fixed order, so a resumed run gives the same bytes; and the sweep's winners
per scenario × target × seed."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import from_manifest
from ..eval.mcq import summarise
from ..fsutil import atomic_write_json, atomic_write_text
from . import curves, stored
from .membership import mia_rows
from .open_tasks import open_rows
from .oracle import FORMS_ALL, forget_quality
from .plan import plan, variants
from .probes import cell_rows as probe_cell_rows, control_rows as probe_control_rows
from .rundir import read_manifest

COLUMNS = ["scenario", "method", "target", "seed", "request", "split", "modality", "metric", "accuracy", "relative",
           "status", "n", "probe", "step", "at"]
# `metric` names what the `accuracy` column holds (the column keeps its name for existing readers): "accuracy"
# for the MCQ and MMBench rows and the probes (percent), the other metrics in their own units (docs/run-directory.md).


def write_results(out: Path) -> pd.DataFrame:
    """Rebuild results.csv from every completed cell, in a fixed order (so resumed runs give the same file):
    per cell, request 0's rows, then per request its budget rows, checkpoint rows (by step) and matched rows."""
    cfg = read_manifest(out)["config"]
    pairs = plan(from_manifest(cfg))
    rows = []
    for seed in cfg["seeds"]:
        for scenario in cfg["scenarios"]:
            p0 = out / "cells" / scenario / f"request0__seed{seed}.json"
            if not p0.is_file():
                continue
            ref = stored.read(p0)
            po = out / "cells" / scenario / f"oracle__seed{seed}.json"
            orc = stored.read(po) if scenario == "finetuned" and po.is_file() else None
            if orc:
                meta = {"scenario": scenario, "method": "oracle", "target": "none", "seed": seed, "request": 0}
                with stored.reading(po):
                    rows += budget_rows(meta, orc["splits"], orc["mcq"], orc["mmbench"], None, "ok", orc["halves"],
                                        known=False) + mia_rows(meta, orc["mcq"], None)
                    rows += open_rows(meta, orc["mcq"], None, None, known=False)
            for method, target in pairs[scenario]:
                meta0 = {"scenario": scenario, "method": method, "target": target, "seed": seed, "request": 0}
                with stored.reading(p0):
                    rows += budget_rows(meta0, ref["splits"], ref["mcq"], ref["mmbench"], None, "ok", ref.get("halves"))
                    rows += oracle_rows(meta0, ref["splits"], ref["mcq"], orc) + mia_rows(meta0, ref["mcq"], orc)
                    rows += open_rows(meta0, ref["mcq"], None, orc)
                folder = out / "cells" / scenario / f"{method}__{target}__seed{seed}"
                paths = [p for p in folder.glob("request*.json") if p.stem[7:].isdigit()]
                for path in sorted(paths, key=lambda p: int(p.stem[7:])):
                    c = stored.read(path)
                    with stored.reading(path):
                        rows += budget_rows(c["meta"], c["splits"], c["mcq"], c["mmbench"], ref, c["status"],
                                            c.get("halves"))
                        rows += oracle_rows(c["meta"], c["splits"], c["mcq"], orc) + mia_rows(c["meta"], c["mcq"], orc)
                        rows += open_rows(c["meta"], c["mcq"], ref["mcq"], orc)
                        rows += curve_rows(c["meta"], c, ref)
                        rows += matched_rows(c["meta"], c, ref)
                        rows += not_run_rows(c, ref)
                    if c["status"] == "diverged":
                        break  # the cell ended at a diverged request
                with stored.reading(folder / "probes.json"):
                    rows += probe_cell_rows(folder)
            with stored.reading(out / "cells" / scenario / f"probe_control__seed{seed}.json"):
                rows += probe_control_rows(out, scenario, seed)
    df = pd.DataFrame([{"metric": "accuracy", **r} for r in rows], columns=COLUMNS)
    for col in ("step", "n"):  # integers, empty where not measured (not 3.0)
        df[col] = df[col].astype("Int64")
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    return df


def mcq_rows(meta: dict, split: str, now: list[dict], before: list[dict] | None, status: str) -> list[dict]:
    """Rows image / text / all of one MCQ split; `relative` against `before` (the request-0 predictions)."""
    now_s = summarise(now)
    before_s = summarise(before) if before is not None else now_s
    rows = []
    for modality in ("image", "text", "all"):
        if modality == "all":
            acc, acc0, n = curves.accuracy(now), curves.accuracy(before_s.predictions), len(now)
        else:
            acc, acc0, n = now_s.accuracy[modality], before_s.accuracy[modality], now_s.n[modality]
        rows.append({**meta, "split": split, "modality": modality, "accuracy": round(acc, 4),
                     "relative": relative(acc, acc0), "status": status, "n": n})
    return rows


def half_filters(splits: dict[str, list[str]], halves: dict | None,
                 known: set | None = None) -> dict[str, tuple[set, set | None]]:
    """split -> (person IDs, question keys or None): the people splits, then unlearn/retain × sel/held, then —
    given `known` (the question keys answered correctly before unlearning) — unlearn_known (× sel/held)."""
    out = {split: (set(ids), None) for split, ids in splits.items()}
    if halves:
        for base in ("unlearn", "retain"):
            for half in ("sel", "held"):
                out[f"{base}_{half}"] = (set(splits[base]), set(halves[half]))
    if known is not None and "unlearn" in splits:
        out["unlearn_known"] = (set(splits["unlearn"]), known)
        for half in ("sel", "held") if halves else ():
            out[f"unlearn_known_{half}"] = (set(splits["unlearn"]), known & set(halves[half]))
    return out


def known_keys(predictions: list[dict]) -> set:
    """The question keys a model answered correctly: "learned before unlearning" when these are request 0's."""
    return {curves.key(p["person_id"], p["form"], p["index"]) for p in predictions if p["correct"]}


def pick(preds: list[dict], ids: set, keys: set | None) -> list[dict]:
    return [p for p in preds if p["person_id"] in ids
            and (keys is None or curves.key(p["person_id"], p["form"], p["index"]) in keys)]


def budget_rows(meta: dict, splits: dict[str, list[str]], mcq: dict, mmb: dict, ref: dict | None, status: str,
                halves: dict | None = None, known: bool = True) -> list[dict]:
    """Tidy rows of one request-level evaluation (at budget); `relative` against the request-0 evaluation on the
    same people (and the same half of their questions); `known`: also the unlearn_known splits (the questions
    request 0 answered correctly). No evaluation (`mcq` None: a diverged request) -> the same rows with accuracy,
    relative and n empty."""
    meta = {"probe": "none", "step": None, "at": "budget", **meta}
    before = ref["mcq"] if ref else mcq
    filters = half_filters(splits, halves, known_keys(before["predictions"]) if before and known else None)
    if mcq is None:
        empty = {"accuracy": float("nan"), "relative": None, "status": status, "n": None}
        return [{**meta, "split": split, "modality": modality, **empty} for split in filters
                for modality in ("image", "text", "all")] + \
            [{**meta, "split": split, "modality": "all", **empty} for split in ("mmbench", "mmbench_vanilla")]
    rows = []
    for split, (ids, keys) in filters.items():
        before = pick(ref["mcq"]["predictions"], ids, keys) if ref else None
        rows += mcq_rows(meta, split, pick(mcq["predictions"], ids, keys), before, status)
    # MMBench: "mmbench" = CircularEval, "mmbench_vanilla" = rotation-0 rows only; n = question groups for both
    for split, key in (("mmbench", "circular"), ("mmbench_vanilla", "vanilla")):
        acc0 = ref["mmbench"][key] if ref else mmb[key]
        rows.append({**meta, "split": split, "modality": "all", "accuracy": round(mmb[key], 4),
                     "relative": relative(mmb[key], acc0), "status": status, "n": mmb["groups"]})
    return rows


def oracle_rows(meta: dict, splits: dict[str, list[str]], mcq: dict | None, orc: dict | None) -> list[dict]:
    """Rows against the retrained oracle (protocol/oracle.py): metric oracle_gap (accuracy points minus the
    oracle's) on unlearn and retain, metric forget_quality (KS p-value of the truth ratios) on unlearn; image,
    text, all. None without an oracle or an evaluation."""
    if orc is None or mcq is None:
        return []
    meta = {"probe": "none", "step": None, "at": "budget", "status": "ok", "relative": None, **meta}
    rows = []
    for split in ("unlearn", "retain"):
        ids = set(splits[split])
        now = summarise(pick(mcq["predictions"], ids, None))
        then = summarise(pick(orc["mcq"]["predictions"], ids, None))
        for modality in ("image", "text", "all"):
            if modality == "all":
                gap, n = curves.accuracy(now.predictions) - curves.accuracy(then.predictions), len(now.predictions)
            else:
                gap, n = now.accuracy[modality] - then.accuracy[modality], now.n[modality]
            rows.append({**meta, "split": split, "modality": modality, "metric": "oracle_gap",
                         "accuracy": round(gap, 4), "n": n})
    mine = mcq.get("option_scores") or mcq["predictions"]  # generate scoring: a likelihood pass of D_unlearn
    theirs = orc["mcq"].get("option_scores") or orc["mcq"]["predictions"]
    for modality, forms in FORMS_ALL.items():
        p, n = forget_quality(mine, theirs, set(splits["unlearn"]), forms)
        rows.append({**meta, "split": "unlearn", "modality": modality, "metric": "forget_quality",
                     "accuracy": float(f"{p:.4g}"), "n": n})  # p-values go far below 1e-6
    return rows


def not_run_rows(cell: dict, ref: dict) -> list[dict]:
    """A sequence that stopped at a diverged request: the budget rows of each request not run (`not_run`), status
    diverged, accuracy empty (their splits: the diverged request's, folds_pending only before the last request)."""
    rows = []
    for r in cell.get("not_run") or []:
        splits = {k: v for k, v in cell["splits"].items() if k != "folds_pending"}
        if r < cell["not_run"][-1] and "folds_pending" in cell["splits"]:
            splits["folds_pending"] = []
        rows += budget_rows({**cell["meta"], "request": r}, splits, None, None, ref, "diverged", cell.get("halves"))
    return rows


def curve_rows(meta: dict, cell: dict, ref: dict) -> list[dict]:
    """at=checkpoint rows: unlearn_sel, retain_sel (image/text/all), mmbench_sub, mmbench_sub_vanilla per point;
    relative to request 0 on the same questions / the same MMBench subset."""
    sel = cell["halves"]["sel"]
    keys = set(sel)
    rows = []
    for point in cell.get("curve") or []:
        m = {**meta, "probe": "none", "step": point["step"], "at": "checkpoint"}
        preds = curves.decode(sel, point["sel"])
        for base in ("unlearn", "retain"):
            ids = set(cell["splits"][base])
            rows += mcq_rows(m, f"{base}_sel", pick(preds, ids, None), pick(ref["mcq"]["predictions"], ids, keys),
                              "ok")
        for split, key in (("mmbench_sub", "circular"), ("mmbench_sub_vanilla", "vanilla")):
            acc = point["mmbench"][key]
            rows.append({**m, "split": split, "modality": "all", "accuracy": round(acc, 4),
                         "relative": relative(acc, ref["mmbench_sub"][key]), "status": "ok",
                         "n": point["mmbench"]["groups"]})
    return rows


MATCHED_SPLITS = ("unlearn_held", "retain_held", "unlearn_sel", "retain_sel", "unlearn_known_held", "unlearn_known_sel")


def matched_rows(meta: dict, cell: dict, ref: dict) -> list[dict]:
    """at=matched rows: held-out and selection halves, full MMBench, at the matched step; a request that never
    reached the target gets the same rows with status not_reached (or diverged), accuracy and n empty, step = the
    cap (or the steps done before divergence)."""
    mt = cell.get("matched")
    if not mt:
        return []
    m = {**meta, "probe": "none", "step": mt["step"], "at": "matched"}
    if not mt["reached"]:
        empty = {"accuracy": float("nan"), "relative": None, "status": mt["status"], "n": None}
        return [{**m, "split": split, "modality": mod, **empty}
                for split in MATCHED_SPLITS for mod in ("image", "text", "all")] + \
               [{**m, "split": split, "modality": "all", **empty} for split in ("mmbench", "mmbench_vanilla")]
    halves = cell["halves"]
    preds = curves.decode(halves["sel"], mt["sel"]) + curves.decode(halves["held"], mt["held"])
    filters = half_filters(cell["splits"], halves, known_keys(ref["mcq"]["predictions"]))
    rows = []
    for split in MATCHED_SPLITS:
        ids, keys = filters[split]
        rows += mcq_rows(m, split, pick(preds, ids, keys), pick(ref["mcq"]["predictions"], ids, keys), "ok")
    for split, key in (("mmbench", "circular"), ("mmbench_vanilla", "vanilla")):
        acc = mt["mmbench"][key]
        rows.append({**m, "split": split, "modality": "all", "accuracy": round(acc, 4),
                     "relative": relative(acc, ref["mmbench"][key]), "status": "ok", "n": mt["mmbench"]["groups"]})
    return rows


def relative(acc: float, acc0: float):
    return round(100.0 * acc / acc0, 4) if acc0 and acc0 == acc0 else None


def sweep_winners(cfg, out: Path, scenario: str, seed: int) -> dict:
    """Per method and target, the winning sweep configuration (curves.pick_winner) from the variants' matched
    points — selection-half numbers only; written to cells/<scenario>/sweep__seed<S>.json and returned."""
    candidates_of = variants(cfg)
    winners = {}
    for target in cfg.targets:
        for method in cfg.sweep:
            candidates = []
            for name in (n for n, v in candidates_of.items() if v["method"] == method):
                path = out / "cells" / scenario / f"{name}__{target}__seed{seed}" / "request1.json"
                cell = stored.read(path)
                with stored.reading(path):
                    mt, unlearn_ids = cell["matched"], set(cell["splits"]["unlearn"])
                    point = next((p for p in cell["curve"] if p["step"] == mt["step"]), None) \
                        if mt["reached"] else None
                    preds = curves.decode(cell["halves"]["sel"], point["sel"]) if point else []
                    candidates.append({"name": name, "reached": mt["reached"], "step": mt["step"],
                                       "unlearn_sel": curves.accuracy(preds, unlearn_ids) if point else None,
                                       "retain_sel": curves.accuracy(preds, set(cell["splits"]["retain"]))
                                       if point else None,
                                       "mmbench_sub": point["mmbench"]["circular"] if point else None})
            winners[f"{method}/{target}"] = {"winner": curves.pick_winner(candidates), "candidates": candidates}
    atomic_write_json(out / "cells" / scenario / f"sweep__seed{seed}.json", winners)
    return winners
