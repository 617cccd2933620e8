"""``fmprobe store info|import|export``: inspect and move features in and out of a store."""

from __future__ import annotations

import json
from typing import Any

import click

from fmprobe.cli.common import friendly, json_option, storage_option


@click.group("store")
def store() -> None:
    """Inspect, import into and export from a feature store."""


@store.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True, help="Also read every chunk and check its checksum.")
@storage_option
@friendly
def store_info(path: str, as_json: bool, verify: bool) -> None:
    """List the features of a store with their shapes.

    \b
    Example:
      fmprobe store info digits.zarr --json
    """
    from fmprobe.store import store_info as info

    result = info(path, verify=verify)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.text())


@store.command("import")
@click.argument("path")
@click.option("--name", required=True, help="The feature's key in the store, e.g. uni/last/cls.")
@click.option("--features", required=True, help="A .npy or HDF5 matrix, one row per sample.")
@click.option(
    "--labels", required=True, help="CSV/Parquet table: rows match the matrix, `id` names them."
)
@click.option("--dataset", default=None, help="HDF5 dataset name when the file holds several.")
@click.option("--overwrite", is_flag=True, help="Replace an existing feature of that name.")
@json_option
@storage_option
@friendly
def store_import(path: str, as_json: bool, **opts: Any) -> None:
    """Bring in embeddings computed elsewhere.

    \b
    Example:
      fmprobe store import my.zarr --name uni/last/cls --features uni.npy --labels labels.csv
    """
    from fmprobe.store import import_features

    fs = import_features(path, **opts)
    click.echo(f"imported {opts['name']} ({fs.n} rows) into {path}", err=True)
    if as_json:
        click.echo(json.dumps({"store": path, "name": opts["name"], "rows": fs.n}))


@store.command("export")
@click.argument("path")
@click.option(
    "--key",
    required=True,
    help="The feature to export, e.g. timm-vit_tiny_patch16_224/block11/cls.",
)
@click.option(
    "--out", required=True, help="A .npy or .h5 file (.h5 also holds ids and sample columns)."
)
@click.option("--table", default=None, help="Also write the samples table (CSV or Parquet).")
@json_option
@storage_option
@friendly
def store_export(path: str, key: str, out: str, table: str | None, as_json: bool) -> None:
    """Write a feature to HDF5 or .npy.

    \b
    Example:
      fmprobe store export digits.zarr --key timm-vit_tiny_patch16_224/block11/cls --out f.h5
    """
    from fmprobe.store import export_feature

    export_feature(path, key=key, out=out, table=table)
    click.echo(f"wrote {out}", err=True)
    if as_json:
        click.echo(json.dumps({"store": path, "key": key, "out": out, "table": table}))
