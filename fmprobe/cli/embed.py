"""``fmprobe embed``: a frozen encoder over a dataset, into the feature store."""

from __future__ import annotations

import json
from typing import Any

import click

from fmprobe.cli.common import (
    config_option,
    device_option,
    engine_options,
    friendly,
    json_option,
    model_options,
    parse_json_object,
    quiet_option,
    storage_option,
)


@click.command("embed")
@click.option(
    "--data",
    required=True,
    help="builtin:digits, an image folder, a CSV/Parquet manifest or an HDF5/NPZ file.",
)
@click.option(
    "--model",
    required=True,
    help="A preset (uni, virchow2, rad-dino, ...: `fmprobe models --zoo`), timm:<name>, "
    "timm:hf-hub:<org>/<repo>, open_clip:<arch>[/<pretrained>] or hf:<org>/<repo>.",
)
@click.option("--store", required=True, help="The Zarr feature store (created if missing).")
@click.option(
    "--layers",
    default=None,
    help="Blocks, e.g. 2,5,8,11 / -1 / last. Default: four evenly spaced ending at the last.",
)
@click.option(
    "--pools", default=None, help="Comma list of cls, mean, attn. Default: all the model supports."
)
@click.option(
    "--tokens", is_flag=True, help="Also store patch tokens (float16) for attention-pooling probes."
)
@click.option(
    "--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True
)
@model_options
@click.option(
    "--name", default=None, help="Name of the model group in the store (default: from --model)."
)
@click.option("--batch-size", default=64, show_default=True, type=int)
@device_option
@click.option(
    "--num-workers",
    default=None,
    type=int,
    help="DataLoader decoding workers (default: cores - 1, at most 8).",
)
@click.option(
    "--chunk-rows",
    default=256,
    show_default=True,
    type=int,
    help="Rows per store chunk (the unit of resume).",
)
@click.option("--no-amp", is_flag=True, help="On CUDA, run in float32 instead of bf16 autocast.")
@click.option(
    "--strict",
    is_flag=True,
    help="Fail on the first unreadable image instead of recording and skipping it.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Read every finished chunk (checksums) and re-embed any that does not decode.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace this model's features (or the whole store if the dataset changed).",
)
@json_option
@click.option(
    "--shard",
    default=None,
    help="I/N: embed only the I-th of N chunk-aligned row ranges (array jobs, one store).",
)
@engine_options("ray: shards as Ray tasks, one per GPU (or CPU) of the cluster.")
@click.option("--workers", default=None, type=int, help="Ray shards (default: GPUs, else CPUs).")
@quiet_option
@storage_option
@config_option
@friendly
def embed(**opts: Any) -> None:
    """Embed a dataset with a frozen encoder into the feature store.

    \b
    Example:
      fmprobe embed --data builtin:digits --model timm:vit_tiny_patch16_224 \\
          --random-init --store digits.zarr
      fmprobe embed --config configs/embed-digits.yaml --store other.zarr
    """
    from fmprobe.embed import embed as run_embed

    as_json, quiet = opts.pop("as_json"), opts.pop("quiet")
    opts["model_kwargs"] = parse_json_object(opts["model_kwargs"], "--model-kwargs")
    opts["amp"] = not opts.pop("no_amp")
    report = run_embed(**opts, progress=not quiet)
    if report.rows_embedded == 0:
        click.echo(f"{report.model}: already complete in {report.store}, nothing to do", err=True)
    else:
        click.echo(
            f"{report.model}: embedded {report.rows_embedded} images in {report.seconds:.1f} s "
            f"({report.images_per_second:.1f} img/s on {report.device}); "
            f"{len(report.features)} features in {report.store}",
            err=True,
        )
    for line in report.repaired:
        click.echo(f"repaired: {line}", err=True)
    if report.unreadable:
        first = "; ".join(f"{i}: {r}" for i, r in report.unreadable[:3])
        click.echo(
            f"{len(report.unreadable)} unreadable images skipped and recorded ({first}); "
            f"see `fmprobe store info {report.store}`",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
