"""Stratified validation folds inside a problem's n labels (``--C auto``, the attention
probe's epoch choice)."""

from __future__ import annotations

import numpy as np


def fold_masks(labels: np.ndarray, *, k: int, seed: int) -> np.ndarray:
    """(k, n) boolean masks of stratified validation folds (True = held out): each class's
    rows are dealt round-robin over the folds, from a random fold onwards.

    >>> fold_masks(np.array([0, 0, 1, 1, 1, 0]), k=2, seed=0).sum(axis=1)
    array([3, 3])
    """
    rng = np.random.default_rng(seed)
    values = np.asarray(labels)
    if values.dtype.kind not in "iub":
        values = values.astype(str)
    codes = np.unique(values, return_inverse=True)[1]
    fold = np.empty(len(codes), np.int64)
    start = 0
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        fold[members[rng.permutation(len(members))]] = (np.arange(len(members)) + start) % k
        start = (start + len(members)) % k  # the next class starts where this one stopped
    return np.stack([fold == i for i in range(k)])
