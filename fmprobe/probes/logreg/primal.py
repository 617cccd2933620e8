"""Newton's method in the primal, float64: the polish of problems whose first solution is not
certified (few parameters: the Hessian has (D+1)·Kc rows)."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from fmprobe.probes.logreg.certify import GAP_TOL
from fmprobe.probes.logreg.common import LogRegFit, batched_mv
from fmprobe.probes.logreg.whiten import rotation

# the most parameters, (min(n, D) + 1)·Kc, that the primal Newton polish takes, and up to which
# it is tried first (above, a warm L-BFGS in float64 costs less where the features are well
# scaled)
PRIMAL_MAX_PARAMS = 2048
PRIMAL_FIRST_PARAMS = 256
# float64 elements of the Hessians and their products per chunk of problems (256 MB)
CHUNK_ELEMENTS = 1 << 25


def primal_params(n: int, D: int, Kc: int) -> int:
    """The parameters of :func:`newton_primal_span` on n rows of D features: (min(n, D) + 1)·Kc."""
    return (min(n, D) + 1) * Kc


def newton_primal_span(
    X: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    C: torch.Tensor,
    *,
    n_classes: int,
    init: LogRegFit | None,
    max_iter: int = 50,
) -> LogRegFit:
    """:func:`newton_primal` in the span of each problem's training rows where n < D.

    The optimum's weights are ``-C·Xᵀ m (q - t)``, a combination of the training rows, so with
    ``X = U S Vᵀ`` (the rows that count, thin SVD) the problem on the n coordinates ``X V``
    with weights ``Ω`` (``W = V Ω``, ``||W|| = ||Ω||``) has the same optimum and (n + 1)·Kc
    parameters instead of (D + 1)·Kc. The warm start is projected onto the span, which only
    lowers its penalty.
    """
    B, n, D = X.shape
    Kc = 1 if n_classes == 2 else n_classes
    P = primal_params(n, D, Kc)
    step = max(1, CHUNK_ELEMENTS // (n * P + P * P))
    if step < B:  # the Hessians and the products that build them, a chunk of problems at once
        parts = [
            newton_primal_span(X[i : i + step], y[i : i + step], m[i : i + step],
                               C[i : i + step], n_classes=n_classes, max_iter=max_iter,
                               init=None if init is None else init.rows(slice(i, i + step)))
            for i in range(0, B, step)
        ]  # fmt: skip
        return LogRegFit(
            coef=torch.cat([p.coef for p in parts]),
            intercept=torch.cat([p.intercept for p in parts]),
            converged=torch.cat([p.converged for p in parts]),
            n_iter=torch.cat([p.n_iter for p in parts]),
        )
    if n >= D:
        return newton_primal(X, y, m, C, n_classes=n_classes, init=init, max_iter=max_iter)
    dt = torch.float64
    Vh = rotation(X, m).Vh  # (B, n, D)
    Xr = torch.bmm(X.to(dt) * (m > 0).to(dt)[:, :, None], Vh.transpose(1, 2))  # (B, n, n) = U S
    init_r = (
        None
        if init is None
        else replace(init, coef=batched_mv(Vh, init.coef.to(device=X.device, dtype=dt)))
    )
    fit = newton_primal(Xr, y, m, C, n_classes=n_classes, init=init_r, max_iter=max_iter)
    return replace(fit, coef=batched_mv(Vh.transpose(1, 2), fit.coef))


def newton_primal(
    X: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    C: torch.Tensor,
    *,
    n_classes: int,
    init: LogRegFit | None,
    max_iter: int = 50,
    decrement_tol: float = 1e-20,
) -> LogRegFit:
    """Damped Newton on ``Σ m ℓ + ||W||²/2C`` in float64 from ``init`` (or zero), with
    backtracking on the exact objective; stops when the Newton decrement ``λ²/2`` (the
    predicted decrease) is at most ``decrement_tol`` times the objective, or when a Newton step
    no longer decreases it (float64's precision), or once both the decrement and the duality
    gap at the current intercepts, (C/2)‖∇_W‖², are under a hundredth of the certificate's
    tolerance (the gap can exceed the decrement by the conditioning of the Hessian, so the
    decrement alone is not enough).

    Parameters are handled as (B, Kc, D+1): each class's weights and its intercept. The
    softmax's free direction (the same shift of every intercept) is damped.
    """
    dt = torch.float64
    B, n, D = X.shape
    Kc = 1 if n_classes == 2 else n_classes
    Xt = torch.cat([X.to(dt), torch.ones(B, n, 1, dtype=dt, device=X.device)], dim=2)
    m = m.to(dt)
    C = C.to(dt)
    T = y.to(dt)[:, :, None] if Kc == 1 else F.one_hot(y.long(), n_classes).to(dt)
    th = torch.zeros(B, Kc, D + 1, dtype=dt, device=X.device)
    if init is not None:
        th[:, :, :D] = init.coef.to(device=X.device, dtype=dt).transpose(1, 2)
        th[:, :, D] = init.intercept.to(device=X.device, dtype=dt)
    pen = torch.ones(D + 1, dtype=dt, device=X.device)
    pen[D] = 0.0  # the intercept is not penalised

    def objective(th: torch.Tensor) -> torch.Tensor:
        z = torch.bmm(Xt, th.transpose(1, 2))
        if Kc == 1:
            loss = (m[:, :, None] * (F.softplus(z) - T * z)).sum((1, 2))
        else:
            loss = (m[:, :, None] * (torch.logsumexp(z, 2, keepdim=True) - z) * T).sum((1, 2))
        return loss + 0.5 * (th * th * pen).sum((1, 2)) / C

    f = objective(th)
    done = torch.zeros(B, dtype=torch.bool, device=X.device)
    n_iter = torch.zeros(B, dtype=torch.long, device=X.device)
    for _ in range(max_iter):
        g, H = _gradient_hessian(Xt, m, T, C, th, pen, Kc)
        step, info = _newton_step(H, g.reshape(B, -1))
        dec = (g.reshape(B, -1) * step).sum(1)
        # certified with a margin: the gap (C/2)||∇_W||² (at these intercepts) and the
        # predicted decrease both a hundredth of the certificate's tolerance
        gap_w = 0.5 * C * (g[:, :, :D] ** 2).sum((1, 2))
        sure = (gap_w <= 1e-2 * GAP_TOL * f.abs()) & (dec <= 2e-2 * GAP_TOL * f.abs())
        done = done | (info != 0) | (dec <= 2 * decrement_tol * f.abs()) | sure
        if bool(done.all()):
            break
        step = torch.where(done[:, None], 0.0, step).reshape(B, Kc, D + 1)
        if Kc > 1:  # no shift of every intercept alike (the free direction)
            step[:, :, D] -= step[:, :, D].mean(1, keepdim=True)
        t = torch.ones(B, dtype=dt, device=X.device)
        for _ls in range(30):
            f_new = objective(th - t[:, None, None] * step)
            ok = (f_new <= f - 1e-4 * t * dec) | done
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t / 2)
        moved = ok & ~done
        th = torch.where(moved[:, None, None], th - t[:, None, None] * step, th)
        f = torch.where(moved, f_new, f)
        n_iter = n_iter + moved.long()
        done = done | ~ok  # no decrease along a Newton step: flat to float64 precision
    return LogRegFit(
        coef=th[:, :, :D].transpose(1, 2).contiguous(),
        intercept=th[:, :, D].contiguous(),
        converged=done,
        n_iter=n_iter,
    )


def _newton_step(H: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """H⁻¹g for B systems, Jacobi-scaled (Newton's step is invariant to the scaling, and
    unscaled features make H's diagonal span many orders of magnitude); where Cholesky fails,
    with a damping raised tenfold up to 1e-6 of the scaled diagonal. Returns the step and
    LAPACK's info (non-zero: no step)."""
    d = H.diagonal(dim1=1, dim2=2).clamp_min(1e-300).sqrt()
    Hs = H / (d[:, :, None] * d[:, None, :])
    eye = torch.eye(H.shape[1], dtype=H.dtype, device=H.device)
    L, info = torch.linalg.cholesky_ex(Hs)
    damp = 1e-14
    while bool((info != 0).any()) and damp <= 1e-6:
        L2, info2 = torch.linalg.cholesky_ex(Hs + damp * eye)
        redo = info != 0
        L = torch.where(redo[:, None, None], L2, L)
        info = torch.where(redo, info2, info)
        damp *= 10
    u = torch.cholesky_solve((g / d)[:, :, None], L)[..., 0]
    return u / d, info


def _gradient_hessian(
    Xt: torch.Tensor,
    m: torch.Tensor,
    T: torch.Tensor,
    C: torch.Tensor,
    th: torch.Tensor,
    pen: torch.Tensor,
    Kc: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient (B, Kc, D+1) and Hessian (B, Kc(D+1), Kc(D+1)) of the primal objective."""
    B, n, Dp = Xt.shape
    z = torch.bmm(Xt, th.transpose(1, 2))
    reg = pen / C[:, None]  # (B, D+1)
    if Kc == 1:
        p = torch.sigmoid(z)
        g = torch.bmm((m[:, :, None] * (p - T)).transpose(1, 2), Xt) + th * reg[:, None, :]
        s = m * (p * (1 - p))[..., 0]
        H = torch.bmm(Xt.transpose(1, 2), s[:, :, None] * Xt) + torch.diag_embed(reg)
        return g, H
    q = torch.softmax(z, dim=2)
    mq = m[:, :, None] * q
    g = torch.bmm((m[:, :, None] * (q - T)).transpose(1, 2), Xt) + th * reg[:, None, :]
    # H = blockdiag_k(X̃ᵀ diag(m q_k) X̃) − Zᵀ diag(m) Z with Z = q ⊗ X̃ (rows (n, Kc·(D+1)))
    Z = (q[:, :, :, None] * Xt[:, :, None, :]).reshape(B, n, Kc * Dp)
    H = -torch.bmm(Z.transpose(1, 2), m[:, :, None] * Z)
    blocks = torch.einsum("bnk,bni,bnj->bkij", mq, Xt, Xt)
    Hv = H.view(B, Kc, Dp, Kc, Dp)
    for k in range(Kc):
        Hv[:, k, :, k, :] += blocks[:, k] + torch.diag_embed(reg)
    # the free direction of the softmax (every intercept shifted alike): damped
    idx = torch.arange(Kc, device=Xt.device) * Dp + (Dp - 1)
    scale = H.diagonal(dim1=1, dim2=2).abs().amax(1)
    H[:, idx, idx] += 1e-12 * scale[:, None] + 1e-300
    return g, H
