"""``fmprobe report``: one self-contained HTML page (PNG figures beside it) of a sweep."""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fmprobe.errors import UsageError
from fmprobe.report import figures as F

KEY_COLUMNS = ("feature", "task", "probe", "sampler")


@dataclass(frozen=True)
class ReportResult:
    """What :func:`report` returns.

    Attributes
    ----------
    index : Path
        ``OUT/index.html``.
    figures : tuple of Path
        The PNG files under ``OUT/figures/``, in page order.
    sections : tuple of str
        Titles of the sections the page holds (sections without data are left out).
    seconds : float
    """

    index: Path
    figures: tuple[Path, ...]
    sections: tuple[str, ...]
    seconds: float


def _read_table(path: str | Path, what: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {str(p)!r} does not exist")
    if p.suffix.lower() == ".csv":
        return pd.read_csv(p)
    if p.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(p)
    raise UsageError(f"{what} {str(p)!r}: expected a .parquet or .csv file")


def _parse_key(key: str) -> tuple[str, int, str] | None:
    """``<model>/<layer>/<pool>`` with a numbered layer (``block11``), else None."""
    parts = key.split("/")
    if len(parts) != 3:
        return None
    digits = re.findall(r"\d+", parts[1])
    return (parts[0], int(digits[-1]), parts[2]) if digits else None


def _reference_n(rows: pd.DataFrame, n: int | None) -> int:
    ns = sorted(rows["n"].astype(int).unique())
    if n is not None:
        if int(n) not in ns:
            raise UsageError(f"--n {n} is not in the results; available: {', '.join(map(str, ns))}")
        return int(n)
    shared = set(ns)
    for _, t in rows.groupby("feature"):
        shared &= set(t["n"].astype(int))
    return max(shared) if shared else max(ns)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "x"


class _Page:
    def __init__(self, out: Path, style: dict[str, Any]) -> None:
        self.out = out
        self.style = style
        self.parts: list[str] = []
        self.figures: list[Path] = []
        self.sections: list[str] = []

    def section(self, title: str, intro: str = "") -> None:
        self.sections.append(title)
        anchor = _slug(title).lower()
        self.parts.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')
        if intro:
            self.parts.append(f"<p>{intro}</p>")

    def figure(self, fig: Any, name: str, caption: str) -> None:
        import matplotlib.pyplot as plt

        path = self.out / "figures" / f"{len(self.figures) + 1:02d}-{_slug(name)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.figures.append(path)
        rel = f"figures/{path.name}"
        self.parts.append(
            f'<figure><a href="{rel}"><img src="{rel}" alt="{html.escape(caption)}"></a>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def table(self, df: pd.DataFrame) -> None:
        self.parts.append(
            df.to_html(
                index=False, na_rep="–", float_format=lambda v: f"{v:.4g}", border=0, classes="data"
            )
        )

    def html(self, title: str, subtitle: str) -> str:
        toc = "".join(
            f'<li><a href="#{_slug(s).lower()}">{html.escape(s)}</a></li>' for s in self.sections
        )
        return _TEMPLATE.format(
            title=html.escape(title),
            subtitle=subtitle,
            toc=toc,
            body="\n".join(self.parts),
        )


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em;
       margin-top: 2em; }}
.subtitle {{ color: #555; }}
figure {{ margin: 1.2em 0; }} figure img {{ max-width: 100%; height: auto;
       border: 1px solid #eee; }}
figcaption {{ color: #555; font-size: 0.9em; }}
table.data {{ border-collapse: collapse; font-size: 0.9em; margin: 0.8em 0; }}
table.data th, table.data td {{ padding: 0.25em 0.7em; border-bottom: 1px solid #e4e4e4;
       text-align: left; }}
table.data th {{ background: #f5f5f5; }}
nav ul {{ columns: 2; }}
code {{ background: #f4f4f4; padding: 0 0.2em; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="subtitle">{subtitle}</p>
<nav><ul>{toc}</ul></nav>
{body}
</body></html>
"""


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
    """Write ``out/index.html`` and its figures: learning curves, forecasts and labels needed,
    layers and pooling, samplers, subgroups and provenance.

    Parameters
    ----------
    results : path
        A results table of ``fmprobe sweep``.
    out : path
        Folder for ``index.html`` and ``figures/`` (created; existing files are replaced).
    forecast : path, DataFrame or ForecastResult, optional
        A table written by ``fmprobe forecast --out`` (or the result of
        :func:`fmprobe.forecast.forecast`): fitted curves, bands and labels needed.
    store : path, optional
        The feature store the sweep read: models, weights and library versions; needed for
        ``group_by``.
    metric : str
        Results column to plot (auroc, auprc, balanced_accuracy).
    n : int, optional
        Label count of the layer, pooling and subgroup figures (default: the largest n every
        feature has).
    group_by : str or sequence of str, optional
        Store columns for subgroup bars (needs ``--save-predictions`` in the sweep).
    replicates : int
        Bootstrap replicates of the subgroup intervals.
    title : str, optional

    Returns
    -------
    ReportResult

    Examples
    --------
    >>> r = report(results="out/demo/results.parquet", out="out/demo/report",
    ...            forecast="out/demo/forecast.parquet")  # doctest: +SKIP
    >>> r.index  # doctest: +SKIP
    PosixPath('out/demo/report/index.html')
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = time.perf_counter()
    res = _read_table(results, "RESULTS")
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
    fc = _forecast_table(forecast)
    n_ref = _reference_n(ok, n)
    out_dir = Path(out)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "figures").glob("*.png"):
        old.unlink()
    features = list(dict.fromkeys(sorted(ok["feature"].astype(str).unique(), key=_feature_order)))
    colours = F.feature_colours(features)
    page = _Page(out_dir, F.STYLE)
    label = F.metric_label(metric)
    main_sampler = "random" if "random" in set(ok["sampler"]) else sorted(ok["sampler"])[0]

    with plt.rc_context(F.STYLE):  # type: ignore[arg-type]
        page.section(
            "Learning curves",
            f"{label} on the held-out test set against the number of labelled training samples, "
            f"per task; sampler <code>{html.escape(main_sampler)}</code>. Lines are the mean over "
            "seeds, bands ± 1 standard deviation.",
        )
        for task in sorted(ok["task"].astype(str).unique()):
            rows = ok[(ok["task"] == task) & (ok["sampler"] == main_sampler)]
            if len(rows):
                page.figure(
                    F.learning_curves(rows, metric=metric, colours=colours, title=f"task {task}"),
                    f"curve-{task}",
                    f"Learning curves of task {task}: {label} vs n (log scale), one colour per "
                    "feature; line: mean over seeds, band: ± 1 SD over seeds.",
                )
        if fc is not None:
            _forecast_section(page, fc, ok, metric, colours)
        _layer_section(page, ok, metric, n_ref)
        if ok["sampler"].nunique() > 1:
            page.section(
                "Samplers: selected vs random",
                "The same features with the training subsets chosen by each sampler (line style) "
                "instead of stratified random draws.",
            )
            for task in sorted(ok["task"].astype(str).unique()):
                page.figure(
                    F.learning_curves(
                        ok[ok["task"] == task],
                        metric=metric,
                        colours=colours,
                        title=f"task {task}: samplers",
                    ),
                    f"samplers-{task}",
                    f"Task {task}: {label} vs n per feature (colour) and sampler (line style).",
                )
        if group_by:
            _subgroup_section(page, results, store, group_by, metric, n_ref, replicates, colours)
    _provenance_section(page, res, results, store, forecast)
    subtitle = (
        f"{html.escape(str(results))} · {len(features)} feature(s), "
        f"{ok['task'].nunique()} task(s), n = {', '.join(map(str, sorted(ok['n'].unique())))}, "
        f"{ok['seed'].nunique()} seed(s) · generated "
        f"{_dt.datetime.now().isoformat(timespec='seconds')}"
    )
    index = out_dir / "index.html"
    index.write_text(page.html(title or f"fmprobe report: {Path(results).name}", subtitle))
    return ReportResult(
        index=index,
        figures=tuple(page.figures),
        sections=tuple(page.sections),
        seconds=time.perf_counter() - t0,
    )


def _feature_order(key: str) -> tuple[Any, ...]:
    parsed = _parse_key(key)
    return (parsed[0], parsed[1], parsed[2]) if parsed else (key, -1, "")


def _forecast_table(forecast: Any) -> pd.DataFrame | None:
    if forecast is None:
        return None
    if isinstance(forecast, pd.DataFrame):
        fc = forecast
    elif hasattr(forecast, "table") and isinstance(forecast.table, pd.DataFrame):
        fc = forecast.table
    else:
        fc = _read_table(forecast, "--forecast")
    need = ["feature", "task", "n", "predicted", "lower", "upper", "observed", "fit_max_n"]
    missing = [c for c in need if c not in fc.columns]
    if missing:
        raise UsageError(
            f"--forecast table has no column {missing[0]!r}; pass a table written by "
            "`fmprobe forecast RESULTS --out FILE` (its --by must include feature and task)"
        )
    return fc


def _forecast_section(
    page: _Page, fc: pd.DataFrame, ok: pd.DataFrame, metric: str, colours: dict[str, Any]
) -> None:
    page.section(
        "Forecasts",
        "Fitted learning curves from <code>fmprobe forecast</code>: the forecast (line) and its "
        "interval (band) per feature; dots are observed means.",
    )
    extra = [c for c in ("probe", "sampler") if c in fc.columns and fc[c].nunique() > 1]
    for key, t in fc.groupby(["task", *extra], sort=True):
        keys = key if isinstance(key, tuple) else (key,)
        name = " · ".join(str(k) for k in keys)
        page.figure(
            F.forecast_curves(t, metric=metric, colours=colours, title=f"forecast: {name}"),
            f"forecast-{name}",
            f"Forecast of {name}: {F.metric_label(metric)} vs n (log scale). Filled dots: "
            "observed means used for fitting; open dots: held back; band: forecast interval; "
            "dotted line: largest n fitted.",
        )
    need_cols = [c for c in fc.columns if c.startswith(("n_needed", "p_unreachable"))]
    if need_cols:
        key_cols = list(fc.columns[: list(fc.columns).index("n")])
        cols = key_cols + (["target"] if "target" in fc.columns else []) + need_cols
        table = fc[cols].drop_duplicates(subset=key_cols).reset_index(drop=True)
        page.section(
            "Labels needed",
            "Labelled samples needed to reach each target score (forecast median and interval; "
            "<code>p_unreachable</code>: probability that the curve never reaches it).",
        )
        page.table(table)


def _layer_section(page: _Page, ok: pd.DataFrame, metric: str, n_ref: int) -> None:
    parsed = {f: _parse_key(f) for f in ok["feature"].unique()}
    keys = [(f, p) for f, p in parsed.items() if p is not None]
    if not keys:
        return
    at = ok[(ok["n"] == n_ref) & ok["feature"].isin([f for f, _ in keys])]
    # mean over tasks per seed, then mean and SD over seeds
    per_seed = at.groupby(["feature", "probe", "sampler", "seed"])[metric].mean().reset_index()
    main = per_seed[
        (per_seed["probe"] == per_seed["probe"].mode().iloc[0])
        & (per_seed["sampler"] == per_seed["sampler"].mode().iloc[0])
    ]
    stats = main.groupby("feature")[metric].agg(["mean", "std"]).reset_index()
    stats["sd"] = stats["std"].fillna(0.0)
    stats[["model", "layer", "pool"]] = [parsed[f] for f in stats["feature"]]
    many_layers = stats.groupby(["model", "pool"])["layer"].nunique().max() > 1
    many_pools = stats.groupby(["model", "layer"])["pool"].nunique().max() > 1
    if not (many_layers or many_pools):
        return
    n_tasks = at["task"].nunique()
    page.section(
        "Layers and pooling",
        f"{F.metric_label(metric)} at n = {n_ref}, mean over {n_tasks} task(s) and then over "
        "seeds (error bars: ± 1 SD over seeds).",
    )
    if many_layers:
        page.figure(
            F.layer_curve(stats, metric=metric, n=n_ref, title="layer by layer"),
            "layers",
            f"{F.metric_label(metric)} against layer at n = {n_ref}, one line per model and pool.",
        )
    if many_pools:
        page.figure(
            F.pool_bars(stats, metric=metric, n=n_ref, title="pooling"),
            "pools",
            f"{F.metric_label(metric)} per pooling (bars side by side) at n = {n_ref}.",
        )


def _subgroup_section(
    page: _Page,
    results: str | Path,
    store: str | Path | None,
    group_by: str | Sequence[str],
    metric: str,
    n_ref: int,
    replicates: int,
    colours: dict[str, Any],
) -> None:
    from fmprobe.stats import subgroup_metrics

    if metric not in ("auroc", "auprc"):
        raise UsageError("subgroup bars need --metric auroc or auprc")
    if store is None:
        raise UsageError("--group-by needs --store STORE: the feature store the sweep read")
    sg = subgroup_metrics(
        results=results,
        group_by=group_by,
        store=store,
        metric=metric,
        n=n_ref,
        replicates=replicates,
    )
    t = sg.table
    page.section(
        "Subgroups",
        f"{F.metric_label(metric)} per subgroup of the test set at n = {n_ref}, mean over tasks "
        f"and seeds; error bars: {round(100 * sg.level)}% stratified bootstrap intervals "
        f"({replicates} replicates).",
    )
    pooled = t[t["task"] == "all"]
    main = pooled[
        (pooled["probe"] == pooled["probe"].mode().iloc[0])
        & (pooled["sampler"] == pooled["sampler"].mode().iloc[0])
    ]
    for col, sub in main.groupby("group_by", sort=False):
        page.figure(
            F.subgroup_bars(sub, metric=metric, colours=colours, title=f"by {col}"),
            f"subgroups-{col}",
            f"{F.metric_label(metric)} by {col} at n = {n_ref}, per feature.",
        )
    page.table(t[["feature", "task", "group_by", "group", "score", "lower", "upper", "n_test"]])


def _provenance_section(
    page: _Page, res: pd.DataFrame, results: str | Path, store: str | Path | None, forecast: Any
) -> None:
    from fmprobe import __version__

    rows: list[tuple[str, str]] = [("results", str(results))]
    if "store_fingerprint" in res.columns:
        rows.append(
            ("store fingerprint (results)", ", ".join(map(str, res["store_fingerprint"].unique())))
        )
    if "fmprobe_version" in res.columns:
        rows.append(
            ("fmprobe version (sweep)", ", ".join(map(str, res["fmprobe_version"].unique())))
        )
    rows.append(("fmprobe version (report)", __version__))
    cfg_path = Path(results).with_name(Path(results).name + ".parts") / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text()).get("config", {})
        keep = (
            "probes",
            "samplers",
            "n",
            "seeds",
            "C",
            "split_col",
            "test_frac",
            "group_col",
            "split_seed",
            "standardize",
            "l2_normalize",
            "max_iter",
            "tol",
        )
        rows.append(("sweep settings", ", ".join(f"{k}={cfg[k]}" for k in keep if k in cfg)))
    if forecast is not None and isinstance(forecast, (str, Path)):
        rows.append(("forecast", str(forecast)))
    models: list[dict[str, Any]] = []
    if store is not None:
        from fmprobe.store import open_store

        fs = open_store(store)
        ds = fs.meta.get("dataset", {})
        rows.append(("store", fs.path))
        rows.append(("store fingerprint", fs.fingerprint))
        if "store_fingerprint" in res.columns and fs.fingerprint not in set(
            res["store_fingerprint"]
        ):
            rows.append(("warning", "the store's fingerprint differs from the results' store"))
        rows.append(("dataset", ", ".join(f"{k}={v}" for k, v in ds.items() if k != "fingerprint")))
        rows.append(("store created by", str(fs.meta.get("created_by", ""))))
        for m in fs.models():
            meta = fs.model_meta(m)
            spec = meta.get("model", {})
            models.append(
                {
                    "model": m,
                    "spec": spec.get("spec", ""),
                    "weights": json.dumps(spec.get("weights", ""))
                    if isinstance(spec.get("weights"), dict)
                    else str(spec.get("weights", "")),
                    "layers": ", ".join(map(str, meta.get("layers", []))),
                    "pools": ", ".join(meta.get("pools", [])),
                    "dtype": meta.get("dtype", ""),
                    "versions": ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
                }
            )
        imported = [f.key for f in fs.features() if f.imported]
        if imported:
            rows.append(("imported features", ", ".join(imported)))
    page.section("Provenance")
    page.table(pd.DataFrame(rows, columns=["item", "value"]))
    if models:
        page.table(pd.DataFrame(models))
    elif store is None:
        page.parts.append(
            "<p>Pass <code>--store</code> for the models, weights and library versions.</p>"
        )


__all__ = ["ReportResult", "report"]
