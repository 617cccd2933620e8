"""The report's matplotlib figures (Agg), one axes each so that the page lays them out: learning
curves (one panel per probe), forecasts, layers and pools, subgroups, paired comparisons.
Colours follow one map per feature; legends are drawn by the page in HTML (they wrap), except
the pools' short one. Draw them inside ``matplotlib.pyplot.rc_context(STYLE)``."""

from __future__ import annotations

import textwrap
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
PANEL = (5.6, 3.8)  # inches: one panel of a grid, readable at half a laptop screen


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def hex_colour(colour: Any) -> str:
    """A matplotlib colour as ``#rrggbb`` (for the page's HTML legends)."""
    from matplotlib.colors import to_hex

    return str(to_hex(colour))


def feature_colours(features: Sequence[str]) -> dict[str, Any]:
    """One colour per feature, stable across every figure of a report."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(features) <= 10 else "tab20"]
    return {f: cmap(i % cmap.N) for i, f in enumerate(features)}


def sampler_styles(samplers: Sequence[str]) -> dict[str, str]:
    """One line style per sampler, ``random`` first (solid)."""
    order = sorted(samplers, key=lambda s: (s != "random", s))
    return {s: SAMPLER_STYLES[k % len(SAMPLER_STYLES)] for k, s in enumerate(order)}


def _axes(width: float = PANEL[0], height: float = PANEL[1]) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    return fig, ax


def curve_stats(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and SD (ddof 0) over seeds of ``metric`` per n: columns n, mean, sd, seeds."""
    g = rows.groupby("n")[metric]
    return pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=0), "seeds": g.size()}).reset_index()


def learning_curve(
    rows: pd.DataFrame,
    *,
    metric: str,
    colours: dict[str, Any],
    styles: dict[str, str],
    title: str,
    ylim: tuple[float, float] | None = None,
) -> Any:
    """One panel: mean ± SD over seeds of ``metric`` against n, one colour per feature and
    one line style per sampler (the rows of one task and probe)."""
    fig, ax = _axes()
    for feature in [f for f in colours if f in set(rows["feature"])]:
        for sampler, ls in styles.items():
            cur = rows[(rows["feature"] == feature) & (rows["sampler"] == sampler)]
            if not len(cur):
                continue
            st = curve_stats(cur, metric)
            c = colours[feature]
            ax.plot(st["n"], st["mean"], ls, marker="o", ms=4, lw=2, color=c)
            ax.fill_between(
                st["n"], st["mean"] - st["sd"], st["mean"] + st["sd"], color=c, alpha=0.12, lw=0
            )
    ax.set_xscale("log")
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(f"{metric_label(metric)} on the test set")
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    return fig


def forecast_curves(
    table: pd.DataFrame, *, metric: str, colours: dict[str, Any], title: str
) -> Any:
    """Forecast table rows of one task: observed means (dots), forecast (line) and its band
    per feature; a dotted line marks the largest n used for fitting, dashed red the targets."""
    fig, ax = _axes()
    for feature in [f for f in colours if f in set(table["feature"])]:
        t = table[table["feature"] == feature].sort_values("n")
        c = colours[feature]
        ok = t["predicted"].notna()
        ax.fill_between(t["n"][ok], t["lower"][ok], t["upper"][ok], color=c, alpha=0.15, lw=0)
        ax.plot(t["n"][ok], t["predicted"][ok], "-", color=c, lw=2)
        obs = t[t["observed"].notna()]
        fitted = obs["n"] <= obs["fit_max_n"]
        ax.plot(obs["n"][fitted], obs["observed"][fitted], "o", color=c, ms=5)
        ax.plot(obs["n"][~fitted], obs["observed"][~fitted], "o", mfc="white", color=c, ms=5)
        if len(t):
            ax.axvline(float(t["fit_max_n"].iloc[0]), color=c, ls=":", lw=1)
    if "target" in table.columns:
        for tv in table["target"].dropna().unique():
            ax.axhline(float(tv), color="crimson", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(f"{metric_label(metric)} on the test set")
    ax.set_title(title)
    return fig


def layer_curve(
    table: pd.DataFrame, *, metric: str, n: int, colours: dict[tuple[str, str], Any], title: str
) -> Any:
    """``table``: model, layer, pool, mean, sd — the metric against layer index, one line per
    (model, pool) in the colour ``colours`` gives it."""
    fig, ax = _axes()
    for (model, pool), t in table.groupby(["model", "pool"], sort=True):
        t = t.sort_values("layer")
        ax.errorbar(t["layer"], t["mean"], yerr=t["sd"], marker="o", capsize=3, lw=2,
                    color=colours[(str(model), str(pool))])  # fmt: skip
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel(f"{metric_label(metric)} at n = {n}")
    ax.set_title(title)
    return fig


def pool_bars(table: pd.DataFrame, *, metric: str, n: int, title: str) -> Any:
    """``table``: model, layer, pool, mean, sd — pools side by side for each model layer."""
    groups = table[["model", "layer"]].drop_duplicates().sort_values(["model", "layer"])
    pools = sorted(table["pool"].unique())
    fig, ax = _axes(max(PANEL[0], 0.55 * len(groups) * max(1, len(pools)) + 2.5))
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
    labels = [f"{textwrap.shorten(str(m), 24)}\nlayer {lay}" for m, lay in groups.itertuples(False)]
    ax.set_xticks(x, labels, fontsize=9)
    lo = np.nanmin(table["mean"] - table["sd"].fillna(0))
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, np.nanmax(table["mean"] + table["sd"]) + 0.05))
    ax.set_ylabel(f"{metric_label(metric)} at n = {n}")
    ax.set_title(title)
    ax.legend(title="pooling", loc="lower right")
    return fig


def subgroup_bars(table: pd.DataFrame, *, metric: str, colours: dict[str, Any], title: str) -> Any:
    """``table``: feature, group, score, lower, upper, n_test — bars per subgroup, one per
    feature, with the bootstrap interval as error bars."""
    groups = sorted(table["group"].astype(str).unique())
    features = [f for f in colours if f in set(table["feature"])]
    fig, ax = _axes(max(PANEL[0], 0.45 * len(groups) * len(features) + 2.5))
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(features))
    for k, feature in enumerate(features):
        t = table[table["feature"] == feature].set_index("group").reindex(groups)
        err = np.vstack([t["score"] - t["lower"], t["upper"] - t["score"]]).clip(min=0)
        ax.bar(x + (k - (len(features) - 1) / 2) * width, t["score"], width,
               yerr=np.nan_to_num(err), capsize=3, color=colours[feature])  # fmt: skip
    counts = table.groupby("group")["n_test"].max().reindex(groups)
    ax.set_xticks(x, [f"{g}\n(n test = {int(c)})" for g, c in zip(groups, counts, strict=True)])
    lo = np.nanmin(table["lower"].to_numpy(dtype=float))
    ax.set_ylim(max(0.0, (lo if np.isfinite(lo) else 0.5) - 0.05), 1.0)
    ax.set_ylabel(f"{metric_label(metric)} (mean over tasks)")
    ax.set_title(title)
    return fig


def compare_forest(
    labels: Sequence[str], difference: Sequence[float], lower: Sequence[float],
    upper: Sequence[float], *, metric: str, level: float, title: str,
) -> Any:  # fmt: skip
    """Paired differences A − B (dots) with their intervals, one row per comparison, top to
    bottom in the order given; the zero line marks no difference."""
    k = len(labels)
    fig, ax = _axes(PANEL[0] + 1.0, max(2.2, 0.55 * k + 1.4))
    y = np.arange(k)[::-1]
    d, lo, hi = (np.asarray(v, dtype=float) for v in (difference, lower, upper))
    ax.errorbar(d, y, xerr=np.vstack([d - lo, hi - d]).clip(min=0), fmt="o", color="#1f4e79",
                ecolor="#1f4e79", capsize=4, lw=2, ms=6)  # fmt: skip
    ax.axvline(0.0, color="0.3", lw=1, ls="--")
    ax.set_yticks(y, [textwrap.fill(str(s), 34) for s in labels], fontsize=9)
    ax.set_xlabel(f"difference in {metric_label(metric)} (A − B), {round(100 * level)}% interval")
    ax.set_title(title)
    ax.grid(axis="y", visible=False)
    return fig
