"""Select measurements from the tidy table and aggregate them over seeds (through `mean_ci`).

Diverged measurements are excluded from every mean; `Cell.n_diverged` counts the seeds left out so that
tables and figures can say so. A matched-forgetting cell where some seed did not reach the target
(`Cell.n_not_reached` > 0) has no number at all: it is shown as "did not reach", never compared as if it had.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .stats import mean_ci

MAIN_TARGET = "proj+llm"


@dataclass(frozen=True)
class Cell:
    """A seed aggregate: mean, 95% CI half-width (None for < 2 seeds), seeds used, seeds diverged, seeds that did
    not reach the matched-forgetting target (then mean is NaN and n_seeds 0)."""

    mean: float = math.nan
    half: float | None = None
    n_seeds: int = 0
    n_diverged: int = 0
    n_not_reached: int = 0
    n_reached: int = 0

    @property
    def has_data(self) -> bool:
        return self.n_seeds > 0


def select(df: pd.DataFrame, **filters) -> pd.DataFrame:
    """Rows matching every given column == value filter (None values are ignored)."""
    mask = pd.Series(True, index=df.index)
    for column, value in filters.items():
        if value is not None:
            mask &= df[column] == value
    return df[mask]


def seed_values(rows: pd.DataFrame, value: str = "accuracy") -> tuple[pd.Series, int]:
    """One value per seed from `rows` (ok rows only, duplicates averaged) and the number of seeds whose
    rows are all diverged."""
    ok = rows[rows["status"] == "ok"]
    per_seed = ok.groupby("seed")[value].mean().dropna()
    diverged = set(rows.loc[rows["status"] == "diverged", "seed"]) - set(ok["seed"])
    return per_seed, len(diverged)


def summarize(df: pd.DataFrame, value: str = "accuracy", transform=None, **filters) -> Cell:
    """Aggregate `value` over seeds for the rows matching `filters`; `transform` maps each seed value
    (e.g. 100 - relative) before the mean. Any seed with status not_reached empties the cell (no mean)."""
    rows = select(df, **filters)
    not_reached = set(rows.loc[rows["status"] == "not_reached", "seed"])
    if not_reached:
        reached = set(rows.loc[rows["status"] == "ok", "seed"]) - not_reached
        return Cell(n_not_reached=len(not_reached), n_reached=len(reached))
    per_seed, n_div = seed_values(rows, value)
    if transform is not None:
        per_seed = per_seed.map(transform)
    mean, half = mean_ci(per_seed.tolist())
    return Cell(mean, half, len(per_seed), n_div)


def with_relative(rows: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """`rows` with `relative` filled where it is empty on an ok row: 100 * accuracy / the request-0 accuracy of
    the same scenario, method, target, seed, split and modality in `reference` (the ordinary rows)."""
    need = rows["relative"].isna() & (rows["status"] == "ok")
    if not need.any():
        return rows
    keys = ["scenario", "method", "target", "seed", "split", "modality"]
    acc0 = reference[reference["request"] == 0].groupby(keys)["accuracy"].mean()
    rows = rows.copy()
    for i in rows.index[need]:
        base = acc0.get(tuple(rows.loc[i, keys]))
        if base is not None and base > 0:
            rows.loc[i, "relative"] = 100.0 * rows.loc[i, "accuracy"] / base
    return rows


def main_target(df: pd.DataFrame) -> str | None:
    """The update target the headline figures use: proj+llm (the paper's default) if present, else the
    most frequent one."""
    targets = df["target"].value_counts()
    if targets.empty:
        return None
    return MAIN_TARGET if MAIN_TARGET in targets.index else str(targets.index[0])


def final_request(df: pd.DataFrame, **filters) -> int | None:
    rows = select(df, **filters)
    return None if rows.empty else int(rows["request"].max())


def methods(df: pd.DataFrame, **filters) -> list[str]:
    """Methods in order of first appearance (the run's own order)."""
    return list(dict.fromkeys(select(df, **filters)["method"]))


def seed_count(df: pd.DataFrame, **filters) -> int:
    return int(select(df, **filters)["seed"].nunique())


TARGET_PARTS = {"proj": "Proj", "llm": "LLM", "vision": "Vision", "vit": "ViT"}


def method_name(method: str) -> str:
    """Display name of a method as results.csv names it (its registered `Method.name`, built-in or plugin alike):
    capitals with '+' for '_', the paper's spelling for its methods (ga_klr -> GA+KLR, wga -> WGA); a sweep's
    winner or configuration keeps its suffix; a `module:ATTRIBUTE` reference (runs made before results held the
    registered name) shows its attribute."""
    if "@" in method:  # a sweep: "<method>@sweep" is the winner, "<method>@<config>" one configuration
        base, _, config = method.partition("@")
        return f"{method_name(base)} (sweep winner)" if config == "sweep" else f"{method_name(base)}@{config}"
    if ":" in method:
        return method.rsplit(":", 1)[1]
    return method.replace("_", "+").upper()


def target_name(target: str) -> str:
    """The update target as written in the config (e.g. proj+llm)."""
    return target


def paper_target_name(target: str) -> str:
    """The paper's spelling of an update target (Table 3: "Proj,LLM")."""
    return ",".join(TARGET_PARTS.get(p, p) for p in target.split("+"))
