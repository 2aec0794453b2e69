"""Report: tables, figures, findings and a self-contained HTML page, read from run directories only."""
from .build import build_report, main
from .findings import check_findings, probe_findings
from .load import Run, load_run
from .probes import probe_rows
from .stats import mean_ci
from .tables import table3

__all__ = ["Run", "build_report", "check_findings", "load_run", "main", "mean_ci", "probe_findings", "probe_rows",
           "table3"]
