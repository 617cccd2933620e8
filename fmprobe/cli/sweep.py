"""``fmprobe sweep`` (and ``sweep merge``): probes over features × tasks × label counts × seeds."""

from __future__ import annotations

import json
from typing import Any

import click

from fmprobe.cli.common import (
    RunOrMergeGroup,
    config_option,
    device_option,
    engine_options,
    friendly,
    json_option,
    parse_json_object,
    plan_options,
    quiet_option,
    split_options,
    storage_option,
)
from fmprobe.errors import UsageError


@click.group("sweep", cls=RunOrMergeGroup, invoke_without_command=True)
@click.option("--store", default=None, help="The feature store (required).")
@click.option(
    "--out", default=None, help="The results table (Parquet); <out>.parts/ is the resume ledger."
)
@click.option(
    "--features",
    default="*",
    show_default=True,
    help="Feature keys, comma lists or globs (e.g. '*/block11/cls').",
)
@click.option(
    "--tasks", default="label", show_default=True, help="Label columns of the store or of --labels."
)
@click.option(
    "--labels",
    default=None,
    help="CSV/Parquet table joined on `id` (multi-label tasks; missing labels masked).",
)
@click.option(
    "--probe",
    default="logreg",
    show_default=True,
    help="Comma list of logreg, ridge, knn; or attnpool (patch tokens, alone).",
)
@click.option(
    "--sampler",
    default="random",
    show_default=True,
    help="Comma list: random (stratified, nested across n) and/or cold-start strategies of "
    "`fmprobe select` (kmeans, typiclust, probcover, coreset, fps, repdiv, bal, usl).",
)
@plan_options
@click.option(
    "--C",
    "C",
    default="1.0",
    show_default=True,
    help="Inverse regularisation, or 'auto' (k-fold CV over a grid).",
)
@click.option("--folds", default=5, show_default=True, type=int, help="Folds for --C auto.")
@click.option(
    "--layers",
    default=None,
    help="attnpool: stored token layers to combine, e.g. 2,5,8,11 (default: all stored).",
)
@click.option(
    "--attnpool",
    default=None,
    help='attnpool settings (AttnPoolConfig) as JSON, e.g. \'{"epochs": 25, "width": 256}\'.',
)
@click.option("--knn-k", default="1,5,20", show_default=True, help="k values of the kNN probe.")
@split_options
@click.option(
    "--uncertain",
    default=None,
    help="CheXpert-style -1 labels: ignore (masked), ones, zeros, or class (its own class).",
)
@click.option(
    "--blank",
    default="missing",
    show_default=True,
    help="Blank labels of a 1/0/-1 column: missing (masked) or negative.",
)
@click.option(
    "--group-by",
    default=None,
    help="Columns (e.g. sex,scanner): per-subgroup metrics with bootstrap CIs in "
    "<out stem>.subgroups.parquet (keeps predictions).",
)
@click.option(
    "--standardize", is_flag=True, help="z-score features with each subsample's statistics."
)
@click.option("--l2-normalize", is_flag=True, help="Scale each feature row to unit norm.")
@click.option("--max-iter", default=500, show_default=True, type=int)
@click.option(
    "--tol", default=1e-5, show_default=True, type=float, help="Relative gradient-norm tolerance."
)
@click.option(
    "--backend",
    default="torch",
    show_default=True,
    help="Logistic-regression solver: torch (batched), sklearn (reference), cuml (GPU extra).",
)
@click.option(
    "--save-predictions",
    is_flag=True,
    help="Keep every probe's test-set scores in <out>.predictions/ (for fmprobe compare).",
)
@engine_options("Where work units run: this process, or Ray tasks (one per GPU/CPU).")
@click.option(
    "--shard",
    default=None,
    help="I/N: run only every N-th work unit from I (array jobs); merge with `sweep merge`.",
)
@click.option(
    "--workers",
    default="auto",
    show_default=True,
    help="Local processes, one thread each. auto: start in this process and add one worker per "
    "further core once the rest of the sweep would take longer than starting them (~15 s); "
    "1: this process only. One thread per process because a probe's work is a stream of small "
    "operations that threads slow down, most of all on a busy machine.",
)
@device_option
@click.option(
    "--overwrite",
    is_flag=True,
    help="Start again: discard every finished unit (and kept predictions) at --out.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say which finished units would be reused and which computed (and why); run nothing.",
)
@json_option
@quiet_option
@storage_option
@config_option
@friendly
@click.pass_context
def sweep(ctx: click.Context, **opts: Any) -> None:
    """Fit probes over features × tasks × label counts × seeds; results to Parquet.

    \b
    Example:
      fmprobe sweep --store digits.zarr --out results.parquet \\
          --features '*/block11/cls' --n 10,20,50,100,all --seeds 5
      fmprobe sweep ... --shard 3/8        # array job 3 of 8
      fmprobe sweep merge results.shard-*-of-8.parquet --out results.parquet
    """
    import warnings

    if ctx.invoked_subcommand is not None:
        return
    for name in ("store", "out"):
        if not opts[name]:
            raise UsageError(f"missing option --{name}; see fmprobe sweep --help")

    from fmprobe.sweep import sweep as run_sweep

    as_json, quiet = opts.pop("as_json"), opts.pop("quiet")
    opts["attnpool"] = parse_json_object(opts["attnpool"], "--attnpool", '{"epochs": 25}') or None
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        report = run_sweep(**opts, progress=not quiet)
    for line in report.summary():
        click.echo(line, err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict()))


@sweep.command("merge")
@click.argument("parts", nargs=-1, required=True)
@click.option("--out", required=True, help="The merged results table (Parquet).")
@json_option
@storage_option
@friendly
def sweep_merge(parts: tuple[str, ...], out: str, as_json: bool) -> None:
    """Merge the tables of `sweep --shard I/N` runs into the table of one run.

    \b
    Example:
      fmprobe sweep merge results.shard-*-of-8.parquet --out results.parquet
    """
    from fmprobe.sweep import merge

    df = merge(parts=list(parts), out=out)
    click.echo(f"sweep merge: {len(df)} rows from {len(parts)} tables in {out}", err=True)
    if as_json:
        click.echo(json.dumps({"out": out, "rows": len(df), "tables": len(parts)}))
