"""Train/test splits and nested, stratified training subsets.

A training subset for (seed, n) is the first n rows of one seeded ordering of the pool, so
subsets are nested across n (the n=20 set contains the n=10 set). The ordering is stratified
at every prefix (each class's rows are spread evenly along it) and starts with one row of each
class, so any n >= the number of classes holds every class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fmprobe.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class Split:
    """Row indices (into the store) of the training pool and the test set."""

    train: np.ndarray
    test: np.ndarray
    method: str  # "column:<name>" or "stratified:<frac>" (+ ",grouped:<col>")
    seed: int


def _codes(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind not in "iub":
        values = values.astype(str)
    return np.unique(values, return_inverse=True)[1]


def make_split(
    *,
    n_rows: int,
    stratify: np.ndarray | None = None,
    split_values: np.ndarray | None = None,
    split_col: str | None = None,
    groups: np.ndarray | None = None,
    group_col: str | None = None,
    test_frac: float = 0.25,
    seed: int = 0,
) -> Split:
    """Split rows into a training pool and a test set.

    ``split_values`` (a column of ``train``/``test``; ``val`` rows, as MedMNIST's official
    validation split, are in neither) wins; otherwise a stratified random
    ``test_frac`` of the rows, whole groups at a time when ``groups`` is given (no patient on
    both sides), stratified on the groups' majority class.
    """
    if split_values is not None:
        values = np.asarray(split_values).astype(str)
        bad = sorted(set(values) - {"train", "test", "val"})
        if bad:
            raise UsageError(
                f"--split-col {split_col!r} holds {bad[:3]}; its values must be 'train', 'test' "
                "or 'val' (validation rows, used by neither side)"
            )
        train, test = np.flatnonzero(values == "train"), np.flatnonzero(values == "test")
        if not len(train) or not len(test):
            raise UsageError(f"--split-col {split_col!r} has no 'train' or no 'test' rows")
        return Split(train=train, test=test, method=f"column:{split_col}", seed=seed)
    if not 0 < test_frac < 1:
        raise UsageError(f"--test-frac {test_frac}: must lie strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    strat = _codes(stratify) if stratify is not None else np.zeros(n_rows, np.int64)
    unit = np.arange(n_rows) if groups is None else _codes(groups)
    n_units = int(unit.max()) + 1
    # one stratum per unit: the most frequent class among its rows
    counts = np.zeros((n_units, int(strat.max()) + 1), np.int64)
    np.add.at(counts, (unit, strat), 1)
    unit_stratum = counts.argmax(1)
    unit_size = counts.sum(1)
    test_units = []
    for c in np.unique(unit_stratum):
        members = np.flatnonzero(unit_stratum == c)
        members = members[rng.permutation(len(members))]
        target = test_frac * unit_size[members].sum()
        cum = np.cumsum(unit_size[members])
        k = int(np.searchsorted(cum, target, side="left")) + 1 if target > 0 else 0
        k = min(max(k, 1 if len(members) > 1 else 0), len(members) - 1) if len(members) > 1 else 0
        test_units.append(members[:k])
    is_test_unit = np.zeros(n_units, bool)
    is_test_unit[np.concatenate(test_units) if test_units else []] = True
    is_test = is_test_unit[unit]
    method = f"stratified:{test_frac}" + (f",grouped:{group_col}" if groups is not None else "")
    return Split(
        train=np.flatnonzero(~is_test), test=np.flatnonzero(is_test), method=method, seed=seed
    )


def nested_order(labels: np.ndarray, *, seed: int, n_max: int | None = None) -> np.ndarray:
    """A seeded ordering of ``labels``' positions whose every prefix is stratified.

    The first ``n_classes`` positions hold one row of each class; after that, the rows of each
    class are spread evenly (systematic sampling with a random phase), so a prefix of length n
    has about n·p_c rows of class c. ``n_max`` returns only the first ``n_max`` positions
    (the same as the full ordering's prefix, computed without sorting the whole pool).

    >>> order = nested_order(np.array([0, 0, 0, 1, 1, 1]), seed=0)
    >>> sorted(np.array([0, 0, 0, 1, 1, 1])[order[:2]].tolist())
    [0, 1]
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    # class codes 0..K-1 (what the sweep passes) need no re-encoding: the same classes come in
    # the same order, so the ordering is identical
    codes = (
        labels
        if labels.dtype.kind in "iu" and (labels.min() >= 0 if len(labels) else True)
        else _codes(labels)
    )
    n_rows = len(codes)
    head = n_rows if n_max is None else min(n_max, n_rows)
    # per class, its j-th smallest key belongs to members[perm[j]]; keys rise with j, so a
    # prefix of length ``head`` of the whole ordering takes at most ``head`` rows of each class
    # (the random draws are the same whatever ``n_max``, so every prefix agrees)
    cand_rows, cand_keys = [], []
    for c in range(int(codes.max()) + 1 if n_rows else 0):
        members = np.flatnonzero(codes == c)
        if not len(members):
            continue
        perm = rng.permutation(len(members))
        # fractional position along the ordering; the first member of each class goes first
        take = min(len(members), head)
        pos = (np.arange(take) + rng.random()) / len(members)
        pos[0] = -1.0 + rng.random() * 1e-3
        cand_rows.append(members[perm[:take]])
        cand_keys.append(pos)
    tiebreak = rng.random(n_rows)
    if not cand_rows:
        return np.zeros(0, np.int64)
    rows = np.concatenate(cand_rows)
    keys = np.concatenate(cand_keys)
    return rows[np.lexsort((tiebreak[rows], keys))][:head]


def parse_test_where(value: str | None, table: pd.DataFrame) -> tuple[str, str] | None:
    """``COL=VALUE`` → (COL, VALUE), the column and value checked against ``table``."""
    if not value:
        return None
    col, sep, val = str(value).partition("=")
    if not sep or not col:
        raise UsageError(f"--test-where {value!r}: expected COL=VALUE, e.g. scanner=siemens")
    if col not in table.columns:
        raise UsageError(
            f"--test-where: column {col!r} is not in the store or --labels"
            f"{did_you_mean(col, table.columns)}"
        )
    values = table[col].astype(str)
    if not (values == val).any():
        shown = ", ".join(sorted(values.unique())[:10])
        raise UsageError(f"--test-where {value!r}: no row has {col} = {val!r} (values: {shown})")
    if (values == val).all():
        raise UsageError(f"--test-where {value!r}: every row matches; nothing is left to train on")
    return col, val


def sweep_split(
    table: pd.DataFrame,
    *,
    stratify: np.ndarray | None,
    split_col: str | None = None,
    test_frac: float = 0.25,
    group_col: str | None = None,
    split_seed: int = 0,
    test_where: str | None = None,
) -> Split:
    """The one test split of a sweep (and of ``fmprobe finetune`` on the same data): the rows
    matching ``--test-where COL=VALUE`` (out-of-domain), a ``--split-col`` of train/test, or a
    stratified ``--test-frac`` drawn with ``--split-seed``, whole ``--group-col`` groups at a
    time.

    Parameters
    ----------
    table : DataFrame
        One row per sample, in store order (the store's samples joined with ``--labels``).
    stratify : ndarray or None
        (N,) class codes of the first task (−1 = missing).
    """
    where = parse_test_where(test_where, table)
    if where is not None:
        col, val = where
        is_test = (table[col].astype(str) == val).to_numpy()
        return Split(
            train=np.flatnonzero(~is_test),
            test=np.flatnonzero(is_test),
            method=f"where:{col}={val}",
            seed=split_seed,
        )
    return make_split(
        n_rows=len(table),
        stratify=stratify,
        split_values=table[split_col].to_numpy() if split_col else None,
        split_col=split_col,
        groups=table[group_col].to_numpy() if group_col else None,
        group_col=group_col,
        test_frac=test_frac,
        seed=split_seed,
    )
