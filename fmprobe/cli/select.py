"""``fmprobe select``: which samples to label first."""

from __future__ import annotations

import json
from typing import Any

import click

from fmprobe.cli.common import config_option, device_option, friendly, json_option, storage_option

_NAMES = "random, kmeans, typiclust, probcover, coreset, fps, repdiv, bal, usl"


@click.command("select")
@click.option("--store", required=True, help="The feature store.")
@click.option(
    "--feature", required=True, help="Feature key, e.g. timm-vit_small_patch16_224/block11/cls."
)
@click.option("--budget", required=True, type=int, help="How many samples to pick.")
@click.option("--strategy", required=True, help=f"One of {_NAMES}.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of random steps.")
@click.option(
    "--k", "k", default=None, type=int, help="ProbCover: expected number of classes (default 10)."
)
@click.option(
    "--delta", default=None, type=float, help="ProbCover: ball radius instead of choosing it."
)
@click.option(
    "--n-init",
    default=None,
    type=int,
    help="k-means seedings, the partition of lowest inertia kept (default 3).",
)
@click.option(
    "--exclude", default=None, help="CSV/Parquet with an `id` column: already labelled samples."
)
@click.option(
    "--out", required=True, help="Table to write (.csv or .parquet, by suffix): id, rank, score."
)
@device_option
@json_option
@config_option
@storage_option
@friendly
def select(**opts: Any) -> None:
    """Pick the samples to label first from their embeddings (cold start).

    \b
    Example:
      fmprobe select --store digits.zarr --feature timm-vit_tiny_patch16_224/block11/cls \\
          --budget 50 --strategy typiclust --out ids.csv
      fmprobe select --store digits.zarr --feature ... --budget 50 --strategy probcover \\
          --k 10 --exclude ids.csv --out more.parquet
    """
    from fmprobe.select import select as run_select

    as_json = opts.pop("as_json")
    report = run_select(**{k: v for k, v in opts.items() if not (k == "n_init" and v is None)})
    extra = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.info.items()
    )
    click.echo(
        f"select: {report.budget} of {report.rows - report.excluded - report.unreadable} "
        f"samples by {report.strategy} in {report.seconds:.1f} s ({extra}); wrote {report.out}",
        err=True,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict()))
