"""Closed-form and non-parametric probes batched like the logistic regression: cosine kNN
(several k from one similarity matrix) and a ridge classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def knn_scores(
    X: torch.Tensor,
    y: torch.Tensor,
    X_test: torch.Tensor,
    *,
    ks: Sequence[int],
    n_classes: int,
    mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Cosine k-nearest-neighbour class scores for every k in ``ks``.

    Parameters
    ----------
    X : Tensor (B, n, D)
        Training rows of B problems; ``mask`` (B, n) marks the rows that count.
    y : Tensor (B, n) int
    X_test : Tensor (T, D)
        Test rows shared by all problems.

    Returns
    -------
    list of Tensor, one per k: (B, T) share of neighbours in class 1 for binary problems,
    else (B, T, K) share in each class. k is capped at the number of training rows.

    The neighbours are those of the float64 cosine similarities, ties broken by the smaller
    training position (``exact_top``): float32 products where they decide the neighbour set
    beyond their rounding, float64 for the test rows where they do not.
    """
    Xn = F.normalize(X.float(), dim=-1)
    Tn = F.normalize(X_test.float(), dim=-1)
    sim = torch.einsum("td,bnd->btn", Tn, Xn)
    if mask is not None:
        sim = sim.masked_fill(~mask[:, None, :].bool(), float("-inf"))
    n_valid = int(mask.sum(1).min()) if mask is not None else X.shape[1]
    kmax = min(max(ks), n_valid)
    top = exact_top(sim, kmax, sorted({min(k, kmax) for k in ks}), X, X_test, mask)
    labels = torch.gather(y[:, None, :].expand(-1, sim.shape[1], -1), 2, top)
    onehot = F.one_hot(labels.long(), n_classes).to(torch.float64).cumsum(2)
    out = []
    for k in ks:
        kk = min(k, kmax)
        share = onehot[:, :, kk - 1, :] / kk
        out.append(share[..., 1] if n_classes == 2 else share)
    return out


# bound of the rounding of a float32 cosine of unit vectors, per feature: the dot product's
# accumulation (γ_D ≤ D·u for |a|·|b| ≤ 1) plus the normalisation of both vectors
_F32_COSINE_ERR = 2.0**-24


def exact_top(
    sim: torch.Tensor,
    kmax: int,
    ks: list[int],
    X: torch.Tensor,
    X_test: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The ``kmax`` nearest training rows (B, T, kmax) of each test row, exact for every
    neighbour count in ``ks``: from the float32 similarities ``sim`` (B, T, n) where the gap
    after the k-th neighbour exceeds twice their rounding bound (so the k nearest are the same
    set in exact arithmetic), else from float64 similarities of that test row, ordered by
    similarity and then by training position."""
    B, T, n = sim.shape
    D = X.shape[-1]
    kk = min(kmax + 1, n)
    vals, top = torch.topk(sim, kk, dim=-1, sorted=True)
    eps = 2 * (D + 4) * _F32_COSINE_ERR
    close = torch.zeros(B, T, dtype=torch.bool, device=sim.device)
    for k in ks:
        if k < kk:
            close |= (vals[..., k - 1] - vals[..., k]) <= eps
    top = top[..., :kmax].clone()
    if not bool(close.any()):
        return top
    Tn = F.normalize(X_test.to(torch.float64), dim=-1)
    for b in torch.nonzero(close.any(1))[:, 0].tolist():
        rows = torch.nonzero(close[b])[:, 0]
        Xb = F.normalize(X[b].to(torch.float64), dim=-1)
        s = Tn[rows] @ Xb.T
        if mask is not None:
            s = s.masked_fill(~mask[b].bool()[None, :], float("-inf"))
        top[b, rows] = torch.sort(-s, dim=-1, stable=True).indices[:, :kmax]
    return top


def ridge_fit_predict(
    X: torch.Tensor,
    y: torch.Tensor,
    X_test: torch.Tensor,
    C: torch.Tensor | float,
    *,
    n_classes: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ridge classifier (scikit-learn's ``RidgeClassifier`` with ``alpha = 1/C``): targets ±1
    per class, intercept by centring, solved in closed form (kernel form when n <= D).

    Returns the decision values on ``X_test``: (B, T) for binary problems, else (B, T, K).
    """
    B, n, D = X.shape
    dtype = torch.float64
    m = torch.ones(B, n, dtype=dtype, device=X.device) if mask is None else mask.to(dtype)
    Y = F.one_hot(y.long(), n_classes).to(dtype) * 2 - 1
    if n_classes == 2:
        Y = Y[..., 1:]
    Xd = X.to(dtype)
    cnt = m.sum(1, keepdim=True)
    x_mean = (Xd * m[..., None]).sum(1) / cnt
    y_mean = (Y * m[..., None]).sum(1) / cnt
    Xc = (Xd - x_mean[:, None]) * m[..., None]
    Yc = (Y - y_mean[:, None]) * m[..., None]
    alpha = (1.0 / torch.as_tensor(C, dtype=dtype, device=X.device)).expand(B)
    if n <= D:
        G = torch.bmm(Xc, Xc.transpose(1, 2)) + alpha[:, None, None] * torch.eye(
            n, dtype=dtype, device=X.device
        )
        W = torch.bmm(Xc.transpose(1, 2), torch.linalg.solve(G, Yc))
    else:
        G = torch.bmm(Xc.transpose(1, 2), Xc) + alpha[:, None, None] * torch.eye(
            D, dtype=dtype, device=X.device
        )
        W = torch.linalg.solve(G, torch.bmm(Xc.transpose(1, 2), Yc))
    b = y_mean - torch.bmm(x_mean[:, None, :], W)[:, 0]
    scores = torch.einsum("td,bdk->btk", X_test.to(dtype), W) + b[:, None, :]
    return scores[..., 0] if n_classes == 2 else scores
