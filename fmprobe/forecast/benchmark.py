"""``forecast_benchmark``: the error of the forecast on the curves' own larger n (``fmprobe
forecast --benchmark``), beside single-family fits and the last observed value."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fmprobe.errors import UsageError
from fmprobe.forecast.api import check_out, prepare, whole_labels, write_table
from fmprobe.forecast.calibration import Calibration
from fmprobe.forecast.fit import CurveData
from fmprobe.forecast.predict import (
    Fits,
    family_labels_needed,
    family_rising,
    fit_curves,
    labels_needed,
)

TARGET_GRID = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)
HORIZONS = ((1, 2), (2, 4), (4, 16), (16, 64), (64, np.inf))
BASELINE_FAMILIES = ("pow3", "mmf4", "wbl4")
ALL = "all"


@dataclass(frozen=True)
class BenchmarkResult:
    """What ``forecast_benchmark`` returns.

    Attributes
    ----------
    summary : DataFrame
        One row per method, probe (``all`` and each probe name of the table) and horizon:
        ``mae``, ``median_ae``, ``p90_ae``, ``bias``, ``coverage``, ``width`` (the interval's
        methods only), ``points``, ``curves``; plus, on the ``all`` horizon, labels-needed
        figures ``ln_pairs``, ``ln_curves``, ``ln_within_2x``, ``ln_under``, ``ln_under_2x``.
    predictions : DataFrame
        Every scored (curve, n): the ``by`` columns, ``probe_name``, ``n``, ``ratio``,
        ``observed``, ``largest``, each method's prediction and the intervals (``lower``,
        ``upper``; ``lower_no_train``, ``upper_no_train``).
    methods : tuple of str
        ``fmprobe`` (the forecast), ``fmprobe_no_train`` (the same without the training
        curve; only when the table has one), ``pow3``, ``mmf4``, ``wbl4`` (one bounded fit of
        that family) and ``last`` (the last observed mean).
    curves_used : int
    curves_skipped : dict of str to int
        Curves not benchmarked, by reason.
    seconds : float
    """

    summary: pd.DataFrame
    predictions: pd.DataFrame
    methods: tuple[str, ...]
    curves_used: int
    curves_skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def forecast_benchmark(
    *,
    curves: str | Path | pd.DataFrame,
    metric: str = "auroc",
    by: str | Sequence[str] | None = None,
    max_labels: float = 64,
    level: float = 0.9,
    families: str | Sequence[str] | None = None,
    train_metric: str | None = None,
    largest_min_n: float = 0.0,
    out: str | Path | None = None,
    calibration: Calibration | None = None,
) -> BenchmarkResult:
    """Score forecasts made from the points with ``n <= max_labels`` at every larger observed n.

    Methods compared on the same curves and points: see ``BenchmarkResult.methods``. Horizons
    are bins of ``n / fit_max_n``, plus ``largest`` (each curve's largest n, when at least
    ``largest_min_n``) and ``all``; every figure is given over all curves and per probe name.
    Labels needed are scored for every target of ``TARGET_GRID`` above the best fitted mean and
    reached by the observed curve beyond ``max_labels`` (truth: first crossing, log-linear
    between observed n), as the whole labels the forecast table reports. ``calibration``:
    learned parameters other than the package's (for a cross-validation).

    Examples
    --------
    >>> b = forecast_benchmark(curves="curves.parquet", max_labels=64)  # doctest: +SKIP
    >>> b.summary  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    prep = prepare(
        curves,
        metric=metric,
        by=by,
        max_labels=max_labels,
        level=level,
        families=families,
        train_metric=train_metric,
    )
    cv = prep.curves
    check_out(out)
    obs = cv.observed
    beyond = obs[(obs["n"] > max_labels) & obs["_curve"].isin(cv.fit_index)]
    use = np.intersect1d(cv.fit_index, beyond["_curve"].unique())
    skipped = pd.Series(cv.status[~np.isin(np.arange(len(cv.status)), cv.fit_index)])
    skipped_d = {str(k): int(v) for k, v in skipped.value_counts().items()}
    if len(cv.fit_index) > len(use):
        skipped_d["no_n_beyond_max_labels"] = len(cv.fit_index) - len(use)
    if len(use) == 0:
        raise UsageError(
            f"no curve has observed points beyond --max-labels {max_labels:g} to score; "
            "raise the curves' largest n or lower --max-labels"
        )
    data = cv.data.rows(np.isin(cv.fit_index, use))
    probes = cv.probe[use]
    fams = prep.families
    all_fams = tuple(dict.fromkeys((*fams, *BASELINE_FAMILIES)))
    plain = CurveData(n=data.n, y=data.y, w=data.w, sd=data.sd)
    base = fit_curves(plain, all_fams, calibration=calibration)
    kw = {"probes": probes, "fitted": base, "calibration": calibration}
    runs = {"fmprobe": fit_curves(data, fams, **kw)}
    if data.train is not None and fits_use_train(runs["fmprobe"]):
        runs["fmprobe_no_train"] = fit_curves(plain, fams, **kw)

    pos = {c: i for i, c in enumerate(use)}
    b = beyond[beyond["_curve"].isin(pos)].copy()
    fi = b["_curve"].map(pos).to_numpy()
    col = b.groupby(fi).cumcount().to_numpy()
    nmat = np.repeat(base.fit_max_n[:, None], int(col.max()) + 1, axis=1)
    nmat[fi, col] = b["n"].to_numpy()
    alpha = (1 - level) / 2
    b["probe_name"] = probes[fi]
    b["ratio"] = b["n"].to_numpy() / base.fit_max_n[fi]
    for name, fits in runs.items():
        b[name] = fits.center(nmat)[0][fi, col]
        q = fits.quantiles(nmat, np.array([alpha, 1 - alpha]))
        suffix = name.removeprefix("fmprobe")
        b[f"lower{suffix}"], b[f"upper{suffix}"] = q[0][fi, col], q[1][fi, col]
    for f in BASELINE_FAMILIES:
        b[f] = family_rising(f, base.params[f], nmat)[fi, col]
    b["last"] = base.last[fi] if base.last is not None else np.nan
    is_largest = b["n"].to_numpy() == b.groupby("_curve")["n"].transform("max").to_numpy()
    b["largest"] = is_largest & (b["n"].to_numpy() >= largest_min_n)
    methods = (*runs, *BASELINE_FAMILIES, "last")

    truth = label_truth(data, base.fit_max_n, b.assign(fi=fi))
    needs = _predicted_labels(runs, base, truth, level)
    summary = _summary(b, methods, truth, needs, probes)
    preds = pd.concat(
        [cv.keys.iloc[b["_curve"].to_numpy()].reset_index(drop=True), b.reset_index(drop=True)],
        axis=1,
    ).drop(columns=["_curve", "k", "var", *(["train"] if "train" in b.columns else [])])
    if out is not None:
        write_table(summary, out)
    return BenchmarkResult(
        summary=summary,
        predictions=preds,
        methods=methods,
        curves_used=len(use),
        curves_skipped=skipped_d,
        seconds=time.perf_counter() - t0,
    )


def fits_use_train(fits: Fits) -> bool:
    """Whether any curve's meta-model read its training curve."""
    return fits.model is not None and bool(np.char.endswith(fits.model.astype(str), "+train").any())


def label_truth(data: CurveData, fit_max_n: np.ndarray, b: pd.DataFrame) -> pd.DataFrame:
    """The observed labels needed: for every target of ``TARGET_GRID`` above a curve's best
    fitted mean that a later observed mean reaches, the first crossing (log-linear between
    the observed n, from the last fitted point). Columns ``target``, ``c`` (row of ``data``),
    ``truth``."""
    C = len(fit_max_n)
    best = data.best
    prev_y = data.y[np.arange(C), (data.w > 0).sum(axis=1) - 1]
    rows = []
    groups = {int(k): g for k, g in b.sort_values(["fi", "n"]).groupby("fi")}
    for t in TARGET_GRID:
        for c, g in groups.items():
            if best[c] >= t:
                continue
            ys, ns = g["observed"].to_numpy(), g["n"].to_numpy()
            hit = np.flatnonzero(ys >= t)
            if not len(hit):
                continue
            j = hit[0]
            n0, y0 = (fit_max_n[c], prev_y[c]) if j == 0 else (ns[j - 1], ys[j - 1])
            frac = 1.0 if ys[j] <= y0 else (t - y0) / (ys[j] - y0)
            frac = float(np.clip(frac, 0.0, 1.0))
            rows.append((t, c, float(np.exp(np.log(n0) + frac * (np.log(ns[j]) - np.log(n0))))))
    return pd.DataFrame(rows, columns=["target", "c", "truth"])


def _predicted_labels(
    runs: dict[str, Fits], base: Fits, truth: pd.DataFrame, level: float
) -> dict[str, np.ndarray]:
    """Each method's whole labels needed for the rows of ``truth`` (NaN: not reached)."""
    out = {m: np.full(len(truth), np.nan) for m in (*runs, *BASELINE_FAMILIES)}
    for t, g in truth.groupby("target"):
        rows, c = g.index.to_numpy(), g["c"].to_numpy()
        for m, fits in runs.items():
            out[m][rows] = labels_needed(fits, float(t), level=level)[0][c]
        for f in BASELINE_FAMILIES:
            out[f][rows] = family_labels_needed(base, f, float(t))[c]
    return {m: whole_labels(v).to_numpy(dtype=float, na_value=np.nan) for m, v in out.items()}


def _horizon_masks(b: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    r = b["ratio"].to_numpy()
    out = []
    for lo, hi in HORIZONS:
        name = f"{lo:g}-{hi:g}x" if np.isfinite(hi) else f">{lo:g}x"
        out.append((name, (r > lo) & (r <= hi)))
    out.append(("largest", b["largest"].to_numpy()))
    out.append((ALL, np.ones(len(b), dtype=bool)))
    return out


def _summary(
    b: pd.DataFrame,
    methods: tuple[str, ...],
    truth: pd.DataFrame,
    needs: dict[str, np.ndarray],
    probes: np.ndarray,
) -> pd.DataFrame:
    names = sorted({p for p in probes if p})
    groups = [(ALL, np.ones(len(b), dtype=bool), np.ones(len(truth), dtype=bool))]
    t_probe = probes[truth["c"].to_numpy()] if len(truth) else np.array([], dtype=str)
    groups += [(p, (b["probe_name"] == p).to_numpy(), t_probe == p) for p in names]
    y = b["observed"].to_numpy()
    rows = []
    for method in methods:
        pred = b[method].to_numpy()
        suffix = method.removeprefix("fmprobe") if method.startswith("fmprobe") else None
        for probe, pm, tm in groups:
            for horizon, hm in _horizon_masks(b):
                m = pm & hm
                if not m.any():
                    continue
                err = pred[m] - y[m]
                row: dict[str, object] = {
                    "method": method,
                    "probe": probe,
                    "horizon": horizon,
                    "points": int(m.sum()),
                    "curves": int(b.loc[m, "_curve"].nunique()),
                    "mae": float(np.mean(np.abs(err))),
                    "median_ae": float(np.median(np.abs(err))),
                    "p90_ae": float(np.quantile(np.abs(err), 0.9)),
                    "bias": float(np.mean(err)),
                    "coverage": np.nan,
                    "width": np.nan,
                }
                if suffix is not None:
                    lo = b[f"lower{suffix}"].to_numpy()[m]
                    hi = b[f"upper{suffix}"].to_numpy()[m]
                    row["coverage"] = float(np.mean((lo <= y[m]) & (y[m] <= hi)))
                    row["width"] = float(np.mean(hi - lo))
                if horizon == ALL and method in needs and tm.any():
                    row.update(_label_scores(needs[method][tm], truth[tm]))
                rows.append(row)
    return pd.DataFrame(rows)


def _label_scores(pred: np.ndarray, truth: pd.DataFrame) -> dict[str, float]:
    ratio = np.where(np.isfinite(pred), pred / truth["truth"].to_numpy(), np.inf)
    return {
        "ln_pairs": float(len(truth)),
        "ln_curves": float(truth["c"].nunique()),
        "ln_within_2x": float(np.mean((ratio >= 0.5) & (ratio <= 2))),
        "ln_under": float(np.mean(ratio < 1)),
        "ln_under_2x": float(np.mean(ratio < 0.5)),
    }
