"""Build the report: `build_report(run_dirs, out)` and the `python -m pulse.report` command line.

Reads run directories only; writes into `out`, each file atomically (pulse.fsutil: temp name, then rename; mode
0o644 minus the umask, so the group can read them):
  figure4.{png,svg}, figure5.{png,svg}, table3.{md,csv}   the paper's outputs at the configured budget
  figure4_matched.{png,svg}, table3_matched.{md,csv}       the same at matched forgetting (runs with rows at=matched)
  curves_<scenario>.{png,svg}                              effectiveness vs generality over checkpoints
  probes.{md,csv}                                          relearning, routes, quantization (runs with probe rows)
  ranking.{md,csv}, tradeoff.{png,svg}                      methods on several axes, forget vs retain (first run)
  findings.json, report.html                               F1-F4 at budget (and matched), P1-P3 from the probes
Optional outputs left from an earlier build in the same folder are removed when this build has no data for them.
`mmbench` picks the MMBench metric shown everywhere: "circular" (CircularEval, the default) or "vanilla"
(rotation 0); titles and labels name it with a short label (report.mmbench.label), defined once at the top of
report.html.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pulse.errors import PulseError
from pulse.fsutil import atomic_write_bytes

from .figures import render, report_figures
from . import ranking
from .findings import check_findings, probe_findings
from .html import render_html
from .load import SCENARIOS, load_run, run_labels
from .mmbench import METRICS, label, select_metric
from .probes import probe_rows
from .probes import to_csv as probes_csv
from .probes import to_markdown as probes_markdown
from .tables import table3, to_csv, to_markdown

OPTIONAL = ("tradeoff.png", "tradeoff.svg",
            "figure4_matched.png", "figure4_matched.svg", "table3_matched.md", "table3_matched.csv",
            "probes.md", "probes.csv", *(f"curves_{s}.{e}" for s in SCENARIOS for e in ("png", "svg")))


def _write(path: Path, data: bytes | str) -> None:
    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


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


def _has(run, at: str) -> bool:
    return bool((run.full["at"] == at).any())


def findings_of(runs, mmb: str) -> list[dict]:
    """F1-F4 at the budget for every run; at matched forgetting for runs with rows at=matched; P1-P3 for runs
    with probe rows."""
    out = []
    for run in runs:
        ats = ["budget"] + (["matched"] if _has(run, "matched") else [])
        out += [{"run": run.label, **f, "mmbench": mmb} for at in ats for f in check_findings(run.full, mmb, at)]
        rows = probe_rows([run])
        if rows:
            out += [{"run": run.label, **f, "mmbench": mmb} for f in probe_findings(rows)]
    return out


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

    files: dict[str, bytes | str] = {}
    pngs: dict[str, bytes] = {}
    has_matched = any(_has(r, "matched") for r in runs)
    for name, fig in report_figures(runs, mmb, has_matched, SCENARIOS).items():
        pngs[name], files[f"{name}.svg"] = render(fig)
    table = table3(runs, mmb)
    files["table3.md"], files["table3.csv"] = to_markdown(table), to_csv(table)
    matched = table3(runs, mmb, at="matched") if has_matched else None
    if matched is not None:
        files["table3_matched.md"], files["table3_matched.csv"] = to_markdown(matched), to_csv(matched)
    probes = probe_rows(runs)
    if probes:
        files["probes.md"], files["probes.csv"] = probes_markdown(probes, len(runs) > 1), probes_csv(probes)
    for run in runs[:1]:  # the ranking, learned-before shares and trade-off of the first run
        files["ranking.md"], files["ranking.csv"] = ranking.to_markdown(run), ranking.to_csv(run)
        fig = ranking.tradeoff(run)
        if fig is not None:
            pngs["tradeoff"], files["tradeoff.svg"] = render(fig)
    findings = findings_of(runs, mmb)
    files["findings.json"] = json.dumps(_jsonable(findings), indent=2, allow_nan=False) + "\n"
    files.update({f"{k}.png": v for k, v in pngs.items()})

    for name, data in files.items():
        _write(out / name, data)
    for name in OPTIONAL:
        if name not in files:
            (out / name).unlink(missing_ok=True)
    report = out / "report.html"
    _write(report, render_html(runs, table, findings, pngs, mmb, matched=matched, probes=probes,
                               ranking=ranking.to_html(runs[0], pngs.get("tradeoff"))))
    return report


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m pulse.report",
        description="Build the PULSE report (figures 4 and 5, table 3, at the budget and at matched "
                    "forgetting, trade-off curves, probes, findings, report.html) from run directories.")
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
