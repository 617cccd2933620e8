"""The predictive distribution: a calibrated average over curve families.

Point forecast at n: ``Σ_f β_f·y_f(n) + κ·max(0, log2(n / fit_max_n))``, where ``y_f`` is each
family's bounded fit, ``β`` are stacking weights and ``κ`` a drift correction (all saturating
fits are biased low far out: curves keep rising past where few points suggest a plateau).
Spread: the β-weighted standard deviation of the families' forecasts at n (model uncertainty)
plus a floor. Quantiles: ``point + z_p(L)·spread``, where ``z_p(L)`` are empirical quantiles of
standardised errors at extrapolation ratio ``L = log2(n / fit_max_n)`` — a conformal-style
calibration, so the interval width grows with the ratio as real errors do.

The constants below were learned on the LCDB 1.0 AUROC curves of the development data sets
only (OpenML ids in ../shared/lcdb_dev_openml_ids.txt; the other data sets are held out for
the benchmark) with ``python benchmarks/bench_forecast.py --calibrate``: curves fitted on
n <= 50, 64 and 128, every larger anchor a target. β: non-negative least squares of the truth
gains on the families' gains, normalised to sum 1; κ: least squares of the remaining error on
L; the z table: quantiles of (truth - point)/spread per bin of L.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fmprobe.forecast.families import FAMILIES
from fmprobe.forecast.fit import CurveData, fit_family

# --- calibration constants (benchmarks/bench_forecast.py --calibrate, LCDB dev ids) ---------
BETA: dict[str, float] = {
    "pow3": 0.0,
    "pow2": 0.509,
    "log2": 0.0,
    "ilog2": 0.0,
    "exp3": 0.028,
    "vap3": 0.273,
    "mmf4": 0.107,
    "wbl4": 0.0,
    "pow4": 0.083,
}
KAPPA = -0.0002
SPREAD_FLOOR = 0.005
Z_PROBS = np.array([0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 0.995])
Z_CENTRES = np.array([0.508, 1.508, 2.508, 3.508, 4.5, 5.508, 7.0, 9.0, 11.5])
Z_TABLE = np.array(
    [
        [-6.208, -3.275, -2.292, -1.498, -0.732, -0.162, 0.61, 1.716, 2.725, 3.926, 8.804],
        [-5.819, -3.171, -2.203, -1.511, -0.778, -0.198, 0.649, 2.061, 3.498, 5.327, 12.156],
        [-6.503, -2.943, -2.102, -1.478, -0.812, -0.204, 0.646, 2.145, 3.968, 6.724, 16.449],
        [-5.75, -2.935, -2.13, -1.514, -0.878, -0.23, 0.591, 2.061, 4.138, 7.574, 20.091],
        [-4.935, -2.896, -2.192, -1.582, -0.945, -0.273, 0.541, 1.965, 4.253, 8.921, 23.626],
        [-4.64, -2.828, -2.233, -1.579, -0.98, -0.299, 0.516, 2.13, 4.63, 9.734, 23.145],
        [-4.22, -2.74, -2.147, -1.585, -1.022, -0.37, 0.407, 2.283, 5.509, 11.892, 23.575],
        [-3.65, -2.821, -2.192, -1.614, -1.137, -0.466, 0.349, 2.287, 7.566, 14.235, 21.062],
        [-4.896, -3.103, -1.818, -1.51, -1.248, -0.451, 0.51, 3.9, 8.997, 18.651, 20.621],
    ]
)
# ---------------------------------------------------------------------------------------------
N_SEARCH_MAX = 1e7  # labels-needed is searched up to this many labels


def family_weights(families: tuple[str, ...]) -> np.ndarray:
    """Stacking weights of ``families`` (renormalised; equal when none has a learned weight)."""
    b = np.array([BETA.get(f, 0.0) for f in families])
    if b.sum() <= 0:
        b = np.ones(len(families))
    return b / b.sum()


@dataclass(frozen=True)
class Fits:
    """Every family fitted to C curves.

    Attributes
    ----------
    families : tuple of str
    params : dict of str to ndarray, each shape (C, 2 + k)
        ``(c, a, *θ)`` per curve.
    sse : dict of str to ndarray, each shape (C,)
    weights : ndarray, shape (F,)
        Weight of each family in the average.
    fit_max_n, fit_min_n : ndarray, shape (C,)
        Largest and smallest n used for fitting.
    """

    families: tuple[str, ...]
    params: dict[str, np.ndarray]
    sse: dict[str, np.ndarray]
    weights: np.ndarray
    fit_max_n: np.ndarray
    fit_min_n: np.ndarray

    def curve(self, i: int) -> Fits:
        """The fits of curve ``i`` alone (C = 1)."""
        return Fits(
            families=self.families,
            params={f: p[i : i + 1] for f, p in self.params.items()},
            sse={f: s[i : i + 1] for f, s in self.sse.items()},
            weights=self.weights,
            fit_max_n=self.fit_max_n[i : i + 1],
            fit_min_n=self.fit_min_n[i : i + 1],
        )

    def family_values(self, n: np.ndarray) -> np.ndarray:
        """Each family's curve at n (shape (C, M)), clipped to [0, 1]; shape (F, C, M)."""
        n = np.asarray(n, dtype=float)
        out = np.empty((len(self.families), *n.shape))
        with np.errstate(all="ignore"):
            for i, f in enumerate(self.families):
                v = FAMILIES[f].evaluate(n, self.params[f][:, None, :])
                out[i] = np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0)
        return out

    def center(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point forecast, spread and log2 extrapolation ratio at n, each of shape (C, M)."""
        n = np.asarray(n, dtype=float)
        vals = self.family_values(n)
        w = self.weights[:, None, None]
        mean = (w * vals).sum(axis=0)
        spread = np.sqrt((w * (vals - mean) ** 2).sum(axis=0)) + SPREAD_FLOOR
        ratio = np.log2(n / self.fit_max_n[:, None])
        point = np.clip(mean + KAPPA * np.maximum(ratio, 0.0), 0.0, 1.0)
        return point, spread, ratio

    def quantiles(self, n: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Quantiles of the predictive distribution at n; shape (len(probs), C, M)."""
        point, spread, ratio = self.center(n)
        z = _z_rows(ratio)  # (C, M, len(Z_PROBS))
        out = np.empty((len(probs), *point.shape))
        for i, p in enumerate(np.asarray(probs, dtype=float)):
            out[i] = np.clip(point + _interp_last(p, Z_PROBS, z) * spread, 0.0, 1.0)
        return out

    def cdf(self, n: np.ndarray, value: float | np.ndarray) -> np.ndarray:
        """P(score at n <= value); shape (C, M). Tails beyond the table are held at its ends."""
        point, spread, ratio = self.center(n)
        zv = (np.asarray(value) - point) / spread
        z = _z_rows(ratio)
        below = (z <= zv[..., None]).sum(axis=-1)
        i = np.clip(below - 1, 0, len(Z_PROBS) - 2)
        z0 = np.take_along_axis(z, i[..., None], -1)[..., 0]
        z1 = np.take_along_axis(z, i[..., None] + 1, -1)[..., 0]
        t = np.clip((zv - z0) / np.maximum(z1 - z0, 1e-12), 0.0, 1.0)
        p = Z_PROBS[i] + t * (Z_PROBS[i + 1] - Z_PROBS[i])
        p = np.where(below == 0, 0.0, p)
        return np.asarray(np.where(below == len(Z_PROBS), 1.0, p))


def _z_rows(ratio: np.ndarray) -> np.ndarray:
    """z quantiles at each ratio: linear between bin centres, the first bin inside the fit
    range, the last beyond the table."""
    r = np.clip(np.nan_to_num(ratio, nan=0.0), Z_CENTRES[0], Z_CENTRES[-1])
    j = np.clip(np.searchsorted(Z_CENTRES, r) - 1, 0, len(Z_CENTRES) - 2)
    t = (r - Z_CENTRES[j]) / (Z_CENTRES[j + 1] - Z_CENTRES[j])
    return np.asarray(Z_TABLE[j] * (1 - t[..., None]) + Z_TABLE[j + 1] * t[..., None])


def _interp_last(p: float, grid: np.ndarray, rows: np.ndarray) -> np.ndarray:
    p = float(np.clip(p, grid[0], grid[-1]))
    j = int(np.clip(np.searchsorted(grid, p) - 1, 0, len(grid) - 2))
    t = (p - grid[j]) / (grid[j + 1] - grid[j])
    return np.asarray(rows[..., j] * (1 - t) + rows[..., j + 1] * t)


def fit_curves(data: CurveData, families: tuple[str, ...]) -> Fits:
    """Fit every family in ``families`` to every curve of ``data``."""
    params: dict[str, np.ndarray] = {}
    sse: dict[str, np.ndarray] = {}
    for f in families:
        params[f], sse[f] = fit_family(FAMILIES[f], data)
    fit_max_n = data.n.max(axis=1) if data.n.size else np.zeros(0)
    return Fits(
        families=families,
        params=params,
        sse=sse,
        weights=family_weights(families),
        fit_max_n=fit_max_n,
        fit_min_n=data.n.min(axis=1) if data.n.size else np.zeros(0),
    )


def labels_needed(
    fits: Fits, target: float, *, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels needed to reach ``target``, per curve.

    Returns ``(n_needed, lower, upper, p_unreachable)``, each shape (C,): the first n (from the
    smallest fitted n on) where the
    point forecast reaches the target; where the upper quantile (optimistic) and the lower
    quantile (pessimistic) at ``level`` reach it; NaN where it is not reached by
    ``N_SEARCH_MAX`` labels. ``p_unreachable`` is the predictive probability that the score at
    ``N_SEARCH_MAX`` labels is still below the target (the plateau is below it).
    """
    start = np.maximum(fits.fit_min_n, 1.0)
    ng = np.exp(np.linspace(np.log(start), np.log(N_SEARCH_MAX), 512, axis=1))
    C = len(start)
    alpha = (1 - level) / 2
    curves = {
        "point": lambda n: fits.center(n)[0],
        "upper": lambda n: fits.quantiles(n, np.array([1 - alpha]))[0],
        "lower": lambda n: fits.quantiles(n, np.array([alpha]))[0],
    }
    found = {k: _first_crossing(fn, ng, target) for k, fn in curves.items()}
    p_unreach = fits.cdf(np.full((C, 1), N_SEARCH_MAX), target)[:, 0]
    return found["point"], found["upper"], found["lower"], p_unreach


def _first_crossing(
    fn: Callable[[np.ndarray], np.ndarray], ng: np.ndarray, target: float
) -> np.ndarray:
    """The first n where ``fn(n) >= target``: the grid bracket, then 60 bisections in log n."""
    vals = fn(ng)
    hit = vals >= target
    any_hit = hit.any(axis=1)
    j = np.argmax(hit, axis=1)
    rows = np.arange(len(ng))
    out = np.full(len(ng), np.nan)
    if not any_hit.any():
        return out
    at_start = any_hit & (j == 0)
    out[at_start] = ng[at_start, 0]
    todo = any_hit & (j > 0)
    lo = np.log(ng[rows, np.maximum(j - 1, 0)])
    hi = np.log(ng[rows, j])
    for _ in range(60):
        mid = (lo + hi) / 2
        ok = fn(np.exp(mid)[:, None])[:, 0] >= target
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    out[todo] = np.exp(hi[todo])
    return out
