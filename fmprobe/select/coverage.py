"""Strategies that cover the data: ``random``, ``probcover``, ``coreset`` (k-center greedy)
and ``repdiv`` (facility location, then max-min diversity)."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from fmprobe.errors import UsageError
from fmprobe.select.base import Picks, Problem, l2_normalise
from fmprobe.select.compute import farthest_first, knn, nearest_other_label, radius_graph
from fmprobe.select.kmeans import kmeans

PROBCOVER_DEFAULT_K = 10
PROBCOVER_PURITY = 0.95
PROBCOVER_DELTA_QUERIES = 20_000
REPDIV_REPRESENTATIVE = 0.7
REPDIV_NEIGHBOURS = 50


def select_random(p: Problem) -> Picks:
    """Uniform without replacement; the picks for budget B are the first B of the picks for
    any larger budget with the same seed."""
    pool = np.flatnonzero(p.pool)
    order = np.random.default_rng(p.seed).permutation(len(pool))[: p.budget]
    return Picks(pool[order], np.full(p.budget, np.nan))


def probcover_delta(
    x: np.ndarray, labels: np.ndarray, queries: np.ndarray, p: Problem, alpha: float
) -> float:
    """The largest radius at which a share ``alpha`` of the balls around ``queries`` are pure
    (hold one cluster label): a ball {y: ||x - y|| < delta} is pure iff delta <= the distance
    from its centre to the nearest row of another cluster, so the radius is a quantile."""
    r = np.sort(nearest_other_label(x, labels, queries, p.backend))
    return float(r[int(np.floor((1 - alpha) * len(r)))])


def select_probcover(p: Problem) -> Picks:
    """ProbCover (Yehuda et al., NeurIPS 2022) on L2-normalised features: greedy maximum
    coverage of the balls of radius delta around the rows (a labelled row covers its ball from
    the start). Without ``delta``: the largest delta at which 95% of balls are pure w.r.t.
    k-means with ``k`` clusters (default 10), measured on up to 20,000 rows. Once every row is
    covered, the remaining picks follow farthest-first traversal from the picks and labelled
    rows. Score = rows newly covered by the pick (0 after full coverage)."""
    x = l2_normalise(p.x)
    info: dict[str, float | int | str] = {}
    if p.delta is not None:
        delta = float(p.delta)
    else:
        k = PROBCOVER_DEFAULT_K if p.k is None else int(p.k)
        if k < 2 or k > p.n:
            raise UsageError(f"--k {k}: ProbCover needs 2 <= k <= {p.n} clusters")
        km = kmeans(x, k, seed=p.seed, be=p.backend, n_init=p.n_init)
        queries = np.arange(p.n)
        if p.n > PROBCOVER_DELTA_QUERIES:
            rng = np.random.default_rng(p.seed)
            queries = np.sort(rng.choice(p.n, PROBCOVER_DELTA_QUERIES, replace=False))
        delta = probcover_delta(x, km.labels, queries, p, PROBCOVER_PURITY)
        info["k"] = k
        if not delta > 0:
            raise UsageError(
                f"ProbCover's radius at 95% purity with k={k} is 0 (more than 5% of rows have "
                "an exact duplicate in another cluster); pass --delta or a smaller --k"
            )
    if not delta > 0:
        raise UsageError(f"--delta {delta}: expected a positive radius")
    info["delta"] = delta
    graph = radius_graph(x, delta, p.backend)
    incoming = graph.T.tocsr()  # rows whose ball holds each row (the graph may be asymmetric)
    covered = np.zeros(p.n, dtype=bool)
    for lab in np.flatnonzero(p.labelled):
        covered[graph.indices[graph.indptr[lab] : graph.indptr[lab + 1]]] = True
    cov = np.flatnonzero(covered)
    degree = np.diff(graph.indptr).astype(np.int64)
    if len(cov):
        degree -= np.bincount(_gather(incoming, cov), minlength=p.n)
    degree[p.labelled] = -1
    picks: list[int] = []
    scores: list[float] = []
    while len(picks) < p.budget:
        cur = int(np.argmax(degree))
        if degree[cur] <= 0:
            break
        ball = graph.indices[graph.indptr[cur] : graph.indptr[cur + 1]]
        new = ball[~covered[ball]]
        covered[new] = True
        degree -= np.bincount(_gather(incoming, new), minlength=p.n)
        picks.append(cur)
        scores.append(float(len(new)))
        degree[cur] = -1
    info["coverage"] = float(covered.mean())
    missing = p.budget - len(picks)
    if missing > 0:
        cand = p.pool.copy()
        cand[picks] = False
        centers = np.concatenate([np.flatnonzero(p.labelled), np.asarray(picks, dtype=np.int64)])
        extra, _ = farthest_first(x, cand, centers, missing, p.backend)
        picks += extra.tolist()
        scores += [0.0] * missing
        info["fallback_picks"] = missing
    return Picks(np.asarray(picks, dtype=np.int64), np.asarray(scores), info)


def _gather(csr: object, rows: np.ndarray) -> np.ndarray:
    indptr, indices = csr.indptr, csr.indices  # type: ignore[attr-defined]
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([indices[indptr[r] : indptr[r + 1]] for r in rows])


def select_coreset(p: Problem) -> Picks:
    """k-center greedy (Sener & Savarese, ICLR 2018): each pick is the unlabelled row farthest
    from every labelled row and earlier pick; without labelled rows the first pick is a seeded
    random row. O(N) memory. Score = the pick's distance to its nearest center."""
    centers = np.flatnonzero(p.labelled)
    start = None
    if len(centers) == 0:
        pool = np.flatnonzero(p.pool)
        start = int(pool[np.random.default_rng(p.seed).integers(len(pool))])
    idx, scores = farthest_first(p.x, p.pool, centers, p.budget, p.backend, start=start)
    return Picks(idx, scores)


def select_repdiv(p: Problem) -> Picks:
    """RepDiv as MedCAL-Bench describes it, on cosine similarity: greedy facility location
    (maximise sum over rows of max(0, max similarity to a pick or labelled row)) for
    int(0.7 B) picks (at least one), then max-min diversity (each pick the row whose *smallest*
    cosine distance to the picks and labelled rows is largest) for the rest. Facility location
    runs on each row's 50 most similar rows (a sparse similarity graph, exact greedy on it;
    the dense objective when N <= 51). Score = the facility-location gain, then the cosine
    distance."""
    x = l2_normalise(p.x)
    be = p.backend
    n_rep = max(int(REPDIV_REPRESENTATIVE * p.budget), 0 if p.labelled.any() else 1)
    picks: list[int] = []
    scores: list[float] = []
    if n_rep > 0:
        kk = min(REPDIV_NEIGHBOURS, p.n)
        d2, nb = knn(x, x, kk, be)
        # similarity of row i to its neighbour j: on unit vectors cos = 1 - |x_i - x_j|^2 / 2
        sim = np.clip(1.0 - d2.astype(np.float64) / 2.0, 0.0, None)
        rows = np.repeat(np.arange(p.n), kk)
        by_row = sparse.csr_matrix((sim.ravel(), (rows, nb.ravel())), shape=(p.n, p.n))
        by_col = by_row.T.tocsr()  # row c: the rows that have c among their neighbours
        cur = np.zeros(p.n)
        gains = np.asarray(by_row.sum(0)).ravel()

        def cover(c: int) -> None:
            """Rows near ``c`` now have it as their facility; update every affected gain."""
            lo, hi = by_col.indptr[c], by_col.indptr[c + 1]
            users, s_c = by_col.indices[lo:hi], by_col.data[lo:hi]
            better = s_c > cur[users]
            users, s_c = users[better], s_c[better]
            if len(users) == 0:
                return
            starts, ends = by_row.indptr[users], by_row.indptr[users + 1]
            counts = ends - starts
            flat = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)])
            js, s_ij = by_row.indices[flat], by_row.data[flat]
            old = np.repeat(cur[users], counts)
            new = np.repeat(s_c, counts)
            drop = np.clip(s_ij - old, 0, None) - np.clip(s_ij - new, 0, None)
            gains[:] -= np.bincount(js, weights=drop, minlength=p.n)
            cur[users] = s_c

        for lab in np.flatnonzero(p.labelled):
            cover(int(lab))
        avail = p.pool.copy()
        while len(picks) < n_rep:
            row = int(np.argmax(np.where(avail, gains, -np.inf)))
            picks.append(row)
            scores.append(float(gains[row]))
            avail[row] = False
            cover(row)
    missing = p.budget - len(picks)
    if missing > 0:
        avail = p.pool.copy()
        avail[picks] = False
        centers = np.concatenate([np.flatnonzero(p.labelled), np.asarray(picks, dtype=np.int64)])
        # On unit vectors the squared Euclidean distance is 2 - 2 cos, so max-min Euclidean
        # traversal is max-min cosine distance.
        extra, dist = farthest_first(x, avail, centers, missing, be)
        picks += extra.tolist()
        scores += (dist**2 / 2).tolist()
    return Picks(np.asarray(picks, dtype=np.int64), np.asarray(scores), {"representative": n_rep})
