"""The predictive distribution: a learned combination of the curve families.

With all nine families (the default) the forecast at n is a meta-model, "learning-curve
extrapolation as regression": from the last observed mean ``y_K`` (at ``fit_max_n``) it adds
the families' gains with weights that depend on the curve,

    point(n) = y_K + Σ_f w_f(x)·(y_f(n) - y_K) + w_drift(x)·max(0, L)/10,

where ``y_f`` is family f's bounded fit (held non-decreasing, see ``Family.evaluate_rising``),
``L = log2(n / fit_max_n)`` the extrapolation ratio, and each weight ``w_j(x) =
softplus(θ_j·x)`` is non-negative, so the forecast is non-decreasing in n (labels-needed inverts
it). ``x`` are seven features of the observed curve (``META_FEATURES``): a constant, ``y_K``,
the log2-slope over the last two points and over the whole fit range, the families'
disagreement at 16·fit_max_n, log2(fit_max_n) and the seed-level standard deviation at
``fit_max_n`` (from the fit residuals when there is one seed per n). Spread: a learned scale
``exp(ψ·[x, max(0, L)/10, log(|point - y_K| + 0.01)])`` (errors grow with the distance
extrapolated and with the forecast's own gain, and shrink for smooth, low-noise curves).
Quantiles: ``point + z_p(L)·spread``, with ``z_p(L)`` empirical quantiles of out-of-fold
standardised errors per bin of L (a conformal-style calibration). Labels needed are where the
point forecast and the quantiles reach a target: intervals and labels share one distribution.

With a subset of the families (``--families``) the forecast is their ``BETA``-weighted average
plus a drift ``κ·max(0, L)``; spread: their weighted standard deviation plus a floor; quantiles
from the ``Z_TABLE`` of that average (one family: its own fit).

The constants below were learned on the LCDB 1.0 AUROC curves of the development data sets
only (OpenML ids in ../shared/lcdb_dev_openml_ids.txt; the other data sets are held out for
the benchmark) with ``python benchmarks/bench_forecast.py --calibrate``: curves fitted on
n <= 45, 50, 64, 90 and 128, every larger anchor a target. θ: minimum mean absolute error
(smoothed) with a penalty that keeps the mean error at each curve's largest anchor near 0 and
a small ridge; ψ: the Laplace likelihood of the out-of-fold errors of a 5-fold
cross-validation grouped by data set, and the ``META_Z`` table: quantiles of those errors over
the spread. For a subset of the families, β: non-negative least squares of the truth gains on
the families' gains, normalised to sum 1; κ: least squares of the remaining error on L; the
z table: quantiles of (truth - point)/spread per bin of L.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fmprobe.forecast.families import DEFAULT_FAMILIES, FAMILIES
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
        [-6.208, -3.246, -2.277, -1.494, -0.732, -0.161, 0.61, 1.715, 2.727, 3.927, 8.804],
        [-5.781, -3.168, -2.201, -1.511, -0.778, -0.197, 0.649, 2.061, 3.496, 5.323, 12.155],
        [-6.502, -2.936, -2.101, -1.478, -0.812, -0.204, 0.646, 2.146, 3.969, 6.723, 16.45],
        [-5.741, -2.932, -2.128, -1.514, -0.878, -0.23, 0.591, 2.06, 4.138, 7.572, 20.092],
        [-4.923, -2.892, -2.189, -1.579, -0.945, -0.273, 0.541, 1.965, 4.254, 8.917, 23.627],
        [-4.64, -2.817, -2.232, -1.578, -0.979, -0.298, 0.516, 2.132, 4.631, 9.736, 23.146],
        [-4.221, -2.737, -2.147, -1.585, -1.021, -0.37, 0.408, 2.285, 5.51, 11.89, 23.545],
        [-3.65, -2.82, -2.19, -1.614, -1.137, -0.465, 0.349, 2.288, 7.567, 14.236, 21.067],
        [-4.896, -3.1, -1.818, -1.511, -1.248, -0.45, 0.511, 3.901, 8.998, 18.656, 20.627],
    ]
)
META_THETA = np.array(
    [
        [-0.7398, -0.5169, -0.2847, -0.1879, -0.503, -0.6216, -0.2819],
        [-0.8975, -0.5436, -0.1868, -0.1348, -0.4669, -0.8422, 0.0205],
        [-0.8691, -0.4938, -0.1271, 0.1283, -0.4751, -0.6822, 0.3972],
        [-0.6917, -0.4904, -0.2317, -0.3137, -0.4661, -0.7002, -0.2425],
        [-0.9647, -0.6075, -0.1958, -0.1493, -0.6452, -0.8807, -0.1766],
        [-0.8958, -0.4864, 0.017, -0.0062, -0.4823, -0.5908, 0.3262],
        [-1.0094, -0.5293, 0.301, 0.0792, -0.7526, -0.7397, 0.0684],
        [-1.0883, -0.6337, -0.0606, -0.0356, -0.7361, -0.9887, -0.1863],
        [-0.8561, -0.56, -0.1518, -0.0664, -0.5519, -0.6542, -0.1506],
        [-1.6492, -0.9663, 0.2913, -0.2858, -0.0972, -1.4043, 0.8532],
    ]
)
META_PSI = np.array([-0.0488, -3.068, 0.1889, -0.404, 0.0749, 0.1143, 0.6025, 0.7247, 0.6602])
META_Z_CENTRES = np.array([0.508, 1.508, 2.508, 3.508, 4.5, 5.508, 7.0, 9.0, 11.5])
META_Z_TABLE = np.array(
    [
        [-3.474, -2.116, -1.563, -1.108, -0.502, -0.038, 0.643, 1.571, 2.294, 3.036, 5.543],
        [-3.798, -2.308, -1.752, -1.234, -0.614, -0.069, 0.719, 1.72, 2.568, 3.657, 6.712],
        [-3.889, -2.329, -1.861, -1.353, -0.685, -0.087, 0.738, 1.844, 2.759, 3.816, 7.945],
        [-4.455, -2.318, -1.869, -1.384, -0.762, -0.121, 0.704, 1.802, 2.787, 3.822, 7.753],
        [-4.251, -2.299, -1.86, -1.428, -0.837, -0.188, 0.598, 1.778, 2.731, 4.246, 7.537],
        [-3.617, -2.034, -1.75, -1.407, -0.858, -0.227, 0.515, 1.769, 2.813, 4.312, 7.258],
        [-2.896, -1.877, -1.617, -1.307, -0.828, -0.301, 0.385, 1.559, 2.697, 4.286, 6.882],
        [-2.741, -1.799, -1.505, -1.192, -0.811, -0.36, 0.38, 1.424, 2.671, 3.908, 5.969],
        [-1.948, -1.293, -1.149, -0.926, -0.633, -0.305, 0.39, 1.262, 2.675, 4.161, 5.318],
    ]
)
# ---------------------------------------------------------------------------------------------
META_FEATURES = (
    "const",
    "last",
    "slope_last",
    "slope_all",
    "spread_16x",
    "log2_fit_max_n",
    "seed_sd",
)
META_BASES = (*DEFAULT_FAMILIES, "drift")
META_FLOOR = 0.01  # spread floor of the meta-model
DRIFT_SCALE = 10.0  # the drift basis is max(0, L) / DRIFT_SCALE
N_SEARCH_MAX = 1e7  # labels-needed is searched up to this many labels
Q_GRID = np.linspace(0.0, np.log2(N_SEARCH_MAX), 187)  # log2 n of the quantile curves


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.asarray(np.logaddexp(0.0, z))


def meta_features(data: CurveData, params: dict[str, np.ndarray]) -> np.ndarray:
    """The curve features ``x`` of the meta-model (``META_FEATURES``), shape (C, 7).

    ``params`` holds the fit of every default family. Slopes are per doubling of n; the
    scales (×10, /6) bring every feature near [-1, 1].
    """
    C = data.n.shape[0]
    rows = np.arange(C)
    last = np.maximum((data.w > 0).sum(axis=1) - 1, 1)
    y_k, n_k = data.y[rows, last], data.n[rows, last]
    y_p, n_p = data.y[rows, last - 1], data.n[rows, last - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope_last = np.nan_to_num((y_k - y_p) / np.log2(n_k / n_p))
        slope_all = np.nan_to_num((y_k - data.y[:, 0]) / np.log2(n_k / data.n[:, 0]))
    far = np.stack(
        [_family_rising(f, params[f], (16.0 * n_k)[:, None])[:, 0] for f in DEFAULT_FAMILIES]
    )
    sd = np.full(C, np.nan) if data.sd is None else data.sd[rows, last]
    # one seed per n: the scatter of the means around the pow3 fit stands in for the seed sd
    fit3 = FAMILIES["pow3"].evaluate(data.n, params["pow3"][:, None, :])
    real = data.w > 0
    resid = np.sqrt((np.where(real, data.y - fit3, 0.0) ** 2).sum(axis=1) / real.sum(axis=1))
    sd = np.where(np.isfinite(sd), sd, resid)
    return np.stack(
        [
            np.ones(C),
            y_k,
            10.0 * slope_last,
            10.0 * slope_all,
            10.0 * far.std(axis=0),
            np.log2(n_k) / 6.0,
            10.0 * sd,
        ],
        axis=1,
    )


def _family_rising(name: str, params: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Family ``name``'s non-decreasing curve at n (shape (C, M)), clipped to [0, 1]."""
    with np.errstate(all="ignore"):
        v = FAMILIES[name].evaluate_rising(n, params[:, None, :])
    return np.asarray(np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0))


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
    last : ndarray, shape (C,)
        Observed mean at ``fit_max_n`` (the meta-model's anchor).
    meta : ndarray, shape (C, len(META_BASES)), optional
        The meta-model's weights of each curve; None unless every default family is fitted.
    features : ndarray, shape (C, len(META_FEATURES)), optional
        The meta-model's curve features (for its spread).
    """

    families: tuple[str, ...]
    params: dict[str, np.ndarray]
    sse: dict[str, np.ndarray]
    weights: np.ndarray
    fit_max_n: np.ndarray
    fit_min_n: np.ndarray
    last: np.ndarray | None = None
    meta: np.ndarray | None = None
    features: np.ndarray | None = None

    def take(self, rows: np.ndarray | slice) -> Fits:
        """The fits of the curves ``rows`` (indices, a mask or a slice)."""
        return Fits(
            families=self.families,
            params={f: p[rows] for f, p in self.params.items()},
            sse={f: s[rows] for f, s in self.sse.items()},
            weights=self.weights,
            fit_max_n=self.fit_max_n[rows],
            fit_min_n=self.fit_min_n[rows],
            last=None if self.last is None else self.last[rows],
            meta=None if self.meta is None else self.meta[rows],
            features=None if self.features is None else self.features[rows],
        )

    def curve(self, i: int) -> Fits:
        """The fits of curve ``i`` alone (C = 1)."""
        return self.take(slice(i, i + 1))

    def family_values(self, n: np.ndarray) -> np.ndarray:
        """Each family's curve at n (shape (C, M)), held non-decreasing and clipped to [0, 1];
        shape (F, C, M)."""
        n = np.asarray(n, dtype=float)
        out = np.empty((len(self.families), *n.shape))
        for i, f in enumerate(self.families):
            out[i] = _family_rising(f, self.params[f], n)
        return out

    def center(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point forecast, spread and log2 extrapolation ratio at n, each of shape (C, M)."""
        n = np.asarray(n, dtype=float)
        vals = self.family_values(n)
        ratio = np.log2(n / self.fit_max_n[:, None])
        if self.meta is not None and self.last is not None and self.features is not None:
            order = [self.families.index(f) for f in DEFAULT_FAMILIES]
            last = self.last[:, None]
            gain = np.einsum("cf,fcm->cm", self.meta[:, : len(order)], vals[order] - last)
            gain += self.meta[:, -1:] * np.maximum(ratio, 0.0) / DRIFT_SCALE
            point = np.clip(last + gain, 0.0, 1.0)
            return point, meta_spread(self.features, point - last, ratio), ratio
        w = self.weights[:, None, None]
        mean = (w * vals).sum(axis=0)
        spread = np.sqrt((w * (vals - mean) ** 2).sum(axis=0)) + SPREAD_FLOOR
        point = np.clip(mean + KAPPA * np.maximum(ratio, 0.0), 0.0, 1.0)
        return point, spread, ratio

    def _z(self, ratio: np.ndarray) -> np.ndarray:
        if self.meta is not None:
            return _z_rows(ratio, META_Z_CENTRES, META_Z_TABLE)
        return _z_rows(ratio, Z_CENTRES, Z_TABLE)

    def _raw_quantiles(self, n: np.ndarray, probs: np.ndarray) -> np.ndarray:
        point, spread, ratio = self.center(n)
        z = self._z(ratio)  # (C, M, len(Z_PROBS))
        out = np.empty((len(probs), *point.shape))
        for i, p in enumerate(np.asarray(probs, dtype=float)):
            q = point + _interp_last(p, Z_PROBS, z) * spread
            # the point forecast stays inside every central interval
            q = np.minimum(q, point) if p < 0.5 else np.maximum(q, point) if p > 0.5 else q
            out[i] = np.clip(q, 0.0, 1.0)
        return out

    def quantile_grid(self, probs: np.ndarray) -> np.ndarray:
        """Quantiles on ``Q_GRID`` (log2 n), held non-decreasing in n (a running maximum: the
        spread can grow faster than the point forecast far out); shape (len(probs), C, G)."""
        n = np.broadcast_to(2.0**Q_GRID, (len(self.fit_max_n), len(Q_GRID)))
        return np.asarray(np.maximum.accumulate(self._raw_quantiles(n, probs), axis=-1))

    def quantiles(self, n: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Quantiles of the predictive distribution at n; shape (len(probs), C, M): the
        non-decreasing ``quantile_grid`` interpolated linearly in log2 n (held beyond it)."""
        return _interp_grid(self.quantile_grid(np.asarray(probs, dtype=float)), n)

    def cdf(self, n: np.ndarray, value: float | np.ndarray) -> np.ndarray:
        """P(score at n <= value); shape (C, M). Tails beyond the table are held at its ends."""
        point, spread, ratio = self.center(n)
        zv = (np.asarray(value) - point) / spread
        z = self._z(ratio)
        below = (z <= zv[..., None]).sum(axis=-1)
        i = np.clip(below - 1, 0, len(Z_PROBS) - 2)
        z0 = np.take_along_axis(z, i[..., None], -1)[..., 0]
        z1 = np.take_along_axis(z, i[..., None] + 1, -1)[..., 0]
        t = np.clip((zv - z0) / np.maximum(z1 - z0, 1e-12), 0.0, 1.0)
        p = Z_PROBS[i] + t * (Z_PROBS[i + 1] - Z_PROBS[i])
        p = np.where(below == 0, 0.0, p)
        return np.asarray(np.where(below == len(Z_PROBS), 1.0, p))


def _z_rows(ratio: np.ndarray, centres: np.ndarray, table: np.ndarray) -> np.ndarray:
    """z quantiles at each ratio: linear between bin centres, the first bin inside the fit
    range, the last beyond the table."""
    r = np.clip(np.nan_to_num(ratio, nan=0.0), centres[0], centres[-1])
    j = np.clip(np.searchsorted(centres, r) - 1, 0, len(centres) - 2)
    t = (r - centres[j]) / (centres[j + 1] - centres[j])
    return np.asarray(table[j] * (1 - t[..., None]) + table[j + 1] * t[..., None])


def _interp_grid(grid: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``grid`` (P, C, G) on ``Q_GRID`` at n (C, M), linear in log2 n; shape (P, C, M)."""
    x = (np.log2(np.clip(np.asarray(n, dtype=float), 1.0, N_SEARCH_MAX)) - Q_GRID[0]) / (
        Q_GRID[1] - Q_GRID[0]
    )
    j = np.clip(np.floor(x).astype(np.int64), 0, len(Q_GRID) - 2)
    t = np.clip(x - j, 0.0, 1.0)
    lo = np.take_along_axis(grid, np.broadcast_to(j, (grid.shape[0], *j.shape)), axis=-1)
    hi = np.take_along_axis(grid, np.broadcast_to(j + 1, (grid.shape[0], *j.shape)), axis=-1)
    return np.asarray(lo * (1 - t) + hi * t)


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
    C = data.n.shape[0]
    last = data.y[np.arange(C), np.maximum((data.w > 0).sum(axis=1) - 1, 0)]
    meta = feats = None
    if set(families) == set(DEFAULT_FAMILIES):
        feats = meta_features(data, params)
        meta = meta_weights(feats)
    return Fits(
        families=families,
        params=params,
        sse=sse,
        weights=family_weights(families),
        fit_max_n=fit_max_n,
        fit_min_n=data.n.min(axis=1) if data.n.size else np.zeros(0),
        last=last,
        meta=meta,
        features=feats,
    )


def meta_spread(
    features: np.ndarray, gain: np.ndarray, ratio: np.ndarray, psi: np.ndarray | None = None
) -> np.ndarray:
    """The meta-model's spread ``exp(ψ·[x, max(0, L)/10, log(|gain| + floor)])``, shape (C, M).

    ``features`` is (C, 7); ``gain`` (the forecast minus ``y_K``) and ``ratio`` (C, M).
    """
    ps = META_PSI if psi is None else psi
    k = len(META_FEATURES)
    a = (np.asarray(features) @ ps[:k])[:, None]
    a = a + ps[k] * np.maximum(ratio, 0.0) / DRIFT_SCALE
    a = a + ps[k + 1] * np.log(np.abs(gain) + META_FLOOR)
    return np.asarray(np.exp(a))


def meta_weights(features: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
    """The meta-model's non-negative weights ``softplus(x·θ_j)``, shape (C, len(META_BASES))."""
    th = META_THETA if theta is None else theta
    return _softplus(np.asarray(features) @ th.T)


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
    grid = fits.quantile_grid(np.array([1 - alpha, alpha]))
    curves = {
        "point": lambda n: fits.center(n)[0],
        "upper": lambda n: _interp_grid(grid[:1], n)[0],
        "lower": lambda n: _interp_grid(grid[1:], n)[0],
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
