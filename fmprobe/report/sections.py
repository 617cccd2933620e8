"""The sections of the report, each drawn from the results (and the forecast, predictions and
store when given) onto a :class:`~fmprobe.report.page.Page`."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmprobe.errors import UsageError
from fmprobe.report import figures as F
from fmprobe.report.page import LegendItem, Page

COMPARE_METRICS = ("auroc", "auprc")
MAX_COMPARED = 8  # features compared with the best one, the next best first


@dataclass(frozen=True)
class Context:
    """What every section reads.

    Attributes
    ----------
    results : str
        The results table's path or URL.
    ok : pandas.DataFrame
        Its rows with a value of ``metric`` (``n`` as int).
    metric : str
    n_ref : int
        The label count of the layer, pool, subgroup and comparison sections.
    features : tuple of str
        In report order (model, layer, pool).
    colours : dict
        Feature → matplotlib colour.
    probe, sampler : str
        The probe and sampler the single-setting sections use (logreg and random when
        present).
    replicates : int
        Bootstrap replicates of subgroup intervals and comparisons.
    """

    results: str
    ok: pd.DataFrame
    metric: str
    n_ref: int
    features: tuple[str, ...]
    colours: dict[str, Any]
    probe: str
    sampler: str
    replicates: int

    @property
    def label(self) -> str:
        return F.metric_label(self.metric)

    def feature_legend(self, page: Page, features: Sequence[str] | None = None) -> None:
        shown = [f for f in self.features if features is None or f in set(features)]
        page.legend([LegendItem(f, F.hex_colour(self.colours[f])) for f in shown], "feature")


def parse_key(key: str) -> tuple[str, int, str] | None:
    """``<model>/<layer>/<pool>`` with a numbered layer (``block11``), else None."""
    parts = key.split("/")
    if len(parts) != 3:
        return None
    digits = re.findall(r"\d+", parts[1])
    return (parts[0], int(digits[-1]), parts[2]) if digits else None


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key with numbers compared as numbers: knn1, knn5, knn20."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _ylim(rows: pd.DataFrame, metric: str) -> tuple[float, float]:
    """One y range for the panels of a task, so that they compare at a glance."""
    st = rows.groupby(["feature", "probe", "sampler", "n"])[metric].agg(["mean", "std"])
    lo = float((st["mean"] - st["std"].fillna(0)).min())
    hi = float((st["mean"] + st["std"].fillna(0)).max())
    pad = max(0.02, 0.05 * (hi - lo))
    top = min(1.0, hi + pad) if hi <= 1.0 else hi + pad
    return max(0.0, lo - pad), top


def _task_panels(page: Page, ctx: Context, rows: pd.DataFrame, task: str, what: str) -> None:
    styles = F.sampler_styles(sorted(rows["sampler"].astype(str).unique()))
    ylim = _ylim(rows, ctx.metric)
    page.start_panels()
    for probe in sorted(rows["probe"].unique(), key=lambda p: (p != ctx.probe, natural_key(p))):
        sub = rows[rows["probe"] == probe]
        page.figure(
            F.learning_curve(
                sub,
                metric=ctx.metric,
                colours=ctx.colours,
                styles=styles,
                title=f"{task} · {probe}",
                ylim=ylim,
            ),
            f"{what}-{task}-{probe}",
            f"Task {task}, probe {probe}: {ctx.label} against n (log scale); line: mean over "
            "seeds, band: ± 1 SD over seeds.",
        )
    page.end_panels()


def curves_section(page: Page, ctx: Context) -> None:
    page.section(
        "Learning curves",
        f"{ctx.label} on the held-out test set against the number of labelled training "
        f"samples, one panel per probe, sampler <code>{html.escape(ctx.sampler)}</code>. Lines "
        "are the mean over seeds, bands ± 1 standard deviation; panels of a task share the "
        "y axis.",
    )
    tasks = sorted(ctx.ok["task"].astype(str).unique())
    for task in tasks:
        rows = ctx.ok[(ctx.ok["task"] == task) & (ctx.ok["sampler"] == ctx.sampler)]
        if not len(rows):
            continue
        if len(tasks) > 1:
            page.heading(f"Task {task}")
        ctx.feature_legend(page, rows["feature"].unique())
        _task_panels(page, ctx, rows, task, "curve")


def samplers_section(page: Page, ctx: Context) -> None:
    if ctx.ok["sampler"].nunique() < 2:
        return
    page.section(
        "Samplers: selected vs random",
        "The same features with the training subsets chosen by each sampler (line style) "
        "instead of stratified random draws.",
    )
    styles = F.sampler_styles(sorted(ctx.ok["sampler"].astype(str).unique()))
    for task in sorted(ctx.ok["task"].astype(str).unique()):
        rows = ctx.ok[ctx.ok["task"] == task]
        page.heading(f"Task {task}")
        ctx.feature_legend(page, rows["feature"].unique())
        page.legend([LegendItem(s, "#333333", ls) for s, ls in styles.items()], "sampler")
        _task_panels(page, ctx, rows, task, "samplers")


def forecast_section(page: Page, ctx: Context, fc: pd.DataFrame) -> None:
    page.section(
        "Forecasts",
        "Fitted learning curves from <code>fmprobe forecast</code>: the forecast (line) and its "
        "interval (band) per feature; filled dots are the observed means used for fitting, open "
        "dots those held back, the dotted line the largest n fitted, dashed red the targets.",
    )
    extra = [c for c in ("probe", "sampler") if c in fc.columns and fc[c].nunique() > 1]
    ctx.feature_legend(page, fc["feature"].astype(str).unique())
    page.start_panels()
    groups = [(k if isinstance(k, tuple) else (k,), t) for k, t in fc.groupby(["task", *extra])]
    for keys, t in sorted(groups, key=lambda g: tuple(natural_key(str(k)) for k in g[0])):
        name = " · ".join(str(k) for k in keys)
        title = name if t["predicted"].notna().any() else f"{name} (no curve fitted)"
        page.figure(
            F.forecast_curves(t, metric=ctx.metric, colours=ctx.colours, title=title),
            f"forecast-{name}",
            f"Forecast of {name}: {ctx.label} against n (log scale).",
        )
    page.end_panels()
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


def _layer_stats(ctx: Context) -> tuple[pd.DataFrame, int] | None:
    parsed = {f: parse_key(f) for f in ctx.ok["feature"].unique()}
    keys = [f for f, p in parsed.items() if p is not None]
    if not keys:
        return None
    at = ctx.ok[(ctx.ok["n"] == ctx.n_ref) & ctx.ok["feature"].isin(keys)]
    at = at[(at["probe"] == ctx.probe) & (at["sampler"] == ctx.sampler)]
    # mean over tasks per seed, then mean and SD over seeds
    per_seed = at.groupby(["feature", "seed"])[ctx.metric].mean().reset_index()
    stats = per_seed.groupby("feature")[ctx.metric].agg(["mean", "std"]).reset_index()
    if not len(stats):
        return None
    stats["sd"] = stats["std"].fillna(0.0)
    stats[["model", "layer", "pool"]] = [parsed[f] for f in stats["feature"]]
    return stats, int(at["task"].nunique())


def layers_section(page: Page, ctx: Context) -> None:
    found = _layer_stats(ctx)
    if found is None:
        return
    stats, n_tasks = found
    many_layers = stats.groupby(["model", "pool"])["layer"].nunique().max() > 1
    many_pools = stats.groupby(["model", "layer"])["pool"].nunique().max() > 1
    if not (many_layers or many_pools):
        return
    page.section(
        "Layers and pooling",
        f"{ctx.label} at n = {ctx.n_ref} (probe <code>{html.escape(ctx.probe)}</code>, sampler "
        f"<code>{html.escape(ctx.sampler)}</code>), mean over {n_tasks} task(s) and then over "
        "seeds (error bars: ± 1 SD over seeds).",
    )
    lines = sorted({(str(m), str(p)) for m, p in stats[["model", "pool"]].itertuples(False)})
    palette = F.feature_colours([f"{m}/{p}" for m, p in lines])
    colours = {line: palette[f"{line[0]}/{line[1]}"] for line in lines}
    page.start_panels()
    if many_layers:
        page.figure(
            F.layer_curve(
                stats, metric=ctx.metric, n=ctx.n_ref, colours=colours, title="layer by layer"
            ),
            "layers",
            f"{ctx.label} against layer at n = {ctx.n_ref}, one line per model and pool.",
        )
    if many_pools:
        page.figure(
            F.pool_bars(stats, metric=ctx.metric, n=ctx.n_ref, title="pooling"),
            "pools",
            f"{ctx.label} per pooling (bars side by side) at n = {ctx.n_ref}.",
        )
    page.end_panels()
    if many_layers:
        items = [LegendItem(f"{m} · {p}", F.hex_colour(colours[(m, p)])) for m, p in lines]
        page.legend(items, "layer curve")


def subgroups_section(
    page: Page, ctx: Context, *, group_by: str | Sequence[str], store: str | Path | None
) -> None:
    from fmprobe.stats import subgroup_metrics

    if ctx.metric not in COMPARE_METRICS:
        raise UsageError("subgroup bars need --metric auroc or auprc")
    if store is None:
        raise UsageError("--group-by needs --store STORE: the feature store the sweep read")
    sg = subgroup_metrics(results=ctx.results, group_by=group_by, store=store,
                          metric=ctx.metric, n=ctx.n_ref, replicates=ctx.replicates)  # fmt: skip
    t = sg.table
    page.section(
        "Subgroups",
        f"{ctx.label} per subgroup of the test set at n = {ctx.n_ref}, mean over tasks and seeds "
        f"(bars: probe <code>{html.escape(ctx.probe)}</code>, sampler "
        f"<code>{html.escape(ctx.sampler)}</code>); error bars: {round(100 * sg.level)}% "
        f"stratified bootstrap intervals ({ctx.replicates} replicates). The table lists every "
        "probe and sampler.",
    )
    pooled = t[t["task"] == "all"]
    main = pooled[(pooled["probe"] == ctx.probe) & (pooled["sampler"] == ctx.sampler)]
    if not len(main):
        main = pooled
    ctx.feature_legend(page, main["feature"].astype(str).unique())
    page.start_panels()
    for col, sub in main.groupby("group_by", sort=False):
        page.figure(
            F.subgroup_bars(sub, metric=ctx.metric, colours=ctx.colours, title=f"by {col}"),
            f"subgroups-{col}",
            f"{ctx.label} by {col} at n = {ctx.n_ref}, per feature.",
        )
    page.end_panels()
    cols = ["feature", "task", "probe", "sampler", "n", "group_by", "group", "score", "lower",
            "upper", "n_test"]  # fmt: skip
    page.table(t[[c for c in cols if c in t.columns]])


# --- paired comparisons ----------------------------------------------------------------------


@dataclass(frozen=True)
class Arms:
    """One comparison to run: ``a`` against ``b`` in column ``compare`` at label count ``n``,
    the other key columns fixed."""

    compare: str
    a: str
    b: str
    n: int
    feature: str | None
    probe: str | None
    sampler: str | None


def _ranked_features(ctx: Context, have: set[str]) -> list[str]:
    at = ctx.ok[(ctx.ok["n"] == ctx.n_ref) & (ctx.ok["probe"] == ctx.probe)]
    at = at[(at["sampler"] == ctx.sampler) & at["feature"].isin(have)]
    means = at.groupby("feature")[ctx.metric].mean().sort_values(ascending=False, kind="stable")
    return [str(f) for f in means.index]


def plan_comparisons(ctx: Context, predictions: pd.DataFrame) -> list[Arms]:
    """The best feature at ``n_ref`` against each other one (up to :data:`MAX_COMPARED`); on
    the best feature, each sampler against ``random`` and each probe against the main one —
    only arms whose predictions were saved at ``n_ref``."""
    p = predictions[predictions["n"].astype(int) == ctx.n_ref]
    main = p[(p["probe"] == ctx.probe) & (p["sampler"] == ctx.sampler)]
    ranked = _ranked_features(ctx, set(main["feature"].astype(str)))
    if not ranked:
        return []
    best, n = ranked[0], ctx.n_ref
    arms = [Arms("feature", best, f, n, None, ctx.probe, ctx.sampler) for f in ranked[1:]]
    arms = arms[:MAX_COMPARED]
    on_best = p[p["feature"] == best]
    for s in sorted(set(on_best.loc[on_best["probe"] == ctx.probe, "sampler"]) - {ctx.sampler}):
        n_s = _sampler_n(ctx, best, str(s))
        if n_s is not None:
            arms.append(Arms("sampler", str(s), ctx.sampler, n_s, best, ctx.probe, None))
    for q in sorted(set(on_best.loc[on_best["sampler"] == ctx.sampler, "probe"]) - {ctx.probe}):
        arms.append(Arms("probe", str(q), ctx.probe, n, best, None, ctx.sampler))
    return arms


def _sampler_n(ctx: Context, feature: str, sampler: str) -> int | None:
    """The largest n up to ``n_ref`` where ``sampler`` and the main one chose differently
    (their scores differ): at the whole pool every sampler takes every row."""
    rows = ctx.ok[(ctx.ok["feature"] == feature) & (ctx.ok["probe"] == ctx.probe)]
    for n in sorted(set(rows["n"]), reverse=True):
        if n > ctx.n_ref:
            continue
        a = np.sort(rows.loc[(rows["n"] == n) & (rows["sampler"] == sampler), ctx.metric])
        b = np.sort(rows.loc[(rows["n"] == n) & (rows["sampler"] == ctx.sampler), ctx.metric])
        if len(a) and len(b) and (len(a) != len(b) or not np.allclose(a, b)):
            return int(n)
    return None


def _run_comparisons(ctx: Context, arms: list[Arms]) -> tuple[pd.DataFrame, list[str], float]:
    from fmprobe.stats import compare

    frames, skipped, level = [], [], 0.95
    for arm in arms:
        try:
            c = compare(results=ctx.results, a=arm.a, b=arm.b, compare=arm.compare,
                        n=arm.n, metric=ctx.metric, replicates=ctx.replicates,
                        feature=arm.feature, probe=arm.probe, sampler=arm.sampler)  # fmt: skip
        except UsageError as exc:
            skipped.append(f"{arm.a} vs {arm.b}: {exc}")
            continue
        level = c.level
        t = c.table
        if "group_by" in t.columns:
            t = t[t["group_by"].isna() | (t["group_by"] == "")]
        frames.append(t.assign(compared=arm.compare, A=arm.a, B=arm.b, n=arm.n))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return table, skipped, level


def _summary_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison: the pooled row (task ``all``), or the task's row when the
    comparison has a single task and no pooled row."""
    rows = []
    for _, t in table.groupby(["compared", "A", "B"], sort=False):
        pooled = t[t["task"] == "all"]
        rows.append(pooled.iloc[0] if len(pooled) else t.iloc[0])
    return pd.DataFrame(rows).reset_index(drop=True)


def compare_section(page: Page, ctx: Context) -> int:
    """Paired bootstrap comparisons (``fmprobe.stats.compare``); returns how many ran."""
    from fmprobe.stats import load_predictions

    title = "Compare"
    if ctx.metric not in COMPARE_METRICS:
        page.section(title)
        page.note(f"Paired comparisons are computed for AUROC and AUPRC, not {ctx.label}.")
        return 0
    try:
        predictions = load_predictions(ctx.results).table
    except UsageError:
        page.section(title)
        page.note(
            "No saved predictions: rerun the sweep with <code>--save-predictions</code> for "
            "paired bootstrap comparisons of features, samplers and probes."
        )
        return 0
    table, skipped, level = _run_comparisons(ctx, plan_comparisons(ctx, predictions))
    page.section(
        title,
        f"Paired differences A − B in {ctx.label} at n = {ctx.n_ref} on the same test rows "
        f"(hierarchical paired bootstrap, {ctx.replicates} replicates, {round(100 * level)}% "
        "percentile intervals; <code>fmprobe compare</code>): the best feature against the "
        "others, and on it each probe against "
        f"<code>{html.escape(ctx.probe)}</code> and each sampler against "
        f"<code>{html.escape(ctx.sampler)}</code> (at the largest n where their subsets "
        "differ: from the whole pool every sampler takes every row).",
    )
    for reason in skipped:
        page.note(f"Not compared: {html.escape(reason)}")
    if not len(table):
        return 0
    summary = _summary_rows(table)
    labels = [f"{r.compared}: {r.A} − {r.B}" for r in summary.itertuples()]
    page.figure(
        F.compare_forest(
            labels,
            summary["difference"],
            summary["lower"],
            summary["upper"],
            metric=ctx.metric,
            level=level,
            title=f"A − B at n = {ctx.n_ref}",
        ),
        "compare",
        f"Difference in {ctx.label} (A − B) with its interval, one row per comparison (pooled "
        "over tasks where there are several); right of the dashed line A is better.",
    )
    cols = ["compared", "A", "B", "n", "task", "difference", "lower", "upper", "p_value",
            "a_mean", "b_mean", "n_test"]  # fmt: skip
    page.table(summary[[c for c in cols if c in summary.columns]], "one row per comparison")
    per_task = table[table["task"] != "all"]
    if per_task["task"].nunique() > 1:
        page.table(per_task[[c for c in cols if c in per_task.columns]], "per task")
    return len(summary)
