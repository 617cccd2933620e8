"""The forecast stage: learning-curve families, bounded vectorised fits, a calibrated
predictive distribution across families, labels needed, and a benchmark of its own error.

Examples
--------
>>> from fmprobe.forecast import forecast
>>> r = forecast(curves="out/demo/results.parquet", max_labels=50, at="5000",
...              target=0.9)  # doctest: +SKIP
>>> r.table.head()  # doctest: +SKIP
"""

from fmprobe.forecast.api import BenchmarkResult, ForecastResult, forecast, forecast_benchmark
from fmprobe.forecast.families import FAMILIES, Family
from fmprobe.forecast.predict import Fits

__all__ = [
    "FAMILIES",
    "BenchmarkResult",
    "Family",
    "Fits",
    "ForecastResult",
    "forecast",
    "forecast_benchmark",
]
