"""``fmprobe finetune`` (and ``finetune merge``): LoRA, full fine-tuning or a linear head over
the sweep's plan, rows in the sweep's results table."""

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
    model_options,
    parse_json_object,
    plan_options,
    quiet_option,
    split_options,
    storage_option,
)
from fmprobe.errors import UsageError


@click.group("finetune", cls=RunOrMergeGroup, invoke_without_command=True)
@click.option(
    "--data",
    default=None,
    help="builtin:digits, an image folder, a manifest or an array file (required).",
)
@click.option(
    "--model",
    default=None,
    help="A preset, timm:<name>, open_clip:<arch>[/<tag>] or hf:<repo> (required).",
)
@click.option(
    "--out", default=None, help="The results table (Parquet); <out>.parts/ is the resume ledger."
)
@click.option(
    "--method",
    default="lora",
    show_default=True,
    help="lora (adapters on the attention projections), full (every weight) or linear "
    "(a head on frozen features).",
)
@model_options
@click.option(
    "--name",
    default=None,
    help="Model part of the results' feature (default: as embed names its store group).",
)
@click.option(
    "--rank", default=8, show_default=True, type=int, help="LoRA rank (probe lora-r<rank>)."
)
@click.option(
    "--alpha",
    default=16,
    show_default=True,
    type=int,
    help="LoRA scale: the update is alpha/rank · BA.",
)
@click.option(
    "--targets",
    default=None,
    help="LoRA: module names to adapt (default: qkv | query,key,value | q_proj,k_proj,v_proj "
    "| in_proj_weight).",
)
@click.option(
    "--tasks", default="label", show_default=True, help="Label columns of the data or of --labels."
)
@click.option(
    "--labels", default=None, help="CSV/Parquet table joined on `id` (missing labels masked)."
)
@plan_options
@click.option(
    "--sampler",
    default="random",
    show_default=True,
    help="random (stratified, nested across n): the sweep's subsets.",
)
@split_options
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option(
    "--min-steps",
    default=None,
    type=int,
    help="At least this many optimiser steps, small n getting more epochs (default: 200; "
    "linear 2000).",
)
@click.option(
    "--batch-size", default=32, show_default=True, type=int, help="Images per optimiser step."
)
@click.option(
    "--lr",
    default=None,
    type=float,
    help="Peak learning rate of the adapted weights (default: lora 1e-3, full 1e-4).",
)
@click.option(
    "--head-lr",
    default=None,
    type=float,
    help="Peak learning rate of the linear head (default: 1e-2; linear 3e-2).",
)
@click.option("--weight-decay", default=0.01, show_default=True, type=float)
@click.option(
    "--warmup",
    default=0.1,
    show_default=True,
    type=float,
    help="Fraction of steps of linear warm-up (then cosine decay).",
)
@click.option(
    "--selection",
    default="best",
    show_default=True,
    help="Epoch kept: best (validation fold), refit (retrain on all n), last.",
)
@click.option(
    "--val-frac",
    default=0.2,
    show_default=True,
    type=float,
    help="Validation fold carved from the n labels.",
)
@click.option(
    "--augment",
    default="flips",
    show_default=True,
    help="flips (horizontal + vertical), hflip or none.",
)
@click.option("--no-amp", is_flag=True, help="On CUDA, train in float32 instead of bf16 autocast.")
@click.option(
    "--save-predictions",
    is_flag=True,
    help="Keep test-set scores in <out>.predictions/ (for fmprobe compare).",
)
@engine_options("Where work units run: this process, or Ray tasks (one GPU each).")
@click.option(
    "--shard",
    default=None,
    help="I/N: run only every N-th work unit from I; merge with `finetune merge`.",
)
@device_option
@click.option(
    "--overwrite", is_flag=True, help="Discard results of a fine-tune with other settings at --out."
)
@json_option
@quiet_option
@config_option
@storage_option
@friendly
@click.pass_context
def finetune(ctx: click.Context, **opts: Any) -> None:  # fmt: skip
    """Fine-tune a model (LoRA, full, or a linear head) on the sweep's subsets; results to Parquet.

    \b
    Example:
      fmprobe finetune --data builtin:digits --model timm:vit_tiny_patch16_224 \\
          --random-init --method lora --n 50,200,800 --seeds 3 --out lora.parquet
      fmprobe finetune ... --shard 3/8        # array job 3 of 8
      fmprobe finetune merge lora.shard-*-of-8.parquet --out lora.parquet
    """
    if ctx.invoked_subcommand is not None:
        return
    for name in ("data", "model", "out"):
        if not opts[name]:
            raise UsageError(f"missing option --{name}; see fmprobe finetune --help")
    from fmprobe.finetune import finetune as run_finetune

    as_json, quiet = opts.pop("as_json"), opts.pop("quiet")
    opts["model_kwargs"] = parse_json_object(opts["model_kwargs"], "--model-kwargs")
    opts["amp"] = not opts.pop("no_amp")
    report = run_finetune(**opts, progress=not quiet)
    done = report.units_done_before
    resumed = f", {done} units already done" if done else ""
    click.echo(
        f"finetune: {report.trained} {report.probe} models in {report.seconds:.1f} s on "
        f"{report.device}{resumed}; {report.rows} rows in {report.out}",
        err=True,
    )
    if report.unreadable:
        click.echo(f"finetune: {report.unreadable} unreadable images left out", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict()))


@finetune.command("merge")
@click.argument("parts", nargs=-1, required=True)
@click.option("--out", required=True, help="The merged results table (Parquet).")
@friendly
def finetune_merge(parts: tuple[str, ...], out: str) -> None:
    """Merge the tables of `finetune --shard I/N` runs into the table of one run.

    \b
    Example:
      fmprobe finetune merge lora.shard-*-of-8.parquet --out lora.parquet
    """
    from fmprobe.finetune import merge

    df = merge(parts=list(parts), out=out)
    click.echo(f"finetune merge: {len(df)} rows from {len(parts)} tables in {out}", err=True)
