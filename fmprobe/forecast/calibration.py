"""The forecast's learned parameters, kept as data in ``calibration.json`` beside this module.

The file is written by ``python benchmarks/bench_forecast.py --calibrate --write`` from the
LCDB development data sets only (cross-validated by data set) and read once per process. It
holds, for each meta-model (``probe+train``, ``probe``, ``pooled+train``, ``pooled``), the
weights θ of its bases, the spread coefficients ψ and the table of standardised-error
quantiles per extrapolation bin; and for a subset of the families (``--families``) their
stacking weights, drift and quantile table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
MODEL_NAMES = ("probe+train", "probe", "pooled+train", "pooled")


@dataclass(frozen=True)
class MetaModel:
    """One calibrated meta-model.

    Attributes
    ----------
    name : str
        One of ``MODEL_NAMES``.
    theta : ndarray, shape (J, D)
        Weight of basis j is ``softplus(x·theta[j])`` for the D curve features x.
    psi : ndarray, shape (D + 2,)
        Spread ``exp(ψ·[x, max(0, L)/10, log(|gain| + 0.01)])``.
    z_centres : ndarray, shape (B,)
        Centres (in L = log2(n / fit_max_n)) of the bins of ``z_table``.
    z_table : ndarray, shape (B, len(z_probs))
        Quantiles of (truth - point) / spread per bin.
    """

    name: str
    theta: np.ndarray
    psi: np.ndarray
    z_centres: np.ndarray
    z_table: np.ndarray


@dataclass(frozen=True)
class SubsetModel:
    """The average of a subset of the families (``--families``).

    Attributes
    ----------
    beta : mapping of str to float
        Stacking weight of each family (renormalised over the subset).
    kappa : float
        Drift per doubling of n beyond the fitted range.
    spread_floor : float
    z_centres, z_table : ndarray
        As in ``MetaModel``, for the standardised errors of the average.
    """

    beta: Mapping[str, float]
    kappa: float
    spread_floor: float
    z_centres: np.ndarray
    z_table: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """Every learned parameter of the forecast.

    Attributes
    ----------
    features : tuple of str
        Names of the curve features x, in column order.
    bases : tuple of str
        Names of the bases, in row order of each ``theta``.
    z_probs : ndarray
        Probabilities of the columns of every z table.
    models : mapping of str to MetaModel
    subset : SubsetModel
    max_log2_ratio : float
        The farthest extrapolation calibrated, ``log2(n / fit_max_n)`` of the farthest
        calibration target: beyond it the meta-model's forecast is held (its plateau).
    labels_quantile : float or None
        The quantile of the predictive distribution whose crossing of a target is the
        meta-model's labels needed (None: the point forecast's).
    source : str
        How the numbers were made.
    """

    features: tuple[str, ...]
    bases: tuple[str, ...]
    z_probs: np.ndarray
    models: Mapping[str, MetaModel]
    subset: SubsetModel
    max_log2_ratio: float
    labels_quantile: float | None
    source: str

    def to_json(self) -> str:
        """The calibration as the JSON text of ``calibration.json``."""

        def arr(a: np.ndarray, decimals: int) -> Any:
            return np.round(np.asarray(a, dtype=float), decimals).tolist()

        doc = {
            "source": self.source,
            "features": list(self.features),
            "bases": list(self.bases),
            "z_probs": arr(self.z_probs, 4),
            "max_log2_ratio": round(float(self.max_log2_ratio), 2),
            "labels_quantile": self.labels_quantile,
            "models": {
                name: {
                    "theta": arr(m.theta, 5),
                    "psi": arr(m.psi, 5),
                    "z_centres": arr(m.z_centres, 3),
                    "z_table": arr(m.z_table, 4),
                }
                for name, m in self.models.items()
            },
            "subset": {
                "beta": {k: round(float(v), 4) for k, v in self.subset.beta.items()},
                "kappa": round(self.subset.kappa, 6),
                "spread_floor": self.subset.spread_floor,
                "z_centres": arr(self.subset.z_centres, 3),
                "z_table": arr(self.subset.z_table, 4),
            },
        }
        return json.dumps(doc, indent=1) + "\n"

    def write(self, path: str | Path = CALIBRATION_FILE) -> None:
        """Write the JSON to ``path`` through a temporary file in the same folder."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.to_json())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def parse_calibration(doc: Mapping[str, Any]) -> Calibration:
    """A ``Calibration`` from the parsed JSON document."""
    features = tuple(doc["features"])
    bases = tuple(doc["bases"])
    models = {}
    for name, m in doc["models"].items():
        theta = np.asarray(m["theta"], dtype=float)
        if theta.shape != (len(bases), len(features)):
            raise ValueError(f"calibration model {name!r}: theta has shape {theta.shape}")
        models[name] = MetaModel(
            name=name,
            theta=theta,
            psi=np.asarray(m["psi"], dtype=float),
            z_centres=np.asarray(m["z_centres"], dtype=float),
            z_table=np.asarray(m["z_table"], dtype=float),
        )
    s = doc["subset"]
    subset = SubsetModel(
        beta={str(k): float(v) for k, v in s["beta"].items()},
        kappa=float(s["kappa"]),
        spread_floor=float(s["spread_floor"]),
        z_centres=np.asarray(s["z_centres"], dtype=float),
        z_table=np.asarray(s["z_table"], dtype=float),
    )
    return Calibration(
        features=features,
        bases=bases,
        z_probs=np.asarray(doc["z_probs"], dtype=float),
        models=models,
        subset=subset,
        max_log2_ratio=float(doc["max_log2_ratio"]),
        labels_quantile=None if doc["labels_quantile"] is None else float(doc["labels_quantile"]),
        source=str(doc.get("source", "")),
    )


@lru_cache(maxsize=1)
def load_calibration() -> Calibration:
    """The package's calibration (read once).

    Examples
    --------
    >>> cal = load_calibration()
    >>> sorted(cal.models) == sorted(MODEL_NAMES)
    True
    """
    return parse_calibration(json.loads(CALIBRATION_FILE.read_text()))
