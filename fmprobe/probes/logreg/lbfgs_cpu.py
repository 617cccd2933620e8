"""``lbfgs`` on a CPU one problem at a time in numpy (large problems: numpy's small-array
operations cost less than torch's dispatch)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from fmprobe.probes.logreg.common import LogRegFit


def lbfgs_cpu(
    X: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    C: torch.Tensor,
    *,
    n_classes: int,
    max_iter: int,
    tol: float,
    init: LogRegFit | None,
    history: int = 10,
    penalty: torch.Tensor | None = None,
) -> LogRegFit:
    """``lbfgs``'s algorithm on a CPU, one problem at a time in numpy (``penalty`` as there).

    On a CPU a problem with a few million feature elements is bound by the per-iteration cost
    of dispatching ~400 small torch operations (~1 ms), not by its two passes over the
    features (~0.2 ms from cache); numpy's small-array operations cost a fraction of that, and
    one problem's rows stay in cache between its iterations. Same objective, direction
    (compact L-BFGS), noise-aware Armijo line search on z + t·u and stopping rule as ``lbfgs``.
    """
    B, _, D = X.shape
    Kc = 1 if n_classes == 2 else n_classes
    Xn = (X if X.dtype == torch.float64 else X.to(torch.float32)).numpy()
    yn = y.long().numpy()
    mn = m.double().numpy()
    pen = (
        np.repeat(1.0 / C.double().numpy()[:, None], D, axis=1)
        if penalty is None
        else penalty.double().cpu().numpy()
    )
    coef = np.zeros((B, D, Kc))
    intercept = np.zeros((B, Kc))
    converged = np.zeros(B, dtype=bool)
    n_iter = np.zeros(B, dtype=np.int64)
    for b in range(B):
        theta0 = None
        if init is not None:
            theta0 = np.concatenate(
                [init.coef[b].double().numpy().reshape(-1), init.intercept[b].double().numpy()]
            )
        th, conv, it = lbfgs_one(
            Xn[b], yn[b], mn[b], pen[b], Kc=Kc, max_iter=max_iter, tol=tol,
            theta0=theta0, history=history,
        )  # fmt: skip
        coef[b], intercept[b] = th[: D * Kc].reshape(D, Kc), th[D * Kc :]
        converged[b], n_iter[b] = conv, it
    dev = X.device
    return LogRegFit(
        coef=torch.from_numpy(coef).to(dev),
        intercept=torch.from_numpy(intercept).to(dev),
        converged=torch.from_numpy(converged).to(dev),
        n_iter=torch.from_numpy(n_iter).to(dev),
    )


def lbfgs_one(
    X: np.ndarray,
    y: np.ndarray,
    m: np.ndarray,
    penalty: np.ndarray,
    *,
    Kc: int,
    max_iter: int,
    tol: float,
    theta0: np.ndarray | None,
    history: int,
) -> tuple[np.ndarray, bool, int]:
    """One problem of ``_lbfgs_cpu`` (``penalty`` (D,): the L2 weight of each feature's
    weights, 1/C for the plain objective): returns (theta, converged, iterations). Logits are
    (n,) for a binary problem, (n, K) for a multinomial one; few temporaries per iteration
    (its cost beyond the two passes over X is what this path saves)."""
    _n, D = X.shape
    DK = D * Kc
    P = DK + Kc
    invC = np.repeat(penalty.astype(np.float64), Kc)  # (D·Kc,), the weights' order
    loss_z, dloss, Xv, zero_z = _one_problem_ops(X, y, m, Kc)

    def grad(theta: np.ndarray, z: np.ndarray) -> np.ndarray:
        dz = dloss(z)
        g = np.empty(P)
        np.multiply(theta[:DK], invC, out=g[:DK])
        g[:DK] += _xtv(X, dz)
        g[DK:] = dz.sum(0)
        return g

    def logits(v: np.ndarray) -> np.ndarray:
        z = Xv(v[:DK])
        z += v[DK] if Kc == 1 else v[DK:]
        return z

    g0 = max(float(np.linalg.norm(grad(np.zeros(P), zero_z))), 1e-12)
    theta = np.zeros(P) if theta0 is None else theta0.astype(np.float64)
    z = zero_z.copy() if theta0 is None else logits(theta)
    W = theta[:DK]
    f = loss_z(z) + 0.5 * float(W @ (invC * W))
    g = grad(theta, z)
    f_noise = 0.0 if X.dtype == np.float64 else 1e-6 * max(abs(f), 1.0)
    # curvature pairs, oldest first, with their products SY[i, j] = s_i·y_j and YY = y_i·y_j
    # kept up to date by the new row and column only
    Sm, Ym = np.empty((0, P)), np.empty((0, P))
    SY, YY = np.empty((0, 0)), np.empty((0, 0))
    it = 0
    if _norm(g) <= tol * g0:
        return theta, True, 0
    for it in range(1, max_iter + 1):
        d = -_lbfgs_direction_one(g, Sm, Ym, SY, YY)
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction: restart along the gradient
            Sm, Ym, SY, YY = Sm[:0], Ym[:0], SY[:0, :0], YY[:0, :0]
            d = -g / max(_norm(g), 1e-300)
            slope = float(g @ d)
        u = logits(d)
        W, dW = theta[:DK], d[:DK]
        pdW = invC * dW
        ww, wd, dd = float(W @ (invC * W)), float(W @ pdW), float(dW @ pdW)
        t, accepted = 1.0, False
        for _ls in range(30):
            zt = z + t * u
            ft = loss_z(zt) + 0.5 * (ww + 2 * t * wd + t * t * dd)
            # Armijo up to the rounding of the float32 products (see lbfgs)
            if ft <= f + 1e-4 * t * slope + f_noise:
                accepted = True
                break
            t /= 2
        if not accepted:  # flat to floating-point precision: counts as converged
            return theta, True, it
        theta_new = theta + t * d
        g_new = grad(theta_new, zt)
        s_vec, y_vec = t * d, g_new - g
        sy = float(s_vec @ y_vec)
        if sy > 1e-12 * _norm(s_vec) * _norm(y_vec):
            Sm, Ym, SY, YY = _push_pair_one(Sm, Ym, SY, YY, s_vec, y_vec, history)
        theta, z, f, g = theta_new, zt, ft, g_new
        if _norm(g) <= tol * g0:
            return theta, True, it
    return theta, False, it


def _norm(v: np.ndarray) -> float:
    """Euclidean norm of a vector (``np.linalg.norm``'s dispatch costs more than the product)."""
    return math.sqrt(float(v @ v))


def _lbfgs_direction_one(
    g: np.ndarray, S: np.ndarray, Y: np.ndarray, SY: np.ndarray, YY: np.ndarray
) -> np.ndarray:
    """H·g of L-BFGS in the compact form (see ``lbfgs_direction``) for one problem in numpy,
    pairs S, Y (k, P) oldest first with SY = SᵀY and YY = YᵀY; without pairs, g / ||g||.
    (LAPACK's triangular solve directly: ``np.linalg.solve``'s checks cost more than the
    k ≤ 10 system.)"""
    from scipy.linalg.lapack import dtrtrs

    if len(S) == 0:
        return g / max(float(np.linalg.norm(g)), 1e-300)
    Dg = np.diag(SY)
    gamma = Dg[-1] / YY[-1, -1]
    # R = triu(SY): LAPACK's triangular solves read only the upper triangle of SY
    t, _ = dtrtrs(SY, S @ g, lower=0)
    u = Dg * t + gamma * (YY @ t - Y @ g)
    p, _ = dtrtrs(SY, u, lower=0, trans=1)
    return gamma * g + p @ S - gamma * (t @ Y)


def _one_problem_ops(
    X: np.ndarray, y: np.ndarray, m: np.ndarray, Kc: int
) -> tuple[Callable[[np.ndarray], float], Callable[[np.ndarray], np.ndarray],
           Callable[[np.ndarray], np.ndarray], np.ndarray]:  # fmt: skip
    """The summed log-loss of logits z, its derivative in z, the logits' product X·v and the
    logits at zero, for one problem: (n,) logits when binary (Kc = 1), (n, K) when not."""
    from scipy.special import expit, log_softmax, softmax

    n, D = X.shape
    f32 = X.dtype
    if Kc == 1:
        yf = y.astype(np.float64)
        my = m * yf

        def loss_z(z: np.ndarray) -> float:
            # softplus(z) = max(z, 0) + log1p(exp(−|z|)): a third of np.logaddexp's time
            a = np.abs(z)
            np.negative(a, out=a)
            np.exp(a, out=a)
            np.log1p(a, out=a)
            return float(a @ m + np.maximum(z, 0.0) @ m - my @ z)

        def dloss(z: np.ndarray) -> np.ndarray:
            dz = expit(z)
            dz -= yf
            dz *= m
            return dz

        def Xv(v: np.ndarray) -> np.ndarray:  # X·v (n,)
            return (X @ v.astype(f32)).astype(np.float64)

        return loss_z, dloss, Xv, np.zeros(n)
    T = np.eye(Kc)[y]
    mT = m[:, None] * T

    def loss_k(z: np.ndarray) -> float:
        return float(-(mT * log_softmax(z, axis=1)).sum())

    def dloss_k(z: np.ndarray) -> np.ndarray:
        dz = softmax(z, axis=1)
        dz -= T
        dz *= m[:, None]
        return dz

    def Xv_k(v: np.ndarray) -> np.ndarray:  # X·V (n, K)
        return (X @ v.reshape(D, Kc).astype(f32)).astype(np.float64)

    return loss_k, dloss_k, Xv_k, np.zeros((n, Kc))


def _xtv(X: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """Xᵀ·dz in the features' dtype, as float64: (D,) for binary logits, (D·K,) for (n, K)."""
    return (
        (dz.astype(X.dtype) @ X if dz.ndim == 1 else X.T @ dz.astype(X.dtype))
        .astype(np.float64)
        .reshape(-1)
    )


def _push_pair_one(
    Sm: np.ndarray, Ym: np.ndarray, SY: np.ndarray, YY: np.ndarray,
    s_vec: np.ndarray, y_vec: np.ndarray, history: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Append (s, y) as the newest pair (dropping the oldest beyond ``history``) and update
    SᵀY and YᵀY by their new row and column only."""
    keep = 1 if len(Sm) >= history else 0
    Sm = np.concatenate([Sm[keep:], s_vec[None]])
    Ym = np.concatenate([Ym[keep:], y_vec[None]])
    k = len(Sm)
    SY2, YY2 = np.empty((k, k)), np.empty((k, k))
    SY2[:-1, :-1], YY2[:-1, :-1] = SY[keep:, keep:], YY[keep:, keep:]
    SY2[:, -1] = Sm @ y_vec
    SY2[-1, :] = Ym @ s_vec
    YY2[:, -1] = YY2[-1, :] = Ym @ y_vec
    return Sm, Ym, SY2, YY2
