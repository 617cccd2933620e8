"""The predictive distribution: a learned combination of the curve families and, when the
table has it, the training curve, calibrated per probe family.

With all nine families (the default) the forecast at n is a meta-model, "learning-curve
extrapolation as regression": from the last observed mean ``y_K`` (at ``fit_max_n``) it adds
the families' gains, a drift and the training curve's bracket with weights that depend on the
curve,

    point(n) = y_K + Σ_f w_f(x)·(y_f(n) - y_K) + w_drift(x)·max(0, L)/10
                   + Σ_b w_b(x)·A_b·(1 - 2^(-β_b·L)),

where ``y_f`` is family f's bounded fit (held non-decreasing, see ``Family.evaluate_rising``),
``L = log2(n / fit_max_n)`` the extrapolation ratio, and each weight ``w_j(x) =
softplus(θ_j·x)`` is non-negative, so the forecast is non-decreasing in n (labels-needed inverts
it). The training-curve bases (``TRAIN_BASES``) rise from 0 at ``fit_max_n`` towards an
amplitude ``A_b``: the gap between the training and the test score at ``fit_max_n``, or
between the training curve's own plateau (a bounded pow3 fit of the falling training curve)
and ``y_K``. For a consistent learner the training score falls with n and the test score
rises, both towards the same limit, so the two curves bracket the plateau.

``x`` are the curve's features (``FEATURES``): of the test curve (the last mean, log2-slopes
over the last step and the whole fit range, the families' disagreement at 16·fit_max_n,
log2(fit_max_n), the seed-level standard deviation at ``fit_max_n``), of the training curve
(its last mean, the train-test gap and its slope, its slopes, the gap to its plateau), and the
probe family (one indicator per family of ``fmprobe.forecast.probes``). Each curve gets one of
four models (``calibration.MODEL_NAMES``): with its probe family or pooled, with or without the
training curve. Spread: a learned scale ``exp(ψ·[x, max(0, L)/10, log(|point - y_K| + 0.01)])``.
Quantiles: ``point + z_p(L)·spread``, with ``z_p(L)`` empirical quantiles of out-of-fold
standardised errors per bin of L (a conformal-style calibration). Labels needed are where the
point forecast and the quantiles reach a target: intervals and labels share one distribution.

With a subset of the families (``--families``) the forecast is their stacked average plus a
drift ``κ·max(0, L)``; spread: their weighted standard deviation plus a floor; quantiles from
the z table of that average (one family: its own fit).

Every learned number is data, in ``calibration.json`` (see ``fmprobe.forecast.calibration``),
learned on the LCDB 1.0 AUROC curves of the development data sets only (OpenML ids in
../shared/lcdb_dev_openml_ids.txt; the other data sets are held out for the benchmark) with
``python benchmarks/bench_forecast.py --calibrate --write``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fmprobe.errors import FmprobeError
from fmprobe.forecast.calibration import Calibration, MetaModel, load_calibration
from fmprobe.forecast.families import DEFAULT_FAMILIES, FAMILIES
from fmprobe.forecast.fit import CurveData, fit_family
from fmprobe.forecast.probes import PROBE_FAMILIES, probe_family

TEST_FEATURES = (
    "const",
    "last",
    "slope_last",
    "slope_all",
    "spread_16x",
    "log2_fit_max_n",
    "seed_sd",
)
TRAIN_FEATURES = (
    "has_train",
    "train_last",
    "gap",
    "gap_slope",
    "train_slope_last",
    "train_slope_all",
    "train_plateau_gap",
)
PROBE_FEATURES = tuple(f"probe_{p}" for p in PROBE_FAMILIES)
FEATURES = (*TEST_FEATURES, *TRAIN_FEATURES, *PROBE_FEATURES)
# exponent β of the training-curve bases A·(1 - 2^(-β·L)), and which amplitude A they use
TRAIN_BASES = {
    "gap_slow": (0.25, "gap"),
    "gap_fast": (1.0, "gap"),
    "train_plateau": (0.5, "plateau"),
}
BASES = (*DEFAULT_FAMILIES, "drift", *TRAIN_BASES)
META_FLOOR = 0.01  # spread floor of the meta-model
DRIFT_SCALE = 10.0  # the drift basis is max(0, L) / DRIFT_SCALE
N_SEARCH_MAX = 1e7  # labels-needed is searched up to this many labels
Q_GRID = np.linspace(0.0, np.log2(N_SEARCH_MAX), 187)  # log2 n of the quantile curves
SUBSET_SPREAD_FLOOR = 0.005


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.asarray(np.logaddexp(0.0, z))


@dataclass(frozen=True)
class TrainCurve:
    """What the meta-model reads from the training curves, per curve.

    Attributes
    ----------
    used : ndarray of bool, shape (C,)
        Whether the curve's training scores are known at its first and last two fit points.
    plateau : ndarray, shape (C,)
        The training curve's plateau: a bounded pow3 fit of the falling curve (NaN if unused).
    """

    used: np.ndarray
    plateau: np.ndarray


def train_curve(data: CurveData, allowed: np.ndarray | None = None) -> TrainCurve:
    """Which curves have a usable training curve (``allowed``: per curve, default all) and
    the plateau of each: ``pow3`` fitted to ``1 - train``, so the plateau is at most the
    smallest training mean."""
    C = data.n.shape[0]
    if data.train is None or C == 0:
        return TrainCurve(used=np.zeros(C, dtype=bool), plateau=np.full(C, np.nan))
    rows = np.arange(C)
    last = np.maximum((data.w > 0).sum(axis=1) - 1, 1)
    t = data.train
    used = np.isfinite(t[rows, last]) & np.isfinite(t[rows, last - 1]) & np.isfinite(t[:, 0])
    if allowed is not None:
        used &= np.asarray(allowed, dtype=bool)
    plateau = np.full(C, np.nan)
    if used.any():
        sub = data.rows(used)
        ts = t[used]
        ok = np.isfinite(ts) & (sub.w > 0)
        tdata = CurveData(n=sub.n, y=np.where(ok, 1.0 - ts, 0.0), w=ok.astype(float))
        p3, _ = fit_family(FAMILIES["pow3"], tdata)
        plateau[used] = 1.0 - p3[:, 0]
    return TrainCurve(used=used, plateau=plateau)


def meta_features(
    data: CurveData,
    params: dict[str, np.ndarray],
    *,
    train: TrainCurve | None = None,
    probes: np.ndarray | None = None,
) -> np.ndarray:
    """The curve features ``x`` of the meta-model (``FEATURES``), shape (C, len(FEATURES)).

    ``params`` holds the fit of every default family; ``train`` the training curves (None:
    none used); ``probes`` each curve's probe family (``PROBE_FAMILIES`` or "pooled"; None:
    pooled). Slopes are per doubling of n; the scales (×10, /6) bring every feature near
    [-1, 1]. Training features of curves without a training curve, and the indicators of
    pooled curves, are 0.
    """
    C = data.n.shape[0]
    rows = np.arange(C)
    last = np.maximum((data.w > 0).sum(axis=1) - 1, 1)
    y_k, n_k = data.y[rows, last], data.n[rows, last]
    y_p, n_p = data.y[rows, last - 1], data.n[rows, last - 1]
    step, span = np.log2(n_k / n_p), np.log2(n_k / data.n[:, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        slope_last = np.nan_to_num((y_k - y_p) / step)
        slope_all = np.nan_to_num((y_k - data.y[:, 0]) / span)
    far = np.stack(
        [family_rising(f, params[f], (16.0 * n_k)[:, None])[:, 0] for f in DEFAULT_FAMILIES]
    )
    sd = np.full(C, np.nan) if data.sd is None else data.sd[rows, last]
    # one seed per n: the scatter of the means around the pow3 fit stands in for the seed sd
    fit3 = FAMILIES["pow3"].evaluate(data.n, params["pow3"][:, None, :])
    real = data.w > 0
    resid = np.sqrt((np.where(real, data.y - fit3, 0.0) ** 2).sum(axis=1) / real.sum(axis=1))
    sd = np.where(np.isfinite(sd), sd, resid)
    cols = {
        "const": np.ones(C),
        "last": y_k,
        "slope_last": 10.0 * slope_last,
        "slope_all": 10.0 * slope_all,
        "spread_16x": 10.0 * far.std(axis=0),
        "log2_fit_max_n": np.log2(n_k) / 6.0,
        "seed_sd": 10.0 * sd,
    }
    used = np.zeros(C, dtype=bool) if train is None else train.used
    t = np.zeros_like(data.y) if data.train is None else np.where(used[:, None], data.train, 0.0)
    t_k, t_p = t[rows, last], t[rows, last - 1]
    gap, gap_p = t_k - y_k, t_p - y_p
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["has_train"] = used.astype(float)
        cols["train_last"] = t_k
        cols["gap"] = 10.0 * gap
        cols["gap_slope"] = 10.0 * np.nan_to_num((gap - gap_p) / step)
        cols["train_slope_last"] = 10.0 * np.nan_to_num((t_k - t_p) / step)
        cols["train_slope_all"] = 10.0 * np.nan_to_num((t_k - t[:, 0]) / span)
        plateau = np.zeros(C) if train is None else np.nan_to_num(train.plateau - y_k)
        cols["train_plateau_gap"] = 10.0 * plateau
    for name in TRAIN_FEATURES:
        cols[name] = np.where(used, cols[name], 0.0)
    fam = np.full(C, "pooled") if probes is None else np.asarray(probes)
    for p in PROBE_FAMILIES:
        cols[f"probe_{p}"] = (fam == p).astype(float)
    return np.stack([cols[f] for f in FEATURES], axis=1)


def train_amplitudes(data: CurveData, train: TrainCurve) -> np.ndarray:
    """Amplitude ``A_b`` of each training-curve basis (``TRAIN_BASES``), shape (C, B): the
    train-test gap at ``fit_max_n`` or the training plateau minus ``y_K``, at least 0 (0
    without a training curve)."""
    C = data.n.shape[0]
    rows = np.arange(C)
    last = np.maximum((data.w > 0).sum(axis=1) - 1, 0)
    y_k = data.y[rows, last]
    if data.train is None:
        return np.zeros((C, len(TRAIN_BASES)))
    amp = {
        "gap": np.nan_to_num(data.train[rows, last] - y_k),
        "plateau": np.nan_to_num(train.plateau - y_k),
    }
    out = np.stack([amp[kind] for _, kind in TRAIN_BASES.values()], axis=1)
    return np.where(train.used[:, None], np.maximum(out, 0.0), 0.0)


def family_rising(name: str, params: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Family ``name``'s non-decreasing curve at n (shape (C, M)) for the fitted ``params``
    (C, 2 + k), clipped to [0, 1]."""
    with np.errstate(all="ignore"):
        v = FAMILIES[name].evaluate_rising(n, params[:, None, :])
    return np.asarray(np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0))


def family_weights(families: tuple[str, ...], cal: Calibration | None = None) -> np.ndarray:
    """Stacking weights of ``families`` (renormalised; equal when none has a learned weight)."""
    beta = (load_calibration() if cal is None else cal).subset.beta
    b = np.array([beta.get(f, 0.0) for f in families])
    if b.sum() <= 0:
        b = np.ones(len(families))
    return b / b.sum()


def basis_values(
    vals: np.ndarray, last: np.ndarray, ratio: np.ndarray, amp: np.ndarray
) -> np.ndarray:
    """Every basis of ``BASES`` at n, shape (J, C, M): the families' gains over ``last``
    (``vals`` is (F, C, M) in ``DEFAULT_FAMILIES`` order), the drift, and the training-curve
    bases ``A_b·(1 - 2^(-β_b·L))`` (``amp`` (C, B), ``ratio`` = L (C, M))."""
    parts = [vals - last[None, :, None], np.maximum(ratio, 0.0)[None] / DRIFT_SCALE]
    beta = np.array([b for b, _ in TRAIN_BASES.values()])
    parts.append(amp.T[:, :, None] * (1.0 - np.exp2(-beta[:, None, None] * ratio[None])))
    return np.concatenate(parts, axis=0)


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
    meta : ndarray, shape (C, len(BASES)), optional
        The meta-model's weights of each curve; None unless every default family is fitted.
    features : ndarray, shape (C, len(FEATURES)), optional
        The meta-model's curve features (for its spread).
    model : ndarray of str, shape (C,), optional
        The meta-model of each curve (``calibration.MODEL_NAMES``).
    amp : ndarray, shape (C, len(TRAIN_BASES)), optional
        Amplitudes of the training-curve bases.
    calibration : Calibration, optional
        The learned parameters (None: the package's ``calibration.json``).
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
    model: np.ndarray | None = None
    amp: np.ndarray | None = None
    calibration: Calibration | None = None

    @property
    def cal(self) -> Calibration:
        """The calibration in use."""
        return load_calibration() if self.calibration is None else self.calibration

    def take(self, rows: np.ndarray | slice) -> Fits:
        """The fits of the curves ``rows`` (indices, a mask or a slice)."""

        def sub(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return Fits(
            families=self.families,
            params={f: p[rows] for f, p in self.params.items()},
            sse={f: s[rows] for f, s in self.sse.items()},
            weights=self.weights,
            fit_max_n=self.fit_max_n[rows],
            fit_min_n=self.fit_min_n[rows],
            last=sub(self.last),
            meta=sub(self.meta),
            features=sub(self.features),
            model=sub(self.model),
            amp=sub(self.amp),
            calibration=self.calibration,
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
            out[i] = family_rising(f, self.params[f], n)
        return out

    def center(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point forecast, spread and log2 extrapolation ratio at n, each of shape (C, M)."""
        n = np.asarray(n, dtype=float)
        if self.meta is not None:
            # held beyond the farthest extrapolation calibrated: there it is the plateau
            n = np.minimum(n, self.fit_max_n[:, None] * 2.0**self.cal.max_log2_ratio)
        vals = self.family_values(n)
        ratio = np.log2(n / self.fit_max_n[:, None])
        if self.meta is not None and self.last is not None and self.features is not None:
            order = [self.families.index(f) for f in DEFAULT_FAMILIES]
            amp = np.zeros((len(self.last), len(TRAIN_BASES))) if self.amp is None else self.amp
            g = basis_values(vals[order], self.last, ratio, amp)
            gain = np.einsum("cj,jcm->cm", self.meta, g)
            point = np.clip(self.last[:, None] + gain, 0.0, 1.0)
            x, rise = self.features, point - self.last[:, None]
            spread = self._by_model(
                lambda m, r: meta_spread(x[r], rise[r], ratio[r], m.psi), point.shape
            )
            return point, spread, ratio
        w = self.weights[:, None, None]
        mean = (w * vals).sum(axis=0)
        spread = np.sqrt((w * (vals - mean) ** 2).sum(axis=0)) + SUBSET_SPREAD_FLOOR
        kappa = self.cal.subset.kappa
        point = np.clip(mean + kappa * np.maximum(ratio, 0.0), 0.0, 1.0)
        return point, spread, ratio

    def _by_model(
        self, fn: Callable[[MetaModel, np.ndarray], np.ndarray], shape: tuple[int, ...]
    ) -> np.ndarray:
        """``fn(model, rows)`` for the rows of each meta-model, assembled into ``shape``."""
        cal = self.cal
        model = self.model if self.model is not None else np.full(shape[0], "pooled")
        out: np.ndarray | None = None
        for name in np.unique(model):
            r = np.flatnonzero(model == name)
            v = fn(cal.models[str(name)], r)
            if out is None:
                out = np.empty((*shape, *v.shape[len(shape) :]))
            out[r] = v
        return np.empty(shape) if out is None else out

    def _z(self, ratio: np.ndarray) -> np.ndarray:
        cal = self.cal
        if self.meta is not None:
            return self._by_model(
                lambda m, r: _z_rows(ratio[r], m.z_centres, m.z_table), ratio.shape
            )
        return _z_rows(ratio, cal.subset.z_centres, cal.subset.z_table)

    def _raw_quantiles(self, n: np.ndarray, probs: np.ndarray) -> np.ndarray:
        point, spread, ratio = self.center(n)
        z = self._z(ratio)  # (C, M, len(z_probs))
        z_probs = self.cal.z_probs
        out = np.empty((len(probs), *point.shape))
        for i, p in enumerate(np.asarray(probs, dtype=float)):
            q = point + _interp_last(p, z_probs, z) * spread
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
        z_probs = self.cal.z_probs
        point, spread, ratio = self.center(n)
        zv = (np.asarray(value) - point) / spread
        z = self._z(ratio)
        below = (z <= zv[..., None]).sum(axis=-1)
        i = np.clip(below - 1, 0, len(z_probs) - 2)
        z0 = np.take_along_axis(z, i[..., None], -1)[..., 0]
        z1 = np.take_along_axis(z, i[..., None] + 1, -1)[..., 0]
        t = np.clip((zv - z0) / np.maximum(z1 - z0, 1e-12), 0.0, 1.0)
        p = z_probs[i] + t * (z_probs[i + 1] - z_probs[i])
        p = np.where(below == 0, 0.0, p)
        return np.asarray(np.where(below == len(z_probs), 1.0, p))


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


def curve_models(
    probes: np.ndarray | None, train_used: np.ndarray, C: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each curve's probe family and meta-model name (``calibration.MODEL_NAMES``)."""
    fam = np.full(C, "pooled", dtype=object)
    if probes is not None:
        fam[:] = [probe_family(p).family for p in probes]
    known = fam != "pooled"
    model = np.where(known, "probe", "pooled").astype(object)
    model = np.where(train_used, model + "+train", model)
    return fam.astype(str), model.astype(str)


def fit_curves(
    data: CurveData,
    families: tuple[str, ...],
    *,
    probes: np.ndarray | None = None,
    fitted: Fits | None = None,
    calibration: Calibration | None = None,
    train_allowed: np.ndarray | None = None,
) -> Fits:
    """Fit every family in ``families`` to every curve of ``data``.

    ``probes`` (shape (C,)) are the curves' probe names (``fmprobe.forecast.probes``); the
    training curve is read from ``data.train`` where the probe's family uses it, or where
    ``train_allowed`` (shape (C,), optional) says so. ``fitted``:
    the family fits of the same test curves, reused (the benchmark forecasts each curve with
    and without its training curve). ``calibration``: other learned parameters than the
    package's (cross-validation).
    """
    params: dict[str, np.ndarray] = {}
    sse: dict[str, np.ndarray] = {}
    for f in families:
        if fitted is not None and f in fitted.params:
            params[f], sse[f] = fitted.params[f], fitted.sse[f]
        else:
            params[f], sse[f] = fit_family(FAMILIES[f], data)
    fit_max_n = data.n.max(axis=1) if data.n.size else np.zeros(0)
    C = data.n.shape[0]
    last = data.y[np.arange(C), np.maximum((data.w > 0).sum(axis=1) - 1, 0)]
    meta = feats = model = amp = None
    if set(families) == set(DEFAULT_FAMILIES):
        allowed = train_allowed
        if allowed is None and probes is not None:
            allowed = np.array([probe_family(p).uses_train for p in probes], dtype=bool)
        train = train_curve(data, allowed)
        fam, model = curve_models(probes, train.used, C)
        feats = meta_features(data, params, train=train, probes=fam)
        amp = train_amplitudes(data, train)
        meta = meta_weights(feats, model, calibration)
    return Fits(
        families=families,
        params=params,
        sse=sse,
        weights=family_weights(families, calibration),
        fit_max_n=fit_max_n,
        fit_min_n=data.n.min(axis=1) if data.n.size else np.zeros(0),
        last=last,
        meta=meta,
        features=feats,
        model=model,
        amp=amp,
        calibration=calibration,
    )


def meta_spread(
    features: np.ndarray, gain: np.ndarray, ratio: np.ndarray, psi: np.ndarray
) -> np.ndarray:
    """The meta-model's spread ``exp(ψ·[x, max(0, L)/10, log(|gain| + floor)])``, shape (C, M).

    ``features`` is (C, D); ``gain`` (the forecast minus ``y_K``) and ``ratio`` (C, M).
    """
    k = features.shape[1]
    a = (np.asarray(features) @ psi[:k])[:, None]
    a = a + psi[k] * np.maximum(ratio, 0.0) / DRIFT_SCALE
    a = a + psi[k + 1] * np.log(np.abs(gain) + META_FLOOR)
    return np.asarray(np.exp(a))


def meta_weights(
    features: np.ndarray, model: np.ndarray, cal: Calibration | None = None
) -> np.ndarray:
    """The meta-model's non-negative weights ``softplus(x·θ_j)`` of each curve's model,
    shape (C, len(BASES))."""
    cal = load_calibration() if cal is None else cal
    if cal.features != FEATURES or cal.bases != BASES:
        raise FmprobeError(
            "fmprobe/forecast/calibration.json does not match this version's features and "
            "bases; rerun python benchmarks/bench_forecast.py --calibrate --write"
        )
    out = np.zeros((len(features), len(BASES)))
    for name in np.unique(model):
        r = model == name
        out[r] = _softplus(np.asarray(features[r]) @ cal.models[str(name)].theta.T)
    return out


def labels_needed(
    fits: Fits, target: float, *, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels needed to reach ``target``, per curve.

    Returns ``(n_needed, lower, upper, p_unreachable)``, each shape (C,): the first n (from the
    smallest fitted n on) where the forecast reaches the target (with the meta-model: its
    ``labels_quantile`` quantile when the calibration sets one, which is the calibrated middle
    of the labels needed; otherwise the point forecast); where the upper quantile (optimistic)
    and the lower quantile (pessimistic) at ``level`` reach it; NaN where it is not reached by
    ``N_SEARCH_MAX`` labels. ``p_unreachable`` is the predictive probability that the score at
    ``N_SEARCH_MAX`` labels is still below the target (the plateau is below it).
    """
    start = np.maximum(fits.fit_min_n, 1.0)
    ng = np.exp(np.linspace(np.log(start), np.log(N_SEARCH_MAX), 512, axis=1))
    C = len(start)
    alpha = (1 - level) / 2
    mid = fits.cal.labels_quantile if fits.meta is not None else None
    probs = [1 - alpha, alpha] + ([] if mid is None else [mid])
    grid = fits.quantile_grid(np.array(probs))
    curves = {
        "point": (lambda n: fits.center(n)[0])
        if mid is None
        else (lambda n: _interp_grid(grid[2:], n)[0]),
        "upper": lambda n: _interp_grid(grid[:1], n)[0],
        "lower": lambda n: _interp_grid(grid[1:2], n)[0],
    }
    found = {k: _first_crossing(fn, ng, target) for k, fn in curves.items()}
    p_unreach = fits.cdf(np.full((C, 1), N_SEARCH_MAX), target)[:, 0]
    return found["point"], found["upper"], found["lower"], p_unreach


def family_labels_needed(fits: Fits, family: str, target: float) -> np.ndarray:
    """Labels needed by one family's own fit alone (the first n from the smallest fitted n on
    where its non-decreasing curve reaches ``target``; NaN beyond ``N_SEARCH_MAX``), shape (C,).
    """
    start = np.maximum(fits.fit_min_n, 1.0)
    ng = np.exp(np.linspace(np.log(start), np.log(N_SEARCH_MAX), 512, axis=1))
    params = fits.params[family]
    return _first_crossing(lambda n: family_rising(family, params, n), ng, target)


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
