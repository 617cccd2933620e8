"""``forecast`` and ``forecast_benchmark``: the library functions behind ``fmprobe forecast``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fmprobe.errors import UsageError
from fmprobe.forecast.curves import Curves, build_curves, check_columns, default_by, read_table
from fmprobe.forecast.families import FAMILIES, parse_families
from fmprobe.forecast.fit import CurveData, fit_family
from fmprobe.forecast.predict import Fits, fit_curves, labels_needed

TARGET_GRID = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)
HORIZONS = ((1, 2), (2, 4), (4, 16), (16, 64), (64, np.inf))


@dataclass(frozen=True)
class ForecastResult:
    """What ``forecast`` returns.

    Attributes
    ----------
    table : DataFrame
        One row per curve and evaluated n (the Forecast output contract of DESIGN.md).
    curves : DataFrame
        One row per curve: the ``by`` columns, ``status``, ``fit_max_n``, ``n_points``.
    labels : DataFrame
        One row per curve and target: ``target``, ``n_needed``, ``n_needed_lower``,
        ``n_needed_upper``, ``p_unreachable`` (empty without targets).
    fits : Fits
        The fitted families of the fittable curves (rows follow ``fit_index``), for plots.
    fit_index : ndarray
        Rows of ``curves`` that were fitted.
    seconds : float
    """

    table: pd.DataFrame
    curves: pd.DataFrame
    labels: pd.DataFrame
    fits: Fits
    fit_index: np.ndarray
    seconds: float


@dataclass(frozen=True)
class BenchmarkResult:
    """What ``forecast_benchmark`` returns.

    Attributes
    ----------
    summary : DataFrame
        One row per method and horizon: ``mae``, ``median_ae``, ``p90_ae``, ``bias``,
        ``coverage``, ``width``, ``points``, ``curves``; plus, on the ``all`` rows,
        labels-needed figures ``ln_pairs``, ``ln_within_2x``, ``ln_under``, ``ln_under_2x``.
    predictions : DataFrame
        Every scored (curve, n): the ``by`` columns, ``n``, ``ratio``, ``observed`` and each
        method's prediction (and fmprobe's ``lower``/``upper``).
    curves_used : int
    curves_skipped : dict of str to int
        Curves not benchmarked, by reason.
    seconds : float
    """

    summary: pd.DataFrame
    predictions: pd.DataFrame
    curves_used: int
    curves_skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _parse_floats(value: str | float | Sequence[float] | None, name: str) -> tuple[float, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, (int, float)):
        items: list[object] = [value]
    elif isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()]
    else:
        items = list(value)
    out = []
    for v in items:
        try:
            out.append(float(v))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UsageError(f"{name}: {v!r} is not a number; e.g. {name} 0.85,0.9") from None
    return tuple(out)


def _prepare(
    curves: str | Path | pd.DataFrame,
    metric: str,
    by: str | Sequence[str] | None,
    max_labels: float | None,
    level: float,
    families: str | Sequence[str] | None,
) -> tuple[Curves, tuple[str, ...], tuple[str, ...]]:
    if not 0 < level < 1:
        raise UsageError(f"--level must be between 0 and 1 (exclusive), got {level}; e.g. 0.9")
    if max_labels is not None and max_labels <= 0:
        raise UsageError(f"--max-labels must be positive, got {max_labels}")
    fams = parse_families(
        families if families is None or isinstance(families, str) else list(families)
    )
    df = read_table(curves)
    if df.empty:
        raise UsageError("the curves table is empty; it needs columns n and the metric")
    if by is None:
        by_t = default_by(df)
    elif isinstance(by, str):
        by_t = tuple(b.strip() for b in by.split(",") if b.strip())
    else:
        by_t = tuple(by)
    check_columns(df, metric=metric, by=by_t)
    cv = build_curves(df, metric=metric, by=by_t, max_labels=max_labels)
    if len(cv.fit_index) == 0:
        counts = pd.Series(cv.status).value_counts()
        why = ", ".join(f"{v} {k}" for k, v in counts.items())
        hint = f" with n <= {max_labels:g}" if max_labels is not None else ""
        raise UsageError(
            f"no curve can be fitted ({len(cv.status)} curves: {why}); each needs scores in "
            f"[0, 1] at 3 or more distinct n > 0{hint} that are not constant or decreasing"
        )
    return cv, by_t, fams


def forecast(
    *,
    curves: str | Path | pd.DataFrame,
    metric: str = "auroc",
    by: str | Sequence[str] | None = None,
    at: str | Sequence[float] | None = None,
    level: float = 0.9,
    target: str | float | Sequence[float] | None = None,
    max_labels: float | None = None,
    families: str | Sequence[str] | None = None,
    out: str | Path | None = None,
) -> ForecastResult:
    """Forecast learning curves: the score at any n with an interval, and the labels needed.

    Parameters
    ----------
    curves : path or DataFrame
        A table with a column ``n``, the ``metric`` column and optionally ``seed`` (a
        ``fmprobe sweep`` results table, or any CSV/Parquet of curves).
    metric : str
        Score column, in [0, 1] and higher is better (auroc, auprc, balanced_accuracy, ...).
    by : str or sequence of str, optional
        Columns naming a curve. Default: feature, task, probe, sampler for a results table;
        every string column otherwise.
    at : str or sequence of float, optional
        Extra n to forecast besides every n of the curve (``"500,5000"``).
    level : float
        Central probability of the ``lower``/``upper`` interval.
    target : str, float or sequence of float, optional
        Score(s) for which to report the labels needed.
    max_labels : float, optional
        Fit only the points with ``n <= max_labels``.
    families : str or sequence of str, optional
        Curve families to average (default: all; see ``fmprobe.forecast.FAMILIES``).
    out : path, optional
        Write ``table`` to this CSV or Parquet file (by suffix).

    Returns
    -------
    ForecastResult

    Examples
    --------
    >>> r = forecast(curves="out/demo/results.parquet", at="5000", target=0.9,
    ...              max_labels=50)  # doctest: +SKIP
    >>> r.table[["feature", "n", "predicted", "lower", "upper", "n_needed"]]  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    at_n = _parse_floats(at, "--at")
    if any(a <= 0 for a in at_n):
        raise UsageError(f"--at values must be positive label counts, got {at}")
    targets = _parse_floats(target, "--target")
    if any(not 0 < t < 1 for t in targets):
        raise UsageError(f"--target must be scores strictly between 0 and 1, got {target}")
    cv, _by_t, fams = _prepare(curves, metric, by, max_labels, level, families)
    _check_out(out)
    fits = fit_curves(cv.data, fams)
    keys = cv.keys
    C = len(keys)
    fam_label = fams[0] if len(fams) == 1 else "ensemble"

    obs = cv.observed
    rows = []
    for c in range(C):
        o = obs[obs["_curve"] == c]
        ns = np.union1d(o["n"].to_numpy(dtype=float), np.asarray(at_n, dtype=float))
        rows.append(pd.DataFrame({"_curve": c, "n": ns}))
    table = pd.concat(rows, ignore_index=True)
    table = table.merge(obs[["_curve", "n", "observed"]], on=["_curve", "n"], how="left")
    table["predicted"] = np.nan
    table["lower"] = np.nan
    table["upper"] = np.nan
    fit_pos = {c: i for i, c in enumerate(cv.fit_index)}
    sel = table["_curve"].isin(fit_pos).to_numpy()
    if sel.any():
        sub = table[sel]
        fi = sub["_curve"].map(fit_pos).to_numpy()
        counts = np.bincount(fi, minlength=len(cv.fit_index))
        M = int(counts.max())
        nmat = np.repeat(cv.fit_max_n[cv.fit_index][:, None], M, axis=1)
        col = sub.groupby(fi).cumcount().to_numpy()
        nmat[fi, col] = sub["n"].to_numpy()
        alpha = (1 - level) / 2
        point = fits.center(nmat)[0]
        q = fits.quantiles(nmat, np.array([alpha, 1 - alpha]))
        idx = np.flatnonzero(sel)
        table.loc[idx, "predicted"] = point[fi, col]
        table.loc[idx, "lower"] = q[0][fi, col]
        table.loc[idx, "upper"] = q[1][fi, col]
    table["family"] = np.where(sel, fam_label, "")
    table["fit_max_n"] = cv.fit_max_n[table["_curve"].to_numpy()]
    table["status"] = cv.status[table["_curve"].to_numpy()]

    labels = _labels_table(fits, cv, targets, level)
    if targets:
        wide = labels.copy()
        value_cols = ["n_needed", "n_needed_lower", "n_needed_upper", "p_unreachable"]
        if len(targets) == 1:
            wide = wide.drop(columns=["target"])
            table["target"] = targets[0]
        else:
            wide = wide.pivot(index="_curve", columns="target", values=value_cols)
            wide.columns = [f"{v}_{t:g}" for v, t in wide.columns]
            wide = wide.reset_index()
        table = table.merge(wide, on="_curve", how="left")

    key_cols = keys.columns.tolist()
    table = pd.concat([keys.iloc[table["_curve"].to_numpy()].reset_index(drop=True), table], axis=1)
    table = table.drop(columns=["_curve"]).reset_index(drop=True)
    head = [*key_cols, "n", "predicted", "lower", "upper", "observed", "family", "fit_max_n"]
    table = table[head + [c for c in table.columns if c not in head]]
    curve_table = keys.copy()
    curve_table["status"] = cv.status
    curve_table["fit_max_n"] = cv.fit_max_n
    if len(labels):
        labels = pd.concat(
            [keys.iloc[labels["_curve"].to_numpy()].reset_index(drop=True), labels], axis=1
        ).drop(columns=["_curve"])
    if out is not None:
        write_table(table, out)
    return ForecastResult(
        table=table,
        curves=curve_table,
        labels=labels,
        fits=fits,
        fit_index=cv.fit_index,
        seconds=time.perf_counter() - t0,
    )


def _labels_table(fits: Fits, cv: Curves, targets: tuple[float, ...], level: float) -> pd.DataFrame:
    parts = []
    for t in targets:
        need, lo, hi, p_un = labels_needed(fits, t, level=level)
        full = {k: np.full(len(cv.status), np.nan) for k in ("need", "lo", "hi", "p")}
        for k, v in (("need", need), ("lo", lo), ("hi", hi), ("p", p_un)):
            full[k][cv.fit_index] = v
        parts.append(
            pd.DataFrame(
                {
                    "_curve": np.arange(len(cv.status)),
                    "target": t,
                    "n_needed": full["need"],
                    "n_needed_lower": full["lo"],
                    "n_needed_upper": full["hi"],
                    "p_unreachable": full["p"],
                }
            )
        )
    if not parts:
        return pd.DataFrame(
            columns=["_curve", "target", "n_needed", "n_needed_lower", "n_needed_upper"]
        )
    return pd.concat(parts, ignore_index=True)


def _check_out(out: str | Path | None) -> None:
    if out is None:
        return
    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise UsageError(f"--out {str(out)!r}: use a .csv or .parquet file name")
    parent = Path(out).parent
    if not parent.exists():
        raise UsageError(f"--out {str(out)!r}: folder {str(parent)!r} does not exist")


def write_table(table: pd.DataFrame, out: str | Path) -> None:
    """Write a table as CSV or Parquet by the suffix of ``out``."""
    _check_out(out)
    if Path(out).suffix.lower() == ".csv":
        table.to_csv(out, index=False)
    else:
        table.to_parquet(out, index=False)


def forecast_benchmark(
    *,
    curves: str | Path | pd.DataFrame,
    metric: str = "auroc",
    by: str | Sequence[str] | None = None,
    max_labels: float = 64,
    level: float = 0.9,
    families: str | Sequence[str] | None = None,
    largest_min_n: float = 0.0,
    out: str | Path | None = None,
) -> BenchmarkResult:
    """Score forecasts made from the points with ``n <= max_labels`` at every larger observed n.

    Methods compared on the same curves and points: ``fmprobe`` (this forecaster), ``last``
    (the last observed mean) and ``pow3`` (one bounded ``c - a·n^(-b)`` fit). Horizons are bins
    of ``n / fit_max_n``, plus ``largest`` (each curve's largest n, when at least
    ``largest_min_n``) and ``all``. Labels needed are scored for every target of
    ``TARGET_GRID`` above the best fitted mean and reached by the observed curve beyond
    ``max_labels`` (truth: first crossing, log-linear between observed n).

    Examples
    --------
    >>> b = forecast_benchmark(curves="curves.parquet", max_labels=64)  # doctest: +SKIP
    >>> b.summary  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    cv, _by_t, fams = _prepare(curves, metric, by, max_labels, level, families)
    _check_out(out)
    obs = cv.observed
    beyond = obs[(obs["n"] > max_labels) & obs["_curve"].isin(cv.fit_index)]
    use = np.intersect1d(cv.fit_index, beyond["_curve"].unique())
    skipped = pd.Series(cv.status[~np.isin(np.arange(len(cv.status)), cv.fit_index)])
    skipped_d = {str(k): int(v) for k, v in skipped.value_counts().items()}
    n_no_beyond = len(cv.fit_index) - len(use)
    if n_no_beyond:
        skipped_d["no_n_beyond_max_labels"] = n_no_beyond
    if len(use) == 0:
        raise UsageError(
            f"no curve has observed points beyond --max-labels {max_labels:g} to score; "
            "raise the curves' largest n or lower --max-labels"
        )
    keep = np.isin(cv.fit_index, use)
    data = cv.data.rows(keep)
    fits = fit_curves(data, fams)
    pos = {c: i for i, c in enumerate(use)}
    b = beyond[beyond["_curve"].isin(pos)].copy()
    fi = b["_curve"].map(pos).to_numpy()
    col = b.groupby(fi).cumcount().to_numpy()
    M = int(col.max()) + 1
    nmat = np.repeat(fits.fit_max_n[:, None], M, axis=1)
    nmat[fi, col] = b["n"].to_numpy()
    alpha = (1 - level) / 2
    point = fits.center(nmat)[0]
    q = fits.quantiles(nmat, np.array([alpha, 1 - alpha]))
    p3, _ = fit_family(FAMILIES["pow3"], data)
    pow3 = np.clip(FAMILIES["pow3"].evaluate(nmat, p3[:, None, :]), 0, 1)
    last = data.y[np.arange(len(use)), (data.w > 0).sum(axis=1) - 1]
    b["ratio"] = b["n"].to_numpy() / fits.fit_max_n[fi]
    b["fmprobe"] = point[fi, col]
    b["lower"] = q[0][fi, col]
    b["upper"] = q[1][fi, col]
    b["last"] = last[fi]
    b["pow3"] = pow3[fi, col]
    is_largest = b["n"].to_numpy() == b.groupby("_curve")["n"].transform("max").to_numpy()
    b["largest"] = is_largest & (b["n"].to_numpy() >= largest_min_n)

    ln = _benchmark_labels(fits, p3, data, b, fi, level)
    rows = []
    for method in ("fmprobe", "pow3", "last"):
        for name, m in _horizon_masks(b):
            if not m.any():
                continue
            err = b.loc[m, method].to_numpy() - b.loc[m, "observed"].to_numpy()
            row = {
                "method": method,
                "horizon": name,
                "points": int(m.sum()),
                "curves": int(b.loc[m, "_curve"].nunique()),
                "mae": float(np.mean(np.abs(err))),
                "median_ae": float(np.median(np.abs(err))),
                "p90_ae": float(np.quantile(np.abs(err), 0.9)),
                "bias": float(np.mean(err)),
                "coverage": np.nan,
                "width": np.nan,
            }
            if method == "fmprobe":
                y = b.loc[m, "observed"].to_numpy()
                lo, hi = b.loc[m, "lower"].to_numpy(), b.loc[m, "upper"].to_numpy()
                row["coverage"] = float(np.mean((lo <= y) & (y <= hi)))
                row["width"] = float(np.mean(hi - lo))
            if name == "all" and method in ln:
                row.update(ln[method])
            rows.append(row)
    summary = pd.DataFrame(rows)
    preds = pd.concat(
        [cv.keys.iloc[b["_curve"].to_numpy()].reset_index(drop=True), b.reset_index(drop=True)],
        axis=1,
    ).drop(columns=["_curve", "k", "var"])
    if out is not None:
        write_table(summary, out)
    return BenchmarkResult(
        summary=summary,
        predictions=preds,
        curves_used=len(use),
        curves_skipped=skipped_d,
        seconds=time.perf_counter() - t0,
    )


def _horizon_masks(b: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    r = b["ratio"].to_numpy()
    out = []
    for lo, hi in HORIZONS:
        name = f"{lo:g}-{hi:g}x" if np.isfinite(hi) else f">{lo:g}x"
        out.append((name, (r > lo) & (r <= hi)))
    out.append(("largest", b["largest"].to_numpy()))
    out.append(("all", np.ones(len(b), dtype=bool)))
    return out


def _benchmark_labels(
    fits: Fits,
    p3: np.ndarray,
    data: CurveData,
    b: pd.DataFrame,
    fi: np.ndarray,
    level: float,
) -> dict[str, dict[str, float]]:
    """Labels-needed scores of fmprobe and pow3 against the observed first crossing."""
    C = len(fits.fit_max_n)
    best = data.best
    truth_rows = []
    bb = b.assign(fi=fi).sort_values(["fi", "n"])
    prev_n = fits.fit_max_n.copy()
    prev_y = data.y[np.arange(C), (data.w > 0).sum(axis=1) - 1]
    groups = {int(k): g for k, g in bb.groupby("fi")}
    for t in TARGET_GRID:
        for c, g in groups.items():
            if best[c] >= t:
                continue
            ys, ns = g["observed"].to_numpy(), g["n"].to_numpy()
            hit = np.flatnonzero(ys >= t)
            if not len(hit):
                continue
            j = hit[0]
            n0, y0 = (prev_n[c], prev_y[c]) if j == 0 else (ns[j - 1], ys[j - 1])
            frac = 1.0 if ys[j] <= y0 else (t - y0) / (ys[j] - y0)
            frac = float(np.clip(frac, 0.0, 1.0))
            truth = float(np.exp(np.log(n0) + frac * (np.log(ns[j]) - np.log(n0))))
            truth_rows.append((t, c, truth))
    if not truth_rows:
        return {}
    tr = pd.DataFrame(truth_rows, columns=["target", "c", "truth"])
    pred_fm = np.full(len(tr), np.nan)
    pred_p3 = np.full(len(tr), np.nan)
    for t, g in tr.groupby("target"):
        need = labels_needed(fits, float(t), level=level)[0]
        pred_fm[g.index] = need[g["c"].to_numpy()]
        c_, a_, b_ = (p3[g["c"].to_numpy(), i] for i in range(3))
        with np.errstate(all="ignore"):
            n3 = np.where(c_ > t, (a_ / np.maximum(c_ - t, 1e-300)) ** (1 / b_), np.nan)
        pred_p3[g.index] = n3
    out = {}
    truth = tr["truth"].to_numpy()
    for name, pred in (("fmprobe", pred_fm), ("pow3", pred_p3)):
        ratio = np.where(np.isfinite(pred), pred / truth, np.inf)
        out[name] = {
            "ln_pairs": float(len(tr)),
            "ln_curves": float(tr["c"].nunique()),
            "ln_within_2x": float(np.mean((ratio >= 0.5) & (ratio <= 2))),
            "ln_under": float(np.mean(ratio < 1)),
            "ln_under_2x": float(np.mean(ratio < 0.5)),
        }
    return out
