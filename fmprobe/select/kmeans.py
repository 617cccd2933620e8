"""k-means as scikit-learn's ``KMeans`` computes it (greedy k-means++, Lloyd's iterations to a
tolerance, the best of ``n_init`` runs), with the nearest-centroid searches run through the
selection backend (faiss ``IndexFlatL2`` or blocked torch products, CPU or CUDA).

What matches scikit-learn (``sklearn/cluster/_kmeans.py``):

- **Seeding**: greedy k-means++ (Arthur & Vassilvitskii 2007, as scikit-learn implements it):
  the first centre a uniformly drawn row; each further centre the best of ``2 + ⌊ln k⌋``
  candidates drawn with probability proportional to the squared distance to the nearest centre
  so far, "best" meaning the smallest total squared distance (potential) once it is added.
- **Iterations**: Lloyd's; stop when the labels no longer change, or when the squared
  centre shift summed over the centres is at most ``tol × mean per-feature variance``
  (scikit-learn's relative tolerance, default 1e-4), or after ``max_iter`` (300); a last
  assignment step makes the labels those of the final centres.
- **Restarts**: ``n_init`` runs from different seedings, the one of lowest inertia kept.

What differs: a cluster left empty takes the row farthest from its centre among clusters with
more than one member (scikit-learn takes the farthest rows whatever their cluster), so every
cluster ends non-empty; assignments re-rank each row's two nearest centres on exactly
recomputed distances, so faiss and torch agree on near-ties; centre sums accumulate in float64.
The random draws come from ``numpy.random.default_rng([seed, run])``, not scikit-learn's
``RandomState``: the same ``seed`` gives the same partition here, not scikit-learn's partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse

from fmprobe.select.compute import Backend, exact_d2, nearest_candidates, sq_dist_to

KMEANS_N_INIT = 3
KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4
_SUM_BYTES = 32 * 2**20  # float64 rows converted at a time for the centre sums (CUDA)
_SUM_BLOCK = 4096  # rows per float32 partial sum (CPU)


@dataclass(frozen=True)
class KMeansResult:
    """A k-means partition.

    Attributes
    ----------
    labels : np.ndarray
        (N,) int64 in 0..k-1; every cluster non-empty.
    centroids : np.ndarray
        (k, D) float32, the mean of each cluster's rows.
    d2 : np.ndarray
        (N,) float32 squared distance of each row to its centroid.
    iterations : int
        Lloyd iterations of the kept run.
    converged : bool
        Whether the kept run stopped by the tolerance (or unchanged labels) before ``max_iter``.
    n_init : int
        Runs made; the one of lowest inertia is kept.
    """

    labels: np.ndarray
    centroids: np.ndarray
    d2: np.ndarray
    iterations: int
    converged: bool = True
    n_init: int = 1

    @property
    def inertia(self) -> float:
        """Sum of squared distances of the rows to their centroids (scikit-learn's inertia_)."""
        return float(self.d2.sum(dtype=np.float64))


def kmeans_plusplus(
    x: np.ndarray,
    k: int,
    *,
    rngs: list[np.random.Generator],
    be: Backend,
    trials: int | None = None,
) -> np.ndarray:
    """Greedy k-means++ seedings, one per generator: the row indices (R, k) of initial centres.

    The R seedings advance together so that each step reads the rows once for every
    candidate of every seeding (the pass is bound by memory, not arithmetic); seeding r
    draws only from ``rngs[r]``, so it is the seeding ``[rngs[r]]`` alone would give.

    Parameters
    ----------
    x : (N, D) float32
    k : int
        Centres, 1 <= k <= N.
    rngs : list of numpy Generators
        One per seeding.
    be : Backend
        Where the distances to the candidates are computed.
    trials : int, optional
        Candidates per step; default ``2 + floor(ln k)``, as scikit-learn (1 is the plain
        k-means++ of the paper).

    Returns
    -------
    np.ndarray
        (R, k) int64; each row distinct rows of ``x`` (when ``x`` holds k distinct points).

    Examples
    --------
    >>> from fmprobe.select.compute import resolve_backend
    >>> x = np.array([[0.0], [0.1], [10.0], [10.1]], dtype=np.float32)
    >>> c = kmeans_plusplus(x, 2, rngs=[np.random.default_rng(0)], be=resolve_backend("cpu"))
    >>> sorted(int(v) // 2 for v in c[0])  # one centre in each pair
    [0, 1]
    """
    n, runs = len(x), len(rngs)
    n_trials = 2 + int(np.log(k)) if trials is None else int(trials)
    on_cpu = be.device.type == "cpu"
    xt = None if on_cpu else torch.as_tensor(x, device=be.device)
    xn = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    xn_t = None if xt is None else (xt * xt).sum(1)

    def d2_to(rows: np.ndarray) -> np.ndarray:
        """(N, len(rows)) float64 squared distances; on a CPU in numpy, whose elementwise
        passes do not wait on a thread pool (2x faster than torch's on a loaded machine)."""
        if xt is None or xn_t is None:
            d = (x @ x[rows].T).astype(np.float64)
            d *= -2.0
            d += xn[:, None]
            d += xn[rows][None, :]
            return np.maximum(d, 0.0, out=d)
        c = xt[torch.as_tensor(rows, device=be.device)]
        return sq_dist_to(xt, xn_t, c).double().cpu().numpy()

    centers = np.empty((runs, k), dtype=np.int64)
    centers[:, 0] = [int(g.integers(n)) for g in rngs]
    closest = d2_to(centers[:, 0]).T.copy()  # (R, N)
    closest[np.arange(runs), centers[:, 0]] = 0.0
    pot = closest.sum(1)
    done = np.zeros(runs, dtype=bool)
    for c in range(1, k):
        for r in np.flatnonzero(~done & ~(pot > 0)):  # every row on a centre: unchosen rows
            rest = np.setdiff1d(np.arange(n), centers[r, :c])
            centers[r, c:] = rest[: k - c]
            done[r] = True
        live = np.flatnonzero(~done)
        if not len(live):
            break
        cand = np.stack(
            [
                np.searchsorted(np.cumsum(closest[r]), rngs[r].random(n_trials) * pot[r])
                for r in live
            ]
        )
        cand = np.minimum(cand, n - 1)  # (L, trials)
        dist = d2_to(cand.ravel()).T.reshape(len(live), n_trials, n)
        np.minimum(dist, closest[live, None, :], out=dist)
        dist[np.arange(len(live))[:, None], np.arange(n_trials)[None, :], cand] = 0.0
        pots = dist.sum(2)  # (L, trials)
        best = np.argmin(pots, axis=1)
        centers[live, c] = cand[np.arange(len(live)), best]
        closest[live] = dist[np.arange(len(live)), best]
        pot[live] = pots[np.arange(len(live)), best]
    return centers


# Relative margin below which the two nearest centroids of a row are re-ranked on exactly
# recomputed distances: above the float32 error of the expanded distance
# |x|^2 + |c|^2 - 2 x.c for D up to ~1,000 even in the worst case (D * 2^-24 relative).
_NEAR_TIE = 1e-4


def _assign(
    x: np.ndarray, xn: np.ndarray, centroids: np.ndarray, be: Backend
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Nearest centroid of every row and the cluster sizes; an empty cluster takes the row
    farthest from its centroid among clusters of more than one row. Returns the labels, the
    sizes and the rows so moved (in the order of the empty clusters).

    The two nearest centroids come from the backend's expanded distances; where they are
    within the float32 error of each other the exact distances decide (ties to the lower
    index), so faiss, torch and numpy searches give the same labels."""
    k = len(centroids)
    if k == 1:
        labels = np.zeros(len(x), dtype=np.int64)
    else:
        d2a, idx = nearest_candidates(centroids, x, 2, be, centre=False)  # lloyd centred x
        swap = (d2a[:, 1] < d2a[:, 0]) | ((d2a[:, 1] == d2a[:, 0]) & (idx[:, 1] < idx[:, 0]))
        idx[swap] = idx[swap][:, ::-1]
        d2a[swap] = d2a[swap][:, ::-1]
        cn = np.einsum("ij,ij->i", centroids, centroids)
        near = np.flatnonzero(d2a[:, 1] - d2a[:, 0] <= _NEAR_TIE * (xn + cn.max()))
        labels = idx[:, 0].copy()
        if len(near):
            exact = exact_d2(centroids, x[near], idx[near])
            second = (exact[:, 1] < exact[:, 0]) | (
                (exact[:, 1] == exact[:, 0]) & (idx[near, 1] < idx[near, 0])
            )
            labels[near[second]] = idx[near[second], 1]
    counts = np.bincount(labels, minlength=k)
    moved: list[int] = []
    if (counts == 0).any():
        d2 = _d2_to_own(x, centroids, labels)
        for empty in np.flatnonzero(counts == 0):
            movable = counts[labels] > 1
            far = int(np.argmax(np.where(movable, d2, -1.0)))
            counts[labels[far]] -= 1
            labels[far], d2[far] = empty, 0.0
            counts[empty] = 1
            moved.append(far)
    return labels, counts, moved


def _means(x: np.ndarray, labels: np.ndarray, counts: np.ndarray, be: Backend) -> np.ndarray:
    """(k, D) float32 mean of each cluster's rows (a sparse one-hot product on a CPU, 2.4x
    faster there than torch's ``index_add_``; ``index_add_`` in float64 on CUDA)."""
    k = len(counts)
    step = max(1, _SUM_BYTES // (8 * x.shape[1]))
    if be.device.type == "cpu":
        # float32 partial sums over blocks of 4,096 rows (relative error ~ 64 * 2^-24),
        # accumulated in float64: no float64 copy of the rows
        sums = np.zeros((k, x.shape[1]))
        for s in range(0, len(x), _SUM_BLOCK):
            lab = labels[s : s + _SUM_BLOCK]
            onehot = sparse.csr_matrix(
                (np.ones(len(lab), dtype=np.float32), (lab, np.arange(len(lab)))),
                shape=(k, len(lab)),
            )
            sums += onehot @ x[s : s + _SUM_BLOCK]
        return np.ascontiguousarray((sums / counts[:, None]).astype(np.float32))
    xt = torch.as_tensor(x, device=be.device)
    lab_t = torch.as_tensor(labels, device=be.device)
    sums_t = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=be.device)
    for s in range(0, len(x), step):
        sums_t.index_add_(0, lab_t[s : s + step], xt[s : s + step].double())
    means = sums_t / torch.as_tensor(counts, dtype=torch.float64, device=be.device)[:, None]
    return np.ascontiguousarray(means.float().cpu().numpy())


def _d2_to_own(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) float32 exact squared distance of each row to its centroid."""
    return exact_d2(centroids, x, labels[:, None])[:, 0]


def lloyd(
    x: np.ndarray,
    centroids: np.ndarray,
    *,
    be: Backend,
    max_iter: int = KMEANS_MAX_ITER,
    tol: float = KMEANS_TOL,
) -> KMeansResult:
    """Lloyd's iterations from ``centroids`` (k, D) until the labels repeat or the summed
    squared centre shift is at most ``tol`` times the mean per-feature variance of ``x``.
    Runs on the data centred on its mean, as scikit-learn does (distances are then computed
    relative to the data's spread, not its offset)."""
    mu = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    x = np.ascontiguousarray(x - mu, dtype=np.float32)
    xn = np.einsum("ij,ij->i", x, x)
    tol_abs = float(np.mean(np.var(x, axis=0, dtype=np.float64))) * tol
    centroids = np.ascontiguousarray(centroids - mu, dtype=np.float32)
    labels_old = np.full(len(x), -1, dtype=np.int64)
    strict = converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        labels, counts, _ = _assign(x, xn, centroids, be)
        new = _means(x, labels, counts, be)
        shift = float(((new.astype(np.float64) - centroids) ** 2).sum())
        centroids = new
        if np.array_equal(labels, labels_old):
            strict = converged = True
            break
        labels_old = labels
        if shift <= tol_abs:
            converged = True
            break
    if not strict:  # the labels of the final centres
        labels, _, moved = _assign(x, xn, centroids, be)
        centroids[labels[moved]] = x[moved]  # a row moved into an empty cluster is its centre
    return KMeansResult(
        labels=labels,
        centroids=np.ascontiguousarray(centroids + mu, dtype=np.float32),
        d2=_d2_to_own(x, centroids, labels),
        iterations=it,
        converged=converged,
    )


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    seed: int,
    be: Backend,
    n_init: int = KMEANS_N_INIT,
    max_iter: int = KMEANS_MAX_ITER,
    tol: float = KMEANS_TOL,
) -> KMeansResult:
    """k-means of the rows of ``x``: the best (lowest inertia) of ``n_init`` runs of greedy
    k-means++ seeding followed by Lloyd's iterations (see the module docstring).

    Parameters
    ----------
    x : (N, D) float32
    k : int
        Clusters; more than N gives N.
    seed : int
        Run r draws from ``numpy.random.default_rng([seed, r])``.
    be : Backend
        Where the nearest-centroid searches run (faiss or torch, CPU or CUDA).
    n_init : int
        Seedings tried (scikit-learn's ``n_init``; it uses 1 with k-means++ by default).
    max_iter : int
    tol : float
        Relative tolerance on the centre shift (scikit-learn's ``tol``).

    Returns
    -------
    KMeansResult

    Examples
    --------
    >>> from fmprobe.select.compute import resolve_backend
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(c, 0.1, (50, 2)) for c in (0, 5, 10)]).astype(np.float32)
    >>> km = kmeans(x, 3, seed=0, be=resolve_backend("cpu"))
    >>> sorted(np.bincount(km.labels).tolist()), km.converged
    ([50, 50, 50], True)
    """
    k = int(min(k, len(x)))
    runs = max(1, int(n_init))
    rngs = [np.random.default_rng([int(seed), r]) for r in range(runs)]
    best: KMeansResult | None = None
    for centers in kmeans_plusplus(x, k, rngs=rngs, be=be):
        res = lloyd(x, x[centers], be=be, max_iter=max_iter, tol=tol)
        if best is None or res.inertia < best.inertia:
            best = res
    assert best is not None
    return KMeansResult(
        labels=best.labels,
        centroids=best.centroids,
        d2=best.d2,
        iterations=best.iterations,
        converged=best.converged,
        n_init=runs,
    )
