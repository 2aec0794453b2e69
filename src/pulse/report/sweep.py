"""Equal search budget: a sweep's cells (one per configuration of a method's grid) are reported through their
winners.

A sweep runs every configuration of a declared grid as its own cell, method `<method>@<k>=<v>+...`, and the runner
records per scenario, seed, method and update target the winner (manifest `sweep`, keys "<scenario>/seed<S>" ->
"<method>/<target>" -> {"winner": name or null, "candidates": [...]}: among the configurations that reached the
matched-forgetting target on the selection half, the best generality). The report shows each method's winner as
the method `<method>@sweep` (displayed "GA (sweep winner)"), built per seed from that seed's winning cell; where no
configuration reached the target, only its matched rows are kept (status not_reached: "did not reach"). The
individual configurations are left out of every figure and table; `winners` lists them for the report page.
"""
from __future__ import annotations

import pandas as pd

SWEEP = "sweep"


def is_variant(method: str) -> bool:
    return "@" in str(method) and not str(method).endswith(f"@{SWEEP}")


def winners(manifest: dict) -> list[dict]:
    """[{scenario, seed, method, target, winner, reached, candidates}] from the manifest's `sweep` record."""
    record = manifest.get("sweep")
    if not isinstance(record, dict):
        return []
    out = []
    for key, per in record.items():
        scenario, _, seed = str(key).partition("/seed")
        if not isinstance(per, dict) or not seed.lstrip("-").isdigit():
            continue
        for mt, value in per.items():
            method, _, target = str(mt).partition("/")
            if not isinstance(value, dict):
                continue
            cands = value.get("candidates") or []
            out.append({"scenario": scenario, "seed": int(seed), "method": method, "target": target,
                        "winner": value.get("winner"), "candidates": [c.get("name") for c in cands],
                        "reached": sum(bool(c.get("reached")) for c in cands)})
    return out


def apply(df: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """`df` with the sweep's configurations replaced by each method's winner (method `<method>@sweep`)."""
    variant = df["method"].map(is_variant)
    if not variant.any():
        return df
    parts = [df[~variant]]
    for w in winners(manifest):
        name = w["winner"] or (w["candidates"][0] if w["candidates"] else None)
        if name is None:
            continue
        rows = df[(df["method"] == name) & (df["scenario"] == w["scenario"]) & (df["target"] == w["target"])
                  & (df["seed"] == w["seed"])]
        if not w["winner"]:
            rows = rows[rows["at"] == "matched"]
        parts.append(rows.assign(method=f"{w['method']}@{SWEEP}"))
    return pd.concat(parts, ignore_index=True)
