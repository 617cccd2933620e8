"""Bounded weighted least squares of every curve family, vectorised over curves.

For a family ``y = c - a·g(n; θ)`` the fit is, for each θ, a two-unknown least-squares problem
in ``(c, a)`` with box constraints ``a >= 0``, ``c ∈ [lo, hi]``, solved in closed form (the
unconstrained solution when feasible, otherwise the best of the edge solutions: the problem is
convex, so that is exact). θ is found by a grid over its bounds (the multi-start) followed by a
shrinking pattern search around the best grid point of each curve. Every step is an array
operation over (curves × candidate θ × points), so thousands of curves fit in seconds.

Fitting on seed-level points: with per-seed scores ``y_ns`` weighted by ``1/σ²_n``, the sum
``Σ_n Σ_s (y_ns - f(n))²/σ²_n`` equals ``Σ_n k_n (ȳ_n - f(n))²/σ²_n`` plus a constant, so the
fit on the per-n means with weights ``k_n/σ²_n`` is the seed-level fit (with fewer numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmprobe.forecast.families import Family

GRID_1D = 48
GRID_2D = 16
REFINE_ROUNDS = 80
CHUNK_ELEMENTS = 4_000_000  # curves x candidates x points per array (about 32 MB of float64)


@dataclass(frozen=True)
class CurveData:
    """Curves as padded arrays, one row per curve.

    Attributes
    ----------
    n : ndarray, shape (C, P)
        Distinct label counts, ascending; padding repeats the last value.
    y : ndarray, shape (C, P)
        Mean score at each n.
    w : ndarray, shape (C, P)
        Weight of each mean (``k_n / σ²_n``); 0 marks padding or a left-out point.
    sd : ndarray, shape (C, P), optional
        Seed-level standard deviation of the scores at each n (NaN where unknown: one seed).
    train : ndarray, shape (C, P), optional
        Mean training-set score at each n (the same metric on the n training labels; NaN where
        unknown).
    """

    n: np.ndarray
    y: np.ndarray
    w: np.ndarray
    sd: np.ndarray | None = None
    train: np.ndarray | None = None

    def rows(self, keep: np.ndarray) -> CurveData:
        """The curves selected by ``keep`` (a boolean mask or row indices)."""
        sd = None if self.sd is None else self.sd[keep]
        train = None if self.train is None else self.train[keep]
        return CurveData(n=self.n[keep], y=self.y[keep], w=self.w[keep], sd=sd, train=train)

    @property
    def best(self) -> np.ndarray:
        """Best observed mean among the points with weight > 0, shape (C,)."""
        return np.asarray(np.where(self.w > 0, self.y, -np.inf).max(axis=1))


def _grid_axis(lo: float, hi: float, log: bool, size: int) -> tuple[np.ndarray, bool, float]:
    """Grid in the search space; returns (grid, shifted, shift) where log with lo <= 0 is
    searched as log(x - lo + 1)."""
    if not log:
        return np.linspace(lo, hi, size), False, 0.0
    if lo > 0:
        return np.linspace(np.log(lo), np.log(hi), size), True, 0.0
    shift = 1.0 - lo
    return np.linspace(0.0, np.log(hi + shift), size), True, shift


def _to_theta(z: np.ndarray, fam: Family, specs: list[tuple[bool, float]]) -> np.ndarray:
    out = np.empty_like(z)
    for j, (is_log, shift) in enumerate(specs):
        out[..., j] = np.exp(z[..., j]) - shift if is_log else z[..., j]
        lo, hi = fam.theta_bounds[j]
        out[..., j] = np.clip(out[..., j], lo, hi)
    return out


def _solve(
    fam: Family,
    theta: np.ndarray,
    n: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best bounded (c, a) for each curve and candidate θ.

    theta: (C or 1, G, k); n, y, w: (C, P); lo, hi: (C,). Returns c, a, sse of shape (C, G).
    """
    th = theta[:, :, None, :] if theta.shape[-1] else np.zeros((*theta.shape[:2], 1, 1))
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        u = -fam.basis(n[:, None, :], th)
    u = np.where(np.isfinite(u), u, 0.0)
    u = np.broadcast_to(u, (n.shape[0], u.shape[1], n.shape[1]))
    # the weighted moments of (1, u, y): every candidate's SSE follows from them in closed
    # form, so the (curves x candidates x points) arrays are read three times, not ten
    wu = w[:, None, :] * u
    sw = np.broadcast_to(w.sum(axis=1)[:, None], wu.shape[:2])
    sy = np.broadcast_to((w * y).sum(axis=1)[:, None], wu.shape[:2])
    syy = (w * y * y).sum(axis=1)[:, None]
    su = wu.sum(axis=2)
    suu = np.einsum("cgp,cgp->cg", wu, u)
    suy = np.einsum("cgp,cp->cg", wu, y)
    lo2, hi2 = lo[:, None], hi[:, None]
    det = sw * suu - su * su
    with np.errstate(divide="ignore", invalid="ignore"):
        a_free = np.where(det > 1e-300, (sw * suy - su * sy) / det, 0.0)
        c_free = np.where(sw > 0, (sy - a_free * su) / sw, 0.0)
        ok_free = (a_free >= 0) & (c_free >= lo2) & (c_free <= hi2) & (det > 1e-300)
        cands = [
            (c_free, a_free, ok_free),
            (np.clip(sy / sw, lo2, hi2), np.zeros_like(sw), np.ones_like(ok_free)),
        ]
        for edge in (lo2, hi2):
            e = np.broadcast_to(edge, sw.shape)
            a_e = np.maximum(np.where(suu > 0, (suy - e * su) / suu, 0.0), 0.0)
            cands.append((e, a_e, np.isfinite(e)))
    best_c = np.zeros_like(sw)
    best_a = np.zeros_like(sw)
    best_s = np.full_like(sw, np.inf)
    for c, a, ok in cands:
        c = np.where(ok, c, 0.0)
        a = np.where(ok, a, 0.0)
        # Σ w (y - c - a·u)², expanded; a candidate whose terms overflow is no candidate
        with np.errstate(over="ignore", invalid="ignore"):
            sse = syy - 2 * c * sy - 2 * a * suy + c * c * sw + 2 * c * a * su + a * a * suu
        sse = np.where(ok & np.isfinite(sse), np.maximum(sse, 0.0), np.inf)
        better = sse < best_s
        best_c = np.where(better, c, best_c)
        best_a = np.where(better, a, best_a)
        best_s = np.where(better, sse, best_s)
    return best_c, best_a, best_s


def _bounds(fam: Family, data: CurveData, top: float) -> tuple[np.ndarray, np.ndarray]:
    C = data.n.shape[0]
    if fam.plateau == "one":
        return np.full(C, top), np.full(C, top)
    if fam.plateau == "none":
        return np.full(C, -np.inf), np.full(C, np.inf)
    return np.minimum(data.best, top), np.full(C, top)


def fit_family(fam: Family, data: CurveData, *, top: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Fit one family to every curve.

    Parameters
    ----------
    fam : Family
    data : CurveData
        C curves of P padded points.
    top : float
        The largest value the curve may reach (the metric's maximum, or its transform).

    Returns
    -------
    params : ndarray, shape (C, 2 + k)
        ``(c, a, *θ)`` per curve.
    sse : ndarray, shape (C,)
        Weighted sum of squared residuals.

    Examples
    --------
    >>> import numpy as np
    >>> from fmprobe.forecast.families import FAMILIES
    >>> n = np.array([[10.0, 20, 40, 80]])
    >>> y = 0.9 - 0.5 * n ** -0.5
    >>> p, _ = fit_family(FAMILIES["pow3"], CurveData(n=n, y=y, w=np.ones_like(n)))
    >>> np.round(p, 4)
    array([[0.9, 0.5, 0.5]])
    """
    C, P = data.n.shape
    k = len(fam.theta_names)
    lo, hi = _bounds(fam, data, top)
    if k == 0:
        c, a, sse = _solve(fam, np.zeros((1, 1, 0)), data.n, data.y, data.w, lo, hi)
        return np.stack([c[:, 0], a[:, 0]], axis=1), sse[:, 0]
    size = GRID_1D if k == 1 else GRID_2D
    axes = [_grid_axis(*fam.theta_bounds[j], fam.theta_log[j], size) for j in range(k)]
    specs = [(ax[1], ax[2]) for ax in axes]
    steps = np.array([ax[0][1] - ax[0][0] for ax in axes])
    zlo = np.array([ax[0][0] for ax in axes])
    zhi = np.array([ax[0][-1] for ax in axes])
    mesh = np.stack(np.meshgrid(*[ax[0] for ax in axes], indexing="ij"), axis=-1).reshape(-1, k)
    stencil_1 = np.array([-1.0, 0.0, 1.0])
    stencil = np.stack(np.meshgrid(*([stencil_1] * k), indexing="ij"), axis=-1).reshape(-1, k)

    params = np.empty((C, 2 + k))
    sse_out = np.empty(C)
    chunk = max(1, CHUNK_ELEMENTS // (len(mesh) * P))
    for s in range(0, C, chunk):
        sl = slice(s, min(C, s + chunk))
        n, y, w = data.n[sl], data.y[sl], data.w[sl]
        clo, chi = lo[sl], hi[sl]
        c, a, sse = _solve(fam, _to_theta(mesh[None], fam, specs), n, y, w, clo, chi)
        i = np.argmin(sse, axis=1)
        z = mesh[i]
        best = sse[np.arange(len(i)), i]
        step = np.broadcast_to(steps, z.shape).copy()
        for _ in range(REFINE_ROUNDS):
            cand = np.clip(z[:, None, :] + stencil[None] * step[:, None, :], zlo, zhi)
            c, a, sse = _solve(fam, _to_theta(cand, fam, specs), n, y, w, clo, chi)
            j = np.argmin(sse, axis=1)
            got = sse[np.arange(len(j)), j]
            move = got < best
            z = np.where(move[:, None], cand[np.arange(len(j)), j], z)
            best = np.where(move, got, best)
            # a pattern search: keep the step while it still improves, otherwise halve it
            step = np.where(move[:, None], step, step * 0.6)
            if step.max(initial=0.0) < 1e-7:
                break
        theta = _to_theta(z[:, None, :], fam, specs)
        c, a, sse = _solve(fam, theta, n, y, w, clo, chi)
        params[sl] = np.concatenate([c, a, theta[:, 0, :]], axis=1)
        sse_out[sl] = sse[:, 0]
    return params, sse_out
