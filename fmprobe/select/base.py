"""What every strategy receives and returns, and the helpers they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fmprobe.select.compute import Backend
from fmprobe.select.kmeans import KMEANS_N_INIT


@dataclass(frozen=True)
class Problem:
    """One selection, rows already in canonical order (see ``select_indices``).

    ``x`` (N, D) float32 holds only finite rows; ``labelled`` (N,) marks rows already
    labelled, which are never picked but take part in clustering, coverage and distances;
    ``n_init`` is the number of k-means seedings of the strategies that cluster."""

    x: np.ndarray
    labelled: np.ndarray
    budget: int
    seed: int
    backend: Backend
    k: int | None = None
    delta: float | None = None
    n_init: int = KMEANS_N_INIT

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def pool(self) -> np.ndarray:
        return ~self.labelled


@dataclass(frozen=True)
class Picks:
    """Row indices (into ``Problem.x``) in selection order, one score each, and facts worth
    reporting (e.g. the ProbCover radius)."""

    indices: np.ndarray
    scores: np.ndarray
    info: dict[str, float | int | str] = field(default_factory=dict)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def cluster_order(labels: np.ndarray, labelled: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """``clusters`` sorted as TypiClust visits them: fewest labelled rows first, then largest
    first, then by the first row they hold (row order is canonical, so this is too)."""
    k = int(labels.max()) + 1 if len(labels) else 0
    sizes = np.bincount(labels, minlength=k)
    n_lab = np.bincount(labels[labelled], minlength=k)
    first = np.full(k, len(labels))
    np.minimum.at(first, labels, np.arange(len(labels)))
    order = np.lexsort((first[clusters], -sizes[clusters], n_lab[clusters]))
    return clusters[order]


def round_robin(
    labels: np.ndarray,
    labelled: np.ndarray,
    budget: int,
    clusters: list[np.ndarray],
    choose: Callable[[np.ndarray], tuple[int, float]],
) -> tuple[np.ndarray, np.ndarray]:
    """Visit the clusters of ``clusters[0]`` in turn (cycling when the budget is larger than
    their number), asking ``choose(members)`` for one pick among each cluster's unlabelled,
    unpicked rows; exhausted clusters leave the cycle, and when all are exhausted the next
    group ``clusters[1]`` (e.g. the small clusters TypiClust drops) takes over."""
    taken = labelled.copy()
    members_of = {int(c): np.flatnonzero(labels == c) for g in clusters for c in g}
    picks: list[int] = []
    scores: list[float] = []
    for group in clusters:
        active = [int(c) for c in group]
        pos = 0
        while active and len(picks) < budget:
            c = active[pos % len(active)]
            members = members_of[c]
            members = members[~taken[members]]
            if len(members) == 0:
                active.remove(c)
                continue
            row, score = choose(members)
            taken[row] = True
            picks.append(row)
            scores.append(score)
            pos += 1
        if len(picks) == budget:
            break
    return np.asarray(picks, dtype=np.int64), np.asarray(scores, dtype=np.float64)
