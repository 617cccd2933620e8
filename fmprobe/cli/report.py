"""``fmprobe report``: an HTML page of a sweep's curves, forecasts, comparisons and provenance."""

from __future__ import annotations

from typing import Any

import click

from fmprobe.cli.common import config_option, friendly


@click.command("report")
@click.argument("results")
@click.option("--out", required=True, help="Folder for index.html and figures/.")
@click.option("--forecast", default=None, help="A table from `fmprobe forecast --out`.")
@click.option("--store", default=None, help="The feature store: models, weights, versions.")
@click.option("--metric", default="auroc", show_default=True, help="Results column to plot.")
@click.option("--n", type=int, default=None, help="n of the layer/pool/subgroup figures.")
@click.option("--group-by", default=None, help="Store columns for subgroup bars (needs --store).")
@click.option("--replicates", type=int, default=200, show_default=True, help="Subgroup CIs.")
@click.option("--title", default=None, help="Page title.")
@config_option
@friendly
def report(**opts: Any) -> None:
    """Write OUT/index.html: learning curves, forecasts, labels needed, layers and pooling,
    samplers, subgroups and provenance (PNG figures in OUT/figures; opens without a server).

    \b
    Example:
      fmprobe report out/demo/results.parquet --store out/demo/store.zarr --out out/demo/report
      fmprobe forecast results.parquet --max-labels 50 --target 0.9 --out fc.parquet
      fmprobe report results.parquet --forecast fc.parquet --out report/
    """
    from fmprobe.report import report as run_report

    r = run_report(**opts)
    click.echo(
        f"report: {len(r.figures)} figures, sections {', '.join(r.sections)} in "
        f"{r.seconds:.1f} s; open {r.index}",
        err=True,
    )
    click.echo(str(r.index))
