"""Forecast error of ``fmprobe forecast`` on real learning curves, per probe, against single
families and the last value; and the calibration of the forecast's learned parameters.

Data: LCDB 1.0 (Mohr et al. 2022), the AUROC curves (test and training scores) of six
scikit-learn learners on OpenML data sets, named as the probe families of
``fmprobe.forecast.probes`` (LogisticRegression as ``logreg``, LinearDiscriminantAnalysis as
``lda``, KNeighborsClassifier as ``knn``, RandomForestClassifier as ``rf``, MLPClassifier as
``mlp``, RidgeClassifier as ``ridge``). The CSV inside the ``lcdb`` source distribution is
read; the package itself is never imported. It is fetched once with ``pip download --no-deps
lcdb`` into ~/.cache/fmprobe/lcdb (not the repository). Data sets whose OpenML id is in
``--dev-ids`` are the development set, the only curves the calibration is learned on; the
benchmark figures are computed on the others (held out).

    python benchmarks/bench_forecast.py              # held-out LCDB at max-labels 64 and 50,
                                                     # per probe; 10,000-curve timing
    python benchmarks/bench_forecast.py --calibrate  # learn the calibration (dev ids only);
                                                     # --write puts it into the package
    python benchmarks/bench_forecast.py --config configs/forecast-lcdb.yaml
    python benchmarks/bench_forecast.py --dev-variants     # variants of the meta-model, dev CV
    python benchmarks/bench_forecast.py --ceiling logreg   # fits that have seen the held-out
                                                          # truths: how far the model can go
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fmprobe.forecast.calibration import Calibration

REPO = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "fmprobe" / "lcdb"
# shared/ beside the checkout (or beside the folder of worktrees)
DEV_IDS = (
    next(
        (p for p in (REPO.parent / "shared", REPO.parents[1] / "shared") if p.is_dir()),
        REPO.parent / "shared",
    )
    / "lcdb_dev_openml_ids.txt"
)
BY = ("openmlid", "probe")
LEARNERS = {
    "sklearn.linear_model.LogisticRegression": "logreg",
    "sklearn.discriminant_analysis.LinearDiscriminantAnalysis": "lda",
    "sklearn.neighbors.KNeighborsClassifier": "knn",
    "sklearn.ensemble.RandomForestClassifier": "rf",
    "sklearn.neural_network.MLPClassifier": "mlp",
    "sklearn.linear_model.RidgeClassifier": "ridge",
}
GOAL_PROBES = ("logreg", "lda", "knn", "rf", "mlp")  # the five learners of the goals
CALIBRATION_KS = (50, 64, 100, 128)
Z_EDGES = (0, 1, 2, 3, 4, 5, 6, 8, 10, 40)


def lcdb_curves() -> pd.DataFrame:
    """Seed-level LCDB curves: openmlid, probe, n, seed, auroc, train_auroc (cached)."""
    table = CACHE / "auc_seed_level_train.parquet"
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
        cols = ["openmlid", "learner", "size_train", "outer_seed", "inner_seed"]
        raw = pd.read_csv(f, usecols=[*cols, "score_train", "score_test"])
    raw = raw[raw["learner"].isin(LEARNERS)]
    df = pd.DataFrame(
        {
            "openmlid": raw["openmlid"].astype(str),
            "probe": raw["learner"].map(LEARNERS),
            "n": raw["size_train"].astype(np.int64),
            "seed": (raw["outer_seed"] * 100 + raw["inner_seed"]).astype(np.int64),
            "auroc": raw["score_test"].astype(float),
            "train_auroc": raw["score_train"].astype(float),
        }
    )
    tmp = table.with_suffix(".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(table)
    return df


def split(df: pd.DataFrame, dev_ids: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    dev = set(dev_ids.read_text().split())
    is_dev = df["openmlid"].isin(dev)
    return df[is_dev], df[~is_dev]


# --- the benchmark ---------------------------------------------------------------------------


def _fmt(v: float, digits: int = 4) -> str:
    return "" if pd.isna(v) else f"{v:.{digits}f}"


def show(title: str, summary: pd.DataFrame, methods: tuple[str, ...]) -> None:
    """Per probe: each method's MAE at the largest anchor and over all n, its bias, the
    interval's coverage and width, and labels needed within 2x / under-estimated > 2x."""
    print(f"\n## {title}")
    s = summary.set_index(["method", "probe", "horizon"])
    probes = list(dict.fromkeys(summary["probe"]))
    head = "| probe | method | MAE largest | MAE all n | bias largest | coverage largest (width) "
    head += "| coverage all n | labels within 2x / under > 2x (pairs) |"
    print(head)
    print("|" + "---|" * 8)
    for p in probes:
        for m in methods:
            if (m, p, "largest") not in s.index:
                continue
            big, every = s.loc[(m, p, "largest")], s.loc[(m, p, "all")]
            cover = (
                f"{_fmt(big['coverage'], 3)} ({_fmt(big['width'], 3)})"
                if pd.notna(big["coverage"])
                else ""
            )
            ln = (
                f"{_fmt(every['ln_within_2x'], 3)} / {_fmt(every['ln_under_2x'], 3)} "
                f"({int(every['ln_pairs'])})"
                if pd.notna(every.get("ln_pairs", np.nan))
                else ""
            )
            print(
                f"| {p} ({int(big['curves'])}) | {m} | {_fmt(big['mae'])} | {_fmt(every['mae'])} "
                f"| {big['bias']:+.4f} | {cover} | {_fmt(every['coverage'], 3)} | {ln} |"
            )


def goals(summary: pd.DataFrame, title: str) -> None:
    """The issue's goals, measured on this summary."""
    s = summary.set_index(["method", "probe", "horizon"])["mae"]
    cov = summary.set_index(["method", "probe", "horizon"])["coverage"]
    print(f"\n### goals, {title}")
    lr = s[("fmprobe", "logreg", "largest")] / s[("pow3", "logreg", "largest")]
    print(f"logreg curves, largest anchor: MAE / bounded pow3 = {lr:.3f} (goal <= 0.7)")
    probes = [p for p in GOAL_PROBES if ("fmprobe", p, "largest") in s.index]
    sub = summary[(summary["horizon"] == "largest") & summary["probe"].isin(probes)]
    pts = sub.pivot_table(index="probe", columns="method", values="points").iloc[:, 0]
    mae = sub.pivot_table(index="probe", columns="method", values="mae")
    five = mae.mul(pts, axis=0).sum() / pts.sum()
    every = {m: s[(m, "all", "largest")] for m in ("fmprobe", "pow3", "last")}
    for label, v in (("five learners", five), ("every probe", every)):
        best = min(v["pow3"], v["last"])
        print(
            f"{label}, largest anchor: MAE {v['fmprobe']:.4f}, pow3 {v['pow3']:.4f}, "
            f"last {v['last']:.4f}: ratio to the better {v['fmprobe'] / best:.3f} (goal <= 0.8)"
        )
    for h in ("largest", "all"):
        per = {p: cov.get(("fmprobe", p, h), np.nan) for p in dict.fromkeys(summary["probe"])}
        print(
            f"90% coverage, {h}: "
            + ", ".join(f"{p} {v:.3f}" for p, v in per.items())
            + " (goal 0.80-0.97)"
        )
    ln = summary[(summary["method"] == "fmprobe") & (summary["horizon"] == "all")]
    ln = ln.set_index("probe")
    print(
        f"labels needed within 2x: {ln.loc['all', 'ln_within_2x']:.3f} of "
        f"{int(ln.loc['all', 'ln_pairs'])} (curve, target) pairs (goal >= 0.5)"
    )


def run_benchmark(df: pd.DataFrame, max_labels: float, level: float, title: str) -> None:
    from fmprobe.forecast import forecast_benchmark

    t = time.perf_counter()
    b = forecast_benchmark(curves=df, by=BY, max_labels=max_labels, level=level, largest_min_n=1024)
    name = f"{title}: fit on n <= {max_labels:g}, level {level}"
    show(name, b.summary, b.methods)
    goals(b.summary, name)
    print(
        f"{b.curves_used} curves scored, skipped {b.curves_skipped}; "
        f"{time.perf_counter() - t:.1f} s"
    )


def run_digits(results: Path, level: float) -> None:
    """The demo's sweep curves (``make demo``), when they exist."""
    from fmprobe.forecast import forecast_benchmark

    if not results.exists():
        print(f"\n{results} is missing: run `make demo` first", file=sys.stderr)
        return
    for k in (50, 100):
        b = forecast_benchmark(curves=results, max_labels=k, level=level)
        show(f"fmprobe sweep curves ({results}): fit on n <= {k}", b.summary, b.methods)


def run_timing(df: pd.DataFrame, curves: int) -> None:
    """forecast() end to end (group, fit every family, training curve, quantiles) on
    ``curves`` curves, beside the same call with one family (pow3) in the same process."""
    from fmprobe.forecast import forecast

    small = df[df["n"] <= 64]
    mean = small.groupby([*BY, "n"], as_index=False)[["auroc", "train_auroc"]].mean()
    mean = mean.dropna(subset=["auroc"])
    keys = mean[list(BY)].drop_duplicates()
    reps = int(np.ceil(curves / len(keys)))
    big = pd.concat([mean.assign(rep=str(r)) for r in range(reps)], ignore_index=True)
    k = big[[*BY, "rep"]].drop_duplicates().head(curves)
    big = big.merge(k, on=[*BY, "rep"])
    times = {}
    for label, fams in (("pow3 alone", "pow3"), ("fmprobe (9 families + training curve)", None)):
        t, cpu = time.perf_counter(), time.process_time()
        r = forecast(curves=big, by=(*BY, "rep"), at="1024,4096", families=fams)
        times[label] = (time.perf_counter() - t, time.process_time() - cpu)
    print(f"\n## timing: forecast() on {len(r.curves):,} curves ({len(big):,} points)")
    for label, (sec, cpu) in times.items():
        print(f"{label}: {sec:.1f} s wall, {cpu:.1f} s CPU of this process")
    ratio = times["fmprobe (9 families + training curve)"][0] / times["pow3 alone"][0]
    print(f"ratio fmprobe / pow3 alone (wall): {ratio:.1f}")


# --- the calibration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """Every (curve, larger anchor) of the development curves for each fit budget.

    Attributes
    ----------
    x : ndarray (T, D)
        The meta-model's features of the target's curve (``predict.FEATURES``).
    g : ndarray (T, J)
        Every basis (``predict.BASES``) at the target's n.
    vals : ndarray (F, T)
        Each default family's forecast at the target's n.
    y0, y, L : ndarray (T,)
        Last fitted mean, observed mean, log2(n / fit_max_n).
    largest : ndarray of bool (T,)
        The curve's largest anchor, when >= 1,024.
    train : ndarray of bool (T,)
        Whether the curve's training curve is used.
    group, probe, curve : ndarray (T,)
        Data set, probe name and a curve id.
    k : ndarray (T,)
        The fit budget.
    """

    x: np.ndarray
    g: np.ndarray
    vals: np.ndarray
    y0: np.ndarray
    y: np.ndarray
    L: np.ndarray
    largest: np.ndarray
    train: np.ndarray
    group: np.ndarray
    probe: np.ndarray
    curve: np.ndarray
    k: np.ndarray

    def rows(self, m: np.ndarray) -> Targets:
        return Targets(
            **{
                f: (getattr(self, f)[:, m] if f == "vals" else getattr(self, f)[m])
                for f in self.__dataclass_fields__
            }
        )


def collect(df: pd.DataFrame, ks: tuple[int, ...], *, train_everywhere: bool = False) -> Targets:
    """Fit every dev curve on n <= k for each k and list every larger anchor as a target
    (``train_everywhere``: every probe reads its training curve, also where its family
    does not)."""
    from fmprobe.forecast import predict
    from fmprobe.forecast.api import prepare
    from fmprobe.forecast.families import DEFAULT_FAMILIES

    parts: dict[str, list[np.ndarray]] = {f: [] for f in Targets.__dataclass_fields__}
    for k in ks:
        prep = prepare(
            df,
            metric="auroc",
            by=BY,
            max_labels=k,
            level=0.9,
            families=None,
            train_metric="train_auroc",
        )
        cv = prep.curves
        probes = cv.probe[cv.fit_index]
        every = np.ones(len(probes), dtype=bool) if train_everywhere else None
        fits = predict.fit_curves(cv.data, DEFAULT_FAMILIES, probes=probes, train_allowed=every)
        obs = cv.observed
        beyond = obs[(obs["n"] > k) & obs["_curve"].isin(cv.fit_index)]
        pos = {c: i for i, c in enumerate(cv.fit_index)}
        fi = beyond["_curve"].map(pos).to_numpy()
        sub = fits.take(fi)
        if sub.last is None or sub.features is None or sub.amp is None or sub.model is None:
            raise SystemExit("the meta-model was not fitted")
        n = beyond["n"].to_numpy(dtype=float)[:, None]
        vals = sub.family_values(n)
        L = np.log2(n[:, 0] / sub.fit_max_n)
        g = predict.basis_values(vals, sub.last, L[:, None], sub.amp)[:, :, 0].T
        ns = beyond["n"].to_numpy()
        largest = ns == beyond.groupby("_curve")["n"].transform("max").to_numpy()
        got = {
            "x": sub.features,
            "g": g,
            "vals": vals[:, :, 0],
            "y0": sub.last,
            "y": beyond["observed"].to_numpy(),
            "L": L,
            "largest": largest & (ns >= 1024),
            "train": np.char.endswith(sub.model.astype(str), "+train"),
            "group": cv.keys["openmlid"].to_numpy()[beyond["_curve"].to_numpy()],
            "probe": cv.probe[beyond["_curve"].to_numpy()],
            "curve": fi + 1_000_000 * k,
            "k": np.full(len(fi), k),
        }
        for f, v in got.items():
            parts[f].append(v)
        print(f"max-labels {k}: {len(cv.fit_index)} curves, {len(fi)} targets", file=sys.stderr)
    return Targets(**{f: np.concatenate(v, axis=0 if f != "vals" else 1) for f, v in parts.items()})


def fit_theta(
    x: np.ndarray,
    g: np.ndarray,
    y0: np.ndarray,
    y: np.ndarray,
    sw: np.ndarray,
    *,
    ridge: float,
    delta: float = 0.01,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """θ of one meta-model: minimise the weighted mean smoothed absolute error
    ``sqrt(e² + δ²)`` (the target is an MAE) plus a ridge on the standardised features
    (every column but the constant); returns θ for the raw features. ``prior`` (raw θ, shape
    (J, D)): the ridge pulls towards it, every column included, instead of towards 0."""
    from scipy.optimize import minimize

    J, d = g.shape[1], x.shape[1]
    mu, sd = x[:, 1:].mean(axis=0), x[:, 1:].std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    z = np.column_stack([np.ones(len(x)), (x[:, 1:] - mu) / sd])
    sw = sw / sw.sum()
    pen = np.ones((J, d))
    th0 = np.zeros((J, d))
    if prior is None:
        pen[:, 0] = 0.0
        th0[:, 0] = -3.0
    else:  # the prior in the standardised coordinates
        th0[:, 1:] = prior[:, 1:] * sd
        th0[:, 0] = prior[:, 0] + (prior[:, 1:] * mu).sum(axis=1)
    pen = pen.ravel()
    c = np.zeros(J * d) if prior is None else th0.ravel().copy()  # what the ridge pulls to

    def loss(th: np.ndarray) -> tuple[float, np.ndarray]:
        A = z @ th.reshape(J, d).T
        e = y0 + (np.logaddexp(0.0, A) * g).sum(axis=1) - y
        r = np.sqrt(e * e + delta * delta)
        de = e / r * sw
        dv = th - c
        grad = ((de[:, None] * g / (1 + np.exp(-A))).T @ z).ravel() + 2 * ridge * pen * dv
        return float(sw @ r + ridge * dv @ (pen * dv)), grad

    res = minimize(loss, th0.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": 5000})
    ts = res.x.reshape(J, d)
    theta = np.zeros((J, d))
    theta[:, 1:] = ts[:, 1:] / sd
    theta[:, 0] = ts[:, 0] - (ts[:, 1:] * mu / sd).sum(axis=1)
    return theta


def fit_scale(x: np.ndarray, gain: np.ndarray, L: np.ndarray, err: np.ndarray) -> np.ndarray:
    """ψ of a meta-model's spread: maximum Laplace likelihood of the errors ``err``, i.e.
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


def z_table(z: np.ndarray, L: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles ``probs`` of ``z`` per bin of L (bins of fewer than 50 targets are merged
    away); returns (centres, table)."""
    centres, table = [], []
    for lo, hi in itertools.pairwise(Z_EDGES):
        m = (lo < L) & (hi >= L)
        if m.sum() < 50:
            continue
        centres.append(float(np.median(L[m])))
        table.append(np.quantile(z[m], probs))
    return np.array(centres), np.array(table)


def _columns(train: bool, probe: bool) -> tuple[np.ndarray, np.ndarray]:
    """The feature columns and basis rows a meta-model uses."""
    from fmprobe.forecast import predict

    feats = (
        *predict.TEST_FEATURES,
        *(predict.TRAIN_FEATURES if train else ()),
        *(predict.PROBE_FEATURES if probe else ()),
    )
    bases = (*predict.BASES[: -len(predict.TRAIN_BASES)], *(predict.TRAIN_BASES if train else ()))
    return (
        np.array([predict.FEATURES.index(f) for f in feats]),
        np.array([predict.BASES.index(b) for b in bases]),
    )


VARIANTS = {
    "probe+train": (True, True),
    "probe": (False, True),
    "pooled+train": (True, False),
    "pooled": (False, False),
}


def _point(theta: np.ndarray, t: Targets) -> np.ndarray:
    w = np.logaddexp(0.0, t.x @ theta.T)
    return np.asarray(np.clip(t.y0 + (w * t.g).sum(axis=1), 0.0, 1.0))


def fit_variant(t: Targets, name: str, ridge: float, prior: np.ndarray | None = None) -> np.ndarray:
    """θ (J, D) of meta-model ``name`` fitted on the targets ``t`` (zero where unused);
    ``prior``: a θ of the same shape the ridge pulls towards (see ``fit_theta``)."""
    from fmprobe.forecast import predict

    train, _ = VARIANTS[name]
    cols, rows = _columns(*VARIANTS[name])
    m = t.train if train else np.ones(len(t.y), dtype=bool)
    # every curve weighs the same, whatever its number of larger anchors
    _, inv, cnt = np.unique(t.curve[m], return_inverse=True, return_counts=True)
    th = fit_theta(
        t.x[m][:, cols],
        t.g[m][:, rows],
        t.y0[m],
        t.y[m],
        1.0 / cnt[inv],
        ridge=ridge,
        prior=None if prior is None else prior[np.ix_(rows, cols)],
    )
    theta = np.zeros((len(predict.BASES), len(predict.FEATURES)))
    theta[:, 0] = -30.0  # an unused basis gets no weight
    theta[np.ix_(rows, cols)] = th
    return theta


def _variant_targets(t: Targets, name: str) -> Targets:
    """The targets as meta-model ``name`` sees them (features it does not read zeroed)."""
    from fmprobe.forecast import predict

    train, probe = VARIANTS[name]
    x = t.x.copy()
    g = t.g.copy()
    if not train:
        x[:, [predict.FEATURES.index(f) for f in predict.TRAIN_FEATURES]] = 0.0
        g[:, -len(predict.TRAIN_BASES) :] = 0.0
    if not probe:
        x[:, [predict.FEATURES.index(f) for f in predict.PROBE_FEATURES]] = 0.0
    keep = t.train if train else np.ones(len(t.y), dtype=bool)
    out = Targets(**{**{f: getattr(t, f) for f in Targets.__dataclass_fields__}, "x": x, "g": g})
    return out.rows(keep)


def _meta_model(name: str, theta: np.ndarray, t: Targets, oof: np.ndarray, m: np.ndarray):  # type: ignore[no-untyped-def]
    """A ``MetaModel``: θ, and ψ and the z table fitted to the out-of-fold errors ``oof`` of
    the targets ``m``."""
    from fmprobe.forecast import predict
    from fmprobe.forecast.calibration import MetaModel, load_calibration

    t, oof = t.rows(m), oof[m]
    psi = fit_scale(t.x, oof - t.y0, t.L, t.y - oof)
    spread = predict.meta_spread(t.x, (oof - t.y0)[:, None], t.L[:, None], psi)[:, 0]
    centres, table = z_table((t.y - oof) / spread, t.L, load_calibration().z_probs)
    return MetaModel(name=name, theta=theta, psi=psi, z_centres=centres, z_table=table)


def _subset_model(t: Targets):  # type: ignore[no-untyped-def]
    """The family average used when --families names a subset: β by non-negative least
    squares of the truth's gains on the families' gains, κ by least squares on L."""
    from scipy.optimize import nnls

    from fmprobe.forecast import predict
    from fmprobe.forecast.calibration import SubsetModel, load_calibration
    from fmprobe.forecast.families import DEFAULT_FAMILIES

    V, y, y0, L = t.vals, t.y, t.y0, t.L
    beta, _ = nnls((V - y0).T, y - y0)
    beta = beta / beta.sum()
    mean = (beta[:, None] * V).sum(axis=0)
    kappa = float(np.sum((y - mean) * L) / np.sum(L * L))
    floor = predict.SUBSET_SPREAD_FLOOR
    spread = np.sqrt((beta[:, None] * (V - mean) ** 2).sum(axis=0)) + floor
    point = np.clip(mean + kappa * np.maximum(L, 0.0), 0.0, 1.0)
    centres, table = z_table((y - point) / spread, L, load_calibration().z_probs)
    return SubsetModel(
        beta=dict(zip(DEFAULT_FAMILIES, beta.tolist(), strict=True)),
        kappa=kappa,
        spread_floor=floor,
        z_centres=centres,
        z_table=table,
    )


def data_set_folds(groups: np.ndarray, folds: int) -> dict[str, int]:
    """The fold of each data set in ``groups`` (a fixed random permutation, seed 0)."""
    groups = np.unique(groups)
    perm = np.random.default_rng(0).permutation(len(groups)) % folds
    return dict(zip(groups, perm.tolist(), strict=True))


def cross_validate(
    t: Targets,
    name: str,
    ridge: float,
    fold_of: dict[str, int],
    *,
    own: float | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Out-of-fold points of meta-model ``name`` on the targets ``t`` (folds by data set) and
    each fold's θ. ``own``: each probe family then gets a θ of its own, pulled towards the
    fold's shared θ with this weight."""
    fold = np.array([fold_of[gr] for gr in t.group])
    oof = np.zeros(len(t.y))
    thetas = []
    for f in range(max(fold_of.values()) + 1):
        tr = t.rows(fold != f)
        thetas.append(fit_variant(tr, name, ridge))
        oof[fold == f] = _point(thetas[f], t.rows(fold == f))
        for fam in [] if own is None else np.unique(t.probe):
            th_f = fit_variant(tr.rows(tr.probe == fam), name, own, prior=thetas[f])
            m = (fold == f) & (t.probe == fam)
            oof[m] = _point(th_f, t.rows(m))
    return oof, thetas


def mae_ratio(t: Targets, pred: np.ndarray, m: np.ndarray) -> float:
    """MAE of ``pred`` over bounded pow3's on the targets ``m``."""
    return float(np.abs(pred - t.y)[m].mean() / np.abs(t.vals[0] - t.y)[m].mean())


def calibrate(
    df: pd.DataFrame, ks: tuple[int, ...], *, folds: int = 5, ridge: float = 1e-3
) -> tuple[Calibration, list[Calibration], dict[str, int]]:
    """Learn the calibration from the dev curves ``df``: θ of each meta-model on every dev
    curve; ψ and the z table from the out-of-fold errors of a cross-validation grouped by data
    set; the family average used with --families. Also returns, per fold, the calibration
    learned without that fold's data sets (θ refitted, ψ and z from the other folds' errors)
    and the fold of each data set, for a cross-validated benchmark."""
    from dataclasses import replace

    from fmprobe.forecast import predict
    from fmprobe.forecast.calibration import load_calibration

    t_all = collect(df, ks)
    groups = np.unique(t_all.group)
    fold_of = data_set_folds(groups, folds)
    models = {}
    per_fold: list[dict] = [{} for _ in range(folds)]  # type: ignore[type-arg]
    for name in VARIANTS:
        t = _variant_targets(t_all, name)
        oof, thetas = cross_validate(t, name, ridge, fold_of)
        fold = np.array([fold_of[gr] for gr in t.group])
        _report_cv(name, t, oof, ks)
        every = np.ones(len(t.y), dtype=bool)
        models[name] = _meta_model(name, fit_variant(t, name, ridge), t, oof, every)
        for f in range(folds):
            per_fold[f][name] = _meta_model(name, thetas[f], t, oof, fold != f)
    cal = Calibration(
        features=predict.FEATURES,
        bases=predict.BASES,
        z_probs=load_calibration().z_probs,
        models=models,
        subset=_subset_model(t_all),
        max_log2_ratio=float(np.floor(10 * t_all.L.max()) / 10),
        labels_quantile=None,
        source=(
            "python benchmarks/bench_forecast.py --calibrate --write: LCDB 1.0 AUROC curves "
            f"of the {len(groups)} development data sets (shared/lcdb_dev_openml_ids.txt), "
            f"learners {', '.join(LEARNERS.values())}, fitted on n <= {', '.join(map(str, ks))}; "
            f"smoothed absolute error, ridge {ridge:g}; spread and z tables from "
            f"{folds}-fold cross-validation grouped by data set"
        ),
    )
    return cal, [replace(cal, models=m) for m in per_fold], fold_of


def save_folds(cal: Calibration, fold_cals: list[Calibration], fold_of: dict[str, int]) -> None:
    """Keep the calibration and its folds in the cache (``--cv-only`` reads them back)."""
    import json

    folder = CACHE / "cv"
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate([cal, *fold_cals]):
        (folder / f"calibration_{i}.json").write_text(c.to_json())
    (folder / "folds.json").write_text(json.dumps({k: int(v) for k, v in fold_of.items()}))


def load_folds() -> tuple[Calibration, list[Calibration], dict[str, int]]:
    import json

    from fmprobe.forecast.calibration import parse_calibration

    folder = CACHE / "cv"
    fold_of = {str(k): int(v) for k, v in json.loads((folder / "folds.json").read_text()).items()}
    cals = [
        parse_calibration(json.loads((folder / f"calibration_{i}.json").read_text()))
        for i in range(max(fold_of.values()) + 2)
    ]
    return cals[0], cals[1:], fold_of


def choose_labels_quantile(
    dev: pd.DataFrame,
    fold_cals: list[Calibration],
    fold_of: dict[str, int],
    ks: tuple[float, ...],
    level: float,
    candidates: tuple[float | None, ...] = (None, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8),
) -> float | None:
    """The quantile whose crossing is the labels needed (None: the point forecast's) with the
    most (curve, target) pairs within 2x of the truth, cross-validated on the dev curves."""
    from dataclasses import replace

    from fmprobe.forecast import forecast_benchmark

    score = {}
    for q in candidates:
        within, pairs = 0.0, 0.0
        for k in ks:
            for f, cal in enumerate(fold_cals):
                ids = [g for g, fo in fold_of.items() if fo == f]
                b = forecast_benchmark(
                    curves=dev[dev["openmlid"].isin(ids)],
                    by=BY,
                    max_labels=k,
                    level=level,
                    calibration=replace(cal, labels_quantile=q),
                )
                row = b.summary.set_index(["method", "probe", "horizon"]).loc[
                    ("fmprobe", "all", "all")
                ]
                within += row["ln_within_2x"] * row["ln_pairs"]
                pairs += row["ln_pairs"]
        score[q] = within / pairs
        print(f"labels needed at quantile {q}: within 2x {score[q]:.3f}", file=sys.stderr)
    return max(score, key=lambda q: score[q])


def cross_validated_benchmark(
    dev: pd.DataFrame,
    fold_cals: list[Calibration],
    fold_of: dict[str, int],
    max_labels: float,
    level: float,
) -> None:
    """The benchmark on the dev curves, each fold's data sets forecast with the calibration
    learned without them; figures pooled over the folds (weighted by points or pairs)."""
    from fmprobe.forecast import forecast_benchmark

    parts = []
    methods: tuple[str, ...] = ()
    for f, cal in enumerate(fold_cals):
        ids = [g for g, fo in fold_of.items() if fo == f]
        b = forecast_benchmark(
            curves=dev[dev["openmlid"].isin(ids)],
            by=BY,
            max_labels=max_labels,
            level=level,
            largest_min_n=1024,
            calibration=cal,
        )
        parts.append(b.summary)
        methods = b.methods
    s = pd.concat(parts, ignore_index=True)
    keys = ["method", "probe", "horizon"]
    rows = []
    for key, g in s.groupby(keys, sort=False):
        row = dict(zip(keys, key, strict=True))
        w = g["points"].to_numpy(dtype=float)
        for c in ("mae", "bias", "coverage", "width"):
            row[c] = float(np.average(g[c], weights=w)) if g[c].notna().all() else np.nan
        row["points"], row["curves"] = int(w.sum()), int(g["curves"].sum())
        if "ln_pairs" in g and g["ln_pairs"].notna().any():
            h = g.dropna(subset=["ln_pairs"])
            row["ln_pairs"] = float(h["ln_pairs"].sum())
            for c in ("ln_within_2x", "ln_under", "ln_under_2x"):
                row[c] = float(np.average(h[c], weights=h["ln_pairs"]))
        rows.append(row)
    summary = pd.DataFrame(rows)
    name = (
        f"LCDB dev, {len(fold_cals)}-fold cross-validated by data set: fit on n <= {max_labels:g}"
    )
    show(name, summary, methods)
    goals(summary, name)


def _report_cv(name: str, t: Targets, oof: np.ndarray, ks: tuple[int, ...]) -> None:
    pow3 = t.vals[0]
    for k in ks:
        m = t.largest & (t.k == k)
        e, e3 = np.abs(oof - t.y)[m], np.abs(pow3 - t.y)[m]
        per = " ".join(
            f"{p} {mae_ratio(t, oof, m & (t.probe == p)):.2f}"
            for p in LEARNERS.values()
            if (m & (t.probe == p)).any()
        )
        print(
            f"dev CV [{name}] max-labels {k}, largest anchor: MAE {e.mean():.4f} vs pow3 "
            f"{e3.mean():.4f} ({e.mean() / e3.mean():.2f}; per probe {per}); all anchors "
            f"{np.abs(oof - t.y)[t.k == k].mean():.4f} vs "
            f"{np.abs(pow3 - t.y)[t.k == k].mean():.4f}",
            file=sys.stderr,
        )


def run_dev_variants(dev: pd.DataFrame, ridge: float, folds: int = 5) -> None:
    """Variants of the meta-model in the calibration's cross-validation (dev curves, folds by
    data set), MAE / bounded pow3 at the largest anchor per probe: with and without the
    training curve for every family (the rule: a family does not read it where it is worse
    at both budgets), and a θ of each family's own pulled towards the shared one."""
    t_all = collect(dev, CALIBRATION_KS, train_everywhere=True)
    fold_of = data_set_folds(t_all.group, folds)

    def cv(name: str, own: float | None = None) -> tuple[Targets, np.ndarray]:
        t = _variant_targets(t_all, name)
        return t, cross_validate(t, name, ridge, fold_of, own=own)[0]

    def ratios(t: Targets, oof: np.ndarray, k: int) -> dict[str, float]:
        m = t.largest & (t.k == k)
        out = {p: mae_ratio(t, oof, m & (t.probe == p)) for p in LEARNERS.values()}
        return {"all": mae_ratio(t, oof, m), **out}

    rows = {
        "with the training curve (probe+train), every family": cv("probe+train"),
        "without it (probe)": cv("probe"),
    }
    for w in (1e-1, 1e-2, 1e-3):
        rows[f"with it, a θ per family pulled to the shared θ with weight {w:g}"] = cv(
            "probe+train", own=w
        )
    names = ["all", *LEARNERS.values()]
    print("\n## dev cross-validation: MAE / bounded pow3 at the largest anchor, per probe")
    for k in (64, 50):
        print(f"\nfit on n <= {k}\n")
        print("| meta-model | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for label, (t, oof) in rows.items():
            r = ratios(t, oof, k)
            print(f"| {label} | " + " | ".join(f"{r[p]:.3f}" for p in names) + " |")


def run_ceiling(
    dev: pd.DataFrame, held: pd.DataFrame, probe: str, ridge: float, ks: tuple[int, ...]
) -> None:
    """How close to the held-out truths the meta-model ``probe+train`` can come on the curves
    of ``probe``: MAE / bounded pow3 at the largest anchor (>= 1,024) of θ fitted as the
    calibration does (dev curves), beside fits that have seen the held-out truths (upper
    bounds for this model), a 5-fold cross-validation inside the held-out curves, the linear
    robust correction to pow3 of the issue's lead, and a bootstrap over held-out data sets."""
    import dataclasses

    from sklearn.linear_model import HuberRegressor

    from fmprobe.forecast import predict

    name = "probe+train"
    td = _variant_targets(collect(dev, CALIBRATION_KS), name)
    th = _variant_targets(collect(held, ks), name)
    one = th.probe == probe
    if not one.any():
        raise SystemExit(f"no held-out {probe} curve with a training curve")

    def ratio(pred: np.ndarray, k: int) -> float:
        return mae_ratio(th, pred, one & th.largest & (th.k == k))

    dev_theta = fit_variant(td, name, ridge)
    rows = {"θ fitted on the dev curves (the calibration)": _point(dev_theta, th)}
    rows["θ fitted on all held-out curves (in-sample)"] = _point(fit_variant(th, name, ridge), th)
    both = Targets(
        **{
            f: np.concatenate([getattr(td, f), getattr(th, f)], axis=1 if f == "vals" else 0)
            for f in Targets.__dataclass_fields__
        }
    )
    both = dataclasses.replace(both, curve=np.concatenate([td.curve, th.curve + 10**9]))
    rows["θ fitted on the dev and all held-out curves (in-sample)"] = _point(
        fit_variant(both, name, ridge), th
    )
    cv, _ = cross_validate(th, name, ridge, data_set_folds(th.group, 5))
    rows["θ fitted on the other held-out data sets (5-fold CV by data set)"] = cv
    for w in (1e-1, 1e-2, 1e-3, 1e-4):
        own = rows["θ fitted on the dev curves (the calibration)"].copy()
        theta = fit_variant(th.rows(one), name, w, prior=dev_theta)
        own[one] = _point(theta, th.rows(one))
        label = f"a θ of {probe}'s own fitted on its held-out curves (in-sample), pull {w:g}"
        rows[label] = own
    # the lead: a robust linear regression of the correction to pow3
    k_test = len(predict.TEST_FEATURES) + len(predict.TRAIN_FEATURES)
    F = np.column_stack([th.x[:, 1:k_test], th.L, th.vals.T, th.y0])[one]
    F = (F - F.mean(axis=0)) / np.where(F.std(axis=0) > 1e-12, F.std(axis=0), 1.0)
    hub = HuberRegressor(epsilon=1.1, alpha=1e-3, max_iter=5000).fit(F, (th.y - th.vals[0])[one])
    lead = th.vals[0].copy()
    lead[one] = np.clip(th.vals[0][one] + hub.predict(F), 0.0, 1.0)
    rows[f"Huber correction to pow3 fitted on the held-out {probe} curves (in-sample)"] = lead
    curves = {k: int(np.unique(th.curve[one & th.largest & (th.k == k)]).size) for k in ks}
    targets = {k: int((one & (th.k == k)).sum()) for k in ks}
    cols, bases = _columns(*VARIANTS[name])
    print(f"\n## ceiling: held-out {probe} curves, MAE / bounded pow3 at the largest anchor")
    print(
        ", ".join(f"{curves[k]} curves and {targets[k]} targets at n <= {k}" for k in ks)
        + f"; θ has {len(cols) * len(bases)} free weights\n"
    )
    print("| θ | " + " | ".join(f"n <= {k}" for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    for label, pred in rows.items():
        print(f"| {label} | " + " | ".join(f"{ratio(pred, k):.3f}" for k in ks) + " |")
    pred = rows["θ fitted on the dev curves (the calibration)"]
    rng = np.random.default_rng(0)
    for k in ks:
        m = one & th.largest & (th.k == k)
        e, e3, gr = np.abs(pred - th.y)[m], np.abs(th.vals[0] - th.y)[m], th.group[m]
        gs = np.unique(gr)
        idx = [np.flatnonzero(gr == q) for q in gs]
        boot = []
        for _ in range(2000):
            take = np.concatenate([idx[i] for i in rng.integers(0, len(gs), len(gs))])
            boot.append(e[take].mean() / e3[take].mean())
        lo, hi = np.quantile(boot, [0.05, 0.95])
        print(
            f"n <= {k}: the calibration's ratio {e.mean() / e3.mean():.3f}, bootstrap over the "
            f"{len(gs)} data sets: 90% interval [{lo:.3f}, {hi:.3f}], "
            f"P(ratio <= 0.7) = {np.mean(np.array(boot) <= 0.7):.3f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=None, help="YAML with any of the options below.")
    p.add_argument("--dev-ids", default=str(DEV_IDS), help="OpenML ids of the development set.")
    p.add_argument("--max-labels", default="64,50", help="Comma list of fit budgets.")
    p.add_argument("--level", type=float, default=0.9)
    p.add_argument("--digits", default=str(REPO / "out" / "demo" / "results.parquet"))
    p.add_argument("--timing-curves", type=int, default=10_000)
    p.add_argument("--calibrate", action="store_true", help="Learn the calibration (dev ids).")
    p.add_argument("--write", action="store_true", help="With --calibrate: into the package.")
    p.add_argument("--ridge", type=float, default=1e-3, help="With --calibrate: ridge penalty.")
    p.add_argument(
        "--cv-only",
        action="store_true",
        help="With --calibrate: reuse the last calibration's folds from the cache (the labels "
        "quantile and the cross-validated benchmark only).",
    )
    p.add_argument("--on", choices=["heldout", "dev"], default="heldout")
    p.add_argument(
        "--dev-variants",
        action="store_true",
        help="Variants of the meta-model in the calibration's cross-validation (dev ids).",
    )
    p.add_argument(
        "--ceiling",
        default=None,
        metavar="PROBE",
        help="How close fits that have seen the held-out truths of PROBE's curves come "
        "(an upper bound for the meta-model), beside the calibration's.",
    )
    args = p.parse_args()
    if args.config:
        import yaml

        conf = yaml.safe_load(Path(args.config).read_text()) or {}
        for k, v in conf.items():
            setattr(args, k.replace("-", "_"), ",".join(map(str, v)) if isinstance(v, list) else v)
    df = lcdb_curves()
    dev, held = split(df, Path(args.dev_ids))
    if args.calibrate:
        from dataclasses import replace

        if args.cv_only:
            cal, fold_cals, fold_of = load_folds()
        else:
            cal, fold_cals, fold_of = calibrate(dev, CALIBRATION_KS, ridge=args.ridge)
            save_folds(cal, fold_cals, fold_of)
        ks = tuple(float(k) for k in str(args.max_labels).split(","))
        q = choose_labels_quantile(dev, fold_cals, fold_of, ks, args.level)
        cal = replace(cal, labels_quantile=q)
        fold_cals = [replace(c, labels_quantile=q) for c in fold_cals]
        if args.write:
            cal.write()
        for k in ks:
            cross_validated_benchmark(dev, fold_cals, fold_of, k, args.level)
        return
    if args.dev_variants:
        run_dev_variants(dev, args.ridge)
        return
    if args.ceiling:
        ks = tuple(int(k) for k in str(args.max_labels).split(","))
        run_ceiling(dev, held, args.ceiling, args.ridge, ks)
        return
    data = held if args.on == "heldout" else dev
    which = "held-out" if args.on == "heldout" else "dev (the calibration's own curves)"
    name = f"LCDB {which} ({data['openmlid'].nunique()} data sets)"
    for k in str(args.max_labels).split(","):
        run_benchmark(data, float(k), args.level, name)
    run_digits(Path(args.digits), args.level)
    if args.timing_curves:
        run_timing(held, args.timing_curves)


if __name__ == "__main__":
    main()
