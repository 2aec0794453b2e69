"""Check the paper's headline findings against a run's results.

Each check returns {"id", "claim", "holds", "evidence", "numbers"}: holds is True / False, or None when
the run lacks the data; evidence is one sentence with the numbers behind the verdict; numbers holds
them in machine-readable form. All values are seed means of `relative` (accuracy as a percent of the
same cell at request 0); diverged measurements are excluded. `mmbench` is the MMBench label naming the metric
(report.mmbench.label); evidence sentences use it.
"""
from __future__ import annotations

import math

import pandas as pd

from .agg import final_request, main_target, method_name, methods, select, summarize, target_name

F2_THRESHOLD = 2.0  # points of relative accuracy


def _f(x: float) -> str:
    return f"{x:.1f}"


def _rel(df, **filters) -> float:
    cell = summarize(df, value="relative", **filters)
    return cell.mean if cell.has_data else math.nan


def _finding(fid: str, claim: str, holds, evidence: str, numbers) -> dict:
    return {"id": fid, "claim": claim, "holds": holds, "evidence": evidence, "numbers": numbers}


def f1_pretrained_costs_mmbench(df: pd.DataFrame, mmbench: str = "MMBench") -> dict:
    claim = ("Unlearning pre-trained knowledge costs more MMBench than unlearning fine-tuned knowledge "
             "(Figure 4).")
    at1 = select(df, request=1, split="mmbench", modality="all")
    at1 = at1[at1["scenario"].isin(["finetuned", "pretrained"])]
    target = "proj+llm" if "proj+llm" in set(at1["target"]) else main_target(at1)
    numbers = {}
    for method in methods(at1, target=target):
        ft = _rel(at1, scenario="finetuned", method=method, target=target)
        pt = _rel(at1, scenario="pretrained", method=method, target=target)
        if not (math.isnan(ft) or math.isnan(pt)):
            numbers[method] = {"finetuned": ft, "pretrained": pt}
    if not numbers:
        missing = [s for s in ("finetuned", "pretrained") if select(at1, scenario=s).empty]
        why = f"no data for scenario {' and '.join(missing)}" if missing else "no method has both scenarios"
        return _finding("F1", claim, None, f"No data: {why} at request 1 ({mmbench}).", numbers)
    lower = sum(v["pretrained"] < v["finetuned"] for v in numbers.values())
    holds = lower > len(numbers) / 2
    parts = "; ".join(f"{method_name(m)} {_f(v['finetuned'])} vs {_f(v['pretrained'])}"
                      for m, v in numbers.items())
    evidence = (f"{mmbench} kept at request 1 (% of pre-unlearning, target {target_name(target)}), "
                f"fine-tuned vs pre-trained: {parts}; pre-trained lower for {lower} of {len(numbers)} "
                f"method(s).")
    return _finding("F1", claim, holds, evidence, {"target": target, "methods": numbers})


def f2_sequential_requests_erode(df: pd.DataFrame, mmbench: str = "MMBench") -> dict:
    claim = "Sequential unlearning requests erode D_retain and MMBench (Figure 5)."
    sus = select(df, scenario="sustainability")
    target = main_target(sus)
    numbers = {}
    for method in methods(sus, target=target):
        k = final_request(sus, method=method, target=target)
        if not k:
            continue
        drops = {}
        for name, split in (("retain", "retain"), ("mmbench", "mmbench")):
            start = _rel(sus, method=method, target=target, request=0, split=split, modality="all")
            end = _rel(sus, method=method, target=target, request=k, split=split, modality="all")
            start = 100.0 if math.isnan(start) else start  # relative at request 0 is 100 by definition
            drops[name] = start - end
        if not any(math.isnan(d) for d in drops.values()):
            numbers[method] = {"final_request": k, "retain_drop": drops["retain"],
                               "mmbench_drop": drops["mmbench"]}
    if not numbers:
        why = "no data for scenario sustainability" if sus.empty else "no method has a final request"
        return _finding("F2", claim, None, f"No data: {why}.", numbers)
    mean_retain = sum(v["retain_drop"] for v in numbers.values()) / len(numbers)
    mean_mmb = sum(v["mmbench_drop"] for v in numbers.values()) / len(numbers)
    holds = bool(mean_retain > F2_THRESHOLD and mean_mmb > F2_THRESHOLD)
    parts = "; ".join(f"{method_name(m)} (request {v['final_request']}) D_retain {_f(v['retain_drop'])}, "
                      f"MMBench {_f(v['mmbench_drop'])}" for m, v in numbers.items())
    evidence = (f"Drop in % of pre-unlearning accuracy from request 0 to the final request: {parts}; "
                f"mean over methods D_retain {_f(mean_retain)}, {mmbench} {_f(mean_mmb)} points "
                f"(holds if both > {_f(F2_THRESHOLD)}).")
    return _finding("F2", claim, holds, evidence,
                    {"target": target, "methods": numbers, "mean_retain_drop": mean_retain,
                     "mean_mmbench_drop": mean_mmb, "threshold": F2_THRESHOLD})


def f3_text_resists(df: pd.DataFrame, mmbench: str = "MMBench") -> dict:
    claim = "Text-only questions resist forgetting more than image questions (Table 3)."
    unl = select(df, split="unlearn")
    cases = []
    keys = unl[["scenario", "method", "target"]].drop_duplicates().itertuples(index=False)
    for scenario, method, target in keys:
        k = final_request(unl, scenario=scenario, method=method, target=target)
        if not k:
            continue
        f = dict(scenario=scenario, method=method, target=target, request=k)
        text, image = _rel(unl, modality="text", **f), _rel(unl, modality="image", **f)
        if not (math.isnan(text) or math.isnan(image)):
            cases.append({**f, "text": text, "image": image})
    if not cases:
        return _finding("F3", claim, None,
                        "No data: no D_unlearn text and image results after an unlearning request.", cases)
    text = sum(c["text"] for c in cases) / len(cases)
    image = sum(c["image"] for c in cases) / len(cases)
    higher = sum(c["text"] > c["image"] for c in cases)
    evidence = (f"D_unlearn kept at the final request (% of pre-unlearning), mean over {len(cases)} "
                f"scenario x method x target case(s): text {_f(text)} vs image {_f(image)}; text higher "
                f"in {higher} of {len(cases)}.")
    return _finding("F3", claim, bool(text > image), evidence,
                    {"mean_text": text, "mean_image": image, "cases": cases})


def f4_llm_only_hurts_mmbench(df: pd.DataFrame, mmbench: str = "MMBench") -> dict:
    claim = "Updating only the LLM hurts MMBench more than updating Proj and LLM (Table 3, GA)."
    f = dict(scenario="finetuned", method="ga", request=1, split="mmbench", modality="all")
    llm, both = _rel(df, target="llm", **f), _rel(df, target="proj+llm", **f)
    numbers = {"llm": llm, "proj+llm": both}
    missing = [t for t, v in numbers.items() if math.isnan(v)]
    if missing:
        return _finding("F4", claim, None,
                        f"No data: no fine-tuned GA result at request 1 for target {' and '.join(missing)}.",
                        {k: (None if math.isnan(v) else v) for k, v in numbers.items()})
    evidence = (f"{mmbench} kept at request 1 (% of pre-unlearning), fine-tuned scenario, GA: "
                f"LLM {_f(llm)} vs Proj,LLM {_f(both)}.")
    return _finding("F4", claim, bool(llm < both), evidence, numbers)


CHECKS = (f1_pretrained_costs_mmbench, f2_sequential_requests_erode, f3_text_resists,
          f4_llm_only_hurts_mmbench)


def check_findings(df: pd.DataFrame, mmbench: str = "MMBench") -> list[dict]:
    """Run every check on one run's tidy results (the frame `load_run` gives)."""
    return [check(df, mmbench) for check in CHECKS]
