"""Build the report: `build_report(run_dirs, out)` and the `python -m pulse.report` command line.

Reads run directories only; writes figure4.{png,svg}, figure5.{png,svg}, table3.{md,csv}, findings.json
and the self-contained report.html into `out`, each file atomically (temp name, then rename). `mmbench` picks
the MMBench metric shown everywhere: "circular" (CircularEval, the default) or "vanilla" (rotation 0).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from pulse.errors import PulseError

from .figures import figure4, figure5, render
from .findings import check_findings
from .html import render_html
from .load import load_run, run_labels
from .mmbench import METRICS, label, select_metric
from .tables import table3, to_csv, to_markdown


def _write(path: Path, data: bytes | str) -> None:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item"):  # numpy scalar
        return _jsonable(x.item())
    return x


def build_report(run_dirs: list[Path], out: Path, mmbench: str = "circular") -> Path:
    """Write the report for one or more run directories into `out`; returns the report.html path."""
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise PulseError("report: no run directory given")
    runs = [select_metric(load_run(d, name), mmbench) for d, name in zip(run_dirs, run_labels(run_dirs))]
    mmb = label(runs, mmbench)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PulseError(f"{out}: exists and is not a directory (--out)")
    out.mkdir(parents=True, exist_ok=True)

    png4, svg4 = render(figure4(runs, mmb))
    png5, svg5 = render(figure5(runs, mmb))
    table = table3(runs, mmb)
    findings = [{"run": run.label, **f, "mmbench": mmb} for run in runs for f in check_findings(run.df, mmb)]

    _write(out / "figure4.png", png4)
    _write(out / "figure4.svg", svg4)
    _write(out / "figure5.png", png5)
    _write(out / "figure5.svg", svg5)
    _write(out / "table3.md", to_markdown(table))
    _write(out / "table3.csv", to_csv(table))
    _write(out / "findings.json", json.dumps(_jsonable(findings), indent=2, allow_nan=False) + "\n")
    report = out / "report.html"
    _write(report, render_html(runs, table, findings, png4, png5, mmb))
    return report


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m pulse.report",
        description="Build the PULSE report (figures 4 and 5, table 3, findings, report.html) from run "
                    "directories.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directory holding results.csv and manifest.json")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default RUN_DIR/report; required for several runs)")
    parser.add_argument("--mmbench", choices=tuple(METRICS), default="circular",
                        help="MMBench metric in every figure, table and finding: circular (CircularEval, "
                             "default) or vanilla (rotation-0 accuracy, likely what the PULSE paper reports)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run_from_args(args: argparse.Namespace) -> Path:
    out = args.out
    if out is None:
        if len(args.run_dirs) > 1:
            raise PulseError("report: several run directories need --out DIR")
        out = args.run_dirs[0] / "report"
    return build_report(args.run_dirs, out, mmbench=getattr(args, "mmbench", "circular"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run_from_args(args)
    except PulseError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report)
    return 0
