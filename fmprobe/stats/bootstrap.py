"""The hierarchical paired bootstrap of the radiology scaling study (PAPERS.md §4, appendix
A.8), and DeLong's test for two correlated AUROCs.

Per task the test set is resampled with replacement *within each class* (stratified, so every
replicate keeps the class balance); in every replicate the metric is computed for each seed of
both arms on the same resampled rows (paired), averaged over the seeds of each arm, and the
difference kept. The percentile interval of the differences is the task's CI. The overall row
(task ``"all"``) is the mean over tasks: in every replicate the tasks' differences are
averaged (each task drew its own resample), and the interval and p-value are those of that
per-replicate mean, so they narrow as tasks are added. ``pool="mixture"`` instead concatenates
the tasks' differences into one distribution: an interval for a task drawn at random from the
mixture, which does not narrow with more tasks.

The draws are defined so that a slow loop reproduces them exactly: for a test set of T rows a
task's generator gives ``rng.random((R, T))``, replicate r's uniform ``u[r, j]`` picks for
position j the row ``members[floor(u[r, j] * m)]`` among the m test rows of j's class. Each
task (and subgroup) has its own generator, ``numpy.random.default_rng([seed, crc32(task),
...])``, so a task's interval does not depend on which other tasks are compared.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fmprobe.errors import UsageError, did_you_mean
from fmprobe.options import split_list
from fmprobe.stats.predictions import Predictions, load_predictions

METRICS = ("auroc", "auprc")
ARM_COLUMNS = ("feature", "sampler", "probe")
POOLS = ("mean", "mixture")
_CHUNK_ELEMENTS = 1 << 22  # (row, replicate, test row) weights per pass: 32 MB of float64


def rng_for(seed: int, *keys: str) -> np.random.Generator:
    """The generator of one task (and subgroup): ``default_rng([seed, crc32(key), ...])``."""
    return np.random.default_rng([int(seed), *(zlib.crc32(k.encode()) for k in keys)])


def stratified_indices(y: np.ndarray, *, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Resampled row indices, (R, T) int64: position j of every replicate holds a row of
    ``y[j]``'s class, drawn uniformly with replacement (class counts stay as in ``y``).

    Examples
    --------
    >>> idx = stratified_indices(np.array([0, 0, 1]), replicates=2, rng=np.random.default_rng(0))
    >>> idx[:, 2].tolist()
    [2, 2]
    """
    y = np.asarray(y)
    u = rng.random((replicates, len(y)))
    idx = np.empty(u.shape, dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        idx[:, members] = members[np.floor(u[:, members] * len(members)).astype(np.int64)]
    return idx


def replicate_weights(idx: np.ndarray, T: int) -> np.ndarray:
    """How often each test row occurs in each replicate: (R, T) float64 counts."""
    R = idx.shape[0]
    flat = (idx + np.arange(R)[:, None] * T).ravel()
    return np.bincount(flat, minlength=R * T).reshape(R, T).astype(np.float64)


def metric_replicates(
    scores: np.ndarray, y: np.ndarray, idx: np.ndarray, *, metric: str = "auroc"
) -> np.ndarray:
    """The metric of every seed on every resampled test set.

    A resample is the test set with each row weighted by how often it was drawn, so each
    seed's scores are sorted once and every replicate costs one weighted pass over the
    sorted rows (equal scores grouped as :mod:`fmprobe.probes.metrics` and scikit-learn do).

    Parameters
    ----------
    scores : ndarray (S, T) for binary tasks (class-1 scores), (S, T, K) for K classes
    y : ndarray (T,) int
        Class codes.
    idx : ndarray (R, T) int
        Resampled rows (:func:`stratified_indices`); ``np.arange(T)[None]`` for the test set.
    metric : {"auroc", "auprc"}
        Multiclass: macro one-vs-rest, as the results table.

    Returns
    -------
    ndarray (S, R) float64
        NaN for a seed with a NaN score (any class), as :mod:`fmprobe.probes.metrics`.

    Examples
    --------
    >>> s = np.array([[0.1, 0.4, 0.35, 0.8]])
    >>> metric_replicates(s, np.array([0, 0, 1, 1]), np.arange(4)[None])
    array([[0.75]])
    """
    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: use one of {', '.join(METRICS)}")
    y = np.asarray(y, dtype=np.int64)
    S, T = scores.shape[:2]
    if scores.ndim == 3:  # one-vs-rest: (S·K) binary problems, label vector per class
        K = scores.shape[2]
        flat = np.ascontiguousarray(scores.transpose(0, 2, 1).reshape(S * K, T))
        labels = np.tile((y[None, :] == np.arange(K)[:, None]).astype(np.float64), (S, 1))
    else:
        K = 1
        flat = np.ascontiguousarray(scores)
        labels = np.broadcast_to((y == 1).astype(np.float64), (S, T))
    values = _weighted_ranking(flat, labels, idx, metric)  # (S·K, R)
    if K == 1:
        return values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: no class defined
        out = np.nanmean(values.reshape(S, K, -1), axis=1)
    out[np.isnan(scores).any(axis=(1, 2))] = np.nan  # as fmprobe.probes.metrics: not per class
    return out


def _weighted_ranking(
    scores: np.ndarray, labels: np.ndarray, idx: np.ndarray, metric: str
) -> np.ndarray:
    """AUROC or average precision of B rows of scores (B, T) with 0/1 labels (B, T) on every
    replicate's row weights; (B, R).

    In each row's descending score order, with cumulative weights taken at the last position
    of each run of equal scores (the tie group), AUROC is ``Σ_i pos_i (N⁻ − (C⁻[end_i] +
    C⁻[start_i − 1]) / 2) / (N⁺ N⁻)`` (ties count 1/2) and average precision is ``Σ_i pos_i
    C⁺[end_i] / C[end_i] / N⁺``: the formulas of :mod:`fmprobe.probes.metrics` and
    scikit-learn, on weights instead of repeated rows.
    """
    B, T = scores.shape
    R = idx.shape[0]
    s = torch.from_numpy(scores)
    sorted_s, order = torch.sort(s, dim=1, descending=True)
    same_as_next = torch.zeros_like(sorted_s, dtype=torch.bool)
    same_as_next[:, :-1] = sorted_s[:, 1:] == sorted_s[:, :-1]
    ties = bool(same_as_next.any())
    pos_t = torch.arange(T).expand(B, T)
    # last and first position of each position's tie group
    end = torch.where(same_as_next, T, pos_t).flip(1).cummin(1).values.flip(1)
    start = torch.where(torch.roll(same_as_next, 1, 1) & (pos_t > 0), 0, pos_t).cummax(1).values
    lab = torch.from_numpy(labels.astype(np.float64)).gather(1, order)[:, None, :]  # (B, 1, T)
    out = np.empty((B, R))
    step = max(1, _CHUNK_ELEMENTS // max(1, B * T))
    for lo in range(0, R, step):
        w = torch.from_numpy(replicate_weights(idx[lo : lo + step], T))  # (r, T)
        r = w.shape[0]
        wo = w[:, order].transpose(0, 1)  # (B, r, T): weights in each row's sorted order
        pos = wo * lab
        n_pos = pos.sum(2)
        if metric == "auroc":
            neg = wo - pos
            n_neg = neg.sum(2)
            c_neg = neg.cumsum(2)
            if ties:
                at_end = c_neg.gather(2, end[:, None, :].expand(B, r, T))
                before = (c_neg - neg).gather(2, start[:, None, :].expand(B, r, T))
                below = n_neg[..., None] - 0.5 * (at_end + before)
            else:  # a positive's own position holds no negative weight
                below = n_neg[..., None] - c_neg
            value = (pos * below).sum(2) / (n_pos * n_neg)
        else:
            c_pos, c_all = pos.cumsum(2), wo.cumsum(2)
            if ties:
                e = end[:, None, :].expand(B, r, T)
                c_pos, c_all = c_pos.gather(2, e), c_all.gather(2, e)
            value = (pos * c_pos / c_all.clamp_min(1e-300)).sum(2) / n_pos
        out[:, lo : lo + r] = value.numpy()
    out[np.isnan(scores).any(1)] = np.nan
    return out


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap of two arms on one test set.

    Attributes
    ----------
    difference : float
        Mean of the replicate differences A − B (as the study reports it).
    lower, upper : float
        Percentile interval of the differences at ``level``.
    p_value : float
        Two-sided bootstrap p-value, ``min(1, 2·(1 + #{d on the far side of 0})/(R + 1))``.
    observed : float
        ``a_mean − b_mean``: the difference on the test set itself.
    a_mean, b_mean : float
        Each arm's metric on the test set, averaged over its seeds.
    deltas : ndarray (R,)
        The replicate differences.
    """

    difference: float
    lower: float
    upper: float
    p_value: float
    observed: float
    a_mean: float
    b_mean: float
    deltas: np.ndarray


def summarise(deltas: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, percentile interval and two-sided p-value of bootstrap differences."""
    d = deltas[np.isfinite(deltas)]
    if not len(d):
        return (math.nan,) * 4
    alpha = (1 - level) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    far = min(int((d <= 0).sum()), int((d >= 0).sum()))
    p = min(1.0, 2 * (1 + far) / (len(d) + 1))
    return float(d.mean()), float(lo), float(hi), p


def paired_bootstrap(
    *,
    y: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    metric: str = "auroc",
    replicates: int = 500,
    rng: int | np.random.Generator = 0,
    level: float = 0.95,
) -> BootstrapResult:
    """Hierarchical paired bootstrap of arm A against arm B on one task's test set.

    Parameters
    ----------
    y : ndarray (T,) int
        Class codes of the test rows.
    scores_a, scores_b : ndarray (S, T) or (S, T, K)
        Each seed's test-set scores (the arms may have different seed counts).
    metric : {"auroc", "auprc"}
    replicates : int
        Stratified bootstrap replicates R.
    rng : int or Generator
        Seed or generator of the draws (see the module docstring for the exact stream).
    level : float
        Probability of the percentile interval.

    Returns
    -------
    BootstrapResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 300)
    >>> a = (y + rng.normal(size=(3, 300))).astype(np.float32)
    >>> b = (y + 2 * rng.normal(size=(3, 300))).astype(np.float32)
    >>> r = paired_bootstrap(y=y, scores_a=a, scores_b=b, replicates=200)
    >>> r.lower > 0
    True
    """
    check_replicates(replicates, level)
    y = np.asarray(y)
    if scores_a.shape[1:] != scores_b.shape[1:] or scores_a.shape[1] != len(y):
        raise ValueError(
            f"scores_a {scores_a.shape} and scores_b {scores_b.shape} must be (S, {len(y)}[, K])"
        )
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    idx = np.concatenate(
        [np.arange(len(y))[None], stratified_indices(y, replicates=replicates, rng=gen)]
    )
    m_a = metric_replicates(scores_a, y, idx, metric=metric).mean(0)
    m_b = metric_replicates(scores_b, y, idx, metric=metric).mean(0)
    deltas = m_a[1:] - m_b[1:]
    diff, lo, hi, p = summarise(deltas, level)
    return BootstrapResult(
        difference=diff,
        lower=lo,
        upper=hi,
        p_value=p,
        observed=float(m_a[0] - m_b[0]),
        a_mean=float(m_a[0]),
        b_mean=float(m_b[0]),
        deltas=deltas,
    )


def check_replicates(replicates: int, level: float) -> None:
    """``--replicates`` and ``--level`` of a bootstrap."""
    if replicates < 10:
        raise UsageError(f"--replicates {replicates}: use at least 10 (the study uses 500)")
    if not 0 < level < 1:
        raise UsageError(f"--level {level}: a probability strictly between 0 and 1, e.g. 0.95")


# --- DeLong ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DelongResult:
    """DeLong's test of two correlated AUROCs on the same test rows.

    Attributes
    ----------
    auc_a, auc_b : float
    difference : float
        ``auc_a − auc_b``.
    se : float
        Standard error of the difference.
    lower, upper : float
        Normal interval at ``level``.
    z, p_value : float
        Two-sided test of equal AUROCs.
    """

    auc_a: float
    auc_b: float
    difference: float
    se: float
    lower: float
    upper: float
    z: float
    p_value: float


def _midranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return np.asarray(rankdata(x, method="average", axis=-1), dtype=np.float64)


def delong(
    *, y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, level: float = 0.95
) -> DelongResult:
    """DeLong, DeLong & Clarke-Pearson (1988) in the O(T log T) form of Sun & Xu (2014).

    Parameters
    ----------
    y : ndarray (T,) in {0, 1}
    scores_a, scores_b : ndarray (T,)
        Class-1 scores of the two classifiers on the same rows.
    level : float

    Returns
    -------
    DelongResult

    Examples
    --------
    >>> y = np.array([0, 0, 1, 1, 0, 1])
    >>> r = delong(y=y, scores_a=np.array([.1, .2, .8, .7, .3, .9]),
    ...            scores_b=np.array([.4, .2, .3, .7, .5, .6]))
    >>> round(r.auc_a, 3), round(r.auc_b, 3)
    (1.0, 0.778)
    """
    from scipy.stats import norm

    y = np.asarray(y).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise UsageError("DeLong's test needs at least two rows of each class")
    s = np.stack([np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)])
    pos, neg = s[:, y], s[:, ~y]
    tx, ty = _midranks(pos), _midranks(neg)
    tz = _midranks(np.concatenate([pos, neg], axis=1))
    auc = (tz[:, :m].sum(1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives it outranks
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives outranking it
    s10, s01 = np.cov(v10), np.cov(v01)
    contrast = np.array([1.0, -1.0])
    var = contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n
    se = float(np.sqrt(max(var, 0.0)))
    diff = float(auc[0] - auc[1])
    z = diff / se if se > 0 else (math.inf if diff else 0.0) * np.sign(diff)
    p = float(2 * norm.sf(abs(z))) if se > 0 else float(diff == 0)
    q = float(norm.ppf(0.5 + level / 2))
    return DelongResult(
        auc_a=float(auc[0]),
        auc_b=float(auc[1]),
        difference=diff,
        se=se,
        lower=diff - q * se,
        upper=diff + q * se,
        z=float(z),
        p_value=p,
    )


# --- comparing arms of a results table --------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` returns.

    Attributes
    ----------
    table : DataFrame
        One row per task (and subgroup), then the pooled rows (task ``"all"``): ``task``,
        ``metric``, ``difference``, ``lower``, ``upper``, ``p_value``, ``observed``,
        ``a_mean``, ``b_mean``, ``a_seeds``, ``b_seeds``, ``n_test``, ``n``, DeLong's
        ``delong_p``, ``delong_lower``, ``delong_upper`` (AUROC with one seed per arm on a
        binary task; NaN otherwise), ``pool`` (on the ``"all"`` rows: ``"mean"``, the mean
        over tasks per replicate, or ``"mixture"``; empty on task rows), ``tasks`` (how many
        tasks a row pools; 1 on task rows) and, with ``group_by``, ``group_by`` and ``group``.
    compare : str
        The column whose values are the arms.
    a, b : str
    n : int
    metric : str
    replicates : int
    level : float
    fixed : dict
        The other key columns' values the arms share.
    seconds : float
    pool : str
        How the ``"all"`` rows pool the tasks: ``"mean"`` or ``"mixture"``.
    """

    table: pd.DataFrame
    compare: str
    a: str
    b: str
    n: int
    metric: str
    replicates: int
    level: float
    fixed: dict[str, str]
    seconds: float
    pool: str = "mean"

    def records(self) -> list[dict[str, Any]]:
        """The table as a list of JSON-able dicts (NaN as None)."""
        out = self.table.astype(object).where(self.table.notna(), None)
        return [
            {k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
            for r in out.to_dict(orient="records")
        ]


def listing(values: Sequence[Any], limit: int = 12) -> str:
    """At most ``limit`` values, comma-separated, with the count when there are more.

    >>> listing(range(20), limit=3)
    '0, 1, 2, … (20 in all)'
    """
    vals = [str(v) for v in values]
    return ", ".join(vals[:limit]) + (f", … ({len(vals)} in all)" if len(vals) > limit else "")


def select_arms(
    pred: Predictions,
    *,
    compare: str,
    a: str,
    b: str,
    n: int | None,
    fixed: dict[str, str | None],
) -> tuple[pd.DataFrame, pd.DataFrame, int, dict[str, str]]:
    """The prediction rows of arms A and B at one n; one-line errors for bad choices."""
    t = pred.table
    if compare not in ARM_COLUMNS:
        raise UsageError(f"--compare {compare!r}: use one of {', '.join(ARM_COLUMNS)}")
    values = sorted(t[compare].astype(str).unique())
    for flag, v in (("--a", a), ("--b", b)):
        if v not in values:
            raise UsageError(
                f"{flag} {v!r} is not a {compare} of {pred.results}{did_you_mean(v, values)}; "
                f"its {compare}s: {listing(values)}"
            )
    if a == b:
        raise UsageError(f"--a and --b are both {a!r}; compare two different {compare}s")
    if fixed.get(compare) is not None:
        raise UsageError(f"--{compare} fixes the compared column; name the arms with --a and --b")
    rows = t[t[compare].isin([a, b])]
    chosen: dict[str, str] = {}
    for col in ARM_COLUMNS:
        if col == compare:
            continue
        present = sorted(rows[col].astype(str).unique())
        want = fixed.get(col)
        if want is not None:
            if want not in present:
                raise UsageError(
                    f"--{col} {want!r} is not among the {col}s of both arms"
                    f"{did_you_mean(want, present)}; they hold: {listing(present)}"
                )
            rows = rows[rows[col] == want]
            chosen[col] = want
        elif len(present) > 1:
            raise UsageError(
                f"the arms hold several {col}s ({listing(present)}); pick one with --{col}"
            )
        else:
            chosen[col] = present[0]
    ns_a = set(rows.loc[rows[compare] == a, "n"].astype(int))
    ns_b = set(rows.loc[rows[compare] == b, "n"].astype(int))
    common = sorted(ns_a & ns_b)
    if not common:
        raise UsageError(f"{a!r} and {b!r} share no label count n; they need one sweep's --n")
    if n is None:
        if len(common) > 1:
            raise UsageError(
                f"the results hold several label counts ({listing(common)}); pick one with --n"
            )
        n = common[0]
    elif int(n) not in common:
        raise UsageError(
            f"--n {n} is not in the results of both arms; available: {listing(common)}"
        )
    rows = rows[rows["n"].astype(int) == int(n)]
    return rows[rows[compare] == a], rows[rows[compare] == b], int(n), chosen


def store_samples(
    store: str | Path | None, group_by: list[str], labels: str | Path | None = None
) -> pd.DataFrame | None:
    """The store's ``id`` and ``group_by`` columns (None without ``group_by``); columns of a
    ``labels`` table (CSV/Parquet with ``id``, as the sweep's ``--labels``) join in and win."""
    if not group_by:
        return None
    if store is None:
        raise UsageError("--group-by needs --store STORE: the feature store the sweep read")
    from fmprobe.store import open_store

    fs = open_store(store)
    samples = fs.samples()
    if labels is not None:
        from fmprobe.store.transfer import read_table

        extra = read_table(labels)
        if "id" not in extra.columns:
            raise UsageError(f"--labels {str(labels)!r} has no `id` column")
        extra = extra.assign(id=extra["id"].astype(str))
        keep = [c for c in samples.columns if c == "id" or c not in extra.columns]
        samples = samples[keep].merge(extra, on="id", how="left")
    cols = [c for c in samples.columns if c != "id"]
    for col in group_by:
        if col not in cols:
            raise UsageError(
                f"--group-by {col!r} is not a column of {fs.path}{did_you_mean(col, cols)}; "
                f"columns: {listing(cols)}"
            )
    samples.attrs["path"] = fs.path
    return samples[["id", *group_by]]


def groups_of_test(samples: pd.DataFrame | None, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each metadata column's values (strings, "" where missing) on a test set's rows,
    checked against the test table's ids."""
    if samples is None:
        return {}
    rows = test["row"].to_numpy()
    if rows.max(initial=-1) >= len(samples) or not np.array_equal(
        samples["id"].to_numpy()[rows].astype(str), test["id"].to_numpy().astype(str)
    ):
        raise UsageError(
            f"the predictions' test ids are not rows of {samples.attrs.get('path', 'the store')}; "
            "pass the store the sweep read"
        )
    out = {}
    for col in samples.columns[1:]:
        values = samples[col].iloc[rows]
        out[col] = np.where(values.isna(), "", values.astype(str)).astype(str)
    return out


def subgroup_rows(groups: dict[str, np.ndarray], T: int) -> list[tuple[str, str, np.ndarray]]:
    """``(column, value, positions)`` of every subgroup; the whole test set without groups."""
    if not groups:
        return [("", "", np.arange(T))]
    return [
        (col, v, np.flatnonzero(vals == v))
        for col, vals in groups.items()
        for v in sorted(set(vals.tolist()) - {""})
    ]


def compare(
    *,
    results: str | Path,
    a: str,
    b: str,
    compare: str = "feature",
    n: int | None = None,
    metric: str = "auroc",
    replicates: int = 500,
    seed: int = 0,
    level: float = 0.95,
    feature: str | None = None,
    probe: str | None = None,
    sampler: str | None = None,
    group_by: str | Sequence[str] | None = None,
    store: str | Path | None = None,
    labels: str | Path | None = None,
    pool: str = "mean",
) -> Comparison:
    """Compare two features (or samplers, or probes) of a sweep by the hierarchical paired
    bootstrap, per task and pooled over tasks.

    Parameters
    ----------
    results : path
        A results table written by ``fmprobe sweep --save-predictions``.
    a, b : str
        The two arms: values of the ``compare`` column (A − B is reported).
    compare : {"feature", "sampler", "probe"}
        The column that tells the arms apart; the other two must hold one value each among
        the arms' rows, or be fixed with ``feature`` / ``probe`` / ``sampler``.
    n : int, optional
        Label count; needed when the arms share several.
    metric : {"auroc", "auprc"}
    replicates : int
        Stratified bootstrap replicates per task (500 in the study).
    seed : int
        Seed of the draws (see the module docstring).
    level : float
        Probability of the percentile intervals.
    feature, probe, sampler : str, optional
        Fix a key column that is not compared.
    group_by : str or sequence of str, optional
        Store metadata columns: the comparison is repeated within each value of each column.
    store : path, optional
        The feature store the sweep read (needed for ``group_by``).
    labels : path, optional
        The sweep's ``--labels`` table, whose columns ``group_by`` may name.
    pool : {"mean", "mixture"}
        The ``"all"`` rows: ``"mean"``, the mean over tasks of each replicate's difference
        (an interval for the mean difference over these tasks); ``"mixture"``, every task's
        differences concatenated (an interval for one task drawn from the mixture).

    Returns
    -------
    Comparison

    Examples
    --------
    >>> c = compare(results="out/demo/results.parquet", a="timm-vit_small/block11/cls",
    ...             b="timm-vit_small/block5/cls", n=50)  # doctest: +SKIP
    >>> c.table[["task", "difference", "lower", "upper"]]  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    check_replicates(replicates, level)
    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: use one of {', '.join(METRICS)}")
    if pool not in POOLS:
        raise UsageError(
            f"--pool {pool!r}: use one of {', '.join(POOLS)}{did_you_mean(pool, POOLS)}"
        )
    pred = load_predictions(results)
    rows_a, rows_b, n_, fixed = select_arms(
        pred,
        compare=compare,
        a=a,
        b=b,
        n=n,
        fixed={"feature": feature, "probe": probe, "sampler": sampler},
    )
    samples = store_samples(store, split_list(group_by), labels)
    tasks = sorted(set(rows_a["task"]) & set(rows_b["task"]))
    if not tasks:
        raise UsageError(f"{a!r} and {b!r} share no task at n={n_}")
    records: list[dict[str, Any]] = []
    pooled: dict[tuple[str, str], list[np.ndarray]] = {}
    for task in tasks:
        ta, tb = rows_a[rows_a["task"] == task], rows_b[rows_b["task"] == task]
        names = set(ta["test"]) | set(tb["test"])
        if len(names) != 1:
            raise UsageError(
                f"{a!r} and {b!r} were tested on different test sets for task {task!r}; "
                "compare arms of one sweep (same split settings)"
            )
        test = pred.test(names.pop())
        y = test["y"].to_numpy()
        sa, sb = pred.scores(ta), pred.scores(tb)
        subsets = subgroup_rows(groups_of_test(samples, test), len(y))
        for col, value, pos in subsets:
            keys = (task, f"{col}={value}") if col else (task,)
            rec = _compare_one(
                y[pos], sa[:, pos], sb[:, pos], metric, replicates, rng_for(seed, *keys), level
            )
            deltas = rec.pop("_deltas")
            pooled.setdefault((col, value), []).append(deltas)
            records.append(
                {"task": task, **({"group_by": col, "group": value} if col else {}), **rec, "n": n_}
            )
    for (col, value), parts in pooled.items():
        same = [r for r in records if r.get("group_by", "") == col and r.get("group", "") == value]
        group = {"group_by": col, "group": value} if col else {}
        records.append(
            {"task": "all", **group, **_pooled(same, parts, metric, level, pool), "n": n_}
        )
    table = pd.DataFrame(records)
    return Comparison(
        table=table,
        compare=compare,
        a=a,
        b=b,
        n=n_,
        metric=metric,
        replicates=replicates,
        level=level,
        fixed=fixed,
        seconds=time.perf_counter() - t0,
        pool=pool,
    )


def pool_deltas(parts: Sequence[np.ndarray], pool: str = "mean") -> np.ndarray:
    """The pooled replicate differences of several tasks, each (R,): ``"mean"`` averages the
    tasks within each replicate (tasks whose differences are all NaN, e.g. a test set of one
    class, left out), (R,); ``"mixture"`` concatenates them, (tasks · R,).

    Examples
    --------
    >>> pool_deltas([np.array([0.1, 0.3]), np.array([0.3, 0.1])]).tolist()
    [0.2, 0.2]
    >>> pool_deltas([np.array([0.1, 0.3]), np.array([0.3, 0.1])], "mixture").tolist()
    [0.1, 0.3, 0.3, 0.1]
    """
    if pool == "mixture":
        return np.concatenate(parts)
    defined = [d for d in parts if np.isfinite(d).any()]
    if not defined:
        return np.full(len(parts[0]) if len(parts) else 0, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate NaN in every task
        return np.nanmean(np.stack(defined), axis=0)


def _pooled(
    same: list[dict[str, Any]], parts: list[np.ndarray], metric: str, level: float, pool: str
) -> dict[str, Any]:
    """The ``"all"`` row of the task rows ``same`` and their replicate differences ``parts``."""
    diff, lo, hi, p = summarise(pool_deltas(parts, pool), level)
    defined = [r for r, d in zip(same, parts, strict=True) if np.isfinite(d).any()]
    return {
        "metric": metric,
        "difference": diff,
        "lower": lo,
        "upper": hi,
        "p_value": p,
        "observed": _nanmean([r["observed"] for r in defined]),
        "a_mean": _nanmean([r["a_mean"] for r in defined]),
        "b_mean": _nanmean([r["b_mean"] for r in defined]),
        "a_seeds": min(r["a_seeds"] for r in same),
        "b_seeds": min(r["b_seeds"] for r in same),
        "n_test": sum(r["n_test"] for r in same),
        "delong_p": math.nan,
        "delong_lower": math.nan,
        "delong_upper": math.nan,
        "pool": pool,
        "tasks": len(defined),
    }


def _nanmean(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def _compare_one(
    y: np.ndarray,
    sa: np.ndarray,
    sb: np.ndarray,
    metric: str,
    replicates: int,
    rng: np.random.Generator,
    level: float,
) -> dict[str, Any]:
    r = paired_bootstrap(
        y=y, scores_a=sa, scores_b=sb, metric=metric, replicates=replicates, rng=rng, level=level
    )
    dl = dict(delong_p=math.nan, delong_lower=math.nan, delong_upper=math.nan)
    counts = np.bincount(y, minlength=2)
    if metric == "auroc" and sa.ndim == 2 and len(sa) == len(sb) == 1 and counts.min() >= 2:
        d = delong(y=y, scores_a=sa[0], scores_b=sb[0], level=level)
        dl = dict(delong_p=d.p_value, delong_lower=d.lower, delong_upper=d.upper)
    return {
        "metric": metric,
        "difference": r.difference,
        "lower": r.lower,
        "upper": r.upper,
        "p_value": r.p_value,
        "observed": r.observed,
        "a_mean": r.a_mean,
        "b_mean": r.b_mean,
        "a_seeds": len(sa),
        "b_seeds": len(sb),
        "n_test": len(y),
        **dl,
        "pool": "",
        "tasks": 1,
        "_deltas": r.deltas,
    }
