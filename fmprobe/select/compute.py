"""Distance primitives of the selection strategies: exact kNN, radius graphs and
farthest-first traversal (k-means is in :mod:`fmprobe.select.kmeans`), computed in blocks so
that no N × N matrix is ever held.

Two backends compute the nearest-neighbour searches: ``faiss`` (exact ``IndexFlatL2``, on the
GPU with faiss-gpu) and ``torch`` (blocked matrix products on any device). Everything around
the searches (k-means updates, greedy loops) is shared, so both backends select the same rows
up to floating-point ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse

from fmprobe.devices import resolve_device
from fmprobe.errors import UsageError

# Rows per block of a blocked distance computation: BLOCK × N float32 distances at a time
# (256 MB at N = 100,000 with the default), whatever N is.
_BLOCK_BYTES = 256 * 2**20
# Below this many (query, base) pairs a search runs through torch even on the faiss backend:
# faiss's OpenMP start-up then costs more than the search (47 ms for 140 x 14 rows on a loaded
# 2-core machine, against 0.1 ms), and k-means makes one such search per iteration.
_FAISS_MIN_PAIRS = 1 << 20


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@dataclass(frozen=True)
class Backend:
    """Where the nearest-neighbour searches run: ``name`` is ``faiss`` or ``torch``."""

    name: str
    device: torch.device

    def faiss_for(self, pairs: int) -> bool:
        """Whether a search over ``pairs`` (query, base) pairs runs through faiss."""
        return self.name == "faiss" and (pairs >= _FAISS_MIN_PAIRS or self.device.type != "cpu")

    def block_rows(self, cols: int, rows: int | None = None) -> int:
        """Rows per block of a (rows, cols) float32 distance matrix computed in blocks: as
        many as fit in the block's bytes, at most ``rows`` (default ``cols``). Sized by the
        columns, so a few columns (centroids, anchors) still give large blocks."""
        limit = cols if rows is None else rows
        return int(max(1, min(limit, _BLOCK_BYTES // (4 * max(cols, 1)))))


def resolve_backend(device: str | None, backend: str | None = None) -> Backend:
    """faiss when importable (faiss-gpu on a CUDA device), else torch; ``backend`` forces one."""
    dev = resolve_device(device)
    faiss = _faiss()
    faiss_ok = faiss is not None and (
        dev.type == "cpu" or (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)
    )
    if backend is None:
        backend = "faiss" if faiss_ok else "torch"
    elif backend not in ("faiss", "torch"):
        raise UsageError(f"backend {backend!r}: expected 'faiss' or 'torch'")
    elif backend == "faiss" and not faiss_ok:
        raise UsageError("backend 'faiss' needs faiss-cpu (or faiss-gpu on CUDA): pip install it")
    return Backend(backend, dev)


def _faiss_index(base: np.ndarray, be: Backend) -> Any:
    faiss = _faiss()
    index = faiss.IndexFlatL2(base.shape[1])
    if be.device.type == "cuda":
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    return index


def _sorted_rows(d2: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row ordered by (distance, index), so ties come out the same from every backend."""
    order = np.lexsort((idx, d2), axis=-1)
    return np.take_along_axis(d2, order, -1), np.take_along_axis(idx, order, -1)


def exact_d2(base: np.ndarray, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(M, kk) float32 squared distances from each query to the rows ``idx`` (M, kk) of
    ``base``, computed as ||q - b||^2: the expansion |q|^2 + |b|^2 - 2 q.b that finds
    neighbours loses the digits of small distances in float32."""
    m, kk = idx.shape
    out = np.empty((m, kk), dtype=np.float32)
    step = max(1, _BLOCK_BYTES // (4 * max(kk * base.shape[1], 1)))
    for s in range(0, m, step):
        diff = base[idx[s : s + step]] - queries[s : s + step, None, :]
        out[s : s + step] = np.einsum("mkd,mkd->mk", diff, diff)
    return out


def nearest_candidates(
    base: np.ndarray, queries: np.ndarray, kk: int, be: Backend, *, centre: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The ``kk`` rows of ``base`` nearest each query by the expanded float32 distance, in no
    particular order: (approximate squared distances, indices), both (M, kk).

    Both sides are first centred on the mean of ``base`` (``centre=False``: the caller did;
    distances do not change): the expansion's float32 error scales with the squared norms,
    which centring shrinks from the data's offset to its spread (tight clusters of unit
    vectors: from 1 to ~1e-4). Large
    searches run through faiss on the faiss backend; the rest as blocked products, in numpy
    on a CPU (its elementwise passes wait on no thread pool: 10x faster than torch's for small
    blocks on a loaded machine, measured) and in torch on CUDA."""
    if centre:
        mu = base.mean(axis=0, dtype=np.float64).astype(np.float32)
        base = np.ascontiguousarray(base - mu, dtype=np.float32)
        queries = np.ascontiguousarray(queries - mu, dtype=np.float32)
    if be.faiss_for(len(base) * len(queries)):
        d2, idx = _faiss_index(base, be).search(np.ascontiguousarray(queries, np.float32), kk)
        return np.maximum(d2, 0), idx.astype(np.int64)
    d_parts, i_parts = [], []
    step = be.block_rows(len(base), len(queries))
    if be.device.type == "cpu":
        b = np.ascontiguousarray(base, dtype=np.float32)
        bn = np.einsum("ij,ij->i", b, b)
        for s in range(0, len(queries), step):
            q = np.ascontiguousarray(queries[s : s + step], dtype=np.float32)
            dist = q @ b.T
            dist *= -2.0
            dist += bn[None, :]
            dist += np.einsum("ij,ij->i", q, q)[:, None]
            i, d = _smallest(dist, kk)
            d_parts.append(np.maximum(d, 0))
            i_parts.append(i)
        return np.concatenate(d_parts), np.concatenate(i_parts).astype(np.int64)
    bt = torch.as_tensor(base, device=be.device)
    btn = (bt * bt).sum(1)
    for s in range(0, len(queries), step):
        qt = torch.as_tensor(queries[s : s + step], device=be.device)
        dist_t = torch.addmm(btn[None, :] + (qt * qt).sum(1)[:, None], qt, bt.T, alpha=-2)
        v, i_t = torch.topk(dist_t.clamp_(min=0), kk, dim=1, largest=False)
        d_parts.append(v.cpu().numpy())
        i_parts.append(i_t.cpu().numpy())
    return np.concatenate(d_parts), np.concatenate(i_parts).astype(np.int64)


def _smallest(dist: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the ``kk`` smallest entries of each row, in no order;
    one or two by repeated argmin (10x faster than ``argpartition`` for k-means' two)."""
    rows = np.arange(len(dist))[:, None]
    if kk >= dist.shape[1]:
        i = np.broadcast_to(np.arange(dist.shape[1]), dist.shape)
    elif kk <= 2:
        first = np.argmin(dist, axis=1)[:, None]
        if kk == 1:
            i = first
        else:
            keep = dist[rows, first]
            dist[rows, first] = np.inf
            i = np.concatenate([first, np.argmin(dist, axis=1)[:, None]], axis=1)
            dist[rows, first] = keep
    else:
        i = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
    return i, dist[rows, i]


def knn(
    base: np.ndarray, queries: np.ndarray, k: int, be: Backend, *, self_search: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest rows of ``base`` for each query: (squared distances, indices),
    both (M, k), nearest first (ties by index). ``self_search`` (queries are ``base``) leaves
    each row's own index out of its neighbours."""
    kk = min(k + int(self_search), len(base))
    _, idx = nearest_candidates(base, queries, kk, be)
    d2 = exact_d2(base, queries, idx)
    d2, idx = _sorted_rows(d2, idx)
    if not self_search:
        return d2, idx
    own = idx == np.arange(len(queries))[:, None]
    keep = ~own
    keep[~own.any(1), -1] = False  # own row not among the kk (exact duplicates): drop the last
    m = kk - 1
    return d2[keep].reshape(len(queries), m), idx[keep].reshape(len(queries), m)


def radius_graph(
    x: np.ndarray, delta: float, be: Backend, *, max_edges: int = 400_000_000
) -> sparse.csr_matrix:
    """Boolean sparse (N, N) graph with an edge i → j when ``||x_i - x_j|| < delta``."""
    n = len(x)
    r2 = float(delta) ** 2
    rows, cols, total = [], [], 0
    step = be.block_rows(n)
    index = _faiss_index(x, be) if be.faiss_for(n * n) else None
    xt = torch.as_tensor(x, device=be.device) if index is None else None
    xsq = (xt * xt).sum(1) if xt is not None else None
    for s in range(0, n, step):
        if index is not None:
            lims, _, nb = index.range_search(np.ascontiguousarray(x[s : s + step]), r2)
            r = np.repeat(np.arange(s, s + len(lims) - 1), np.diff(lims).astype(np.int64))
            c = nb.astype(np.int64)
        else:
            assert xt is not None and xsq is not None
            q = xt[s : s + step]
            dist = xsq[s : s + step, None] + xsq[None, :] - 2 * (q @ xt.T)
            nz = torch.nonzero(dist < r2)
            r, c = nz[:, 0].cpu().numpy() + s, nz[:, 1].cpu().numpy()
        total += len(r)
        if total > max_edges:
            raise UsageError(
                f"the radius {delta:.4g} joins more than {max_edges:,} pairs of rows; "
                "pass a smaller --delta or a larger --k"
            )
        rows.append(r.astype(np.int32))
        cols.append(c.astype(np.int32))
    r_all, c_all = np.concatenate(rows), np.concatenate(cols)
    data = np.ones(len(r_all), dtype=bool)
    graph = sparse.csr_matrix((data, (r_all, c_all)), shape=(n, n))
    graph.sort_indices()
    return graph


def nearest_other_label(
    x: np.ndarray, labels: np.ndarray, queries: np.ndarray, be: Backend
) -> np.ndarray:
    """Distance from each row ``queries[i]`` to the nearest row of another label (inf if none)."""
    out = np.full(len(queries), np.inf)
    if be.faiss_for(len(x) * len(queries)):
        for lab in np.unique(labels[queries]):
            others = np.flatnonzero(labels != lab)
            mine = queries[labels[queries] == lab]
            if len(others):
                d2, _ = knn(x[others], x[mine], 1, be)
                out[labels[queries] == lab] = np.sqrt(d2[:, 0])
        return out
    xt = torch.as_tensor(x, device=be.device)
    xn = (xt * xt).sum(1)
    lab_t = torch.as_tensor(labels, device=be.device)
    step = be.block_rows(len(x), len(queries))
    for s in range(0, len(queries), step):
        qi = torch.as_tensor(queries[s : s + step], device=be.device)
        dist = (xn[qi][:, None] + xn[None, :] - 2 * (xt[qi] @ xt.T)).clamp_(min=0)
        dist[lab_t[qi][:, None] == lab_t[None, :]] = float("inf")
        out[s : s + step] = dist.min(1).values.sqrt().cpu().numpy()
    return out


def sq_dist_to(x: torch.Tensor, xn: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, M) from the rows of ``x`` (norms ``xn``) to ``c`` (M, D)."""
    # one fused pass (|x|^2 + |c|^2) - 2 x.c: the (N, M) temporaries cost more than the product
    return torch.addmm(xn[:, None] + (c * c).sum(1)[None, :], x, c.T, alpha=-2).clamp_(min=0)


def farthest_first(
    x: np.ndarray,
    candidates: np.ndarray,
    centers: np.ndarray,
    count: int,
    be: Backend,
    *,
    start: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k-center greedy: ``count`` picks among ``candidates`` (bool mask), each the candidate
    farthest from every center so far (``centers``: indices, then each pick). Returns the picks
    and their distances at pick time (NaN for ``start``, the first center when there is none).
    Memory O(N): one vector of distances to the nearest center."""
    xt = torch.as_tensor(x, device=be.device)
    xn = (xt * xt).sum(1)
    mind = torch.full((len(x),), float("inf"), dtype=torch.float64, device=be.device)
    step = max(1, be.block_rows(len(x)))
    for s in range(0, len(centers), step):
        c = xt[torch.as_tensor(centers[s : s + step], device=be.device)]
        mind = torch.minimum(mind, sq_dist_to(xt, xn, c).min(1).values.double())
    mask = torch.as_tensor(~candidates, device=be.device)
    picks, scores = [], []
    if start is not None and count > 0:
        picks.append(start)
        scores.append(float("nan"))
    while len(picks) < count:
        if picks:
            c = xt[picks[-1]][None, :]
            mind = torch.minimum(mind, sq_dist_to(xt, xn, c)[:, 0].double())
        avail = mind.masked_fill(mask, -1.0)
        if picks:
            avail[torch.as_tensor(picks, device=be.device)] = -1.0
        best = int(torch.argmax(avail))
        picks.append(best)
        scores.append(float(np.sqrt(max(float(avail[best]), 0.0))))
    return np.asarray(picks, dtype=np.int64), np.asarray(scores)
