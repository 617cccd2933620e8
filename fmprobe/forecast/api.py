"""``forecast``: the library function behind ``fmprobe forecast``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fmprobe import tables
from fmprobe.errors import UsageError
from fmprobe.forecast.curves import (
    Curves,
    build_curves,
    check_columns,
    default_by,
    read_table,
    resolve_train_metric,
)
from fmprobe.forecast.families import parse_families
from fmprobe.forecast.predict import Fits, fit_curves, labels_needed
from fmprobe.forecast.probes import probe_family

LABEL_STATUSES = ("reached", "forecast", "upper_only", "not_reachable")


@dataclass(frozen=True)
class ForecastResult:
    """What ``forecast`` returns.

    Attributes
    ----------
    table : DataFrame
        One row per curve and evaluated n (the Forecast output contract of DESIGN.md).
    curves : DataFrame
        One row per curve: the ``by`` columns, ``status``, ``fit_max_n``, ``model``.
    labels : DataFrame
        One row per curve and target: ``target``, ``n_needed``, ``n_needed_lower``,
        ``n_needed_upper`` (integers, empty where not reached), ``n_needed_status``,
        ``p_unreachable`` (empty without targets).
    fits : Fits
        The fitted families of the fittable curves (rows follow ``fit_index``), for plots.
    fit_index : ndarray
        Rows of ``curves`` that were fitted.
    by : tuple of str
        The columns naming a curve (the first columns of ``curves`` and ``table``).
    train_metric : str or None
        The training-curve column read (None: none).
    seconds : float
    """

    table: pd.DataFrame
    curves: pd.DataFrame
    labels: pd.DataFrame
    fits: Fits
    fit_index: np.ndarray
    by: tuple[str, ...]
    train_metric: str | None
    seconds: float


def parse_floats(value: str | float | Sequence[float] | None, name: str) -> tuple[float, ...]:
    """``--at`` / ``--target`` values (a comma list, a number or a sequence) as floats."""
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


@dataclass(frozen=True)
class Prepared:
    """The checked inputs of ``forecast`` and ``forecast_benchmark``.

    Attributes
    ----------
    curves : Curves
    by : tuple of str
    families : tuple of str
    train_metric : str or None
    """

    curves: Curves
    by: tuple[str, ...]
    families: tuple[str, ...]
    train_metric: str | None


def prepare(
    curves: str | Path | pd.DataFrame,
    *,
    metric: str,
    by: str | Sequence[str] | None,
    max_labels: float | None,
    level: float,
    families: str | Sequence[str] | None,
    train_metric: str | None,
) -> Prepared:
    """Read and check the table, resolve the options, group the curves; one-line errors."""
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
    train = resolve_train_metric(df, metric=metric, train_metric=train_metric)
    by_t = tuple(b for b in by_t if b != train)
    cv = build_curves(df, metric=metric, by=by_t, max_labels=max_labels, train_metric=train)
    if len(cv.fit_index) == 0:
        counts = pd.Series(cv.status).value_counts()
        why = ", ".join(f"{v} {k}" for k, v in counts.items())
        hint = f" with n <= {max_labels:g}" if max_labels is not None else ""
        raise UsageError(
            f"no curve can be fitted ({len(cv.status)} curves: {why}); each needs scores in "
            f"[0, 1] at 3 or more distinct n > 0{hint} that are not constant or decreasing"
        )
    return Prepared(curves=cv, by=by_t, families=fams, train_metric=train)


def curve_models(cv: Curves, fits: Fits) -> tuple[np.ndarray, np.ndarray]:
    """Each curve's ``status`` (with ``_unknown_probe`` where a probe name is not known and
    the pooled model was used) and ``model`` (``<family>`` or ``pooled``, ``+train`` when the
    training curve was read; empty for curves not fitted or without the meta-model)."""
    status = cv.status.astype(object).copy()
    model = np.full(len(status), "", dtype=object)
    unknown = np.array([bool(p) and not probe_family(p).known for p in cv.probe])
    fitted = np.zeros(len(status), dtype=bool)
    fitted[cv.fit_index] = True
    if fits.model is not None:
        fam = np.array([probe_family(p).family for p in cv.probe[cv.fit_index]], dtype=object)
        train = np.char.endswith(fits.model.astype(str), "+train")
        model[cv.fit_index] = np.where(train, fam + "+train", fam)
        status[fitted & unknown] = status[fitted & unknown] + "_unknown_probe"
    return status.astype(str), model.astype(str)


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
    train_metric: str | None = None,
    out: str | Path | None = None,
) -> ForecastResult:
    """Forecast learning curves: the score at any n with an interval, and the labels needed.

    Parameters
    ----------
    curves : path or DataFrame
        A table with a column ``n``, the ``metric`` column and optionally ``seed``, ``probe``
        and the training-set score (a ``fmprobe sweep`` results table, or any CSV/Parquet of
        curves).
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
        Curve families to average (default: all, with the calibrated meta-model; see
        ``fmprobe.forecast.FAMILIES``).
    train_metric : str, optional
        Column of the same score on the training labels (default ``train_<metric>`` when the
        table has it; ``"none"``: do not read a training curve).
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
    at_n = parse_floats(at, "--at")
    if any(a <= 0 for a in at_n):
        raise UsageError(f"--at values must be positive label counts, got {at}")
    targets = parse_floats(target, "--target")
    if any(not 0 < t < 1 for t in targets):
        raise UsageError(f"--target must be scores strictly between 0 and 1, got {target}")
    prep = prepare(
        curves,
        metric=metric,
        by=by,
        max_labels=max_labels,
        level=level,
        families=families,
        train_metric=train_metric,
    )
    cv, fams = prep.curves, prep.families
    check_out(out)
    fits = fit_curves(cv.data, fams, probes=cv.probe[cv.fit_index])
    status, model = curve_models(cv, fits)
    table = _forecast_rows(cv, fits, at_n, level)
    table["family"] = np.where(table["_fitted"], fams[0] if len(fams) == 1 else "ensemble", "")
    table = table.drop(columns=["_fitted"])
    table["fit_max_n"] = cv.fit_max_n[table["_curve"].to_numpy()]
    table["status"] = status[table["_curve"].to_numpy()]
    table["forecast_model"] = model[table["_curve"].to_numpy()]

    labels = labels_table(fits, cv, targets, level)
    if targets:
        table = table.merge(_wide_labels(labels, targets), on="_curve", how="left")
        if len(targets) == 1:
            table.insert(table.columns.get_loc("n_needed"), "target", targets[0])

    keys = cv.keys
    key_cols = keys.columns.tolist()
    table = pd.concat([keys.iloc[table["_curve"].to_numpy()].reset_index(drop=True), table], axis=1)
    table = table.drop(columns=["_curve"]).reset_index(drop=True)
    head = [*key_cols, "n", "predicted", "lower", "upper", "observed", "family", "fit_max_n"]
    table = table[head + [c for c in table.columns if c not in head]]
    curve_table = keys.copy()
    curve_table["status"] = status
    curve_table["fit_max_n"] = cv.fit_max_n
    curve_table["forecast_model"] = model
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
        by=tuple(key_cols),
        train_metric=prep.train_metric,
        seconds=time.perf_counter() - t0,
    )


def _forecast_rows(cv: Curves, fits: Fits, at_n: tuple[float, ...], level: float) -> pd.DataFrame:
    """Every observed n of each curve plus ``at_n``: observed mean, forecast and interval."""
    obs = cv.observed
    C = len(cv.status)
    extra = pd.DataFrame(
        {
            "_curve": np.repeat(np.arange(C), len(at_n)),
            "n": np.tile(np.asarray(at_n, dtype=float), C),
        }
    )
    table = pd.concat([obs[["_curve", "n"]], extra], ignore_index=True)
    table = table.drop_duplicates().sort_values(["_curve", "n"], kind="stable")
    table = table.reset_index(drop=True)
    table = table.merge(obs[["_curve", "n", "observed"]], on=["_curve", "n"], how="left")
    for col in ("predicted", "lower", "upper"):
        table[col] = np.nan
    fit_pos = {c: i for i, c in enumerate(cv.fit_index)}
    sel = table["_curve"].isin(fit_pos).to_numpy()
    table["_fitted"] = sel
    if sel.any():
        sub = table[sel]
        fi = sub["_curve"].map(fit_pos).to_numpy()
        counts = np.bincount(fi, minlength=len(cv.fit_index))
        nmat = np.repeat(cv.fit_max_n[cv.fit_index][:, None], int(counts.max()), axis=1)
        col = sub.groupby(fi).cumcount().to_numpy()
        nmat[fi, col] = sub["n"].to_numpy()
        alpha = (1 - level) / 2
        point = fits.center(nmat)[0]
        q = fits.quantiles(nmat, np.array([alpha, 1 - alpha]))
        idx = np.flatnonzero(sel)
        table.loc[idx, "predicted"] = point[fi, col]
        table.loc[idx, "lower"] = q[0][fi, col]
        table.loc[idx, "upper"] = q[1][fi, col]
    return table


def labels_table(fits: Fits, cv: Curves, targets: tuple[float, ...], level: float) -> pd.DataFrame:
    """Labels needed per curve and target, as whole labels (the first integer n at which the
    point forecast, the upper and the lower quantile reach the target; empty where they do not
    by ``N_SEARCH_MAX``) and a status (``LABEL_STATUSES``):

    ``reached`` (an observed mean within the fit range already reaches it), ``forecast`` (the
    point forecast reaches it), ``upper_only`` (only the optimistic bound does) and
    ``not_reachable`` (the upper bound of the plateau is under the target: the upper quantile
    never reaches it)."""
    C = len(cv.status)
    parts = []
    best = cv.data.best
    for t in targets:
        need, lo, hi, p_un = labels_needed(fits, t, level=level)
        full = {k: np.full(C, np.nan) for k in ("need", "lo", "hi", "p")}
        for k, v in (("need", need), ("lo", lo), ("hi", hi), ("p", p_un)):
            full[k][cv.fit_index] = v
        state = np.full(C, "", dtype=object)
        st = np.where(np.isnan(need), "upper_only", np.where(best >= t, "reached", "forecast"))
        state[cv.fit_index] = np.where(np.isnan(lo), "not_reachable", st)
        parts.append(
            pd.DataFrame(
                {
                    "_curve": np.arange(C),
                    "target": t,
                    "n_needed": whole_labels(full["need"]),
                    "n_needed_lower": whole_labels(full["lo"]),
                    "n_needed_upper": whole_labels(full["hi"]),
                    "n_needed_status": state.astype(str),
                    "p_unreachable": full["p"],
                }
            )
        )
    if not parts:
        return pd.DataFrame(
            columns=[
                "_curve",
                "target",
                "n_needed",
                "n_needed_lower",
                "n_needed_upper",
                "n_needed_status",
                "p_unreachable",
            ]
        )
    return pd.concat(parts, ignore_index=True)


def whole_labels(n: np.ndarray) -> pd.Series:
    """Label counts rounded up to whole labels (nullable integers; NaN stays missing).

    Examples
    --------
    >>> whole_labels(np.array([63.2, 64.0, np.nan])).tolist()
    [64, 64, <NA>]
    """
    # a crossing found by bisection lands a hair above a whole count: 64.0000000001 is 64
    whole = np.ceil(np.round(np.asarray(n, dtype=float), 6))
    return pd.Series(pd.array([int(v) if np.isfinite(v) else pd.NA for v in whole], dtype="Int64"))


def _wide_labels(labels: pd.DataFrame, targets: tuple[float, ...]) -> pd.DataFrame:
    """One row per curve: the label columns, suffixed ``_<target>`` when several."""
    cols = ["n_needed", "n_needed_lower", "n_needed_upper", "n_needed_status", "p_unreachable"]
    if len(targets) == 1:
        return labels[["_curve", *cols]]
    wide = labels[labels["target"] == targets[0]][["_curve"]].reset_index(drop=True)
    for t in targets:
        g = labels[labels["target"] == t].reset_index(drop=True)
        for c in cols:
            wide[f"{c}_{t:g}"] = g[c]
    return wide


def check_out(out: str | Path | None) -> None:
    """``--out``: a .csv or .parquet path or URL."""
    if out is None:
        return
    if not str(out).lower().endswith((".csv", ".parquet", ".pq")):
        raise UsageError(f"--out {str(out)!r}: use a .csv or .parquet file name")


def write_table(table: pd.DataFrame, out: str | Path) -> None:
    """Write a table as CSV or Parquet by the suffix of ``out`` (a path or a URL), atomically
    (``fmprobe.tables``)."""
    check_out(out)
    tables.write_table(table, out, what="--out")
