"""Metrics per subgroup of the test set (sex, age band, scanner, ...), as in appendix A.9 of
the radiology scaling study (PAPERS.md §4), with stratified bootstrap intervals."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmprobe.errors import UsageError
from fmprobe.options import split_list
from fmprobe.stats.bootstrap import (
    METRICS,
    check_replicates,
    groups_of_test,
    listing,
    metric_replicates,
    rng_for,
    store_samples,
    stratified_indices,
)
from fmprobe.stats.predictions import load_predictions

CURVE = ("feature", "task", "probe", "sampler", "n")


@dataclass(frozen=True)
class SubgroupMetrics:
    """What :func:`subgroup_metrics` returns.

    Attributes
    ----------
    table : DataFrame
        One row per feature, task, probe, sampler, n, ``group_by`` column and ``group``
        value: ``metric``, ``score`` (the metric on the subgroup's test rows, mean over
        seeds), ``lower``, ``upper`` (percentile bootstrap interval of that mean),
        ``seeds``, ``n_test``, ``n_pos`` (binary tasks). Rows with task ``"all"`` average
        the tasks (per replicate, so their interval is the mean's).
    metric : str
    replicates : int
    level : float
    seconds : float
    """

    table: pd.DataFrame
    metric: str
    replicates: int
    level: float
    seconds: float


def subgroup_metrics(
    *,
    results: str | Path,
    group_by: str | Sequence[str],
    store: str | Path,
    labels: str | Path | None = None,
    metric: str = "auroc",
    n: int | Sequence[int] | None = None,
    features: str | Sequence[str] | None = None,
    replicates: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> SubgroupMetrics:
    """Metrics per subgroup of every curve of a sweep, averaged over seeds, with CIs.

    Each ``group_by`` column stratifies the test set on its own (not their cross product;
    make a combined column for that). Within a subgroup the bootstrap resamples rows within
    each class, computes the metric for every seed and averages the seeds.

    Parameters
    ----------
    results : path
        A results table written by ``fmprobe sweep --save-predictions``.
    group_by : str or sequence of str
        Sample-table columns of the store (``"sex,age_band"``).
    store : path
        The feature store the sweep read.
    metric : {"auroc", "auprc"}
    n : int or sequence of int, optional
        Label counts to evaluate (default: every n).
    features : str or sequence of str, optional
        Features to evaluate (default: all).
    replicates : int
    seed : int
    level : float

    Returns
    -------
    SubgroupMetrics

    Examples
    --------
    >>> s = subgroup_metrics(results="out/demo/results.parquet", group_by="sex",
    ...                      store="out/demo/store.zarr", n=100)  # doctest: +SKIP
    >>> s.table[["feature", "task", "group", "score", "lower", "upper"]]  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    check_replicates(replicates, level)
    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: use one of {', '.join(METRICS)}")
    cols = split_list(group_by)
    if not cols:
        raise UsageError("--group-by is empty; name store columns, e.g. --group-by sex,scanner")
    pred = load_predictions(results)
    samples = store_samples(store, cols, labels)
    t = pred.table
    if n is not None:
        wanted = {int(n)} if isinstance(n, (int, np.integer)) else {int(v) for v in n}
        present = sorted(t["n"].astype(int).unique())
        missing = sorted(wanted - set(present))
        if missing:
            raise UsageError(
                f"--n {missing[0]} is not in the results; available: {listing(present)}"
            )
        t = t[t["n"].astype(int).isin(wanted)]
    if features is not None:
        keep = split_list(features)
        unknown = sorted(set(keep) - set(t["feature"]))
        if unknown:
            from fmprobe.errors import did_you_mean

            raise UsageError(
                f"feature {unknown[0]!r} is not in the predictions"
                f"{did_you_mean(unknown[0], sorted(set(t['feature'])))}"
            )
        t = t[t["feature"].isin(keep)]
    records: list[dict[str, Any]] = []
    reps: dict[tuple[Any, ...], list[np.ndarray]] = {}
    for key, rows in t.groupby(list(CURVE), sort=True):
        test = pred.test(str(rows["test"].iloc[0]))
        y = test["y"].to_numpy()
        scores = pred.scores(rows)
        for col, vals in groups_of_test(samples, test).items():
            for value in sorted(set(vals.tolist()) - {""}):
                pos = np.flatnonzero(vals == value)
                ys = y[pos]
                rng = rng_for(seed, str(key[1]), f"{col}={value}")
                idx = np.concatenate(
                    [
                        np.arange(len(pos))[None],
                        stratified_indices(ys, replicates=replicates, rng=rng),
                    ]
                )
                m = metric_replicates(scores[:, pos], ys, idx, metric=metric).mean(0)
                lo, hi = _interval(m[1:], level)
                records.append(
                    {
                        **dict(zip(CURVE, key, strict=True)),
                        "group_by": col,
                        "group": value,
                        "metric": metric,
                        "score": float(m[0]),
                        "lower": lo,
                        "upper": hi,
                        "seeds": len(rows),
                        "n_test": len(pos),
                        "n_pos": int((ys == 1).sum()) if scores.ndim == 2 else None,
                    }
                )
                pooled_key = (key[0], key[2], key[3], key[4], col, value)
                reps.setdefault(pooled_key, []).append(m)
    for (feature, probe, sampler, n_, col, value), ms in reps.items():
        mean = np.mean(np.stack(ms), axis=0)  # NaN when a task has one class in the subgroup
        lo, hi = _interval(mean[1:], level)
        same = [
            r
            for r in records
            if (r["feature"], r["probe"], r["sampler"], r["n"], r["group_by"], r["group"])
            == (feature, probe, sampler, n_, col, value)
        ]
        records.append(
            {
                "feature": feature,
                "task": "all",
                "probe": probe,
                "sampler": sampler,
                "n": n_,
                "group_by": col,
                "group": value,
                "metric": metric,
                "score": float(mean[0]),
                "lower": lo,
                "upper": hi,
                "seeds": min(r["seeds"] for r in same),
                "n_test": max(r["n_test"] for r in same),
                "n_pos": None,
            }
        )
    table = pd.DataFrame(records)
    if len(table):
        table["n_pos"] = table["n_pos"].astype("Int64")
    return SubgroupMetrics(
        table=table,
        metric=metric,
        replicates=replicates,
        level=level,
        seconds=time.perf_counter() - t0,
    )


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if not len(v):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(v, [alpha, 1 - alpha])
    return float(lo), float(hi)
