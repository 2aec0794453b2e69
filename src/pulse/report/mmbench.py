"""Which MMBench metric the report shows, its short label and its one full definition.

results.csv holds two MMBench rows per evaluation: split "mmbench" = CircularEval (a question counts only if every
option rotation is answered right; VLMEvalKit's default for MMBench) and split "mmbench_vanilla" = accuracy on the
rotation-0 rows only (VLMEvalKit's PRINT_VANILLA), each relative to request 0's own value. The report picks one
(`--mmbench circular|vanilla`) and relabels it as split "mmbench", so figures, Table 3 and findings read one split;
runs written before vanilla rows existed report CircularEval only.

Every title, heading, axis label and caption names the metric with a short label (`label`): "mini-MMBench (CE)"
for the mini world's set, "MMBench (CE)" for MMBench itself (plus "likelihood" and "subset of N" where a real run
was scored so). What the label means, and why a likelihood-scored, mini-world or subset score cannot be compared
with published MMBench numbers, is said once (`definition`): in the definitions box of report.html and in the
standalone Table 3 caption.
"""
from __future__ import annotations

from dataclasses import replace

from pulse.errors import PulseError

from .load import Run, uses_mini_world

METRICS = {"circular": "CircularEval", "vanilla": "vanilla"}
TAGS = {"circular": "CE", "vanilla": "vanilla"}  # the metric inside a short label
SPLITS = {"circular": "mmbench", "vanilla": "mmbench_vanilla"}
MEANING = {
    "circular": "CircularEval accuracy: a question counts only if every rotation of its options is answered "
                "correctly (VLMEvalKit's default for MMBench)",
    "vanilla": "vanilla accuracy: the rotation-0 rows only, each question asked once with its options in the "
               "original order (VLMEvalKit's PRINT_VANILLA)",
}
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
    (or data.mllmu null) for the built-in world, `mmbench_scoring` ("model default" in older manifests means
    likelihood for the mini model), `mmbench_subset_groups` for a seeded subset."""
    m = run.manifest
    mini = uses_mini_world(m)
    scoring = m.get("mmbench_scoring")
    likelihood = scoring == "likelihood" or (scoring == "model default" and mini)
    return mini, likelihood, m.get("mmbench_subset_groups") or None


def qualifiers(run: Run) -> list[str]:
    """What makes this run's MMBench score non-standard, from its manifest: the mini world's mini-MMBench,
    likelihood scoring (explicit, or the mini model's default), a seeded subset of questions."""
    mini, likelihood, subset = _manifest_bits(run)
    out = []
    if mini:
        out.append("mini-MMBench of the built-in mini world")
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


def _head(minis: set) -> str:
    return "mini-MMBench" if minis == {True} else "MMBench" if minis <= {False} else "MMBench / mini-MMBench"


def own_label(run: Run, metric: str) -> str:
    """This run's label with everything that tells its measure apart from another run's: 'mini-MMBench (CE,
    likelihood, subset of 80)'; shown where runs that measured differently sit side by side."""
    mini, likelihood, subset = measure(run)
    parts = [TAGS[metric]] + (["likelihood"] if likelihood else []) + ([f"subset of {subset}"] if subset else [])
    return f"{_head({mini})} ({', '.join(parts)})"


def label(runs: list[Run], metric: str) -> str:
    """The short name used in every title, heading, axis label and caption: 'mini-MMBench (CE)' for the mini
    world's set (never plain "MMBench"), 'MMBench (CE)' for MMBench, 'MMBench (CE, likelihood, subset of 500)'
    for a real run scored on a subset by likelihood; 'MMBench / mini-MMBench (CE; measures vary by run)' for runs
    that measured differently (each run's own label is `Run.measure`). `definition` says what it means."""
    bits = {measure(r) for r in runs}
    minis = {b[0] for b in bits}
    if len(bits) > 1:
        return f"{_head(minis)} ({TAGS[metric]}; measures vary by run)"
    if minis == {True}:
        return f"mini-MMBench ({TAGS[metric]})"
    return own_label(runs[0], metric) if runs else f"MMBench ({TAGS[metric]})"


def definition(run: Run, metric: str) -> str:
    """The full meaning of the run's label, in one or two sentences."""
    mini, likelihood, subset = measure(run)
    where = ("mini-MMBench, the MMBench-style question set of the built-in mini world" if mini
             else "the MMBench questions given in the run's data.mmbench")
    how = ["likelihood-scored (the option the model finds most likely is its answer, instead of a generated "
           "reply)"] if likelihood else []
    how += [f"on a seeded subset of {subset} questions"] if subset else []
    tail = ("Not comparable with published MMBench scores." if mini or likelihood or subset
            else "Comparable with published MMBench scores of the same metric.")
    return f"{MEANING[metric]}, on {where}" + (f", {', '.join(how)}" if how else "") + f". {tail}"


def definitions(runs: list[Run], metric: str) -> list[tuple[str, str]]:
    """(label, definition) once per distinct measure: the report's one label when the runs measured alike,
    else each run's own label (naming the run)."""
    if comparable(runs):
        return [(label(runs, metric), definition(runs[0], metric))] if runs else []
    return [(f"{run.measure} \u2013 run {run.label}", definition(run, metric)) for run in runs]


def curve_label(run: Run, metric: str) -> str:
    """The checkpoint evaluations' MMBench subset (split mmbench_sub): 'mini-MMBench (CE), checkpoint subset of
    16 questions'; the size is eval.curve_mmbench_groups from the manifest's config, else the rows' n (question
    groups)."""
    cfg = run.manifest.get("config", {})
    groups = (cfg.get("eval") or {}).get("curve_mmbench_groups") if isinstance(cfg.get("eval"), dict) else None
    if not groups:
        n = run.full.loc[run.full["split"] == "mmbench_sub", "n"].dropna()
        groups = int(n.max()) if len(n) else None
    size = f" of {groups} questions" if groups else ""
    mini, likelihood, _ = measure(run)
    tags = [TAGS[metric]] + (["likelihood"] if likelihood and not mini else [])
    return f"{_head({mini})} ({', '.join(tags)}), checkpoint subset{size}"


def caveat(runs: list[Run]) -> str:
    """One sentence when some run's MMBench is not comparable with published scores; else ''."""
    flagged = [(r.label, qualifiers(r)) for r in runs if qualifiers(r)]
    if not flagged:
        return ""
    parts = "; ".join(f"{name}: {', '.join(q)}" if len(runs) > 1 else ", ".join(q) for name, q in flagged)
    return f"MMBench here is not comparable with published MMBench scores ({parts})."


def has_vanilla(run: Run) -> bool:
    return bool((run.full["split"] == SPLITS["vanilla"]).any())


def select_metric(run: Run, metric: str) -> Run:
    """A copy of `run` whose split "mmbench" (and checkpoint split "mmbench_sub") rows hold `metric`; the other
    MMBench rows are dropped. `Run.measure` gets the run's own label (`own_label`).

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
    picked.measure = own_label(picked, metric)
    return picked
