"""Newton's method in the primal, float64: the polish of problems whose first solution is not
certified (few parameters: the Hessian has (D+1)·Kc rows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmprobe.probes.logreg.common import LogRegFit

# the most parameters, (D + 1)·Kc, that the primal Newton polish takes, and up to which it is
# tried first (above, a warm L-BFGS in float64 costs less where the features are well scaled)
PRIMAL_MAX_PARAMS = 1536
PRIMAL_FIRST_PARAMS = 256


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
    no longer decreases it (float64's precision). The decrement is taken well below the
    certificate's tolerance: the duality gap, (C/2)‖∇‖², can exceed it by the conditioning of
    the Hessian.

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
        done = done | (info != 0) | (dec <= 2 * decrement_tol * f.abs())
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
