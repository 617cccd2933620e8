"""Curves input: read a table, group it into curves, check each one, pad them into arrays."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fmprobe import tables
from fmprobe.errors import UsageError, did_you_mean
from fmprobe.forecast.fit import CurveData

RESULTS_BY = ("feature", "task", "probe", "sampler")
OK_STATUSES = ("ok", "ok_nan_dropped")


def read_table(curves: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A DataFrame as is, or a CSV / Parquet file (a path or a URL) by its suffix."""
    if isinstance(curves, pd.DataFrame):
        return curves
    return tables.read_table(curves, what="curves table")


def default_by(df: pd.DataFrame) -> tuple[str, ...]:
    """feature, task, probe, sampler for a results table; otherwise every string column."""
    if "fmprobe_version" in df.columns or set(RESULTS_BY) <= set(df.columns):
        return tuple(c for c in RESULTS_BY if c in df.columns)
    return tuple(
        c
        for c in df.columns
        if c not in ("n", "seed")
        and (pd.api.types.is_string_dtype(df[c]) or pd.api.types.is_object_dtype(df[c]))
    )


def resolve_train_metric(df: pd.DataFrame, *, metric: str, train_metric: str | None) -> str | None:
    """The training-curve column: ``train_metric`` as given (``"none"`` or ``""``: no
    training curve), by default ``train_<metric>`` when the table has it."""
    if train_metric is None:
        default = f"train_{metric}"
        return default if default in df.columns else None
    name = train_metric.strip()
    if name.lower() in ("", "none"):
        return None
    cols = [str(c) for c in df.columns]
    if name not in df.columns:
        raise UsageError(
            f"--train-metric {name!r} is not a column of the curves table"
            f"{did_you_mean(name, cols)}; pass none to forecast without the training curve"
        )
    if name in (metric, "n"):
        raise UsageError(f"--train-metric {name!r} is the metric or the label count itself")
    if not _numeric(df[name]):
        raise UsageError(f"--train-metric {name!r} is not numeric (dtype {df[name].dtype})")
    return name


def check_columns(df: pd.DataFrame, *, metric: str, by: tuple[str, ...]) -> None:
    """One-line errors for a missing ``n``, metric or ``--by`` column."""
    cols = [str(c) for c in df.columns]
    if "n" not in df.columns:
        raise UsageError(
            f"the curves table has no column 'n' (columns: {', '.join(cols[:12])}); "
            "rename the label-count column to n"
        )
    if metric not in df.columns:
        raise UsageError(
            f"--metric {metric!r} is not a column of the curves table{did_you_mean(metric, cols)}; "
            f"numeric columns: {', '.join(c for c in cols if _numeric(df[c]))}"
        )
    if not _numeric(df[metric]):
        raise UsageError(f"--metric {metric!r} is not numeric (dtype {df[metric].dtype})")
    if not _numeric(df["n"]):
        raise UsageError(f"column 'n' must be numeric, got dtype {df['n'].dtype}")
    for b in by:
        if b not in df.columns:
            raise UsageError(
                f"--by column {b!r} is not in the curves table{did_you_mean(b, cols)}; "
                f"columns: {', '.join(cols[:20])}"
            )
        if b in ("n", metric):
            raise UsageError(f"--by cannot contain {b!r}: it is the label count or the metric")


def _numeric(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s)) and not pd.api.types.is_bool_dtype(s)


@dataclass(frozen=True)
class Curves:
    """Curves ready to fit.

    Attributes
    ----------
    keys : DataFrame
        One row per curve: the ``by`` columns (a column ``curve`` when ``by`` is empty).
    status : ndarray of str, shape (C,)
        ``ok``, ``ok_nan_dropped`` or why the curve is not forecast.
    observed : DataFrame
        Columns ``_curve`` (row of ``keys``), ``n``, ``observed`` (mean), ``k`` (seeds), ``var``.
    data : CurveData
        The fit points (n <= max_labels) of the fittable curves, in ``fit_index`` order, with
        the training curve when ``train_metric`` is given.
    fit_index : ndarray of int
        Curve numbers of the rows of ``data``.
    fit_max_n : ndarray, shape (C,)
        Largest n used for fitting (NaN when not fitted).
    probe : ndarray of str, shape (C,)
        The curve's value of the ``probe`` column (``""`` without one, ``"mixed"`` when the
        curve holds several probes).
    """

    keys: pd.DataFrame
    status: np.ndarray
    observed: pd.DataFrame
    data: CurveData
    fit_index: np.ndarray
    fit_max_n: np.ndarray
    probe: np.ndarray


def build_curves(
    df: pd.DataFrame,
    *,
    metric: str,
    by: tuple[str, ...],
    max_labels: float | None,
    train_metric: str | None = None,
) -> Curves:
    """Group ``df`` into curves, give each a status and pad the fittable ones into arrays.

    ``train_metric`` names the column of the same score on the training labels: its mean per
    (curve, n), over the rows whose metric is known, becomes ``data.train`` and the column
    ``train`` of ``observed``.
    """
    work = pd.DataFrame({"n": pd.to_numeric(df["n"], errors="coerce").astype(float)})
    work["y"] = pd.to_numeric(df[metric], errors="coerce").astype(float)
    if train_metric is not None:
        t = pd.to_numeric(df[train_metric], errors="coerce").astype(float).to_numpy()
        if ((t < 0) | (t > 1)).any():
            raise UsageError(
                f"--train-metric {train_metric!r} has values outside [0, 1]; it must be the "
                f"score --metric {metric!r} measured on the training labels"
            )
        work["t"] = t
    if by:
        keys_df = df[list(by)].astype(object).where(df[list(by)].notna(), "")
        codes, uniques = pd.factorize(pd.MultiIndex.from_frame(keys_df), sort=False)
        keys = pd.DataFrame(list(uniques), columns=list(by))
    else:
        codes = np.zeros(len(df), dtype=np.int64)
        keys = pd.DataFrame({"curve": ["all"]})
    work["_curve"] = codes
    C = len(keys)
    status = np.full(C, "ok", dtype=object)

    def per_curve(flag: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Whether any row of each curve has ``flag``."""
        code = codes if rows is None else codes[rows]
        return np.bincount(code[flag], minlength=C) > 0

    y, n = work["y"].to_numpy(), work["n"].to_numpy()
    has_nan = per_curve(np.isnan(y))
    bad_n = per_curve(np.isnan(n) | (n <= 0))
    good = np.isfinite(y) & np.isfinite(n) & (n > 0)
    clean = work[good]
    out_of_range = per_curve((y[good] < 0) | (y[good] > 1), good)

    agg = clean.groupby(["_curve", "n"])["y"].agg(["mean", "var", "count"]).reset_index()
    observed = agg.rename(columns={"mean": "observed", "count": "k"})
    if train_metric is not None:
        observed["train"] = clean.groupby(["_curve", "n"])["t"].mean().to_numpy()
    fit_pts = observed if max_labels is None else observed[observed["n"] <= max_labels]
    per = fit_pts.groupby("_curve")
    distinct = per["n"].size().reindex(range(C), fill_value=0).to_numpy()
    spread = (per["observed"].max() - per["observed"].min()).reindex(range(C), fill_value=0.0)
    first_last = per["observed"].agg(["first", "last"]).reindex(range(C))
    sd_mean = np.sqrt(per["var"].median().reindex(range(C)).fillna(0.0).to_numpy() / 1.0)

    status[np.asarray(has_nan)] = "ok_nan_dropped"
    decreasing = (first_last["last"] < first_last["first"] - np.maximum(sd_mean, 1e-9)).to_numpy()
    status[decreasing & (distinct >= 3)] = "decreasing"
    status[(spread.to_numpy() <= 1e-12) & (distinct >= 3)] = "constant"
    status[distinct < 3] = "too_few_points"
    status[np.asarray(out_of_range)] = "out_of_range"
    status[np.asarray(bad_n)] = "nonpositive_n"

    fit_index = np.flatnonzero(np.isin(status, OK_STATUSES))
    fit_max_n = np.full(C, np.nan)
    fp = fit_pts[fit_pts["_curve"].isin(fit_index)]
    data = _pad(fp, fit_index)
    if len(fit_index):
        fit_max_n[fit_index] = data.n.max(axis=1)
    return Curves(
        keys=keys,
        status=status.astype(str),
        observed=observed,
        data=data,
        fit_index=fit_index,
        fit_max_n=fit_max_n,
        probe=_curve_probes(df, codes, C),
    )


def _curve_probes(df: pd.DataFrame, codes: np.ndarray, C: int) -> np.ndarray:
    """Each curve's probe name: its one value of the ``probe`` column, else "" or "mixed"."""
    out = np.full(C, "", dtype=object)
    if "probe" not in df.columns:
        return out.astype(str)
    names = pd.DataFrame({"_curve": codes, "probe": df["probe"].astype(object)}).dropna()
    per = names.groupby("_curve")["probe"].agg(["nunique", "first"])
    one = per["nunique"] == 1
    out[per.index[one].to_numpy()] = per.loc[one, "first"].astype(str).to_numpy()
    out[per.index[~one].to_numpy()] = "mixed"
    return out.astype(str)


def _pad(fp: pd.DataFrame, fit_index: np.ndarray) -> CurveData:
    """Padded (C, P) arrays of n, mean, weight ``k/σ²`` (σ² floored; equal weights when a
    curve has one seed per n) and seed standard deviation (NaN with one seed)."""
    C = len(fit_index)
    has_train = "train" in fp.columns
    if C == 0:
        z = np.zeros((0, 3))
        return CurveData(n=z, y=z, w=z, sd=z, train=z if has_train else None)
    fp = fp.sort_values(["_curve", "n"])
    row = np.searchsorted(fit_index, fp["_curve"].to_numpy())
    pos = fp.groupby("_curve").cumcount().to_numpy()
    P = int(pos.max()) + 1
    n = np.zeros((C, P))
    y = np.zeros((C, P))
    w = np.zeros((C, P))
    var = fp["var"].to_numpy(dtype=float)
    k = fp["k"].to_numpy(dtype=float)
    n[row, pos] = fp["n"].to_numpy(dtype=float)
    y[row, pos] = fp["observed"].to_numpy(dtype=float)
    v = np.full((C, P), np.nan)
    v[row, pos] = np.where(k > 1, var, np.nan)
    kk = np.zeros((C, P))
    kk[row, pos] = k
    filled = np.zeros((C, P), dtype=bool)
    filled[row, pos] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a curve with one seed per n: no var
        med = np.nanmedian(np.where(filled, v, np.nan), axis=1, keepdims=True)
    no_var = ~np.isfinite(med) | (med <= 0)
    # seed variances from a handful of seeds are noisy: a floor at a tenth of the curve's median
    # keeps one lucky n from taking all the weight
    floor = np.maximum(0.1 * np.where(no_var, 1.0, med), 1e-8)
    v = np.where(np.isfinite(v), v, np.where(no_var, 1.0, med))
    v = np.maximum(v, floor)
    w = np.where(filled, np.where(no_var, 1.0, kk / v), 0.0)
    w = w / w.max(axis=1, keepdims=True)
    sd = np.full((C, P), np.nan)
    sd[row, pos] = np.sqrt(np.where(k > 1, var, np.nan))
    train = np.full((C, P), np.nan)
    if has_train:
        train[row, pos] = fp["train"].to_numpy(dtype=float)
    counts = filled.sum(axis=1)
    last = counts - 1
    for j in range(P):
        pad = j > last
        for a in (n, y, sd, train):
            a[pad, j] = a[pad, last[pad]]
    return CurveData(n=n, y=y, w=w, sd=sd, train=train if has_train else None)
