"""Limited-memory BFGS in the primal, batched in torch (any device): large n and multinomial
problems; warm-startable."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmprobe.probes.logreg.common import LogRegFit, batched_mv, batched_rmv


def lbfgs_direction(
    g: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, SY: torch.Tensor, YY: torch.Tensor
) -> torch.Tensor:
    """The L-BFGS product H·g for B problems, in the compact form of Byrd, Nocedal and
    Schnabel (1994): a dozen batched operations instead of the two-loop recursion's ~100 small
    ones, which dominate an iteration's time when the problems are few.

    ``H = γI + [S γY] [[R⁻ᵀ(D + γYᵀY)R⁻¹, −R⁻ᵀ], [−R⁻¹, 0]] [Sᵀ; γYᵀ]`` with R the upper
    triangle of SᵀY, D its diagonal and γ = sᵀy / yᵀy of the newest pair. Pairs are stored
    oldest first (S, Y: (B, m, P)) with their products ``SY[i, j] = s_i·y_j`` and
    ``YY[i, j] = y_i·y_j`` (B, m, m), kept up to date by the caller; an all-zero pair is empty
    and drops out exactly (its row of R is set to the identity). Without any pair,
    H = I / ||g|| (a unit first step). Products are elementwise sums, not batched GEMMs: a
    threaded BLAS call per tiny product stalls when the machine's cores are shared.
    """
    diag = torch.diagonal(SY, dim1=1, dim2=2)
    empty = diag <= 0
    m = SY.shape[1]
    eye = torch.eye(m, dtype=SY.dtype, device=SY.device)
    r = torch.arange(m, device=SY.device)
    # (no torch.triu: it wakes the whole thread pool even for one 10×10 block, which costs
    # milliseconds when the cores are shared)
    upper = (r[:, None] <= r[None, :]).to(SY.dtype)
    R = SY * upper + empty.to(SY.dtype)[:, :, None] * eye
    Dg = torch.where(empty, torch.zeros_like(diag), diag)
    sy_new, yy_new = diag[:, -1], YY[:, -1, -1]
    gamma = torch.where(
        yy_new > 0, sy_new / yy_new.clamp_min(1e-300), 1.0 / g.norm(dim=1).clamp_min(1e-300)
    )[:, None]
    a = (S * g[:, None, :]).sum(2, keepdim=True)  # (B, m, 1)
    c = (Y * g[:, None, :]).sum(2, keepdim=True)
    t = torch.linalg.solve_triangular(R, a, upper=True)
    u = Dg[:, :, None] * t + gamma[:, :, None] * ((YY * t.transpose(1, 2)).sum(2, keepdim=True) - c)
    p = torch.linalg.solve_triangular(R.transpose(1, 2), u, upper=False)
    return gamma * g + (S * p).sum(1) - gamma * (Y * t).sum(1)


def push_pair(
    S: torch.Tensor,
    Y: torch.Tensor,
    SY: torch.Tensor,
    YY: torch.Tensor,
    s_vec: torch.Tensor,
    y_vec: torch.Tensor,
    good: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append the pair (s, y) as the newest where ``good``, dropping the oldest, and update
    SᵀY and YᵀY by their new row and column only."""
    S2 = torch.cat([S[:, 1:], s_vec[:, None]], dim=1)
    Y2 = torch.cat([Y[:, 1:], y_vec[:, None]], dim=1)
    col = (S2 * y_vec[:, None, :]).sum(2)  # s_i · y_new
    row = (Y2 * s_vec[:, None, :]).sum(2)  # s_new · y_j
    yyc = (Y2 * y_vec[:, None, :]).sum(2)
    SY2 = torch.zeros_like(SY)
    SY2[:, :-1, :-1] = SY[:, 1:, 1:]
    SY2[:, :, -1] = col
    SY2[:, -1, :] = row
    YY2 = torch.zeros_like(YY)
    YY2[:, :-1, :-1] = YY[:, 1:, 1:]
    YY2[:, :, -1] = yyc
    YY2[:, -1, :] = yyc
    k = good[:, None, None]
    return (
        torch.where(k, S2, S),
        torch.where(k, Y2, Y),
        torch.where(k, SY2, SY),
        torch.where(k, YY2, YY),
    )


def lbfgs(
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
    """Batched L-BFGS (compact direction, backtracking Armijo line search) in the primal.

    ``penalty`` (B, D), optional: the L2 term is ``Σ_j penalty_j ||W_j||² / 2`` (feature j's
    weights over the classes) instead of ``||W||² / 2C`` (the whitened problems of
    :mod:`~fmprobe.probes.logreg.whiten`).

    Two passes over the features per iteration, whatever the line search does: the logits are
    kept (z = XW + b) and the search direction's logits u = X·dW + db are computed once, so a
    trial step t costs z + t·u and no product with X; the gradient Xᵀ·∂loss/∂z at the accepted
    point is the second pass. Passes run batched while every problem is active, then on the
    pending problems' gathered rows only. (On a CPU, large problems go to ``_lbfgs_cpu``.)
    """
    B, _, D = X.shape
    dtype = torch.float64
    Kc = 1 if n_classes == 2 else n_classes
    P = D * Kc + Kc
    Xw = X.to(torch.float32) if X.dtype != torch.float64 else X
    invC = (
        (1.0 / C.to(dtype))[:, None].expand(B, D)
        if penalty is None
        else penalty.to(device=X.device, dtype=dtype)
    )
    target = y.to(dtype)[:, :, None] if n_classes == 2 else F.one_hot(y.long(), n_classes).to(dtype)
    prob = PrimalProblem(Xw, target, invC, n_classes)
    unpack, logits, loss_grad_z = prob.unpack, prob.logits, prob.loss_grad_z
    gradient, regulariser = prob.gradient, prob.regulariser

    theta = torch.zeros(B, P, dtype=dtype, device=X.device)
    z = torch.zeros(B, X.shape[1], Kc, dtype=dtype, device=X.device)
    _, dz0 = loss_grad_z(z, m, target, True)
    assert dz0 is not None
    g0 = gradient(theta, dz0, None).norm(dim=1).clamp_min(1e-12)
    if init is not None:
        theta = torch.cat([init.coef.reshape(B, -1), init.intercept], dim=1).to(dtype)
        z = logits(theta, None)
    f, dz = loss_grad_z(z, m, target, True)
    assert dz is not None
    f = f + regulariser(theta)
    g = gradient(theta, dz, None)
    # rounding of the float32 products in f: relative float32 epsilon of the summed terms
    f_noise = torch.zeros_like(f) if Xw.dtype == torch.float64 else 1e-6 * f.abs().clamp_min(1.0)
    # curvature pairs, oldest first (B, history, P); empty pairs are zeros
    S = torch.zeros(B, history, P, dtype=dtype, device=X.device)
    Y = torch.zeros_like(S)
    SY = torch.zeros(B, history, history, dtype=dtype, device=X.device)
    YY = torch.zeros_like(SY)
    converged = g.norm(dim=1) <= tol * g0
    stalled = torch.zeros_like(converged)
    n_iter = torch.zeros(B, dtype=torch.long, device=X.device)
    for _k in range(max_iter):
        if bool(converged.all()):
            break
        q = lbfgs_direction(g, S, Y, SY, YY)
        d = -q
        slope = (g * d).sum(1)
        bad = slope >= 0  # not a descent direction: restart along the gradient
        d = torch.where(bad[:, None], -g / g.norm(dim=1, keepdim=True).clamp_min(1e-300), d)
        slope = (g * d).sum(1)
        active = ~converged
        rows = None if bool(active.all()) else torch.nonzero(active)[:, 0]
        # the problems still running, as a contiguous block of their own
        th_a = theta if rows is None else theta[rows]
        d_a = d if rows is None else d[rows]
        z_a = z if rows is None else z[rows]
        m_a = m if rows is None else m[rows]
        t_a = target if rows is None else target[rows]
        f_a = f if rows is None else f[rows]
        slope_a = slope if rows is None else slope[rows]
        noise_a = f_noise if rows is None else f_noise[rows]
        # the direction's logits u = X·dW + db
        dW, _ = unpack(d_a)
        u = logits(d_a, rows)
        W_a, _ = unpack(th_a)
        # the L2 term along the step, weighted: W·W, W·dW and dW·dW
        pen = (invC if rows is None else invC[rows])[:, :, None]
        pdW = pen * dW
        ww, wd, dd = (pen * W_a * W_a).sum((1, 2)), (pdW * W_a).sum((1, 2)), (pdW * dW).sum((1, 2))
        step, accepted, f_new = _backtrack(
            prob, z_a, u, m_a, t_a, f_a, slope_a, noise_a, (ww, wd, dd)
        )
        # accepted problems move; the others (no decrease even for tiny steps) stay
        st = torch.where(accepted, step, torch.zeros_like(step))
        th_new = th_a + st[:, None] * d_a
        z_new = z_a + st[:, None, None] * u
        _, dz_new = loss_grad_z(z_new, m_a, t_a, True)
        assert dz_new is not None
        g_new = gradient(th_new, dz_new, rows)
        upd = torch.zeros(B, dtype=torch.bool, device=X.device)
        if rows is None:
            upd = accepted
            theta_new, f_full, g_full, z_full = th_new, f_new, g_new, z_new
        else:
            upd[rows] = accepted
            theta_new, f_full, g_full, z_full = theta.clone(), f.clone(), g.clone(), z.clone()
            theta_new[rows], f_full[rows], g_full[rows], z_full[rows] = th_new, f_new, g_new, z_new
        s_vec = torch.where(upd[:, None], theta_new - theta, torch.zeros_like(theta))
        y_vec = torch.where(upd[:, None], g_full - g, torch.zeros_like(g))
        sy = (s_vec * y_vec).sum(1)
        good = upd & (sy > 1e-12 * (y_vec * y_vec).sum(1).sqrt() * (s_vec * s_vec).sum(1).sqrt())
        S, Y, SY, YY = push_pair(S, Y, SY, YY, s_vec, y_vec, good)
        theta = torch.where(upd[:, None], theta_new, theta)
        f = torch.where(upd, f_full, f)
        g = torch.where(upd[:, None], g_full, g)
        z = torch.where(upd[:, None, None], z_full, z)
        n_iter = n_iter + active.long()
        # no decrease along a descent direction even for tiny steps: the objective is flat to
        # its floating-point precision, which counts as converged
        stalled = stalled | (active & ~upd)
        converged = converged | (g.norm(dim=1) <= tol * g0) | stalled
    W, b = unpack(theta)
    return LogRegFit(coef=W, intercept=b, converged=converged, n_iter=n_iter)


class PrimalProblem:
    """The objective of B problems in the primal, θ = (W (D, Kc) flattened, b (Kc)): logits,
    the summed log-loss and its derivative in the logits, the gradient and the L2 term
    ``Σ_j invC_j ||W_j||² / 2`` (``invC`` (B, D): 1/C per problem, or a weight per feature).
    Products with X in the features' dtype (float32 unless they are float64), sums in
    float64."""

    def __init__(
        self, X: torch.Tensor, target: torch.Tensor, invC: torch.Tensor, n_classes: int
    ) -> None:
        self.X, self.target, self.invC, self.n_classes = X, target, invC, n_classes
        self.D = X.shape[2]
        self.Kc = 1 if n_classes == 2 else n_classes

    def unpack(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        DK = self.D * self.Kc
        return theta[:, :DK].reshape(len(theta), self.D, self.Kc), theta[:, DK:]

    def logits(self, theta: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """X·W + b of the problems ``rows`` (all when None), float64 (b, n, Kc)."""
        W, b = self.unpack(theta)
        X = self.X if rows is None else self.X[rows]
        return batched_mv(X, W.to(X.dtype)).to(torch.float64) + b[:, None, :]

    def loss_grad_z(
        self, z: torch.Tensor, mr: torch.Tensor, tr: torch.Tensor, want_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Summed log-loss of logits ``z`` and, if asked, its derivative in z."""
        if self.n_classes == 2:
            loss = (mr[:, :, None] * (F.softplus(z) - tr * z)).sum((1, 2))
            dz = mr[:, :, None] * (torch.sigmoid(z) - tr) if want_grad else None
        else:
            lse = torch.logsumexp(z, dim=2, keepdim=True)
            loss = (mr[:, :, None] * (lse - z) * tr).sum((1, 2))
            dz = mr[:, :, None] * (torch.exp(z - lse) - tr) if want_grad else None
        return loss, dz

    def gradient(
        self, theta: torch.Tensor, dz: torch.Tensor, rows: torch.Tensor | None
    ) -> torch.Tensor:
        W, _ = self.unpack(theta)
        X = self.X if rows is None else self.X[rows]
        gX = batched_rmv(X, dz.to(X.dtype))
        ic = self.invC if rows is None else self.invC[rows]
        gW = gX.to(torch.float64) + W * ic[:, :, None]
        return torch.cat([gW.reshape(len(theta), -1), dz.sum(1)], dim=1)

    def regulariser(self, theta: torch.Tensor) -> torch.Tensor:
        W, _ = self.unpack(theta)
        return 0.5 * (self.invC[:, :, None] * W * W).sum((1, 2))


def _backtrack(
    prob: PrimalProblem,
    z: torch.Tensor,
    u: torch.Tensor,
    m: torch.Tensor,
    target: torch.Tensor,
    f: torch.Tensor,
    slope: torch.Tensor,
    noise: torch.Tensor,
    products: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Armijo backtracking along the direction with logits ``u`` from logits ``z``, on the
    problems that still need it only (a trial is z + t·u, no product with X); ``products`` are
    the L2 term's weighted W·W, W·dW and dW·dW. Returns the step, whether it was accepted,
    and the objective there."""
    ww, wd, dd = products
    Ba = len(z)
    step = torch.ones(Ba, dtype=torch.float64, device=z.device)
    accepted = torch.zeros(Ba, dtype=torch.bool, device=z.device)
    f_new = f.clone()
    pending = torch.arange(Ba, device=z.device)
    for _ls in range(30):
        t = step[pending]
        zp = z[pending] + t[:, None, None] * u[pending]
        lp, _ = prob.loss_grad_z(zp, m[pending], target[pending], False)
        fp = lp + 0.5 * (ww[pending] + 2 * t * wd[pending] + t * t * dd[pending])
        # Armijo, up to the objective's rounding: z comes from a float32 product, so near
        # the optimum a true decrease can be smaller than the noise in f (without this,
        # such steps backtrack 30 times and the problem is declared stalled)
        okp = fp <= f[pending] + 1e-4 * t * slope[pending] + noise[pending]
        f_new[pending] = fp
        accepted[pending] = okp
        pending = pending[~okp]
        if len(pending) == 0:
            break
        step[pending] = step[pending] / 2
    return step, accepted, f_new
