"""Which MMBench metric the report shows, and how every title and label names it.

results.csv holds two MMBench rows per evaluation: split "mmbench" = CircularEval (a question counts only if every
option rotation is answered right; VLMEvalKit's default for MMBench) and split "mmbench_vanilla" = accuracy on the
rotation-0 rows only (VLMEvalKit's PRINT_VANILLA), each relative to request 0's own value. The report picks one
(`--mmbench circular|vanilla`) and relabels it as split "mmbench", so figures, Table 3 and findings read one split;
runs written before vanilla rows existed report CircularEval only. A likelihood-scored, mini-world or subset score
is labelled as such, because it cannot be compared with published MMBench numbers.
"""
from __future__ import annotations

from dataclasses import replace

from pulse.errors import PulseError

from .load import Run

METRICS = {"circular": "CircularEval", "vanilla": "vanilla"}
SPLITS = {"circular": "mmbench", "vanilla": "mmbench_vanilla"}
PAPER_NOTE = (
    "The PULSE paper's Table 3 gives 75.1 on MMBench for LLaVA-1.5-13B before unlearning; the published "
    "CircularEval score of LLaVA-1.5-13B is 67.7 (LLaVA model zoo), so the paper's number is likely vanilla "
    "(non-circular) accuracy; compare with it using pulse report --mmbench vanilla. CircularEval is the "
    "stricter default."
)


def metric_name(metric: str) -> str:
    """'CircularEval' or 'vanilla'."""
    return METRICS[metric]


def qualifiers(run: Run) -> list[str]:
    """What makes this run's MMBench score non-standard, from its manifest: the mini world's mini-MMBench,
    likelihood scoring (explicit, or the mini model's default), a seeded subset of questions."""
    m = run.manifest
    cfg = m.get("config", {}) if isinstance(m.get("config"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    mini = "mini_world" in m or ("mllmu" in data and data.get("mllmu") is None)
    scoring = m.get("mmbench_scoring")
    out = []
    if mini:
        out.append("mini-MMBench of the embedded world")
    if scoring == "likelihood" or (scoring == "model default" and mini):
        out.append("likelihood-scored, non-standard")
    if m.get("mmbench_subset_groups"):
        out.append(f"subset of {m['mmbench_subset_groups']} questions")
    return out


def label(runs: list[Run], metric: str) -> str:
    """The name used in titles: 'MMBench (CircularEval)', plus the runs' qualifiers when every run shares them,
    e.g. 'MMBench (CircularEval; likelihood-scored, non-standard)'."""
    quals = [qualifiers(r) for r in runs]
    common = [q for q in quals[0] if all(q in other for other in quals)] if quals else []
    varies = any(set(q) != set(common) for q in quals)
    extra = common + (["qualifiers vary by run"] if varies else [])
    return f"MMBench ({'; '.join([metric_name(metric)] + extra)})"


def caveat(runs: list[Run]) -> str:
    """One sentence for captions when some run's MMBench is not comparable with published scores; else ''."""
    flagged = [(r.label, qualifiers(r)) for r in runs if qualifiers(r)]
    if not flagged:
        return ""
    parts = "; ".join(f"{name}: {', '.join(q)}" if len(runs) > 1 else ", ".join(q) for name, q in flagged)
    return f"MMBench here is not comparable with published MMBench scores ({parts})."


def has_vanilla(run: Run) -> bool:
    return bool((run.df["split"] == SPLITS["vanilla"]).any())


def select_metric(run: Run, metric: str) -> Run:
    """A copy of `run` whose split "mmbench" rows hold `metric`; the other MMBench rows are dropped.

    Raises PulseError when vanilla is asked of a run that recorded MMBench but no "mmbench_vanilla" rows."""
    if metric not in METRICS:
        raise PulseError(f"report: unknown MMBench metric {metric!r}; known: {', '.join(METRICS)}")
    df = run.df
    if metric == "vanilla":
        if (df["split"] == "mmbench").any() and not has_vanilla(run):
            raise PulseError(f"{run.path / 'results.csv'}: no vanilla MMBench rows (split mmbench_vanilla); this "
                             "run was made before PULSE recorded them, so it can report CircularEval only "
                             "(--mmbench circular)")
        df = df[df["split"] != "mmbench"].copy()
        df.loc[df["split"] == SPLITS["vanilla"], "split"] = "mmbench"
    else:
        df = df[df["split"] != SPLITS["vanilla"]].copy()
    return replace(run, df=df.reset_index(drop=True), mmbench=metric)
