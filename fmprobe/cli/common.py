"""Pieces shared by every command: the error-to-exit-code wrapper, ``--config`` YAML and the
common options. Command modules import these (never ``fmprobe.cli``, which imports them)."""

from __future__ import annotations

import errno
import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from fmprobe.errors import FmprobeError, UsageError, first_line

F = TypeVar("F", bound=Callable[..., Any])


def _fail(code: int, message: str) -> None:
    click.echo(f"fmprobe: error: {message}", err=True)
    sys.exit(code)


def friendly(func: F) -> F:
    """Turn fmprobe's errors into one line on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            _fail(2, str(exc))
        except FmprobeError as exc:
            _fail(1, str(exc))
        except KeyboardInterrupt:
            _fail(130, "interrupted; finished work is kept, rerun the same command to resume")
        except OSError as exc:  # the disk, the network: a run-time failure, not a bug
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                _fail(1, f"no space left on the device ({exc.filename or 'writing'}); finished "
                         "work is kept: free space and rerun the same command")  # fmt: skip
            _fail(1, f"{exc.strerror or first_line(exc)}"
                     + (f": {exc.filename}" if exc.filename else ""))  # fmt: skip

    return wrapper  # type: ignore[return-value]


def parse_json_object(
    value: str | None, name: str, example: str = '{"img_size": 64}'
) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{name} is not valid JSON ({exc.msg}); e.g. '{example}'") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"{name} must be a JSON object, e.g. '{example}'")
    return parsed


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """``--config FILE.yaml``: its keys are the command's option names (``batch_size`` or
    ``batch-size``); they become the defaults, so flags on the command line still win."""
    if not value:
        return
    import yaml

    try:
        with open(value) as f:
            loaded = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        _fail(2, f"--config {value!r} cannot be read ({str(exc).splitlines()[0]})")
    if not isinstance(loaded, dict):
        _fail(2, f"--config {value!r} must hold a mapping of option names to values")
    known = {p.name for p in ctx.command.params if p.name}
    config = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(config) - known)
    if unknown:
        from fmprobe.errors import did_you_mean

        _fail(
            2, f"--config {value!r}: unknown option {unknown[0]!r}{did_you_mean(unknown[0], known)}"
        )
    for k, v in config.items():
        if isinstance(v, (list, tuple)):
            config[k] = ",".join(str(x) for x in v)
        elif isinstance(v, dict):
            config[k] = json.dumps(v)
    ctx.default_map = {**(ctx.default_map or {}), **config}


config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    help="YAML file of option values (names as the flags); flags given on the line win.",
)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON on stdout."
)
quiet_option = click.option("--quiet", is_flag=True, help="No progress bar.")
device_option = click.option(
    "--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present)."
)


def engine_options(help_ray: str) -> Callable[[F], F]:
    """``--engine local|ray`` and ``--address`` (the Ray cluster), shared by embed and sweep."""

    def decorate(func: F) -> F:
        func = click.option(
            "--address", default=None, help="Ray cluster address (default: start a local one)."
        )(func)
        return click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help=help_ray,
        )(func)

    return decorate


def _set_storage_options(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        from fmprobe.storage import set_storage_options

        try:
            set_storage_options(parse_json_object(value, "--storage-options", '{"anon": true}'))
        except UsageError as exc:
            _fail(2, str(exc))


storage_option = click.option(
    "--storage-options",
    default=None,
    callback=_set_storage_options,
    is_eager=True,
    expose_value=False,
    help="JSON options of the fsspec filesystem of s3://, gs://, ... paths (credentials and "
    "endpoints also come from the usual environment, e.g. AWS_ENDPOINT_URL).",
)


def split_options(func: F) -> F:
    """The test split of a sweep and of a fine-tune on the same data (the same options, the
    same meaning: ``fmprobe.sweep.splits.sweep_split``)."""
    for option in reversed([
        click.option("--split-col", default=None,
                     help="Column with values train/test (val: neither side)."),
        click.option("--test-frac", default=0.25, show_default=True, type=float),
        click.option("--group-col", default=None,
                     help="Group (patient) column: no group on both sides."),
        click.option("--split-seed", default=0, show_default=True, type=int),
        click.option("--test-where", default=None,
                     help="COL=VALUE: test on that domain, train on the rest (out-of-domain)."),
    ]):  # fmt: skip
        func = option(func)
    return func


def model_options(func: F) -> F:
    """How a model's weights are loaded, for embed and finetune alike (the same options, the
    same meaning: ``fmprobe.encoders.build_encoder``)."""
    for option in reversed([
        click.option("--weights", default=None,
                     help="Local checkpoint: safetensors, or a state dict (loaded with "
                          "weights_only=True)."),
        click.option("--random-init", is_flag=True,
                     help="No pretrained weights (seeded); recorded as such."),
        click.option("--model-kwargs", default=None,
                     help="JSON passed to the model factory, e.g. '{\"img_size\": 64}'."),
    ]):  # fmt: skip
        func = option(func)
    return func


def plan_options(func: F) -> F:
    """The label counts and seeds of a sweep and of a fine-tune (``fmprobe.sweep.plan``)."""
    for option in reversed([
        click.option("--n", "n", default="10,20,50,100,all", show_default=True,
                     help="Label counts; 'all' = the whole training pool."),
        click.option("--seeds", default=5, show_default=True, type=int,
                     help="Seeds per label count."),
    ]):  # fmt: skip
        func = option(func)
    return func


class RunOrMergeGroup(click.Group):
    """A command whose own options come without a subcommand (``fmprobe sweep [OPTIONS]``),
    with ``merge`` as its only subcommand (``fmprobe sweep merge ...``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            raise click.UsageError(f"unknown subcommand {args[0]!r}; did you mean merge?")
        return super().parse_args(ctx, args)
