"""The ``fmprobe`` command line: one module per command, each a thin wrapper over the library
function of the same name. Exit codes: 0 success, 2 bad usage or input (one line), 1 failure at
run time. Command modules import click and ``fmprobe.cli.common`` at module level only; the
library is imported inside each command, so ``fmprobe --help`` stays fast."""

from __future__ import annotations

import click

from fmprobe.cli.compare import compare
from fmprobe.cli.embed import embed
from fmprobe.cli.finetune import finetune
from fmprobe.cli.forecast import forecast
from fmprobe.cli.models import models
from fmprobe.cli.report import report
from fmprobe.cli.select import select
from fmprobe.cli.store import store
from fmprobe.cli.sweep import sweep

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fmprobe")
def main() -> None:
    """fmprobe: with which foundation model, and how many labels?

    Stages: embed → (feature store) → sweep → forecast / compare / report.
    """


for _command in (embed, sweep, finetune, store, models, select, forecast, compare, report):
    main.add_command(_command)
