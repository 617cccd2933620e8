"""The forecast stage: learning-curve families, bounded vectorised fits, a calibrated
predictive distribution across families that reads the probe and the training curve, labels
needed, and a benchmark of its own error.

Examples
--------
>>> from fmprobe.forecast import forecast
>>> r = forecast(curves="out/demo/results.parquet", max_labels=50, at="5000",
...              target=0.9)  # doctest: +SKIP
>>> r.table.head()  # doctest: +SKIP
"""

from fmprobe.forecast.api import ForecastResult, forecast
from fmprobe.forecast.benchmark import BenchmarkResult, forecast_benchmark
from fmprobe.forecast.families import FAMILIES, Family
from fmprobe.forecast.predict import Fits
from fmprobe.forecast.probes import PROBE_FAMILIES, ProbeFamily, probe_family

__all__ = [
    "FAMILIES",
    "PROBE_FAMILIES",
    "BenchmarkResult",
    "Family",
    "Fits",
    "ForecastResult",
    "ProbeFamily",
    "forecast",
    "forecast_benchmark",
    "probe_family",
]
