"""The ``fmprobe`` command line: one thin command per stage, each calling the library function
of the same name. Exit codes: 0 success, 2 bad usage or input (one line), 1 failure at run time.
"""

from __future__ import annotations

import json
from typing import Any

import click

from fmprobe.cli_common import (
    _parse_json_object,
    config_option,
    device_option,
    engine_options,
    friendly,
    json_option,
    quiet_option,
)
from fmprobe.errors import UsageError


class _SweepGroup(click.Group):
    """``fmprobe sweep [OPTIONS]`` runs a sweep; ``fmprobe sweep merge ...`` merges shards."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # a sweep's own options come without a subcommand: only `merge` is one
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            raise click.UsageError(f"unknown subcommand {args[0]!r}; did you mean merge?")
        return super().parse_args(ctx, args)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fmprobe")
def main() -> None:
    """fmprobe: with which foundation model, and how many labels?

    Stages: embed → (feature store) → sweep → forecast / compare / report.
    """


@main.command()
@click.option(
    "--data",
    required=True,
    help="builtin:digits, an image folder, a CSV/Parquet manifest or an HDF5/NPZ file.",
)
@click.option(
    "--model",
    required=True,
    help="timm:<name>, open_clip:<arch>[/<pretrained>] or hf:<org>/<repo>.",
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
@click.option(
    "--weights",
    default=None,
    help="Local checkpoint: safetensors, or a state dict (loaded with weights_only=True).",
)
@click.option(
    "--random-init",
    is_flag=True,
    help="No pretrained weights (seeded); recorded as such in the store.",
)
@click.option(
    "--model-kwargs",
    default=None,
    help="JSON passed to the model factory, e.g. '{\"img_size\": 64}'.",
)
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
    opts["model_kwargs"] = _parse_json_object(opts["model_kwargs"], "--model-kwargs")
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
    if report.unreadable:
        first = "; ".join(f"{i}: {r}" for i, r in report.unreadable[:3])
        click.echo(
            f"{len(report.unreadable)} unreadable images skipped and recorded ({first}); "
            f"see `fmprobe store info {report.store}`",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))


@main.group(cls=_SweepGroup, invoke_without_command=True)
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
@click.option(
    "--n",
    "n",
    default="10,20,50,100,all",
    show_default=True,
    help="Label counts; 'all' = the whole training pool.",
)
@click.option("--seeds", default=5, show_default=True, type=int, help="Seeds per label count.")
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
@click.option("--split-col", default=None, help="Column with values train/test.")
@click.option("--test-frac", default=0.25, show_default=True, type=float)
@click.option("--group-col", default=None, help="Group (patient) column: no group on both sides.")
@click.option("--split-seed", default=0, show_default=True, type=int)
@click.option(
    "--test-where",
    default=None,
    help="COL=VALUE: test on that domain, train on the rest (out-of-domain evaluation).",
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
    default=1,
    show_default=True,
    type=int,
    help="Local worker processes (one thread each); on a CPU, the number of cores is fastest.",
)
@device_option
@click.option(
    "--overwrite", is_flag=True, help="Discard results of a sweep with other settings at --out."
)
@json_option
@quiet_option
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
    opts["attnpool"] = _parse_json_object(opts["attnpool"], "--attnpool", '{"epochs": 25}') or None
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        report = run_sweep(**opts, progress=not quiet)
    done = report.units_done_before
    resumed = f", {done} units already done" if done else ""
    click.echo(
        f"sweep: {report.probes_fitted} probes in {report.seconds:.1f} s "
        f"({report.probes_per_second:.0f} probes/s){resumed}; {report.rows} rows in {report.out}",
        err=True,
    )
    if report.subgroups:
        click.echo(f"sweep: subgroup metrics in {report.subgroups}", err=True)
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps({**report.__dict__, "probes_per_second": report.probes_per_second}))


@sweep.command("merge")
@click.argument("parts", nargs=-1, required=True)
@click.option("--out", required=True, help="The merged results table (Parquet).")
@friendly
def sweep_merge(parts: tuple[str, ...], out: str) -> None:
    """Merge the tables of `sweep --shard I/N` runs into the table of one run.

    \b
    Example:
      fmprobe sweep merge results.shard-*-of-8.parquet --out results.parquet
    """
    from fmprobe.sweep.run import merge

    df = merge(parts=list(parts), out=out)
    click.echo(f"sweep merge: {len(df)} rows from {len(parts)} tables in {out}", err=True)


@main.group()
def store() -> None:
    """Inspect, import into and export from a feature store."""


@store.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly
def store_info(path: str, as_json: bool) -> None:
    """List the features of a store with their shapes.

    \b
    Example:
      fmprobe store info digits.zarr --json
    """
    from fmprobe.store import store_info as info

    result = info(path)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    ds = result["dataset"]
    click.echo(
        f"{result['path']}: {result['n_samples']} samples from {ds.get('spec')} ({ds.get('kind')})"
    )
    click.echo(f"columns: {', '.join(result['columns']) or '(none)'}")
    for m in result["models"]:
        state = (
            "complete"
            if m["chunks_done"] == m["chunks"]
            else f"{m['chunks_done']}/{m['chunks']} chunks"
        )
        w = (m["weights"] or {}).get("kind")
        click.echo(
            f"model {m['key']}: {m['spec']} [{w}] layers {m['layers']} {state}, "
            f"{m['unreadable']} unreadable"
        )
    width = max((len(f["key"]) for f in result["features"]), default=10)
    for f in result["features"]:
        shape = "×".join(str(s) for s in f["shape"])
        flag = "" if f["complete"] else "  (incomplete)"
        flag += "  (imported)" if f["imported"] else ""
        click.echo(f"  {f['key']:<{width}}  {shape:>14}  {f['dtype']}{flag}")


@store.command("import")
@click.argument("path")
@click.option("--name", required=True, help="The feature's key in the store, e.g. uni/last/cls.")
@click.option("--features", required=True, help="A .npy or HDF5 matrix, one row per sample.")
@click.option(
    "--labels", required=True, help="CSV/Parquet table: rows match the matrix, `id` names them."
)
@click.option("--dataset", default=None, help="HDF5 dataset name when the file holds several.")
@click.option("--overwrite", is_flag=True, help="Replace an existing feature of that name.")
@friendly
def store_import(path: str, **opts: Any) -> None:
    """Bring in embeddings computed elsewhere.

    \b
    Example:
      fmprobe store import my.zarr --name uni/last/cls --features uni.npy --labels labels.csv
    """
    from fmprobe.store import import_features

    fs = import_features(path, **opts)
    click.echo(f"imported {opts['name']} ({fs.n} rows) into {path}", err=True)


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
@friendly
def store_export(path: str, key: str, out: str, table: str | None) -> None:
    """Write a feature to HDF5 or .npy.

    \b
    Example:
      fmprobe store export digits.zarr --key timm-vit_tiny_patch16_224/block11/cls --out f.h5
    """
    from fmprobe.store import export_feature

    export_feature(path, key=key, out=out, table=table)
    click.echo(f"wrote {out}", err=True)


@main.command("models")
@click.argument("pattern", default="*")
@click.option("--source", type=click.Choice(["timm", "open_clip"]), default=None)
@friendly
def models(pattern: str, source: str | None) -> None:
    """List model names known offline (fnmatch PATTERN).

    \b
    Example:
      fmprobe models 'timm:vit_small*'
    """
    from fmprobe.encoders import list_encoders

    for name in list_encoders(pattern, source=source):
        click.echo(name)


from fmprobe.commands.select import select as _select_command  # noqa: E402

main.add_command(_select_command)

from fmprobe.commands.forecast import forecast as _forecast_command  # noqa: E402

main.add_command(_forecast_command)

from fmprobe.commands.compare import compare as _compare_command  # noqa: E402

main.add_command(_compare_command)

from fmprobe.commands.report import report as _report_command  # noqa: E402

main.add_command(_report_command)


if __name__ == "__main__":  # pragma: no cover
    main()
