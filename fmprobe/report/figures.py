"""The report's matplotlib figures (Agg): learning curves, forecasts, layers and pools,
samplers, subgroups. Every function returns a Figure; colours follow one map per feature.
Draw them inside ``matplotlib.pyplot.rc_context(STYLE)`` for the report's fonts and grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

METRIC_LABELS = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "balanced_accuracy": "balanced accuracy",
}
X_LABEL = "labelled training samples n (log scale)"
STYLE: dict[str, Any] = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
SAMPLER_STYLES = ("-", "--", ":", "-.")


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def feature_colours(features: Sequence[str]) -> dict[str, Any]:
    """One colour per feature, stable across every figure of a report."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(features) <= 10 else "tab20"]
    return {f: cmap(i % cmap.N) for i, f in enumerate(features)}


def _figure(ncols: int = 1, *, width: float = 6.4, height: float = 4.2) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, ncols, figsize=(width * ncols, height), squeeze=False, layout="constrained"
    )
    return fig, axes[0]


def _curve_stats(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    g = rows.groupby("n")[metric]
    return pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=0), "seeds": g.size()}).reset_index()


def _legend(ax: Any, handles: list[Any] | None = None, **kw: Any) -> None:
    """Inside the axes when short, to the right of it when long."""
    n = len(handles) if handles is not None else len(ax.get_legend_handles_labels()[0])
    where = {"loc": "best"} if n <= 5 else {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
    if handles is not None:
        kw["handles"] = handles
    ax.legend(**where, **kw)


def learning_curves(
    rows: pd.DataFrame, *, metric: str, colours: dict[str, Any], title: str, panels: str = "probe"
) -> Any:
    """Mean ± SD over seeds of ``metric`` against n, one colour per feature and one line
    style per sampler, one panel per value of ``panels``."""
    from matplotlib.lines import Line2D

    values = sorted(rows[panels].astype(str).unique())
    fig, axes = _figure(len(values))
    samplers = sorted(rows["sampler"].astype(str).unique(), key=lambda s: (s != "random", s))
    for ax, value in zip(axes, values, strict=True):
        sub = rows[rows[panels].astype(str) == value]
        handles = []
        for feature in [f for f in colours if f in set(sub["feature"])]:
            for k, sampler in enumerate(samplers):
                cur = sub[(sub["feature"] == feature) & (sub["sampler"] == sampler)]
                if not len(cur):
                    continue
                st = _curve_stats(cur, metric)
                ls = SAMPLER_STYLES[k % len(SAMPLER_STYLES)]
                c = colours[feature]
                ax.plot(st["n"], st["mean"], ls, marker="o", ms=4, lw=2, color=c)
                ax.fill_between(
                    st["n"], st["mean"] - st["sd"], st["mean"] + st["sd"], color=c, alpha=0.12, lw=0
                )
            handles.append(Line2D([], [], color=colours[feature], lw=2, label=feature))
        if len(samplers) > 1:
            handles += [
                Line2D([], [], color="0.2", lw=2, ls=SAMPLER_STYLES[k % len(SAMPLER_STYLES)],
                       label=f"sampler {s}")
                for k, s in enumerate(samplers)
            ]  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(X_LABEL)
        ax.set_ylabel(f"{metric_label(metric)} on the test set")
        ax.set_title(f"{title} — {panels} {value}" if len(values) > 1 else title)
        _legend(ax, handles)
    return fig


def forecast_curves(
    table: pd.DataFrame, *, metric: str, colours: dict[str, Any], title: str
) -> Any:
    """Forecast table rows of one task: observed means (dots), forecast (line) and its band
    per feature; a dotted line marks the largest n used for fitting."""
    fig, axes = _figure(1, width=7.2, height=4.6)
    ax = axes[0]
    for feature in [f for f in colours if f in set(table["feature"])]:
        t = table[table["feature"] == feature].sort_values("n")
        c = colours[feature]
        ok = t["predicted"].notna()
        ax.fill_between(t["n"][ok], t["lower"][ok], t["upper"][ok], color=c, alpha=0.15, lw=0)
        ax.plot(t["n"][ok], t["predicted"][ok], "-", color=c, lw=2, label=feature)
        obs = t[t["observed"].notna()]
        fitted = obs["n"] <= obs["fit_max_n"]
        ax.plot(obs["n"][fitted], obs["observed"][fitted], "o", color=c, ms=5)
        ax.plot(obs["n"][~fitted], obs["observed"][~fitted], "o", mfc="white", color=c, ms=5)
        if len(t):
            ax.axvline(float(t["fit_max_n"].iloc[0]), color=c, ls=":", lw=1)
    if "target" in table.columns:
        for tv in table["target"].dropna().unique():
            ax.axhline(float(tv), color="crimson", ls="--", lw=1, label=f"target {tv:g}")
    ax.set_xscale("log")
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(f"{metric_label(metric)} on the test set")
    ax.set_title(title)
    _legend(ax)
    return fig


def layer_curve(table: pd.DataFrame, *, metric: str, n: int, title: str) -> Any:
    """``table``: model, layer, pool, mean, sd — the metric against layer index, one line per
    model and pool."""
    fig, axes = _figure(1, width=7.2)
    ax = axes[0]
    for (model, pool), t in table.groupby(["model", "pool"], sort=True):
        t = t.sort_values("layer")
        ax.errorbar(
            t["layer"],
            t["mean"],
            yerr=t["sd"],
            marker="o",
            capsize=3,
            lw=2,
            label=f"{model} · {pool}",
        )
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel(f"{metric_label(metric)} at n = {n}")
    ax.set_title(title)
    _legend(ax)
    return fig


def pool_bars(table: pd.DataFrame, *, metric: str, n: int, title: str) -> Any:
    """``table``: model, layer, pool, mean, sd — pools side by side for each model layer."""
    groups = table[["model", "layer"]].drop_duplicates().sort_values(["model", "layer"])
    pools = sorted(table["pool"].unique())
    fig, axes = _figure(1, width=max(6.4, 1.1 * len(groups) * max(1, len(pools)) / 2 + 3))
    ax = axes[0]
    x = np.arange(len(groups))
    width = 0.8 / len(pools)
    for k, pool in enumerate(pools):
        vals = [
            table[(table["model"] == m) & (table["layer"] == lay) & (table["pool"] == pool)]
            for m, lay in groups.itertuples(index=False)
        ]
        mean = [float(v["mean"].iloc[0]) if len(v) else np.nan for v in vals]
        sd = [float(v["sd"].iloc[0]) if len(v) else 0.0 for v in vals]
        ax.bar(x + (k - (len(pools) - 1) / 2) * width, mean, width, yerr=sd, capsize=3, label=pool)
    ax.set_xticks(x, [f"{m}\nlayer {lay}" for m, lay in groups.itertuples(index=False)], fontsize=9)
    lo = np.nanmin(table["mean"] - table["sd"].fillna(0))
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, np.nanmax(table["mean"] + table["sd"]) + 0.05))
    ax.set_ylabel(f"{metric_label(metric)} at n = {n}")
    ax.set_title(title)
    _legend(ax, title="pooling")
    return fig


def subgroup_bars(table: pd.DataFrame, *, metric: str, colours: dict[str, Any], title: str) -> Any:
    """``table``: feature, group, score, lower, upper — bars per subgroup, one per feature,
    with the bootstrap interval as error bars."""
    groups = sorted(table["group"].astype(str).unique())
    features = [f for f in colours if f in set(table["feature"])]
    fig, axes = _figure(1, width=max(6.4, 0.9 * len(groups) * len(features) / 2 + 4))
    ax = axes[0]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(features))
    for k, feature in enumerate(features):
        t = table[table["feature"] == feature].set_index("group").reindex(groups)
        err = np.vstack([t["score"] - t["lower"], t["upper"] - t["score"]]).clip(min=0)
        ax.bar(
            x + (k - (len(features) - 1) / 2) * width,
            t["score"],
            width,
            yerr=np.nan_to_num(err),
            capsize=3,
            color=colours[feature],
            label=feature,
        )
    counts = table.groupby("group")["n_test"].max().reindex(groups)
    ax.set_xticks(x, [f"{g}\n(n test = {int(c)})" for g, c in zip(groups, counts, strict=True)])
    lo = np.nanmin(table["lower"].to_numpy(dtype=float))
    ax.set_ylim(max(0.0, (lo if np.isfinite(lo) else 0.5) - 0.05), 1.0)
    ax.set_ylabel(f"{metric_label(metric)} (mean over tasks)")
    ax.set_title(title)
    _legend(ax)
    return fig
