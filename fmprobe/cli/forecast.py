"""``fmprobe forecast``: learning-curve forecasts, labels needed, and the benchmark mode."""

from __future__ import annotations

from typing import Any

import click

from fmprobe.cli.common import config_option, friendly, json_option, storage_option


@click.command("forecast")
@click.argument("curves")
@click.option("--metric", default="auroc", show_default=True, help="Score column, in [0, 1].")
@click.option(
    "--by",
    default=None,
    help="Columns naming a curve (default: feature,task,probe,sampler for a sweep results "
    "table, every string column otherwise).",
)
@click.option(
    "--train-metric",
    default=None,
    help="Column of the score on the training labels (default: train_<metric> when the table "
    "has it; none: no training curve).",
)
@click.option("--at", default=None, help="Extra label counts to forecast, e.g. 500,5000.")
@click.option(
    "--level", default=0.9, show_default=True, type=float, help="Probability of lower..upper."
)
@click.option("--target", default=None, help="Scores to reach, e.g. 0.85,0.9: adds n_needed.")
@click.option("--max-labels", default=None, type=float, help="Fit only points with n <= K.")
@click.option("--families", default=None, help="Comma list of curve families (default: all nine).")
@click.option(
    "--benchmark",
    is_flag=True,
    help="Fit on n <= --max-labels (default 64), score at every larger observed n.",
)
@click.option("--out", default=None, help="Write the table (.csv or .parquet).")
@click.option("--plot", default=None, help="Folder for one PNG per curve (needs matplotlib).")
@json_option
@config_option
@storage_option
@friendly
def forecast(**opts: Any) -> None:
    """Forecast learning curves from a results or curves table (CSV or Parquet).

    \b
    Example:
      fmprobe forecast out/demo/results.parquet --max-labels 50 --at 5000 --target 0.9
      fmprobe forecast curves.csv --by model,task --out forecast.parquet
      fmprobe forecast curves.parquet --benchmark --max-labels 64
    """
    from fmprobe.forecast import forecast as run_forecast

    as_json, plot, benchmark = opts.pop("as_json"), opts.pop("plot"), opts.pop("benchmark")
    if benchmark:
        _benchmark(opts, as_json)
        return
    r = run_forecast(**opts)
    fitted = r.curves["status"].str.startswith("ok")
    click.echo(
        f"forecast: {int(fitted.sum())} of {len(r.curves)} curves fitted in {r.seconds:.1f} s"
        + (f"; wrote {opts['out']}" if opts["out"] else ""),
        err=True,
    )
    _warn_statuses(r.curves)
    if plot:
        from fmprobe.forecast.plots import plot_forecasts

        paths = plot_forecasts(r, folder=plot, target=opts["target"])
        click.echo(f"wrote {len(paths)} plots to {plot}", err=True)
    if as_json:
        click.echo(r.table.to_json(orient="records"))
    elif not opts["out"]:
        click.echo(_fmt(r.table))


def _benchmark(opts: dict[str, Any], as_json: bool) -> None:
    from fmprobe.forecast import forecast_benchmark

    for unused in ("at", "target"):
        if opts.pop(unused) is not None:
            click.echo(f"warning: --{unused} is ignored with --benchmark", err=True)
    opts["max_labels"] = 64.0 if opts["max_labels"] is None else opts["max_labels"]
    b = forecast_benchmark(**opts)
    click.echo(
        f"forecast benchmark: {b.curves_used} curves scored in {b.seconds:.1f} s; "
        f"skipped {b.curves_skipped or 'none'}",
        err=True,
    )
    if as_json:
        click.echo(b.summary.to_json(orient="records"))
        return
    for (probe, horizon), t in b.summary.groupby(["probe", "horizon"], sort=False):
        click.echo(f"probe {probe}, horizon {horizon}:")
        click.echo(_fmt(t.drop(columns=["probe", "horizon"]).dropna(axis=1, how="all")))


def _warn_statuses(curves: Any) -> None:
    status = curves["status"].astype(str)
    for s, k in status[~status.str.startswith("ok")].value_counts().items():
        click.echo(f"warning: {k} curve(s) not forecast: {s}", err=True)
    unknown = status.str.endswith("_unknown_probe")
    if unknown.any():
        names = ""
        if "probe" in curves.columns:
            names = (
                " (" + ", ".join(sorted(curves.loc[unknown, "probe"].astype(str).unique())) + ")"
            )
        click.echo(
            f"warning: {int(unknown.sum())} curve(s) of a probe not known{names} use the pooled "
            "model (status *_unknown_probe)",
            err=True,
        )


def _fmt(table: Any) -> str:
    text: str = table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    return text
