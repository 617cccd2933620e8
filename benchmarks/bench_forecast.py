"""Forecast error of ``fmprobe forecast`` on real learning curves, against simple baselines.

Data: LCDB 1.0 (Mohr et al. 2022), the AUROC curves of scikit-learn learners on OpenML data
sets (the CSV inside the ``lcdb`` source distribution; the package itself is never imported).
It is fetched once with ``pip download --no-deps lcdb`` into ~/.cache/fmprobe/lcdb (not the
repository). Data sets whose OpenML id is in ``--dev-ids`` are the development set, the only
curves the calibration constants of ``fmprobe/forecast/predict.py`` were learned on; the
benchmark figures are computed on the others (held out).

    python benchmarks/bench_forecast.py              # held-out LCDB at max-labels 64 and 50,
                                                     # digits sweep curves, 10,000-curve timing
    python benchmarks/bench_forecast.py --calibrate  # print the constants (dev ids only);
                                                     # --write puts them into predict.py
    python benchmarks/bench_forecast.py --config configs/forecast-lcdb.yaml
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "fmprobe" / "lcdb"
DEV_IDS = REPO.parent / "shared" / "lcdb_dev_openml_ids.txt"
BY = ("openmlid", "learner")
CONST_BEGIN = (
    "# --- calibration constants (benchmarks/bench_forecast.py --calibrate, LCDB dev ids) "
    + "-" * 9
)
CONST_END = "# " + "-" * 93
CALIBRATION_KS = (50, 64, 128)


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


def _collect(df: pd.DataFrame, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Every (curve, larger anchor) of ``df`` for each fit budget k: the meta features, the
    bases, the truth and what the benchmark scores (largest anchor >= 1,024)."""
    from fmprobe.forecast import predict
    from fmprobe.forecast.curves import build_curves
    from fmprobe.forecast.families import DEFAULT_FAMILIES

    keys = ("x", "g", "vals", "y0", "y", "L", "largest", "group", "k", "pow3")
    out: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for k in ks:
        cv = build_curves(df, metric="auroc", by=BY, max_labels=k)
        obs = cv.observed
        beyond = obs[(obs["n"] > k) & obs["_curve"].isin(cv.fit_index)]
        pos = {c: i for i, c in enumerate(cv.fit_index)}
        fi = beyond["_curve"].map(pos).to_numpy()
        fits = predict.fit_curves(cv.data, DEFAULT_FAMILIES)
        x = predict.meta_features(cv.data, fits.params)
        sub = fits.take(fi)
        n = beyond["n"].to_numpy(dtype=float)[:, None]
        vals = sub.family_values(n)[:, :, 0]
        assert sub.last is not None
        L = np.log2(n[:, 0] / sub.fit_max_n)
        g = np.concatenate(
            [(vals - sub.last).T, np.maximum(L, 0)[:, None] / predict.DRIFT_SCALE], 1
        )
        largest = (
            beyond["n"].to_numpy() == beyond.groupby("_curve")["n"].transform("max").to_numpy()
        )
        out["x"].append(x[fi])
        out["g"].append(g)
        out["vals"].append(vals)
        out["y0"].append(sub.last)
        out["y"].append(beyond["observed"].to_numpy())
        out["L"].append(L)
        out["largest"].append(largest & (beyond["n"].to_numpy() >= 1024))
        out["group"].append(cv.keys["openmlid"].to_numpy()[beyond["_curve"].to_numpy()])
        out["k"].append(np.full(len(fi), k))
        out["pow3"].append(vals[DEFAULT_FAMILIES.index("pow3")])
        print(f"max-labels {k}: {len(cv.fit_index)} curves, {len(fi)} targets", file=sys.stderr)
    return {key: np.concatenate(v, axis=-1 if key == "vals" else 0) for key, v in out.items()}


def fit_meta(
    x: np.ndarray,
    g: np.ndarray,
    y0: np.ndarray,
    y: np.ndarray,
    largest: np.ndarray,
    *,
    bias_penalty: float = 10.0,
    ridge: float = 1e-4,
    delta: float = 0.01,
) -> np.ndarray:
    """θ of the meta-model: minimise the mean smoothed absolute error ``sqrt(e² + δ²)`` over
    every target, plus ``bias_penalty``·(mean error at the largest anchors)² and a ridge."""
    from scipy.optimize import minimize

    J, d = g.shape[1], x.shape[1]
    wl = largest / max(largest.sum(), 1)

    def loss(th: np.ndarray) -> tuple[float, np.ndarray]:
        T = th.reshape(J, d)
        A = x @ T.T
        e = y0 + (np.logaddexp(0.0, A) * g).sum(axis=1) - y
        r = np.sqrt(e * e + delta * delta)
        bias = float(wl @ e)
        de = e / r / len(y) + 2 * bias_penalty * bias * wl
        grad = ((de[:, None] * g / (1 + np.exp(-A))).T @ x).ravel() + 2 * ridge * th
        return float(r.mean() + bias_penalty * bias**2 + ridge * th @ th), grad

    th0 = np.zeros((J, d))
    th0[:, 0] = -3.0
    res = minimize(loss, th0.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": 3000})
    return np.asarray(res.x.reshape(J, d))


def fit_scale(x: np.ndarray, gain: np.ndarray, L: np.ndarray, err: np.ndarray) -> np.ndarray:
    """ψ of the meta-model's spread: maximum Laplace likelihood of the errors ``err``, i.e.
    minimise mean(|err|/s + log s) with ``log s = ψ·f`` (convex in ψ)."""
    from scipy.optimize import minimize

    from fmprobe.forecast.predict import DRIFT_SCALE, META_FLOOR

    f = np.column_stack([x, np.maximum(L, 0.0) / DRIFT_SCALE, np.log(np.abs(gain) + META_FLOOR)])
    ae = np.abs(err)

    def loss(psi: np.ndarray) -> tuple[float, np.ndarray]:
        a = f @ psi
        s = np.exp(a)
        return float(np.mean(ae / s + a)), f.T @ (1.0 - ae / s) / len(ae)

    res = minimize(loss, np.zeros(f.shape[1]), jac=True, method="L-BFGS-B")
    return np.asarray(res.x)


def _meta_point(theta: np.ndarray, c: dict[str, np.ndarray]) -> np.ndarray:
    from fmprobe.forecast.predict import meta_weights

    w = meta_weights(c["x"], theta)
    return np.asarray(np.clip(c["y0"] + (w * c["g"]).sum(axis=1), 0, 1))


def _z_table(
    z: np.ndarray, L: np.ndarray, probs: np.ndarray
) -> tuple[list[float], list[np.ndarray]]:
    edges = np.array([0, 1, 2, 3, 4, 5, 6, 8, 10, 40])
    centres, table = [], []
    for lo, hi in itertools.pairwise(edges):
        m = (lo < L) & (hi >= L)
        if m.sum() < 50:
            continue
        centres.append(float(np.median(L[m])))
        table.append(np.quantile(z[m], probs))
        print(f"L in ({lo}, {hi}]: {m.sum()} targets", file=sys.stderr)
    return centres, table


def _array(name: str, rows: list[np.ndarray], decimals: int = 3) -> list[str]:
    return [
        f"{name} = np.array(",
        "    [",
        *("        " + str(np.round(row, decimals).tolist()) + "," for row in rows),
        "    ]",
        ")",
    ]


def calibrate(df: pd.DataFrame, ks: tuple[int, ...], folds: int = 5) -> str:
    """Learn the constants of predict.py from the dev curves; return them as source: the
    meta-model (θ by the full dev fit; ψ and the z table from the out-of-fold errors of a
    cross-validation grouped by data set) and the BETA / KAPPA / Z table of the family average
    used with --families."""
    from scipy.optimize import nnls

    from fmprobe.forecast import predict
    from fmprobe.forecast.families import DEFAULT_FAMILIES

    c = _collect(df, ks)
    y, y0, L = c["y"], c["y0"], c["L"]
    groups = np.unique(c["group"])
    fold_of = dict(
        zip(groups, np.random.default_rng(0).permutation(len(groups)) % folds, strict=True)
    )
    fold = np.array([fold_of[gr] for gr in c["group"]])
    oof = np.zeros(len(y))
    for f in range(folds):
        tr, te = fold != f, fold == f
        th = fit_meta(c["x"][tr], c["g"][tr], y0[tr], y[tr], c["largest"][tr])
        oof[te] = _meta_point(th, {key: v[te] for key, v in c.items() if key != "vals"})
    for k in ks:
        m = c["largest"] & (c["k"] == k)
        e, e3 = oof[m] - y[m], c["pow3"][m] - y[m]
        print(
            f"dev CV, max-labels {k}, largest anchor: meta MAE {np.abs(e).mean():.4f} "
            f"(bias {e.mean():+.4f}), pow3 {np.abs(e3).mean():.4f}; all anchors "
            f"{np.abs(oof - y)[c['k'] == k].mean():.4f}",
            file=sys.stderr,
        )
    psi = fit_scale(c["x"], oof - y0, L, y - oof)
    z = (y - oof) / predict.meta_spread(c["x"], (oof - y0)[:, None], L[:, None], psi)[:, 0]
    meta_centres, meta_table = _z_table(z, L, predict.Z_PROBS)
    theta = fit_meta(c["x"], c["g"], y0, y, c["largest"])

    # the family average used when --families names a subset
    V = c["vals"]
    beta, _ = nnls((V - y0).T, y - y0)
    beta = beta / beta.sum()
    mean = (beta[:, None] * V).sum(axis=0)
    kappa = float(np.sum((y - mean) * L) / np.sum(L * L))
    spread = np.sqrt((beta[:, None] * (V - mean) ** 2).sum(axis=0)) + predict.SPREAD_FLOOR
    point = np.clip(mean + kappa * np.maximum(L, 0.0), 0.0, 1.0)
    centres, table = _z_table((y - point) / spread, L, predict.Z_PROBS)

    beta_items = ", ".join(
        f'"{f}": {round(float(b), 3)}' for f, b in zip(DEFAULT_FAMILIES, beta, strict=True)
    )
    lines = [
        f"BETA: dict[str, float] = {{{beta_items}}}",
        f"KAPPA = {round(kappa, 5)}",
        f"SPREAD_FLOOR = {predict.SPREAD_FLOOR}",
        f"Z_PROBS = np.array({predict.Z_PROBS.tolist()})",
        f"Z_CENTRES = np.array({np.round(centres, 3).tolist()})",
        *_array("Z_TABLE", table),
        *_array("META_THETA", list(theta), 4),
        f"META_PSI = np.array({np.round(psi, 4).tolist()})",
        f"META_Z_CENTRES = np.array({np.round(meta_centres, 3).tolist()})",
        *_array("META_Z_TABLE", meta_table),
    ]
    return "\n".join(lines) + "\n"


def write_constants(source: str) -> None:
    """Replace the calibration block of predict.py (between its two marker lines)."""
    path = REPO / "fmprobe" / "forecast" / "predict.py"
    text = path.read_text()
    head, rest = text.split(CONST_BEGIN, 1)
    _, tail = rest.split(CONST_END, 1)
    path.write_text(head + CONST_BEGIN + "\n" + source + CONST_END + tail)
    subprocess.run([sys.executable, "-m", "ruff", "format", str(path)], check=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=None, help="YAML with any of the options below.")
    p.add_argument("--dev-ids", default=str(DEV_IDS), help="OpenML ids of the development set.")
    p.add_argument("--max-labels", default="64,50", help="Comma list of fit budgets.")
    p.add_argument("--level", type=float, default=0.9)
    p.add_argument("--digits", default=str(REPO / "out" / "demo" / "results.parquet"))
    p.add_argument("--timing-curves", type=int, default=10_000)
    p.add_argument("--calibrate", action="store_true", help="Learn constants on the dev ids.")
    p.add_argument("--write", action="store_true", help="With --calibrate: into predict.py.")
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
        source = calibrate(dev, CALIBRATION_KS)
        print(source, end="")
        if args.write:
            write_constants(source)
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
