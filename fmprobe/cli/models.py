"""``fmprobe models``: the model names fmprobe knows."""

from __future__ import annotations

import click

from fmprobe.cli.common import friendly


@click.command("models")
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
