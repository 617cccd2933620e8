"""The report stage: one self-contained HTML page per sweep (matplotlib figures inline as SVG).

Examples
--------
>>> from fmprobe.report import report
>>> report(results="out/demo/results.parquet", out="out/demo/report")  # doctest: +SKIP
"""

from fmprobe.report.api import ReportResult, report

__all__ = ["ReportResult", "report"]
