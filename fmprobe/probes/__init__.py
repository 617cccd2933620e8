"""Probes fitted on frozen embeddings, and the metrics that score them.

``LogisticProbe`` (the scikit-learn estimator) is imported on first use: the sweep does not
need scikit-learn, and importing it costs seconds.
"""

from typing import Any

from fmprobe.probes.logreg import LogRegFit, fit_logreg
from fmprobe.probes.metrics import classification_metrics
from fmprobe.probes.simple import knn_scores, ridge_fit_predict

__all__ = [
    "LogRegFit",
    "LogisticProbe",
    "classification_metrics",
    "fit_logreg",
    "knn_scores",
    "ridge_fit_predict",
]


def __getattr__(name: str) -> Any:
    if name == "LogisticProbe":
        from fmprobe.probes.estimator import LogisticProbe

        return LogisticProbe
    raise AttributeError(f"module 'fmprobe.probes' has no attribute {name!r}")
