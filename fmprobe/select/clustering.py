"""Strategies built on a k-means partition: ``kmeans`` (MedCAL-Bench's ALPS), ``typiclust``,
``fps`` (MedCAL-Bench's), ``bal`` (cluster distance difference) and ``usl``."""

from __future__ import annotations

import numpy as np
import torch

from fmprobe.select.base import Picks, Problem, cluster_order, l2_normalise, round_robin
from fmprobe.select.compute import farthest_first, knn, sq_dist_to
from fmprobe.select.kmeans import kmeans

TYPICLUST_MAX_CLUSTERS = 500
TYPICLUST_MIN_CLUSTER_SIZE = 5  # clusters of this size or smaller are dropped
TYPICLUST_KNN = 20
BAL_CLUSTERS = 100
USL_KNN = 20
USL_ITERS, USL_W, USL_MOMENTUM, USL_ALPHA = 10, 0.5, 0.9, 0.5


def select_kmeans(p: Problem) -> Picks:
    """k-means with B (+ labelled) clusters; in each cluster the row nearest its centroid.
    Clusters are visited largest first (those holding labelled rows last); score = cluster size."""
    n_lab = int(p.labelled.sum())
    km = kmeans(p.x, p.budget + n_lab, seed=p.seed, be=p.backend, n_init=p.n_init)
    sizes = np.bincount(km.labels)
    order = cluster_order(km.labels, p.labelled, np.arange(len(sizes)))

    def nearest(members: np.ndarray) -> tuple[int, float]:
        row = int(members[np.argmin(km.d2[members])])
        return row, float(sizes[km.labels[row]])

    idx, scores = round_robin(km.labels, p.labelled, p.budget, [order], nearest)
    return Picks(idx, scores, {"clusters": len(sizes), "kmeans_iterations": km.iterations})


def select_typiclust(p: Problem) -> Picks:
    """TypiClust (Hacohen et al., ICML 2022) on L2-normalised features: min(B + labelled, 500)
    k-means clusters, clusters of <= 5 rows dropped, visited by fewest labelled rows then
    largest first; in each the row of highest typicality = 1 / mean Euclidean distance to its
    min(20, m // 2) nearest neighbours among the cluster's m unlabelled, unpicked rows."""
    x = l2_normalise(p.x)
    n_lab = int(p.labelled.sum())
    k = min(n_lab + p.budget, TYPICLUST_MAX_CLUSTERS)
    km = kmeans(x, k, seed=p.seed, be=p.backend, n_init=p.n_init)
    sizes = np.bincount(km.labels)
    all_clusters = np.arange(len(sizes))
    big = all_clusters[sizes > TYPICLUST_MIN_CLUSTER_SIZE]
    small = all_clusters[sizes <= TYPICLUST_MIN_CLUSTER_SIZE]
    groups = [cluster_order(km.labels, p.labelled, g) for g in (big, small) if len(g)]

    def most_typical(members: np.ndarray) -> tuple[int, float]:
        kk = min(TYPICLUST_KNN, len(members) // 2)
        if kk == 0:
            return int(members[0]), float("nan")
        d2, _ = knn(x[members], x[members], kk, p.backend, self_search=True)
        typicality = 1.0 / (np.sqrt(d2).mean(1) + 1e-5)
        best = int(np.argmax(typicality))
        return int(members[best]), float(typicality[best])

    idx, scores = round_robin(km.labels, p.labelled, p.budget, groups, most_typical)
    return Picks(idx, scores, {"clusters": len(sizes), "clusters_kept": len(big)})


def _diameter_pair(x: np.ndarray, members: np.ndarray, p: Problem) -> tuple[int, int, float]:
    """The two rows of ``members`` farthest apart (exact, blocked; first such pair)."""
    xt = torch.as_tensor(x[members], device=p.backend.device)
    xn = (xt * xt).sum(1)
    best = (-1.0, 0, 1)
    step = p.backend.block_rows(len(members))
    for s in range(0, len(members), step):
        d2 = sq_dist_to(xt[s : s + step], xn[s : s + step], xt)
        flat = int(torch.argmax(d2))
        i, j = divmod(flat, len(members))
        if float(d2[i, j]) > best[0]:
            best = (float(d2[i, j]), s + i, j)
    d2max, i, j = best
    if i == j:  # every row identical
        i, j = 0, 1
    return int(members[i]), int(members[j]), float(np.sqrt(max(d2max, 0.0)))


def select_fps(p: Problem) -> Picks:
    """MedCAL-Bench's FPS without its duplicates: k-means with B // 2 clusters of the unlabelled
    rows, in each (largest first) the two rows farthest apart (one row for a singleton cluster);
    the picks still missing (odd B, singletons) come from farthest-first traversal from every
    pick and labelled row. Score = the pair's distance, or the traversal distance."""
    pool = np.flatnonzero(p.pool)
    picks: list[int] = []
    scores: list[float] = []
    k = p.budget // 2
    if k > 0:
        km = kmeans(p.x[pool], k, seed=p.seed, be=p.backend, n_init=p.n_init)
        sizes = np.bincount(km.labels)
        for c in cluster_order(km.labels, np.zeros(len(pool), bool), np.arange(len(sizes))):
            members = pool[km.labels == c]
            if len(members) == 1:
                picks.append(int(members[0]))
                scores.append(float("nan"))
                continue
            a, b, dist = _diameter_pair(p.x, members, p)
            picks += [a, b]
            scores += [dist, dist]
    missing = p.budget - len(picks)
    if missing > 0:
        centers = np.concatenate([np.flatnonzero(p.labelled), np.asarray(picks, dtype=np.int64)])
        start = None
        if len(centers) == 0:
            start = int(pool[np.random.default_rng(p.seed).integers(len(pool))])
        extra, extra_scores = farthest_first(p.x, p.pool, centers, missing, p.backend, start=start)
        picks += extra.tolist()
        scores += extra_scores.tolist()
    return Picks(np.asarray(picks, dtype=np.int64), np.asarray(scores), {"clusters": k})


def select_bal(p: Problem) -> Picks:
    """Cluster Distance Difference of BAL (Li et al., TPAMI 2024), its label-free part as
    MedCAL-Bench uses it: k-means with min(100, max(2, N // 10)) clusters, CDD = distance to
    the second-nearest centroid minus distance to the nearest; the B unlabelled rows of smallest
    CDD (rows between clusters, BAL's diverse data) are picked, smallest first. Score = CDD."""
    k = min(BAL_CLUSTERS, max(2, p.n // 10), p.n)
    km = kmeans(p.x, k, seed=p.seed, be=p.backend, n_init=p.n_init)
    d2, _ = knn(km.centroids, p.x, 2, p.backend)
    cdd = np.sqrt(d2[:, 1]) - np.sqrt(d2[:, 0])
    pool = np.flatnonzero(p.pool)
    order = pool[np.lexsort((pool, cdd[pool]))][: p.budget]
    return Picks(order, cdd[order].astype(np.float64), {"clusters": k})


def select_usl(p: Problem) -> Picks:
    """Unsupervised Selective Labeling (Wang, Lian & Yu, ECCV 2022), training-free USL, on
    L2-normalised features: density = 1 / mean distance to the 20 nearest neighbours; k-means
    with B (+ labelled) clusters; 10 rounds of one pick per cluster maximising density - 0.5 *
    regulariser, the regulariser an exponential moving average (momentum 0.9) of
    sum over picks (and labelled rows) in other clusters of 1 / distance (alpha = 0.5 on
    squared distances). Score = the pick's utility in the last round."""
    x = l2_normalise(p.x)
    be = p.backend
    d2, _ = knn(x, x, USL_KNN, be, self_search=True)
    density = 1.0 / (np.sqrt(d2).mean(1) + 1e-8)
    n_lab = int(p.labelled.sum())
    km = kmeans(x, p.budget + n_lab, seed=p.seed, be=be, n_init=p.n_init)
    labels = km.labels
    sizes = np.bincount(labels)
    n_lab_c = np.bincount(labels[p.labelled], minlength=len(sizes))
    order = cluster_order(labels, p.labelled, np.arange(len(sizes)))
    lab_rows = np.flatnonzero(p.labelled)
    xt = torch.as_tensor(x, device=be.device)
    xn = (xt * xt).sum(1)
    reg = np.zeros(p.n)
    picks = np.zeros(0, dtype=np.int64)
    utility = density.copy()
    for it in range(USL_ITERS):
        utility = density - USL_W * reg
        picks = _one_per_cluster(labels, p.pool, utility, order, n_lab_c, p.budget)
        if it == USL_ITERS - 1:
            break
        anchors = np.concatenate([picks, lab_rows])
        new = np.zeros(p.n)
        step = be.block_rows(len(anchors), p.n)
        a_t = xt[torch.as_tensor(anchors, device=be.device)]
        a_lab = torch.as_tensor(labels[anchors], device=be.device)
        for s in range(0, p.n, step):
            dd = sq_dist_to(xt[s : s + step], xn[s : s + step], a_t).clamp_(min=1e-12)
            inv = dd.pow(-USL_ALPHA)
            same = torch.as_tensor(labels[s : s + step], device=be.device)[:, None] == a_lab
            new[s : s + step] = inv.masked_fill(same, 0.0).sum(1).double().cpu().numpy()
        reg = reg * USL_MOMENTUM + new * (1 - USL_MOMENTUM)
    if len(picks) < p.budget:  # fewer usable clusters than B: best utility among the rest
        rest = np.flatnonzero(p.pool)
        rest = rest[~np.isin(rest, picks)]
        extra = rest[np.lexsort((rest, -utility[rest]))][: p.budget - len(picks)]
        picks = np.concatenate([picks, extra])
    return Picks(picks, utility[picks].astype(np.float64), {"clusters": len(sizes)})


def _one_per_cluster(
    labels: np.ndarray,
    pool: np.ndarray,
    utility: np.ndarray,
    order: np.ndarray,
    n_lab_c: np.ndarray,
    budget: int,
) -> np.ndarray:
    """The unlabelled row of highest utility in each cluster, clusters in ``order``; clusters
    holding labelled rows only when the others do not fill the budget."""
    rows = np.flatnonzero(pool)
    by = np.lexsort((rows, -utility[rows], labels[rows]))
    rows = rows[by]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = labels[rows[1:]] != labels[rows[:-1]]
    best = np.full(len(n_lab_c), -1, dtype=np.int64)
    best[labels[rows[first]]] = rows[first]
    ordered = best[order]
    ordered = ordered[ordered >= 0]
    free = n_lab_c[labels[ordered]] == 0
    ordered = np.concatenate([ordered[free], ordered[~free]])
    return ordered[:budget]
