"""The certificate of an optimum: the duality gap of the float64 objective.

For the objective ``P(W, b) = Σ_i m_i ℓ(x_i·W + b, y_i) + ||W||² / 2C`` (log-loss ℓ, binary or
softmax), any class probabilities ``q_i`` whose weighted sum equals the labels' (the intercept's
dual constraint ``Σ_i m_i (q_i − t_i) = 0``) give a lower bound of its minimum P*, by
Fenchel-Young (``softplus*(q) = −H(q)``, the negative entropy)::

    D(q) = Σ_i m_i H(q_i) − (C/2) ||Xᵀ m (q − t)||²  ≤  P*  ≤  P(W, b)

With the intercepts set to their optimum for the given W (a Newton search in K ≤ classes
dimensions, no pass over X) and q the model's own probabilities, the gap collapses to
``P − D = ||W + C·V||² / 2C = (C/2)||∇_W P||²`` with ``V = Xᵀ m (q − t)``: one product with X
per problem, in float64. A gap of ε bounds ``P(W, b) − P*`` by ε and, since P is 1/C-strongly
convex in W, ``||W − W*||`` by ``sqrt(2Cε)``.

Classes absent from a problem's training rows (a cross-validation fold) have no finite
optimum (their intercept tends to −∞); the gap is then taken against the problem without them,
which has the same infimum, plus the excess of the full objective over that reduced one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmprobe.probes.logreg.common import batched_mv, batched_rmv

# relative duality gap of a certified optimum. Measured: on scikit-learn's breast-cancer table
# with raw features (C in {1, 100}, n from 10 to all) every certified AUROC is within 1e-4 of
# newton-cholesky's at tol 1e-10 (tests/test_exact.py); on the sweep benchmark's D = 768
# problems the first solve (relative gradient 1e-5, float32 products) ends at gaps of
# 2e-10..5e-7 of the objective, AUROC within 5e-6 of the optimum's
GAP_TOL = 1e-6
# float64 feature elements per chunk of problems that the certificate handles at once: a
# cache-sized chunk keeps the cast and both products in cache (16 problems of 2,000 × 768:
# 22 ms against 75 ms for one 200 MB copy, measured)
CHUNK_ELEMENTS = 1 << 20


def duality_gap(
    X: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    C: torch.Tensor,
    coef: torch.Tensor,
    intercept: torch.Tensor,
    *,
    n_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The duality gap of B problems at (coef, intercept), in float64.

    Returns ``(gap, objective, intercept)``: the gap (B,), the objective P at the returned
    intercepts (B,), and those intercepts (B, Kc), each the optimum for its problem's weights.
    """
    B, n, D = X.shape
    step = max(1, CHUNK_ELEMENTS // max(n * D, 1))
    out = [
        _gap_chunk(
            X[i : i + step],
            y[i : i + step],
            m[i : i + step],
            C[i : i + step],
            coef[i : i + step],
            intercept[i : i + step],
            n_classes,
        )
        for i in range(0, B, step)
    ]
    gap, obj, b = (torch.cat(parts) for parts in zip(*out, strict=True))
    return gap, obj, b


def certified(gap: torch.Tensor, objective: torch.Tensor) -> torch.Tensor:
    """Which gaps certify their optimum: at most ``GAP_TOL`` of the objective."""
    return gap <= GAP_TOL * objective.abs().clamp_min(1e-300)


def _gap_chunk(
    X: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    C: torch.Tensor,
    coef: torch.Tensor,
    intercept: torch.Tensor,
    n_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dt = torch.float64
    Xd = X.to(dt)
    m = m.to(dt)
    W = coef.to(device=X.device, dtype=dt)
    b = intercept.to(device=X.device, dtype=dt)
    C = C.to(device=X.device, dtype=dt)
    z0 = batched_mv(Xd, W)  # (B, n, Kc) without the intercepts
    if n_classes == 2:
        return _binary_gap(Xd, y.to(dt), m, C, W, b, z0)
    T = F.one_hot(y.long(), n_classes).to(dt)
    present = (m[:, :, None] * T).sum(1) > 0  # (B, K)
    b_new = _softmax_intercepts(z0, b, m, T, present)
    z_full = z0 + b_new[:, None, :]
    ridge = 0.5 * (W * W).sum((1, 2)) / C
    p_full = (m[:, :, None] * (torch.logsumexp(z_full, 2, keepdim=True) - z_full) * T).sum(
        (1, 2)
    ) + ridge
    # the reduced problem: absent classes dropped from the softmax and the penalty
    z_red = z_full.masked_fill(~present[:, None, :], float("-inf"))
    q = torch.softmax(z_red, dim=2)
    lse = torch.logsumexp(z_red, 2, keepdim=True)
    loss_red = m[:, :, None] * (lse - z_full.masked_fill(~present[:, None, :], 0.0)) * T
    Wp = W * present[:, None, :]
    p_red = loss_red.sum((1, 2)) + 0.5 * (Wp * Wp).sum((1, 2)) / C
    V = batched_rmv(Xd, m[:, :, None] * (q - T)) * present[:, None, :]
    gap = ((Wp + C[:, None, None] * V) ** 2).sum((1, 2)) / (2 * C) + (p_full - p_red)
    return gap.clamp_min(0.0), p_full, b_new


def _binary_gap(
    Xd: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    C: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor,
    z0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z = z0[..., 0]
    pos = (m * y).sum(1)
    both = (pos > 0) & (pos < m.sum(1))
    c = b[:, 0].clone()
    for _ in range(30):  # the intercept's optimum: Σ m σ(z + c) = Σ m y, Newton in one dimension
        p = torch.sigmoid(z + c[:, None])
        h = (m * p).sum(1) - pos
        dh = (m * p * (1 - p)).sum(1).clamp_min(1e-300)
        step = torch.where(both, (h / dh).clamp(-8.0, 8.0), 0.0)
        c = c - step
        if bool((step.abs() <= 1e-12 * (1.0 + c.abs())).all()):  # quadratic: 2-4 steps
            break
    zc = z + c[:, None]
    ridge = 0.5 * (W * W).sum((1, 2)) / C
    obj = (m * (F.softplus(zc) - y * zc)).sum(1) + ridge
    q = torch.sigmoid(zc)
    v = batched_rmv(Xd, (m * (q - y))[:, :, None])  # (B, D, 1)
    gap = ((W + C[:, None, None] * v) ** 2).sum((1, 2)) / (2 * C)
    # one class only: the infimum is 0 (the intercept tends to ±∞), the gap the objective
    gap = torch.where(both, gap, obj)
    return gap, obj, c[:, None]


def _softmax_intercepts(
    z0: torch.Tensor, b: torch.Tensor, m: torch.Tensor, T: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """The intercepts of the present classes at their optimum for fixed weights (Newton in K
    dimensions on the logits ``z0`` without intercepts); absent classes keep theirs."""
    K = T.shape[2]
    c = b.clone()
    mt = (m[:, :, None] * T).sum(1)
    eye = torch.eye(K, dtype=z0.dtype, device=z0.device)
    for _ in range(30):
        zr = (z0 + c[:, None, :]).masked_fill(~present[:, None, :], float("-inf"))
        q = torch.softmax(zr, dim=2)
        g = ((m[:, :, None] * q).sum(1) - mt) * present
        mq = m[:, :, None] * q
        H = torch.diag_embed(mq.sum(1)) - torch.bmm(mq.transpose(1, 2), q)
        # the direction along all ones is free (a shift of every logit): damp it, and keep the
        # absent classes out of the system
        keep = present.to(z0.dtype)
        H = H * keep[:, :, None] * keep[:, None, :] + eye * (1 - keep)[:, None, :]
        H = H + eye * 1e-12 * H.diagonal(dim1=1, dim2=2).abs().amax(1)[:, None, None]
        d = torch.linalg.solve(H, g[:, :, None])[..., 0] * keep
        # no shift of every intercept alike (the rounding of g along it, amplified by the
        # damping): the intercepts keep the solver's sum
        d = d - keep * (d.sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1))
        c = c - d.clamp(-8.0, 8.0)
        if bool((d.abs() <= 1e-12 * (1.0 + c.abs())).all()):
            break
    return c
