"""``fmprobe models``: the model names fmprobe knows, and the presets of the field."""

from __future__ import annotations

import json

import click

from fmprobe.cli.common import friendly, json_option


@click.command("models")
@click.argument("pattern", default="*")
@click.option(
    "--source", type=click.Choice(["zoo", "timm", "open_clip"]), default=None,
    help="Only the presets (zoo), or only timm's / open_clip's names.",
)  # fmt: skip
@click.option(
    "--zoo", is_flag=True,
    help="The presets with their published embedding, weights, licence and default layers.",
)  # fmt: skip
@click.option("--markdown", is_flag=True, help="With --zoo: the table as Markdown.")
@json_option
@friendly
def models(pattern: str, source: str | None, zoo: bool, markdown: bool, as_json: bool) -> None:
    """List model names known offline (fnmatch PATTERN): presets first, then timm and open_clip.

    \b
    Example:
      fmprobe models --zoo
      fmprobe models 'uni*'
      fmprobe models 'timm:vit_small*'
    """
    from fmprobe.encoders import list_encoders, list_presets, presets_table
    from fmprobe.encoders.zoo import no_match_error

    if zoo:
        presets = list_presets("" if pattern == "*" else pattern)
        if not presets:
            raise no_match_error(pattern)
        if as_json:
            click.echo(json.dumps([p.to_dict() for p in presets], indent=2))
        else:
            click.echo(presets_table(presets, markdown=markdown), nl=False)
        return
    names = list_encoders(pattern, source=source)
    if not names:
        raise no_match_error(pattern)
    click.echo(json.dumps(names) if as_json else "\n".join(names))
