"""Probes fitted on frozen embeddings, and the metrics that score them."""

from fmprobe.probes.estimator import LogisticProbe
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
