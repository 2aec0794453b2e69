"""Read one run directory (results.csv + manifest.json) into a `Run`. The report reads nothing else.

results.csv is validated up front: every problem is one PulseError naming the file, the 1-based data row and the
field. The columns `probe`, `step` and `at` (probes, checkpoints, matched forgetting) were added after the
first release; a results.csv written before them loads as probe `none`, step empty, at `budget` (what its rows
measured).

The column `metric` came later still; an older file's rows are all `accuracy`. `Run.df` and `Run.full` hold the
accuracy rows (what every figure and table before other metrics read); `Run.metrics` every row of every metric.

`Run.df` holds the ordinary rows only (probe `none`, at `budget`: request-level measurements at the configured
budget), so the fixed-budget figures, Table 3 and findings read exactly what they read before the new rows existed;
`Run.full` holds every row (checkpoints, matched forgetting, probes). A sweep's configurations
(`<method>@<config>`) are replaced by each method's winner, `<method>@sweep` (report/sweep.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pulse.errors import PulseError, where

from .sweep import apply as apply_sweep

BASE_COLUMNS = ("scenario", "method", "target", "seed", "request", "split", "modality",
                "accuracy", "relative", "status", "n")
NEW_COLUMNS = {"probe": "none", "step": "", "at": "budget", "metric": "accuracy"}  # added later; older files' values
COLUMNS = BASE_COLUMNS + tuple(NEW_COLUMNS)
KEY = ("scenario", "method", "target", "seed", "request", "split", "modality", "metric", "probe", "step", "at")

STATUSES = ("ok", "diverged", "not_reached")
SCENARIOS = ("finetuned", "pretrained", "sustainability")
SPLITS = ("unlearn", "retain", "mmbench", "mmbench_vanilla", "fold_current", "folds_done", "folds_pending",
          "unlearn_sel", "retain_sel", "unlearn_held", "retain_held", "mmbench_sub", "mmbench_sub_vanilla",
          "relearn_measured", "relearn_trained", "relearn_measured_attacked", "relearn_trained_attacked",
          "unlearn_known", "unlearn_known_sel", "unlearn_known_held", "unlearn_vs_retain")
PERCENT_METRICS = ("accuracy", "cloze")  # metrics whose value lies in 0..100
METRICS = PERCENT_METRICS + ("rouge1", "rouge2", "rougeL", "bleu", "oracle_gap", "oracle_gap_cloze",
                             "oracle_gap_rougeL", "forget_quality", "privleak",
                             "mia_auc_loss", "mia_auc_zlib", "mia_auc_mink", "mia_auc_minkpp")
ORACLE = "oracle"  # method name of the retrained oracle's rows
MODALITIES = ("image", "text", "all")
ROUTES = ("route_image", "route_text", "route_test_set", "route_name_only", "route_all")
PROBES = ("none", "relearn", *ROUTES, "quant8", "quant4")  # and any quant<bits> (probes.quant_bits)
ATS = ("budget", "checkpoint", "matched")
NEVER_LEARNED = "never_learned"  # method name of the relearning probe's control rows


@dataclass
class Run:
    """One run directory: its label (the directory name), ordinary rows `df`, all rows `full`, and manifest;
    `mmbench` names the MMBench metric that split "mmbench" holds once `report.mmbench.select_metric` has picked
    it, `measure` the run's own MMBench label (report.mmbench.label of this run alone)."""

    label: str
    path: Path
    df: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    mmbench: str = "circular"
    full: pd.DataFrame | None = None
    measure: str = ""
    metrics: pd.DataFrame | None = None

    def __post_init__(self):
        if self.metrics is None:
            self.metrics = normalize(self.full if self.full is not None else self.df)
        self.full = accuracy_rows(self.full if self.full is not None else self.df)
        self.df = ordinary(self.full)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Add the columns probe, step, at with their defaults where a frame lacks them (older files, hand-made
    frames)."""
    missing = [c for c in NEW_COLUMNS if c not in df.columns]
    if not missing:
        return df
    df = df.copy()
    for c in missing:
        df[c] = float("nan") if c == "step" else NEW_COLUMNS[c]
    return df


def accuracy_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The methods' rows whose metric is accuracy (every row of a file written before the metric column); the
    oracle's own rows (method `oracle`) are in `Run.metrics` only."""
    df = normalize(df)
    return df[(df["metric"] == "accuracy") & (df["method"] != ORACLE)].reset_index(drop=True)


def ordinary(df: pd.DataFrame) -> pd.DataFrame:
    """Request-level rows at the configured budget without a probe: what the fixed-budget outputs read."""
    df = normalize(df)
    return df[(df["probe"] == "none") & (df["at"] == "budget")].reset_index(drop=True)


def view(df: pd.DataFrame, at: str = "budget", probe: str = "none") -> pd.DataFrame:
    df = normalize(df)
    return df[(df["probe"] == probe) & (df["at"] == at)].reset_index(drop=True)


def _bad(path: Path, text: pd.DataFrame, mask: pd.Series, column: str, what: str) -> PulseError:
    """The first row where `mask` holds, with the cell as written in the file (`text`: the raw string frame)."""
    i = int(mask.to_numpy().nonzero()[0][0])
    value = text[column].iloc[i]
    # Row numbers are 1-based data rows, as a spreadsheet shows them under the header line.
    return PulseError(f"{where(path, row=i + 1, field=column)}: {what} (got {value!r})")


def _check_known(path: Path, df: pd.DataFrame, column: str, known: tuple[str, ...], pattern: str = "") -> None:
    bad = ~df[column].isin(known)
    if pattern:
        bad &= ~df[column].str.fullmatch(pattern)
    if bad.any():
        raise _bad(path, df, bad, column, f"unknown value; must be one of {', '.join(known)}")


def _numbers(path: Path, df: pd.DataFrame, column: str) -> pd.Series:
    cells = df[column].str.strip()
    num = pd.to_numeric(cells.replace("", None), errors="coerce")
    bad = num.isna() & (cells != "")
    if bad.any():
        raise _bad(path, df, bad, column, "not a number")
    return num.astype(float)


def _require(path: Path, text: pd.DataFrame, bad: pd.Series, column: str, what: str) -> None:
    if bad.any():
        raise _bad(path, text, bad, column, what)


def _read_csv(path: Path) -> pd.DataFrame:
    """The file's cells as strings, with every column (those added after the first release at their defaults)."""
    if not path.is_file():
        raise PulseError(f"{path}: not found (is {path.parent} a run directory?)")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PulseError(f"{path}: cannot read as CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in BASE_COLUMNS if c not in raw.columns]
    if missing:
        raise PulseError(f"{where(path, field=missing[0])}: missing column (needs {', '.join(BASE_COLUMNS)})")
    for c, default in NEW_COLUMNS.items():
        if c not in raw.columns:
            raw[c] = default
    return raw[list(COLUMNS)].copy()


def _parse_names(path: Path, df: pd.DataFrame, text: pd.DataFrame) -> None:
    """Name columns: stripped, never empty, known values."""
    for c in ("scenario", "method", "target", "split", "modality", "status", "probe", "at", "metric"):
        df[c] = df[c].str.strip()
        _require(path, text, df[c] == "", c, "empty value")
    _check_known(path, df, "status", STATUSES)
    _check_known(path, df, "scenario", SCENARIOS)
    _check_known(path, df, "split", SPLITS)
    _check_known(path, df, "modality", MODALITIES)
    _check_known(path, df, "probe", PROBES, pattern=r"quant\d+")
    _check_known(path, df, "at", ATS)
    _check_known(path, df, "metric", METRICS)


def _parse_counts(path: Path, df: pd.DataFrame, text: pd.DataFrame) -> None:
    """seed and request: integers (request >= 0); step: a non-negative integer, required at checkpoint / matched."""
    for c in ("seed", "request"):
        num = pd.to_numeric(df[c].str.strip(), errors="coerce")
        _require(path, text, num.isna() | (num != num.round()), c, "not an integer")
        df[c] = num.astype(int)
    _require(path, text, df["request"] < 0, "request", "negative")
    step = _numbers(path, df, "step")
    _require(path, text, step.notna() & ((step != step.round()) | (step < 0)), "step", "not a non-negative integer")
    bad = step.isna() & df["at"].isin(["checkpoint", "matched"])
    if bad.any():
        raise _bad(path, text, bad, "step", f"empty for a row at {df['at'][bad].iloc[0]} (needs the step)")
    df["step"] = step


def _parse_measures(path: Path, df: pd.DataFrame, text: pd.DataFrame) -> None:
    """accuracy in 0..100, relative and n >= 0; an ok row measured something unless n = 0; not_reached only at
    matched forgetting."""
    for c in ("accuracy", "relative", "n"):
        df[c] = _numbers(path, df, c)
    percent = df["metric"].isin(PERCENT_METRICS)
    _require(path, text, percent & ((df["accuracy"] < 0) | (df["accuracy"] > 100)), "accuracy", "outside 0..100")
    _require(path, text, df["relative"] < 0, "relative", "negative")
    _require(path, text, df["n"] < 0, "n", "negative")
    # A diverged or not-reached measurement may have no accuracy; an ok one must, unless it measured nothing
    # (n = 0, e.g. a probe's text modality over people with image questions only).
    _require(path, text, df["accuracy"].isna() & (df["status"] == "ok") & (df["n"] != 0), "accuracy",
             "empty for a row with status ok and n > 0")
    _require(path, text, (df["status"] == "not_reached") & (df["at"] != "matched"), "status",
             "not_reached outside a matched-forgetting row (at matched)")


def _check_duplicates(path: Path, df: pd.DataFrame) -> None:
    keyed = df[list(KEY)].fillna({"step": -1.0})
    dup = keyed.duplicated(keep="first")
    if dup.any():
        j = int(dup.to_numpy().nonzero()[0][0])
        first = int((keyed == keyed.iloc[j]).all(axis=1).to_numpy().nonzero()[0][0])
        raise PulseError(f"{where(path, row=j + 1, field=','.join(KEY))}: duplicate of row {first + 1} "
                         "(the same measurement twice)")


def read_results(path: Path) -> pd.DataFrame:
    """Read and validate a results.csv; errors name the file, row and field."""
    df = _read_csv(path)
    text = df.copy()  # the cells as written, for error messages
    _parse_names(path, df, text)
    _parse_counts(path, df, text)
    _parse_measures(path, df, text)
    _check_duplicates(path, df)
    return df


def read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise PulseError(f"{path}: not found (is {path.parent} a run directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PulseError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise PulseError(f"{path}: must hold a JSON object")
    if not isinstance(manifest.get("config"), dict):
        raise PulseError(f"{where(path, field='config')}: missing or not an object")
    return manifest


def load_run(run_dir: Path, label: str | None = None) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PulseError(f"{run_dir}: not a directory")
    df = read_results(run_dir / "results.csv")
    manifest = read_manifest(run_dir / "manifest.json")
    return Run(label=label or run_dir.resolve().name, path=run_dir, df=apply_sweep(df, manifest), manifest=manifest)


def uses_mini_world(manifest: dict) -> bool:
    """Whether the run used the built-in mini world: its manifest records `mini_world` (older manifests: the
    config's data.mllmu is null)."""
    cfg = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    return "mini_world" in manifest or ("mllmu" in data and data.get("mllmu") is None)


def stop_rule(manifest: dict) -> str:
    """The matched-forgetting target as written in the run's config: 'unlearn.stop: {rule: never_learned,
    margin: 0, max_steps: 0}'; '' when the config has none."""
    unlearn = manifest.get("config", {}).get("unlearn")
    stop = unlearn.get("stop") if isinstance(unlearn, dict) else None
    if not stop:
        return ""
    if isinstance(stop, dict):
        stop = "{" + ", ".join(f"{k}: {v}" for k, v in stop.items()) + "}"
    return f"unlearn.stop: {stop}"


def matched_targets(manifest: dict, scenario: str) -> list[dict]:
    """The never-learned reference, margin and target the run recorded per seed (manifest `matched_targets`,
    keys "<scenario>/seed<S>"), in seed order."""
    recorded = manifest.get("matched_targets")
    if not isinstance(recorded, dict):
        return []
    out = []
    for key, value in recorded.items():
        name, _, seed = str(key).partition("/seed")
        if name == scenario and isinstance(value, dict) and isinstance(value.get("target"), (int, float)):
            out.append({"seed": seed, **value})
    return sorted(out, key=lambda v: (len(v["seed"]), v["seed"]))


def target_phrase(manifest: dict, scenario: str) -> str:
    """'target = never-learned reference + margin: seed 0 55.0 + 0.0 = 55.0; seed 1 ...' ('' if not recorded)."""
    found = matched_targets(manifest, scenario)
    if not found:
        return ""
    parts = "; ".join(f"seed {t['seed']} {t.get('reference', float('nan')):.1f} + {t.get('margin', 0):g} = "
                      f"{t['target']:.1f}" for t in found)
    return f"{scenario} target = never-learned reference + margin: {parts}"


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Directory names; where two runs share a name, prefix the parent directory to tell them apart."""
    paths = [Path(p).resolve() for p in run_dirs]
    names = [p.name for p in paths]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} [{i + 1}]" for i, lab in enumerate(labels)]
    return labels
