"""Statistics on saved sweep predictions: the hierarchical paired bootstrap of the radiology
scaling study (PAPERS.md §4, A.8), DeLong's test, and subgroup metrics (A.9).

Examples
--------
>>> from fmprobe.stats import compare
>>> c = compare(results="out/demo/results.parquet", a="enc_a/last/cls",
...             b="enc_b/last/cls", n=100)  # doctest: +SKIP
>>> c.table[["task", "difference", "lower", "upper"]]  # doctest: +SKIP
"""

from fmprobe.stats.bootstrap import (
    BootstrapResult,
    Comparison,
    DelongResult,
    compare,
    delong,
    metric_replicates,
    paired_bootstrap,
    pool_deltas,
    rng_for,
    stratified_indices,
)
from fmprobe.stats.predictions import Predictions, load_predictions
from fmprobe.stats.subgroups import SubgroupMetrics, subgroup_metrics

__all__ = [
    "BootstrapResult",
    "Comparison",
    "DelongResult",
    "Predictions",
    "SubgroupMetrics",
    "compare",
    "delong",
    "load_predictions",
    "metric_replicates",
    "paired_bootstrap",
    "pool_deltas",
    "rng_for",
    "stratified_indices",
    "subgroup_metrics",
]
