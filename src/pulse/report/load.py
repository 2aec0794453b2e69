"""Read one run directory (results.csv + manifest.json) into a `Run`. The report reads nothing else."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pulse.errors import PulseError, where

COLUMNS = ("scenario", "method", "target", "seed", "request", "split", "modality",
           "accuracy", "relative", "status", "n")
STATUSES = ("ok", "diverged")
SCENARIOS = ("finetuned", "pretrained", "sustainability")


@dataclass
class Run:
    """One run directory: its label (the directory name), tidy results and manifest; `mmbench` names the MMBench
    metric that split "mmbench" holds once `report.mmbench.select_metric` has picked it."""

    label: str
    path: Path
    df: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    mmbench: str = "circular"


def _bad(path: Path, df: pd.DataFrame, mask: pd.Series, column: str, what: str) -> PulseError:
    i = int(mask.to_numpy().nonzero()[0][0])
    value = df[column].iloc[i]
    # Row numbers are 1-based data rows, as a spreadsheet shows them under the header line.
    return PulseError(f"{where(path, row=i + 1, field=column)}: {what} (got {value!r})")


def read_results(path: Path) -> pd.DataFrame:
    """Read and validate a results.csv; errors name the file, row and field."""
    if not path.is_file():
        raise PulseError(f"{path}: not found (is {path.parent} a run directory?)")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PulseError(f"{path}: cannot read as CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise PulseError(f"{where(path, field=missing[0])}: missing column (needs {', '.join(COLUMNS)})")
    df = raw[list(COLUMNS)].copy()
    for c in ("scenario", "method", "target", "split", "modality", "status"):
        df[c] = df[c].str.strip()
        empty = df[c] == ""
        if empty.any():
            raise _bad(path, df, empty, c, "empty value")
    bad = ~df["status"].isin(STATUSES)
    if bad.any():
        raise _bad(path, df, bad, "status", f"must be one of {', '.join(STATUSES)}")
    for c in ("seed", "request"):
        num = pd.to_numeric(df[c].str.strip(), errors="coerce")
        bad = num.isna() | (num != num.round())
        if bad.any():
            raise _bad(path, df, bad, c, "not an integer")
        df[c] = num.astype(int)
    for c in ("accuracy", "relative", "n"):
        text = df[c].str.strip()
        num = pd.to_numeric(text.replace("", None), errors="coerce")
        bad = num.isna() & (text != "")
        if bad.any():
            raise _bad(path, df, bad, c, "not a number")
        df[c] = num.astype(float)
    # A diverged measurement may have no accuracy; an ok one must.
    bad = df["accuracy"].isna() & (df["status"] == "ok")
    if bad.any():
        raise _bad(path, df, bad, "accuracy", "empty for a row with status ok")
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
    return Run(label=label or run_dir.resolve().name, path=run_dir, df=df, manifest=manifest)


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Directory names; where two runs share a name, prefix the parent directory to tell them apart."""
    paths = [Path(p).resolve() for p in run_dirs]
    names = [p.name for p in paths]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} [{i + 1}]" for i, lab in enumerate(labels)]
    return labels
