"""Figures of forecasts for the report stage: observed points, each family's fit, the
averaged forecast with its band, and the target line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from fmprobe.errors import UsageError
from fmprobe.forecast.api import ForecastResult, parse_floats


def plot_curve(result: ForecastResult, curve: int, *, ax: Any = None, target: Any = None) -> Any:
    """Draw one curve (row ``curve`` of ``result.curves``) on a matplotlib axis; returns it.

    Examples
    --------
    >>> r = forecast(curves="out/demo/results.parquet", max_labels=50)  # doctest: +SKIP
    >>> plot_curve(r, 0).figure.savefig("curve0.png")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    keys = result.curves[list(result.by)].iloc[curve]
    mask = np.ones(len(result.table), dtype=bool)
    for col, val in keys.items():
        mask &= (result.table[col] == val).to_numpy()
    t = result.table[mask].sort_values("n")
    obs = t.dropna(subset=["observed"])
    fit_max = float(result.curves["fit_max_n"].iloc[curve])
    used = obs["n"] <= fit_max
    ax.scatter(obs["n"][used], obs["observed"][used], color="k", zorder=3, label="fitted points")
    ax.scatter(
        obs["n"][~used],
        obs["observed"][~used],
        facecolor="none",
        edgecolor="k",
        zorder=3,
        label="held-back points",
    )
    pos = np.flatnonzero(result.fit_index == curve)
    if len(pos):
        i = int(pos[0])
        lo_n = max(float(t["n"].min()), 1.0)
        grid = np.geomspace(lo_n, max(float(t["n"].max()), fit_max * 2), 200)[None, :]
        fits = result.fits
        sub = fits.curve(i)
        for f, v in zip(fits.families, sub.family_values(grid)[:, 0], strict=True):
            ax.plot(grid[0], v, lw=0.8, alpha=0.5, label=f)
        point = sub.center(grid)[0][0]
        q = sub.quantiles(grid, np.array([0.05, 0.95]))[:, 0]
        ax.fill_between(grid[0], q[0], q[1], color="C0", alpha=0.15, label="90% band")
        ax.plot(grid[0], point, color="C0", lw=2.5, label="forecast")
        ax.axvline(fit_max, color="grey", ls=":", lw=1)
    for tv in parse_floats(target, "--target"):
        ax.axhline(tv, color="red", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("labels n")
    ax.set_ylabel("score")
    ax.set_ylim(max(0.0, float(np.nanmin(t["observed"])) - 0.1), 1.0)
    ax.set_title(" / ".join(str(v) for v in keys.to_numpy())[:80], fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    return ax


def plot_forecasts(result: ForecastResult, *, folder: str | Path, target: Any = None) -> list[Path]:
    """One PNG per curve in ``folder`` (created); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--plot {str(out)!r} is a file; pass a folder for the PNG files")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in range(len(result.curves)):
        ax = plot_curve(result, c, target=target)
        name = "_".join(str(v) for v in result.curves[list(result.by)].iloc[c])
        path = out / (re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120] + f"_{c}.png")
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        paths.append(path)
    return paths
