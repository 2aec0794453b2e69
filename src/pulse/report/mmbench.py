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


def _manifest_bits(run: Run) -> tuple[bool, bool, object]:
    """(mini world?, likelihood-scored?, subset size or None) as the run's manifest records them: `mini_world`
    (or data.mllmu null) for the embedded world, `mmbench_scoring` ("model default" in older manifests means
    likelihood for the mini model), `mmbench_subset_groups` for a seeded subset."""
    m = run.manifest
    cfg = m.get("config", {}) if isinstance(m.get("config"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    mini = "mini_world" in m or ("mllmu" in data and data.get("mllmu") is None)
    scoring = m.get("mmbench_scoring")
    likelihood = scoring == "likelihood" or (scoring == "model default" and mini)
    return mini, likelihood, m.get("mmbench_subset_groups") or None


def qualifiers(run: Run) -> list[str]:
    """What makes this run's MMBench score non-standard, from its manifest: the mini world's mini-MMBench,
    likelihood scoring (explicit, or the mini model's default), a seeded subset of questions."""
    mini, likelihood, subset = _manifest_bits(run)
    out = []
    if mini:
        out.append("mini-MMBench of the embedded world")
    if likelihood:
        out.append("likelihood-scored, non-standard")
    if subset:
        out.append(f"subset of {subset} questions")
    return out


def measure(run: Run) -> tuple:
    """What this run's MMBench rows measured: runs with different measures are never drawn as comparable."""
    return _manifest_bits(run)


def comparable(runs: list[Run]) -> bool:
    return len({measure(r) for r in runs}) <= 1


def label(runs: list[Run], metric: str) -> str:
    """The name used in titles. The head is "mini-MMBench" for the embedded world's set, never plain "MMBench";
    the first parenthesised part names the metric, likelihood scoring and a subset (figures' axes show exactly
    that part), e.g. 'mini-MMBench (CircularEval, likelihood-scored, subset of 30 questions; not comparable with
    published MMBench)'. Runs that measured differently: 'measures vary by run' (each run's own label is
    `Run.measure`)."""
    bits = {measure(r) for r in runs}
    minis, liks, subsets = ({b[i] for b in bits} for i in range(3))
    head = ("mini-MMBench" if minis == {True} else "MMBench" if minis <= {False} else "MMBench / mini-MMBench")
    short = [metric_name(metric)]
    if liks == {True}:
        short.append("likelihood-scored")
    if len(subsets) == 1 and None not in subsets:
        short.append(f"subset of {next(iter(subsets))} questions")
    notes = []
    if any(any(b) for b in bits):
        notes.append("not comparable with published MMBench")
    if len(bits) > 1:
        notes.append("measures vary by run")
    return f"{head} ({', '.join(short)}" + (f"; {'; '.join(notes)}" if notes else "") + ")"


def short(mmbench_label: str) -> str:
    """'mini-MMBench (CircularEval, likelihood-scored; not comparable ...)' -> 'mini-MMBench (CircularEval,
    likelihood-scored)': the head and the first part, for axis and panel text."""
    head, _, rest = mmbench_label.partition(" (")
    return f"{head} ({rest.split(';')[0].rstrip(')')})" if rest else mmbench_label


def curve_label(run: Run, metric: str) -> str:
    """The checkpoint evaluations' MMBench subset (split mmbench_sub): 'mini-MMBench subset of 12 groups
    (CircularEval, likelihood-scored)'; the size is eval.curve_mmbench_groups from the manifest's config, else
    the rows' n (question groups)."""
    mini, likelihood, _ = _manifest_bits(run)
    cfg = run.manifest.get("config", {})
    groups = (cfg.get("eval") or {}).get("curve_mmbench_groups") if isinstance(cfg.get("eval"), dict) else None
    if not groups:
        n = run.full.loc[run.full["split"] == "mmbench_sub", "n"].dropna()
        groups = int(n.max()) if len(n) else None
    size = f" of {groups} groups" if groups else ""
    parts = [metric_name(metric)] + (["likelihood-scored"] if likelihood else [])
    return f"{'mini-MMBench' if mini else 'MMBench'} subset{size} ({', '.join(parts)})"


def caveat(runs: list[Run]) -> str:
    """One sentence for captions when some run's MMBench is not comparable with published scores; else ''."""
    flagged = [(r.label, qualifiers(r)) for r in runs if qualifiers(r)]
    if not flagged:
        return ""
    parts = "; ".join(f"{name}: {', '.join(q)}" if len(runs) > 1 else ", ".join(q) for name, q in flagged)
    return f"MMBench here is not comparable with published MMBench scores ({parts})."


def has_vanilla(run: Run) -> bool:
    return bool((run.full["split"] == SPLITS["vanilla"]).any())


def select_metric(run: Run, metric: str) -> Run:
    """A copy of `run` whose split "mmbench" (and checkpoint split "mmbench_sub") rows hold `metric`; the other
    MMBench rows are dropped. `Run.measure` gets the run's own label.

    Raises PulseError when vanilla is asked of a run that recorded MMBench but no "mmbench_vanilla" rows."""
    if metric not in METRICS:
        raise PulseError(f"report: unknown MMBench metric {metric!r}; known: {', '.join(METRICS)}")
    df = run.full
    if metric == "vanilla":
        if (df["split"] == "mmbench").any() and not has_vanilla(run):
            raise PulseError(f"{run.path / 'results.csv'}: no vanilla MMBench rows (split mmbench_vanilla); this "
                             "run was made before PULSE recorded them, so it can report CircularEval only "
                             "(--mmbench circular)")
        df = df[~df["split"].isin(["mmbench", "mmbench_sub"])].copy()
        df.loc[df["split"] == "mmbench_vanilla", "split"] = "mmbench"
        df.loc[df["split"] == "mmbench_sub_vanilla", "split"] = "mmbench_sub"
    else:
        df = df[~df["split"].isin(["mmbench_vanilla", "mmbench_sub_vanilla"])].copy()
    df = df.reset_index(drop=True)
    picked = replace(run, df=df, full=df, mmbench=metric)
    picked.measure = label([picked], metric)
    return picked
