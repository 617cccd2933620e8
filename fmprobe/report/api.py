"""``fmprobe report``: one self-contained HTML file (figures inline) of a sweep."""

from __future__ import annotations

import datetime as _dt
import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fmprobe import storage, tables
from fmprobe.errors import UsageError
from fmprobe.report import figures as F
from fmprobe.report import sections as S
from fmprobe.report.page import Page
from fmprobe.report.provenance import provenance_section
from fmprobe.tables import atomic_path

KEY_COLUMNS = ("feature", "task", "probe", "sampler")
INDEX = "index.html"
FORECAST_COLUMNS = ("feature", "task", "n", "predicted", "lower", "upper", "observed", "fit_max_n")


@dataclass(frozen=True)
class ReportResult:
    """What :func:`report` returns.

    Attributes
    ----------
    index : str
        ``OUT/index.html``: the whole report in one file (figures inline as SVG).
    figures : tuple of str
        The names of the figures on the page, in page order.
    sections : tuple of str
        Titles of the sections the page holds (sections without data are left out).
    comparisons : int
        Paired comparisons in the Compare section (0 without saved predictions).
    seconds : float
    """

    index: str
    figures: tuple[str, ...]
    sections: tuple[str, ...]
    comparisons: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the path as a string, seconds rounded to ms."""
        return {
            "index": str(self.index),
            "figures": list(self.figures),
            "sections": list(self.sections),
            "comparisons": self.comparisons,
            "seconds": round(self.seconds, 3),
        }


def _read_table(path: str | Path, what: str, expected: str) -> pd.DataFrame:
    try:
        return tables.read_table(path, what=what)
    except UsageError as exc:
        raise UsageError(f"{exc}; pass {expected}") from None


def _read_results(results: str | Path, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    res = _read_table(results, "RESULTS", "the table `fmprobe sweep --out` wrote")
    missing = [c for c in (*KEY_COLUMNS, "n", "seed") if c not in res.columns]
    if missing:
        raise UsageError(
            f"RESULTS {str(results)!r} has no column {missing[0]!r}; pass a table `fmprobe sweep` "
            "wrote"
        )
    if metric not in res.columns:
        numeric = [c for c in ("auroc", "auprc", "balanced_accuracy") if c in res.columns]
        raise UsageError(
            f"--metric {metric!r} is not a column of RESULTS; use {', '.join(numeric)}"
        )
    ok = res[res[metric].notna()].copy()
    if not len(ok):
        raise UsageError(f"RESULTS {str(results)!r} holds no fitted probe with a {metric} value")
    ok["n"] = ok["n"].astype(int)
    for col in KEY_COLUMNS:
        ok[col] = ok[col].astype(str)
    return res, ok


def _forecast_table(forecast: Any) -> pd.DataFrame | None:
    if forecast is None:
        return None
    if isinstance(forecast, pd.DataFrame):
        fc = forecast
    elif hasattr(forecast, "table") and isinstance(forecast.table, pd.DataFrame):
        fc = forecast.table
    else:
        fc = _read_table(forecast, "--forecast", "a table `fmprobe forecast --out` wrote")
    missing = [c for c in FORECAST_COLUMNS if c not in fc.columns]
    if missing:
        raise UsageError(
            f"--forecast table has no column {missing[0]!r}; pass a table written by "
            "`fmprobe forecast RESULTS --out FILE` (its --by must include feature and task)"
        )
    return fc


def _reference_n(rows: pd.DataFrame, n: int | None) -> int:
    ns = sorted(rows["n"].unique())
    if n is not None:
        if int(n) not in ns:
            raise UsageError(f"--n {n} is not in the results; available: {', '.join(map(str, ns))}")
        return int(n)
    shared = set(ns)
    for _, t in rows.groupby("feature"):
        shared &= set(t["n"])
    return int(max(shared) if shared else max(ns))


def _feature_order(key: str) -> tuple[Any, ...]:
    parsed = S.parse_key(key)
    return parsed if parsed else (key, -1, "")


def _out_dir(out: str | Path) -> str:
    out_dir = storage.local(out)
    with storage.errors(out_dir, what="--out"):
        if storage.exists(out_dir) and not storage.isdir(out_dir):
            raise UsageError(
                f"--out {out_dir!r} is a file; pass a folder (the report is written as "
                f"FOLDER/{INDEX})"
            )
        if not storage.is_url(out_dir):  # object stores have no folders to create
            try:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"--out {out_dir!r} cannot be created ({exc.strerror})") from None
    return out_dir


def _context(ok: pd.DataFrame, results: str, metric: str, n: int | None, reps: int) -> S.Context:
    features = tuple(dict.fromkeys(sorted(ok["feature"].unique(), key=_feature_order)))
    samplers, probes = set(ok["sampler"]), ok["probe"]
    return S.Context(
        results=results,
        ok=ok,
        metric=metric,
        n_ref=_reference_n(ok, n),
        features=features,
        colours=F.feature_colours(features),
        probe="logreg" if "logreg" in set(probes) else str(probes.mode().iloc[0]),
        sampler="random" if "random" in samplers else sorted(samplers)[0],
        replicates=reps,
    )


def report(
    *,
    results: str | Path,
    out: str | Path,
    forecast: str | Path | pd.DataFrame | Any | None = None,
    store: str | Path | None = None,
    metric: str = "auroc",
    n: int | None = None,
    group_by: str | Sequence[str] | None = None,
    replicates: int = 200,
    title: str | None = None,
) -> ReportResult:
    """Write ``out/index.html``, one self-contained file: learning curves, forecasts and labels
    needed, layers and pooling, samplers, subgroups, paired comparisons and provenance.

    Parameters
    ----------
    results : path
        A results table of ``fmprobe sweep``.
    out : path
        Folder for ``index.html`` (created; an existing report is replaced atomically).
    forecast : path, DataFrame or ForecastResult, optional
        A table written by ``fmprobe forecast --out`` (or the result of
        :func:`fmprobe.forecast.forecast`): fitted curves, bands and labels needed.
    store : path, optional
        The feature store the sweep read: models, weights and library versions; needed for
        ``group_by``.
    metric : str
        Results column to plot (auroc, auprc, balanced_accuracy).
    n : int, optional
        Label count of the layer, pooling, subgroup and comparison sections (default: the
        largest n every feature has).
    group_by : str or sequence of str, optional
        Store columns for subgroup bars (needs ``--save-predictions`` in the sweep).
    replicates : int
        Bootstrap replicates of the subgroup intervals and the paired comparisons.
    title : str, optional

    Returns
    -------
    ReportResult

    Raises
    ------
    UsageError
        A missing or unreadable table, a column or ``n`` not in the results, ``out`` naming a
        file, ``group_by`` without ``store``.
    FmprobeError
        The page cannot be written (a full disk): nothing is left under its name.

    Examples
    --------
    >>> r = report(results="out/demo/results.parquet", out="out/demo/report",
    ...            forecast="out/demo/forecast.parquet")  # doctest: +SKIP
    >>> r.index  # doctest: +SKIP
    'out/demo/report/index.html'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = time.perf_counter()
    if group_by and store is None:
        raise UsageError("--group-by needs --store STORE: the feature store the sweep read")
    res, ok = _read_results(results, metric)
    fc = _forecast_table(forecast)
    ctx = _context(ok, storage.local(results), metric, n, replicates)
    out_dir = _out_dir(out)
    page = Page()
    with plt.rc_context(F.STYLE):  # type: ignore[arg-type]
        S.curves_section(page, ctx)
        if fc is not None:
            S.forecast_section(page, ctx, fc)
        S.layers_section(page, ctx)
        S.samplers_section(page, ctx)
        if group_by:
            S.subgroups_section(page, ctx, group_by=group_by, store=store)
        comparisons = S.compare_section(page, ctx)
    provenance_section(page, res, storage.local(results), store, forecast)
    subtitle = html.escape(
        f"{results} · {len(ctx.features)} feature(s), {ok['task'].nunique()} task(s), "
        f"{ok['probe'].nunique()} probe(s), n = {', '.join(map(str, sorted(ok['n'].unique())))}, "
        f"{ok['seed'].nunique()} seed(s) · generated "
        f"{_dt.datetime.now().isoformat(timespec='seconds')}"
    )
    index = storage.join(out_dir, INDEX)
    with atomic_path(index, what="--out") as tmp:
        name = storage.local(results).rsplit("/", 1)[-1]
        tmp.write_text(page.html(title or f"fmprobe report: {name}", subtitle))
    return ReportResult(
        index=index,
        figures=tuple(page.figures),
        sections=tuple(page.sections),
        comparisons=comparisons,
        seconds=time.perf_counter() - t0,
    )


__all__ = ["ReportResult", "report"]
