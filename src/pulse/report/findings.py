"""Check the paper's headline findings (F1-F4) against a run's results, at the configured budget and at matched
forgetting, and state what the probes show (P1-P3).

Each check returns {"id", "at", "claim", "holds", "evidence", "numbers"}: holds is True / False, or None when the
run lacks the data; evidence is plain sentences with the numbers behind the verdict, ending in "reproduces" /
"does not reproduce"; numbers holds them in machine-readable form. Values are seed means of `relative`
(accuracy as a percent of the same cell at request 0); diverged measurements are excluded. Every comparison
also gets the 95% CI (Student t, stats.mean_ci) of its per-seed difference, "± x" in the evidence (no CI with
one seed).

at="budget": request-level rows at the configured budget (all questions). at="matched": rows at the
matched-forgetting stop, on the held-out half (unlearn_held, retain_held; MMBench as at the budget); a method
where some seed did not reach the target is named and left out of the verdict, never compared. F2
(sustainability) is fixed-budget only: matched forgetting applies to single-request scenarios.
`mmbench` is the MMBench short label naming the metric (report.mmbench.label); evidence sentences use it.
"""
from __future__ import annotations

import math

import pandas as pd

from .agg import final_request, main_target, method_name, methods, select, target_name, with_relative
from .load import normalize, ordinary, view
from .stats import mean_ci

F2_THRESHOLD = 2.0  # points of relative accuracy
PROBE_THRESHOLD = 2.0  # points (routes, quantization) or % of the forgotten accuracy (relearning)
HELD = {"unlearn": "unlearn_held", "retain": "retain_held"}


def _f(x: float) -> str:
    return f"{x:.1f}"


def _pm(mean: float, half) -> str:
    return _f(mean) + (f" \u00b1 {_f(half)}" if half is not None else "")


def _verdict(holds) -> str:
    return {True: " Reproduces.", False: " Does not reproduce.", None: ""}[holds]


def _finding(fid: str, at: str, claim: str, holds, evidence: str, numbers) -> dict:
    return {"id": fid, "at": at, "claim": claim, "holds": holds, "evidence": evidence + _verdict(holds),
            "numbers": numbers}


class View:
    """The rows a finding reads: `after` (request >= 1 rows at the budget or at the matched stop, relative filled
    from request 0 where empty) and the split names for D_unlearn / D_retain at that point."""

    def __init__(self, df: pd.DataFrame, at: str):
        df = normalize(df)
        self.at = at
        self.base = ordinary(df)
        self.after = self.base if at == "budget" else with_relative(view(df, at=at), self.base)
        self.split = (lambda s: s) if at == "budget" else (lambda s: HELD.get(s, s))
        self.where = "at the configured budget" if at == "budget" else (
            "at matched forgetting (held-out half of the questions)")

    def seeds(self, value: str = "relative", **filters) -> dict[int, float]:
        rows = select(self.after, **filters)
        ok = rows[rows["status"] == "ok"]
        return ok.groupby("seed")[value].mean().dropna().to_dict()

    def not_reached(self, **filters) -> bool:
        return bool((select(self.after, **filters)["status"] == "not_reached").any())


def _diff(a: dict, b: dict) -> tuple[float, float | None, int]:
    """Seed mean and CI half-width of a - b over the seeds both have."""
    seeds = [s for s in a if s in b]
    mean, half = mean_ci([a[s] - b[s] for s in seeds])
    return mean, half, len(seeds)


def _mean(d: dict) -> float:
    return sum(d.values()) / len(d) if d else math.nan


def f1_pretrained_costs_mmbench(df: pd.DataFrame, mmbench: str = "MMBench", at: str = "budget") -> dict:
    claim = ("Unlearning pre-trained knowledge costs more MMBench than unlearning fine-tuned knowledge "
             "(Figure 4).")
    v = View(df, at)
    at1 = select(v.after, request=1, split="mmbench", modality="all")
    at1 = at1[at1["scenario"].isin(["finetuned", "pretrained"])]
    target = "proj+llm" if "proj+llm" in set(at1["target"]) else main_target(at1)
    numbers, missed = {}, []
    for method in methods(at1, target=target):
        f = dict(method=method, target=target, request=1, split="mmbench", modality="all")
        if v.not_reached(scenario="finetuned", **f) or v.not_reached(scenario="pretrained", **f):
            missed.append(method)
            continue
        ft, pt = v.seeds(scenario="finetuned", **f), v.seeds(scenario="pretrained", **f)
        if ft and pt:
            d, half, n = _diff(ft, pt)
            numbers[method] = {"finetuned": _mean(ft), "pretrained": _mean(pt), "difference": d, "ci95": half,
                               "seeds": n}
    miss = (f" {', '.join(method_name(m) for m in missed)} did not reach the target in some seed and "
            "is left out.") if missed else ""
    if not numbers:
        missing = [s for s in ("finetuned", "pretrained") if select(at1, scenario=s).empty]
        why = f"no data for scenario {' and '.join(missing)}" if missing else "no method has both scenarios"
        return _finding("F1", at, claim, None, f"No data: {why} at request 1 {v.where} ({mmbench}).{miss}",
                        {"methods": numbers, "not_reached": missed})
    lower = sum(x["pretrained"] < x["finetuned"] for x in numbers.values())
    holds = lower > len(numbers) / 2
    parts = "; ".join(f"{method_name(m)} {_f(x['finetuned'])} vs {_f(x['pretrained'])} (difference "
                      f"{_pm(x['difference'], x['ci95'])})" for m, x in numbers.items())
    evidence = (f"{mmbench} kept at request 1 {v.where} (% of pre-unlearning, update target "
                f"{target_name(target)}), fine-tuned vs pre-trained: {parts}; pre-trained lower for {lower} of "
                f"{len(numbers)} method(s).{miss}")
    return _finding("F1", at, claim, holds, evidence, {"target": target, "methods": numbers, "not_reached": missed})


def f2_sequential_requests_erode(df: pd.DataFrame, mmbench: str = "MMBench", at: str = "budget") -> dict:
    claim = "Sequential unlearning requests erode D_retain and MMBench (Figure 5)."
    if at != "budget":
        return _finding("F2", at, claim, None, "Not measured at matched forgetting: the sustainability scenario "
                        "stays at the fixed budget (matched forgetting applies to single-request scenarios).", {})
    v = View(df, at)
    sus = select(v.base, scenario="sustainability")
    target = main_target(sus)
    numbers = {}
    for method in methods(sus, target=target):
        k = final_request(sus, method=method, target=target)
        if not k:
            continue
        drops = {}
        for name, split in (("retain", "retain"), ("mmbench", "mmbench")):
            f = dict(scenario="sustainability", method=method, target=target, split=split, modality="all")
            end = v.seeds(request=k, **f)
            start = v.seeds(request=0, **f)
            start = {s: start.get(s, 100.0) for s in end}  # relative at request 0 is 100 by definition
            drops[name] = _diff(start, end)
        if all(d[2] for d in drops.values()):
            numbers[method] = {"final_request": k, "retain_drop": drops["retain"][0],
                               "retain_ci95": drops["retain"][1], "mmbench_drop": drops["mmbench"][0],
                               "mmbench_ci95": drops["mmbench"][1]}
    if not numbers:
        why = "no data for scenario sustainability" if sus.empty else "no method has a final request"
        return _finding("F2", at, claim, None, f"No data: {why}.", numbers)
    mean_retain = sum(x["retain_drop"] for x in numbers.values()) / len(numbers)
    mean_mmb = sum(x["mmbench_drop"] for x in numbers.values()) / len(numbers)
    holds = bool(mean_retain > F2_THRESHOLD and mean_mmb > F2_THRESHOLD)
    parts = "; ".join(f"{method_name(m)} (request {x['final_request']}) D_retain "
                      f"{_pm(x['retain_drop'], x['retain_ci95'])}, {mmbench} "
                      f"{_pm(x['mmbench_drop'], x['mmbench_ci95'])}" for m, x in numbers.items())
    evidence = (f"Drop in % of pre-unlearning accuracy from request 0 to the final request: {parts}; "
                f"mean over methods D_retain {_f(mean_retain)}, {mmbench} {_f(mean_mmb)} points "
                f"(holds if both > {_f(F2_THRESHOLD)}).")
    return _finding("F2", at, claim, holds, evidence,
                    {"target": target, "methods": numbers, "mean_retain_drop": mean_retain,
                     "mean_mmbench_drop": mean_mmb, "threshold": F2_THRESHOLD})


def f3_text_resists(df: pd.DataFrame, mmbench: str = "MMBench", at: str = "budget") -> dict:
    claim = "Text-only questions resist forgetting more than image questions (Table 3)."
    v = View(df, at)
    split = v.split("unlearn")
    unl = select(v.after, split=split)
    if at != "budget":
        unl = unl[unl["scenario"].isin(["finetuned", "pretrained"])]
    cases, missed = [], []
    for scenario, method, target in unl[["scenario", "method", "target"]].drop_duplicates().itertuples(index=False):
        k = final_request(unl, scenario=scenario, method=method, target=target)
        if not k:
            continue
        f = dict(scenario=scenario, method=method, target=target, request=k, split=split)
        if v.not_reached(**f):
            missed.append(f"{scenario} {method_name(method)} {target_name(target)}")
            continue
        text, image = v.seeds(modality="text", **f), v.seeds(modality="image", **f)
        if text and image:
            d, half, n = _diff(text, image)
            cases.append({**f, "text": _mean(text), "image": _mean(image), "difference": d, "ci95": half,
                          "per_seed": {s: text[s] - image[s] for s in text if s in image}})
    miss = f" Did not reach the target in some seed, left out: {', '.join(missed)}." if missed else ""
    if not cases:
        return _finding("F3", at, claim, None, "No data: no D_unlearn text and image results after an unlearning "
                        f"request {v.where}.{miss}", {"cases": cases, "not_reached": missed})
    text = sum(c["text"] for c in cases) / len(cases)
    image = sum(c["image"] for c in cases) / len(cases)
    higher = sum(c["text"] > c["image"] for c in cases)
    seeds = sorted({s for c in cases for s in c["per_seed"]})  # per seed: mean over cases of text - image
    per_seed = [sum(c["per_seed"][s] for c in cases if s in c["per_seed"])
                / sum(s in c["per_seed"] for c in cases) for s in seeds]
    d, half = mean_ci(per_seed)
    for c in cases:
        c.pop("per_seed")
    evidence = (f"D_unlearn kept at the final request {v.where} (% of pre-unlearning), mean over {len(cases)} "
                f"scenario x method x target case(s): text {_f(text)} vs image {_f(image)} (difference "
                f"{_pm(d, half)}); text higher in {higher} of {len(cases)}.{miss}")
    return _finding("F3", at, claim, bool(text > image), evidence,
                    {"mean_text": text, "mean_image": image, "difference": d, "ci95": half, "cases": cases,
                     "not_reached": missed})


def f4_llm_only_hurts_mmbench(df: pd.DataFrame, mmbench: str = "MMBench", at: str = "budget") -> dict:
    claim = "Updating only the LLM hurts MMBench more than updating Proj and LLM (Table 3, GA)."
    v = View(df, at)
    f = dict(scenario="finetuned", method="ga", request=1, split="mmbench", modality="all")
    missed = [t for t in ("llm", "proj+llm") if v.not_reached(target=t, **f)]
    if missed:
        return _finding("F4", at, claim, None, f"Not compared: fine-tuned GA with update target "
                        f"{' and '.join(missed)} did not reach the target in some seed.", {"not_reached": missed})
    llm, both = v.seeds(target="llm", **f), v.seeds(target="proj+llm", **f)
    numbers = {"llm": _mean(llm), "proj+llm": _mean(both)}
    missing = [t for t, x in numbers.items() if math.isnan(x)]
    if missing:
        return _finding("F4", at, claim, None, f"No data: no fine-tuned GA result at request 1 {v.where} for "
                        f"update target {' and '.join(missing)}.",
                        {k: (None if math.isnan(x) else x) for k, x in numbers.items()})
    d, half, _n = _diff(both, llm)
    evidence = (f"{mmbench} kept at request 1 {v.where} (% of pre-unlearning), fine-tuned scenario, GA: "
                f"update target llm {_f(numbers['llm'])} vs proj+llm {_f(numbers['proj+llm'])} (difference "
                f"{_pm(d, half)}).")
    return _finding("F4", at, claim, bool(numbers["llm"] < numbers["proj+llm"]), evidence,
                    {**numbers, "difference": d, "ci95": half})


CHECKS = (f1_pretrained_costs_mmbench, f2_sequential_requests_erode, f3_text_resists,
          f4_llm_only_hurts_mmbench)


def check_findings(df: pd.DataFrame, mmbench: str = "MMBench", at: str = "budget") -> list[dict]:
    """Run every check on one run's results (`Run.full`, or any frame with the results.csv columns)."""
    return [check(df, mmbench, at) for check in CHECKS]


# --- probes -------------------------------------------------------------------------------------------------


def _per_method(rows, key_of) -> dict:
    """method label -> (mean, half, seeds) of the per-seed values `key_of(row)` gives, for rows that have any."""
    out = {}
    for row in rows:
        values = key_of(row)
        if values:
            mean, half = mean_ci(list(values.values()))
            out[f"{row.scenario} {method_name(row.method)} {target_name(row.target)} request {row.request}"] = (
                mean, half, len(values))
    return out


def _probe_verdict(fid: str, claim: str, per: dict, what: str, unit: str, none: str) -> dict:
    if not per:
        return _finding(fid, "budget", claim, None, f"No data: {none}.", {})
    above = sum(m > PROBE_THRESHOLD for m, _h, _n in per.values())
    holds = above > len(per) / 2
    parts = "; ".join(f"{k}: {_pm(m, h)}" for k, (m, h, _n) in per.items())
    evidence = (f"{what}: {parts} {unit}; above {_f(PROBE_THRESHOLD)} for {above} of {len(per)} "
                "(holds for a majority).")
    return _finding(fid, "budget", claim, holds, evidence,
                    {k: {"mean": m, "ci95": h, "seeds": n} for k, (m, h, n) in per.items()}
                    | {"threshold": PROBE_THRESHOLD})


def probe_findings(rows) -> list[dict]:
    """P1 routes, P2 quantization, P3 relearning, from one run's `probes.probe_rows` (pre-unlearning rows
    skipped)."""
    rows = [r for r in rows if r.request > 0]
    routes = _per_method(rows, lambda r: r.per_seed.get("route_leak"))
    p1 = _probe_verdict(
        "P1", "Forgetting leaks across routes: asked another way (text, Test_Set, name only), facts the unlearned "
        "model no longer answers on the image question come back, so the worst case over routes keeps more of "
        "D_unlearn than the image question alone.", routes,
        "D_unlearn accuracy under all routes (a fact known if any route answers it) minus the image route's, same "
        "facts, after the request", "points", "no route probe rows")
    levels = {q: _per_method(rows, lambda r, q=q: r.per_seed.get(f"{q}_gain")) for q in ("quant8", "quant4")}
    verdicts = {q: _probe_verdict("P2", "", per, "", "", "") for q, per in levels.items() if per}
    claim2 = ("Quantizing the unlearned model brings forgotten knowledge back (beyond what the same quantization "
              "changes on the model before unlearning), at 8 or at 4 bits.")
    if not verdicts:
        p2 = _finding("P2", "budget", claim2, None,
                      "No data: no quantization probe rows with their request-0 baselines.", {})
    else:
        holds = any(v["holds"] for v in verdicts.values())
        parts = []
        for q, per in levels.items():
            if per:
                above = sum(m > PROBE_THRESHOLD for m, _h, _n in per.values())
                parts.append(f"{q}: " + "; ".join(f"{k}: {_pm(m, h)}" for k, (m, h, _n) in per.items())
                             + f" (above {_f(PROBE_THRESHOLD)} for {above} of {len(per)})")
        p2 = _finding("P2", "budget", claim2, holds,
                      "Quantization gain on D_unlearn in points = (quantized - unquantized after the request) - "
                      "(quantized - unquantized before unlearning): " + "; ".join(parts)
                      + ". Holds if a majority of methods gain more than the threshold at either bit width.",
                      {q: {k: {"mean": m, "ci95": h, "seeds": n} for k, (m, h, n) in per.items()}
                       for q, per in levels.items()} | {"threshold": PROBE_THRESHOLD})
    relearn = _per_method(rows, lambda r: r.per_seed.get("relearn_excess"))
    p3 = _probe_verdict(
        "P3", "Relearning half of D_unlearn's people brings the other half back beyond what the same attack teaches "
        "a model that never learned them.", relearn,
        "Relearning recovery minus the never-learned control's, in % of the forgotten accuracy",
        "% of the forgotten accuracy", "no relearning probe rows with their never_learned control")
    for f, key in ((p3, "relearn_recovery"),):
        rec = _per_method(rows, lambda r, key=key: r.per_seed.get(key))
        ctl = _per_method(rows, lambda r: r.per_seed.get("relearn_control"))
        if rec:
            f["evidence"] = f["evidence"].replace(" Reproduces.", "").replace(" Does not reproduce.", "")
            f["evidence"] += " Recovery (control): " + "; ".join(
                f"{k}: {_pm(m, h)} ({_pm(*ctl[k][:2]) if k in ctl else 'no control'})"
                for k, (m, h, _n) in rec.items()) + "." + _verdict(f["holds"])
            f["numbers"]["recovery"] = {k: {"mean": m, "ci95": h} for k, (m, h, _n) in rec.items()}
            f["numbers"]["control"] = {k: {"mean": m, "ci95": h} for k, (m, h, _n) in ctl.items()}
    return [p1, p2, p3]
