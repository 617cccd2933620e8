"""``fmprobe report``: one self-contained HTML page of a sweep's curves, forecasts, comparisons
and provenance."""

from __future__ import annotations

import json
from typing import Any

import click

from fmprobe.cli.common import config_option, friendly, json_option, storage_option


@click.command("report")
@click.argument("results")
@click.option("--out", required=True, help="Folder for index.html (one self-contained file).")
@click.option("--forecast", default=None, help="A table from `fmprobe forecast --out`.")
@click.option("--store", default=None, help="The feature store: models, weights, versions.")
@click.option("--metric", default="auroc", show_default=True, help="Results column to plot.")
@click.option("--n", type=int, default=None, help="n of the layer/pool/subgroup/compare parts.")
@click.option("--group-by", default=None, help="Store columns for subgroup bars (needs --store).")
@click.option("--replicates", type=int, default=200, show_default=True,
              help="Bootstrap replicates of subgroup intervals and comparisons.")  # fmt: skip
@click.option("--title", default=None, help="Page title.")
@json_option
@config_option
@storage_option
@friendly
def report(**opts: Any) -> None:
    """Write OUT/index.html: learning curves, forecasts, labels needed, layers and pooling,
    samplers, subgroups, paired comparisons (with --save-predictions in the sweep) and
    provenance, figures inline: one file that opens anywhere, to mail or attach.

    \b
    Example:
      fmprobe report out/demo/results.parquet --store out/demo/store.zarr --out out/demo/report
      fmprobe forecast results.parquet --max-labels 50 --target 0.9 --out fc.parquet
      fmprobe report results.parquet --forecast fc.parquet --out report/ --json
    """
    from fmprobe.report import report as run_report

    as_json = opts.pop("as_json")
    r = run_report(**opts)
    click.echo(
        f"report: {len(r.figures)} figures, {r.comparisons} comparisons, sections "
        f"{', '.join(r.sections)} in {r.seconds:.1f} s; open {r.index}",
        err=True,
    )
    click.echo(json.dumps(r.to_dict(), indent=2) if as_json else str(r.index))
