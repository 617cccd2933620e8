"""``fmprobe compare``: the hierarchical paired bootstrap between two arms of a sweep."""

from __future__ import annotations

import json
from typing import Any

import click

from fmprobe.cli.common import config_option, friendly, json_option, storage_option


@click.command("compare")
@click.argument("results")
@click.option("--a", "a", required=True, help="Arm A: a feature (or sampler/probe) of RESULTS.")
@click.option("--b", "b", required=True, help="Arm B; the difference reported is A − B.")
@click.option(
    "--compare",
    "compare_col",
    type=click.Choice(["feature", "sampler", "probe"]),
    default="feature",
    show_default=True,
    help="The column whose values --a and --b name.",
)
@click.option("--n", type=int, default=None, help="Label count (needed when several exist).")
@click.option("--metric", type=click.Choice(["auroc", "auprc"]), default="auroc", show_default=True)
@click.option("--replicates", type=int, default=500, show_default=True, help="Per task.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the resampling.")
@click.option("--level", type=float, default=0.95, show_default=True, help="CI probability.")
@click.option("--feature", default=None, help="Fix the feature (when comparing samplers/probes).")
@click.option("--probe", default=None, help="Fix the probe (when the arms hold several).")
@click.option("--sampler", default=None, help="Fix the sampler (when the arms hold several).")
@click.option(
    "--group-by", default=None, help="Store columns: compare within each subgroup (needs --store)."
)
@click.option("--store", default=None, help="The feature store the sweep read (for --group-by).")
@click.option("--labels", default=None, help="The sweep's --labels table (group columns in it).")
@click.option(
    "--pool",
    type=click.Choice(["mean", "mixture"]),
    default="mean",
    show_default=True,
    help="Row `all`: the mean over tasks of each replicate's difference, or (mixture) "
    "every task's differences concatenated.",
)
@json_option
@config_option
@storage_option
@friendly
def compare(**opts: Any) -> None:
    """Paired bootstrap of two features (or samplers, or probes) per task and over all tasks.

    Needs a sweep run with --save-predictions. Per task the test set is resampled within
    each class; per replicate each arm's metric is averaged over its seeds; the table shows
    the mean difference A − B, its percentile CI and a bootstrap p-value. Row `all` is the
    mean over tasks: each replicate's differences averaged over the tasks.

    \b
    Example:
      fmprobe compare out/demo/results.parquet --a enc_a/last/cls --b enc_b/last/cls --n 100
      fmprobe compare results.parquet --compare sampler --a kmeans --b random --n 20 --json
    """
    from fmprobe.stats import compare as run_compare

    as_json = opts.pop("as_json")
    opts["compare"] = opts.pop("compare_col")
    c = run_compare(**opts)
    fixed = ", ".join(f"{k}={v}" for k, v in c.fixed.items())
    rows = int(c.table["task"].ne("all").sum())
    click.echo(
        f"compare: {c.a} − {c.b} ({c.compare}s; {fixed}; n={c.n}), {c.metric}, "
        f"{c.replicates} replicates, {rows} task row(s) in {c.seconds:.1f} s",
        err=True,
    )
    if as_json:
        click.echo(json.dumps(c.records()))
        return
    click.echo(_fmt(c))
    if c.table["task"].eq("all").any():
        how = {
            "mean": "the mean over the tasks of each replicate's difference",
            "mixture": "every task's replicate differences concatenated (--pool mixture)",
        }[c.pool]
        click.echo(f"all: {how}")


def _fmt(c: Any) -> str:
    t = c.table.copy()
    pct = round(100 * c.level)
    t[f"{pct}% CI"] = [
        f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in zip(t["lower"], t["upper"], strict=True)
    ]
    t["difference"] = [f"{v:+.4f}" for v in t["difference"]]
    t["p"] = [f"{v:.3g}" for v in t["p_value"]]
    t["A"] = [f"{v:.4f}" for v in t["a_mean"]]
    t["B"] = [f"{v:.4f}" for v in t["b_mean"]]
    cols = [c_ for c_ in ("task", "group_by", "group") if c_ in t.columns]
    cols += ["A", "B", "difference", f"{pct}% CI", "p", "a_seeds", "b_seeds", "n_test"]
    if t["delong_p"].notna().any():
        t["DeLong p"] = [f"{v:.3g}" if v == v else "" for v in t["delong_p"]]
        cols.append("DeLong p")
    text: str = (
        t[cols].rename(columns={"a_seeds": "seeds A", "b_seeds": "seeds B"}).to_string(index=False)
    )
    return text
