"""Forecast error of ``fmprobe forecast`` on real learning curves, against simple baselines.

Data: LCDB 1.0 (Mohr et al. 2022), the AUROC curves of scikit-learn learners on OpenML data
sets (the CSV inside the ``lcdb`` source distribution; the package itself is never imported).
It is fetched once with ``pip download --no-deps lcdb`` into ~/.cache/fmprobe/lcdb (not the
repository). Data sets whose OpenML id is in ``--dev-ids`` are the development set, the only
curves the calibration constants of ``fmprobe/forecast/predict.py`` were learned on; the
benchmark figures are computed on the others (held out).

    python benchmarks/bench_forecast.py              # held-out LCDB at max-labels 64 and 50,
                                                     # digits sweep curves, 10,000-curve timing
    python benchmarks/bench_forecast.py --calibrate  # print the constants (dev ids only)
    python benchmarks/bench_forecast.py --config configs/forecast-lcdb.yaml
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "fmprobe" / "lcdb"
DEV_IDS = REPO.parent / "shared" / "lcdb_dev_openml_ids.txt"
BY = ("openmlid", "learner")


def lcdb_curves() -> pd.DataFrame:
    """Seed-level LCDB AUROC curves: openmlid, learner, n, seed, auroc (cached as Parquet)."""
    table = CACHE / "auc_seed_level.parquet"
    if table.exists():
        return pd.read_parquet(table)
    CACHE.mkdir(parents=True, exist_ok=True)
    sdists = sorted(CACHE.glob("lcdb-*.tar.gz"))
    if not sdists:
        print("downloading the lcdb source distribution (pip download)...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "lcdb", "-d", str(CACHE)],
            check=True,
        )
        sdists = sorted(CACHE.glob("lcdb-*.tar.gz"))
    with tarfile.open(sdists[-1]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("database-auc.csv"))
        f = tar.extractfile(member)
        if f is None:
            raise SystemExit(f"{sdists[-1]} holds no readable database-auc.csv")
        raw = pd.read_csv(
            f,
            usecols=["openmlid", "learner", "size_train", "outer_seed", "inner_seed", "score_test"],
        )
    df = pd.DataFrame(
        {
            "openmlid": raw["openmlid"].astype(str),
            "learner": raw["learner"].astype(str),
            "n": raw["size_train"].astype(np.int64),
            "seed": (raw["outer_seed"] * 100 + raw["inner_seed"]).astype(np.int64),
            "auroc": raw["score_test"].astype(float),
        }
    )
    df.to_parquet(table, index=False)
    return df


def split(df: pd.DataFrame, dev_ids: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    dev = set(dev_ids.read_text().split())
    is_dev = df["openmlid"].isin(dev)
    return df[is_dev], df[~is_dev]


def show(title: str, summary: pd.DataFrame) -> None:
    print(f"\n## {title}")
    cols = ["method", "horizon", "curves", "points", "mae", "median_ae", "p90_ae", "bias"]
    cols += ["coverage", "width"]
    t = summary[cols].copy()
    for c in ("mae", "median_ae", "p90_ae", "bias", "coverage", "width"):
        t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    order = {h: i for i, h in enumerate(summary["horizon"].unique())}
    t = t.sort_values(
        ["horizon", "method"], key=lambda s: s.map(order) if s.name == "horizon" else s
    )
    print(t.to_string(index=False))
    ln = summary[summary["horizon"] == "all"].dropna(subset=["ln_pairs"])
    for _, r in ln.iterrows():
        print(
            f"labels needed [{r['method']}]: {int(r['ln_pairs'])} (curve, target) pairs on "
            f"{int(r['ln_curves'])} curves; within 2x {r['ln_within_2x']:.3f}, "
            f"under-estimates {r['ln_under']:.3f} (by more than 2x: {r['ln_under_2x']:.3f})"
        )


def run_benchmark(df: pd.DataFrame, max_labels: float, level: float, title: str) -> None:
    from fmprobe.forecast import forecast_benchmark

    t = time.perf_counter()
    b = forecast_benchmark(curves=df, by=BY, max_labels=max_labels, level=level, largest_min_n=1024)
    show(f"{title}: fit on n <= {max_labels:g}, level {level}", b.summary)
    print(
        f"{b.curves_used} curves scored, skipped {b.curves_skipped}; "
        f"{time.perf_counter() - t:.1f} s"
    )


def run_digits(results: Path, level: float) -> None:
    from fmprobe.forecast import forecast_benchmark

    if not results.exists():
        print(f"\n{results} is missing: run `make demo` first", file=sys.stderr)
        return
    for k in (50, 100):
        b = forecast_benchmark(curves=results, max_labels=k, level=level)
        show(f"fmprobe sweep curves ({results}): fit on n <= {k}", b.summary)


def run_timing(df: pd.DataFrame, curves: int) -> None:
    """forecast() end to end (group, fit every family, quantiles) on ``curves`` curves."""
    from fmprobe.forecast import forecast

    small = df[df["n"] <= 64]
    mean = small.groupby([*BY, "n"], as_index=False)["auroc"].mean().dropna()
    keys = mean[list(BY)].drop_duplicates()
    reps = int(np.ceil(curves / len(keys)))
    parts = [mean.assign(rep=str(r)) for r in range(reps)]
    big = pd.concat(parts, ignore_index=True)
    k = big[[*BY, "rep"]].drop_duplicates().head(curves)
    big = big.merge(k, on=[*BY, "rep"])
    t = time.perf_counter()
    r = forecast(curves=big, by=(*BY, "rep"), at="1024,4096")
    dt = time.perf_counter() - t
    print(
        f"\n## timing: forecast() on {len(r.curves):,} curves ({len(big):,} points, 9 families)"
        f": {dt:.1f} s"
    )


def calibrate(df: pd.DataFrame, ks: tuple[int, ...]) -> None:
    """Learn BETA, KAPPA and the z table of predict.py from the dev curves; print them."""
    from scipy.optimize import nnls

    from fmprobe.forecast import predict
    from fmprobe.forecast.curves import build_curves
    from fmprobe.forecast.families import DEFAULT_FAMILIES

    fams = DEFAULT_FAMILIES
    vals, ys, yk, ls = [], [], [], []
    fit_list = []
    for k in ks:
        cv = build_curves(df, metric="auroc", by=BY, max_labels=k)
        obs = cv.observed
        beyond = obs[(obs["n"] > k) & obs["_curve"].isin(cv.fit_index)]
        pos = {c: i for i, c in enumerate(cv.fit_index)}
        fi = beyond["_curve"].map(pos).to_numpy()
        fits = predict.fit_curves(cv.data, fams)
        n = beyond["n"].to_numpy(dtype=float)[:, None]
        sub = predict.Fits(
            families=fits.families,
            params={f: p[fi] for f, p in fits.params.items()},
            sse={f: s[fi] for f, s in fits.sse.items()},
            weights=fits.weights,
            fit_max_n=fits.fit_max_n[fi],
            fit_min_n=fits.fit_min_n[fi],
        )
        fit_list.append((sub, n))
        vals.append(sub.family_values(n)[:, :, 0])
        ys.append(beyond["observed"].to_numpy())
        last = cv.data.y[np.arange(len(cv.fit_index)), (cv.data.w > 0).sum(axis=1) - 1]
        yk.append(last[fi])
        ls.append(np.log2(n[:, 0] / sub.fit_max_n))
        print(f"max-labels {k}: {len(cv.fit_index)} curves, {len(n)} targets", file=sys.stderr)
    V = np.concatenate(vals, axis=1)
    y, y_k, L = np.concatenate(ys), np.concatenate(yk), np.concatenate(ls)
    beta, _ = nnls((V - y_k).T, y - y_k)
    beta = beta / beta.sum()
    predict.BETA.update({f: float(round(b, 3)) for f, b in zip(fams, beta, strict=True)})
    mean = (beta[:, None] * V).sum(axis=0)
    kappa = float(np.sum((y - mean) * L) / np.sum(L * L))
    predict.KAPPA = round(kappa, 5)
    points, spreads = [], []
    for sub, n in fit_list:
        point, spread, _ = replace(sub, weights=predict.family_weights(fams)).center(n)
        points.append(point[:, 0])
        spreads.append(spread[:, 0])
    point, spread = np.concatenate(points), np.concatenate(spreads)
    z = (y - point) / spread
    edges = np.array([0, 1, 2, 3, 4, 5, 6, 8, 10, 40])
    centres, table = [], []
    for lo, hi in itertools.pairwise(edges):
        m = (lo < L) & (hi >= L)
        if m.sum() < 50:
            continue
        centres.append(float(np.median(L[m])))
        table.append(np.quantile(z[m], predict.Z_PROBS))
        print(f"L in ({lo}, {hi}]: {m.sum()} targets", file=sys.stderr)
    print("BETA = {" + ", ".join(f'"{f}": {predict.BETA[f]}' for f in fams) + "}")
    print(f"KAPPA = {predict.KAPPA}")
    print(f"Z_CENTRES = np.array({np.round(centres, 3).tolist()})")
    print("Z_TABLE = np.array(")
    print("    [")
    for row in table:
        print("        " + str(np.round(row, 3).tolist()) + ",")
    print("    ]")
    print(")")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=None, help="YAML with any of the options below.")
    p.add_argument("--dev-ids", default=str(DEV_IDS), help="OpenML ids of the development set.")
    p.add_argument("--max-labels", default="64,50", help="Comma list of fit budgets.")
    p.add_argument("--level", type=float, default=0.9)
    p.add_argument("--digits", default=str(REPO / "out" / "demo" / "results.parquet"))
    p.add_argument("--timing-curves", type=int, default=10_000)
    p.add_argument("--calibrate", action="store_true", help="Learn constants on the dev ids.")
    p.add_argument("--on", choices=["heldout", "dev"], default="heldout")
    args = p.parse_args()
    if args.config:
        import yaml

        conf = yaml.safe_load(Path(args.config).read_text()) or {}
        for k, v in conf.items():
            setattr(args, k.replace("-", "_"), ",".join(map(str, v)) if isinstance(v, list) else v)
    df = lcdb_curves()
    dev, held = split(df, Path(args.dev_ids))
    if args.calibrate:
        calibrate(dev, (50, 64, 128))
        return
    data = held if args.on == "heldout" else dev
    which = "held-out" if args.on == "heldout" else "dev"
    name = f"LCDB {which} ({data['openmlid'].nunique()} data sets)"
    for k in str(args.max_labels).split(","):
        run_benchmark(data, float(k), args.level, name)
    run_digits(Path(args.digits), args.level)
    if args.timing_curves:
        run_timing(held, args.timing_curves)


if __name__ == "__main__":
    main()
