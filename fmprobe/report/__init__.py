"""The report stage: matplotlib figures and one self-contained HTML page per sweep.

Examples
--------
>>> from fmprobe.report import report
>>> report(results="out/demo/results.parquet", out="out/demo/report")  # doctest: +SKIP
"""

from fmprobe.report.api import ReportResult, report

__all__ = ["ReportResult", "report"]
