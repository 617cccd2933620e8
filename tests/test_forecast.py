"""fmprobe forecast: exact recovery per family, the seed-level fit against scipy, interval
coverage on a seeded simulation, inversion against scipy root-finding (whole labels), per-curve
statuses, the training curve and the probe family (hand-made curves, unknown names, old
tables), the benchmark's figures against errors computed by hand, one-line errors with exit
code 2, and the Python API against the CLI."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.optimize import brentq, least_squares

from fmprobe.cli import main
from fmprobe.forecast import FAMILIES, forecast, forecast_benchmark, probe_family
from fmprobe.forecast.calibration import load_calibration, parse_calibration
from fmprobe.forecast.fit import CurveData, fit_family
from fmprobe.forecast.predict import N_SEARCH_MAX, labels_needed

TRUE = {
    "pow3": [0.9, 0.5, 0.5],
    "pow2": [1.0, 0.8, 0.4],
    "log2": [0.4, 0.05],
    "ilog2": [0.95, 0.6],
    "exp3": [0.9, 0.4, 0.01],
    "vap3": [1.0, 0.9, 5.0, -0.4],
    "mmf4": [0.92, 0.4, np.log(50) / 0.8, 0.8],
    "wbl4": [0.93, 0.5, -np.log(0.05) / 0.6, 0.6],
    "pow4": [0.9, 0.8, 0.6, 20.0],
}
N_OBS = np.array([[10.0, 16, 23, 32, 45, 64, 100, 200]])


def test_every_family_has_a_recovery_case() -> None:
    assert set(TRUE) == set(FAMILIES)


@pytest.mark.parametrize("name", list(TRUE))
def test_exact_recovery_from_noiseless_curves(name: str) -> None:
    fam = FAMILIES[name]
    true = np.array(TRUE[name])
    y = fam.evaluate(N_OBS, true)
    est, sse = fit_family(fam, CurveData(n=N_OBS, y=y, w=np.ones_like(N_OBS)))
    np.testing.assert_allclose(est[0], true, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(fam.evaluate(N_OBS, est[0]), y, atol=2e-6)
    assert sse[0] < 1e-10


def test_mean_fit_with_seed_weights_equals_scipy_on_seed_level_points() -> None:
    rng = np.random.default_rng(3)
    ns = np.array([16.0, 23, 32, 45, 64])
    sd = np.array([0.04, 0.03, 0.025, 0.02, 0.01])
    k = np.array([5, 8, 5, 12, 6])
    n_pts = np.repeat(ns, k)
    y_pts = 0.92 - 0.7 * n_pts**-0.45 + rng.normal(0, np.repeat(sd, k))
    df = pd.DataFrame({"n": n_pts, "y": y_pts})
    g = df.groupby("n")["y"].agg(["mean", "count"])
    # the same known variances on both sides, so only the fit is compared
    w = (g["count"].to_numpy() / sd**2)[None]
    est, _ = fit_family(
        FAMILIES["pow3"], CurveData(n=ns[None], y=g["mean"].to_numpy()[None], w=w / w.max())
    )
    best = g["mean"].max()
    sig = np.repeat(sd, k)

    def resid(p: np.ndarray) -> np.ndarray:
        return np.asarray((y_pts - (p[0] - p[1] * n_pts ** -p[2])) / sig)

    ref = least_squares(
        resid,
        x0=[0.95, 0.5, 0.5],
        bounds=([best, 0, 0.01], [1.0, np.inf, 3.0]),
        xtol=1e-14,
        ftol=1e-14,
        gtol=1e-14,
    )
    np.testing.assert_allclose(est[0], ref.x, rtol=1e-4, atol=1e-6)


def _simulated_curves(n_curves: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Noisy seed-level curves from known families with random parameters; the truth at
    larger n is the noiseless curve."""
    rng = np.random.default_rng(seed)
    fams = ["pow3", "pow2", "mmf4", "vap3", "exp3"]
    fit_n = np.array([16, 23, 32, 45, 64])
    far_n = np.array([128, 256, 512, 1024, 2048, 4096])
    rows, truth = [], []
    for c in range(n_curves):
        name = fams[c % len(fams)]
        if name == "pow3":
            p = [rng.uniform(0.75, 0.99), rng.uniform(0.3, 2.0), rng.uniform(0.2, 0.8)]
        elif name == "pow2":
            p = [1.0, rng.uniform(0.3, 1.5), rng.uniform(0.1, 0.6)]
        elif name == "mmf4":
            p = [rng.uniform(0.8, 0.99), rng.uniform(0.2, 0.4), rng.uniform(2, 6), 1.0]
        elif name == "vap3":
            p = [1.0, rng.uniform(0.5, 1.5), rng.uniform(-5, 5), rng.uniform(-0.6, -0.15)]
        else:
            p = [rng.uniform(0.8, 0.99), rng.uniform(0.2, 0.4), rng.uniform(0.005, 0.03)]
        fam = FAMILIES[name]
        noise = rng.uniform(0.005, 0.03)
        for n in fit_n:
            mu = float(np.clip(fam.evaluate(np.array(float(n)), np.array(p)), 0, 1))
            for s in range(5):
                y = float(np.clip(mu + rng.normal(0, noise * (16 / n) ** 0.5), 0, 1))
                rows.append((f"c{c}", int(n), s, y))
        for n in far_n:
            mu = float(np.clip(fam.evaluate(np.array(float(n)), np.array(p)), 0, 1))
            truth.append((f"c{c}", int(n), mu))
    return (
        pd.DataFrame(rows, columns=["curve", "n", "seed", "auroc"]),
        pd.DataFrame(truth, columns=["curve", "n", "truth"]),
    )


def test_interval_coverage_on_simulated_curves() -> None:
    df, truth = _simulated_curves(400, seed=0)
    r = forecast(curves=df, by="curve", at=truth["n"].unique().tolist(), level=0.9)
    t = r.table.merge(truth, on=["curve", "n"])
    t = t.dropna(subset=["predicted"])
    assert len(t) >= 2000
    cover = ((t["lower"] <= t["truth"]) & (t["truth"] <= t["upper"])).mean()
    # calibrated on real (LCDB) curves; on curves drawn from the families themselves the 90%
    # interval must still hold its level within a few points (binomial sd here is < 1 point)
    assert 0.85 <= cover <= 0.98, cover
    assert ((t["predicted"] >= 0) & (t["predicted"] <= 1)).all()
    assert (t["lower"] <= t["predicted"]).all() and (t["predicted"] <= t["upper"]).all()


def test_labels_needed_equals_root_of_the_fitted_curve() -> None:
    df, _ = _simulated_curves(5, seed=1)
    r = forecast(curves=df, by="curve", target="0.9", level=0.8)
    fits = r.fits
    need, lo, hi, _ = labels_needed(fits, 0.9, level=0.8)
    mid = load_calibration().labels_quantile  # the labels needed are this quantile's crossing
    checked = 0
    for i in range(len(fits.fit_max_n)):
        sub = fits.curve(i)

        def middle(n: float, s: object = sub) -> float:
            if mid is None:
                return float(s.center(np.array([[n]]))[0][0, 0])  # type: ignore[attr-defined]
            return float(s.quantiles(np.array([[n]]), np.array([mid]))[0, 0, 0])  # type: ignore[attr-defined]

        curves = {
            "point": (need, middle),
            "upper": (lo, lambda n, s=sub: s.quantiles(np.array([[n]]), np.array([0.9]))[0, 0, 0]),
            "lower": (hi, lambda n, s=sub: s.quantiles(np.array([[n]]), np.array([0.1]))[0, 0, 0]),
        }
        for got, fn in curves.values():
            start = fits.fit_min_n[i]
            if fn(start) >= 0.9:
                assert got[i] == pytest.approx(start)
                continue
            if fn(N_SEARCH_MAX) < 0.9:
                assert np.isnan(got[i])
                continue
            root = brentq(lambda n, f=fn: f(n) - 0.9, start, N_SEARCH_MAX, xtol=1e-6, rtol=1e-12)
            assert got[i] == pytest.approx(root, rel=1e-6)
            checked += 1
    assert checked >= 5
    # the table carries the same crossings as whole labels: the smallest integer n reaching it
    for col, exact in (("n_needed", need), ("n_needed_lower", lo), ("n_needed_upper", hi)):
        got = r.labels[col]
        assert str(got.dtype) == "Int64"
        assert got.isna().to_numpy().tolist() == np.isnan(exact).tolist()
        ok = ~np.isnan(exact)
        assert got[ok].astype(int).tolist() == [int(np.ceil(v)) for v in exact[ok]]


def test_unreachable_and_reached_targets_are_stated() -> None:
    ns = np.array([50, 100, 200, 400, 800])
    n = np.repeat(ns, 4)
    seed = np.tile(np.arange(4), len(ns))
    rng = np.random.default_rng(0)
    y = 0.8 - 0.3 * n**-1.0 + rng.normal(0, 0.002, len(n))
    df = pd.DataFrame({"n": n, "seed": seed, "auroc": y})
    r = forecast(curves=df, target="0.99,0.6", at="1000")
    by_t = r.labels.set_index("target")
    # a plateau near 0.8, observed up to 800 labels: the upper bound never reaches 0.99
    grid = np.geomspace(50, N_SEARCH_MAX, 300)[None, :]
    upper = r.fits.quantiles(grid, np.array([0.95]))[0, 0]
    assert upper.max() < 0.99
    far = by_t.loc[0.99]
    assert far["n_needed_status"] == "not_reachable"
    assert pd.isna(far["n_needed"]) and pd.isna(far["n_needed_lower"])
    assert far["p_unreachable"] > 0.9
    # 0.6 is already reached by the observed means (0.79 at n = 50, the first fitted n)
    near = by_t.loc[0.6]
    assert near["n_needed_status"] == "reached"
    assert near["n_needed"] == 50
    t = r.table
    assert (t["n_needed_status_0.99"] == "not_reachable").all()
    assert str(t["n_needed_0.6"].dtype) == "Int64"


def _messy_table() -> pd.DataFrame:
    rows = []
    for n in (10, 20, 40, 80):
        for s in range(3):
            rows.append(("ok", n, s, 0.9 - 0.5 * n**-0.5 + 0.003 * s))
            rows.append(("few", n if n < 40 else 20, s, 0.7))
            rows.append(("constant", n, s, 0.8))
            rows.append(("nan", n, s, np.nan if (n == 20 and s == 0) else 0.85 - 0.4 * n**-0.5))
            rows.append(("decreasing", n, s, 0.9 - 0.001 * n))
            rows.append(("zero_n", n - 10, s, 0.9 - 0.5 * (n + 1) ** -0.5))
            rows.append(("above_one", n, s, 1.2 - 0.5 * n**-0.5))
    return pd.DataFrame(rows, columns=["model", "n", "seed", "auroc"])


def test_each_bad_curve_gets_a_status_not_a_crash() -> None:
    r = forecast(curves=_messy_table(), at="1000")
    status = dict(zip(r.curves["model"], r.curves["status"], strict=True))
    assert status == {
        "ok": "ok",
        "few": "too_few_points",
        "constant": "constant",
        "nan": "ok_nan_dropped",
        "decreasing": "decreasing",
        "zero_n": "nonpositive_n",
        "above_one": "out_of_range",
    }
    t = r.table
    fitted = t["model"].isin(["ok", "nan"])
    assert t.loc[fitted, "predicted"].notna().all()
    assert t.loc[~fitted, "predicted"].isna().all()
    assert t["predicted"].dropna().between(0, 1).all()


def _results_table() -> pd.DataFrame:
    rows = []
    for feat, top in (("m/block11/cls", 0.95), ("m/block5/cls", 0.85)):
        for n in (10, 20, 50, 100, 200):
            for s in range(5):
                y = top - 0.5 * n**-0.5 + 0.002 * (s - 2)
                rows.append((feat, "label", "logreg", "random", n, s, y, y - 0.1, 0.5, "ok"))
    cols = ["feature", "task", "probe", "sampler", "n", "seed", "auroc", "auprc"]
    df = pd.DataFrame(rows, columns=[*cols, "balanced_accuracy", "status"])
    df["fmprobe_version"] = "0.1.0"
    return df


def test_results_table_defaults_and_output_contract() -> None:
    r = forecast(curves=_results_table(), max_labels=50, at="1000", target="0.9")
    t = r.table
    head = ["feature", "task", "probe", "sampler", "n", "predicted", "lower", "upper"]
    assert t.columns[: len(head)].tolist() == head
    for col in ("observed", "family", "fit_max_n", "status", "n_needed", "n_needed_lower"):
        assert col in t.columns
    assert len(r.curves) == 2
    assert set(t["n"]) == {10, 20, 50, 100, 200, 1000}
    assert (t["fit_max_n"] == 50).all()
    assert t.loc[t["n"] == 1000, "observed"].isna().all()
    assert t.loc[t["n"] == 200, "observed"].notna().all()
    # the curve with the higher plateau is forecast higher and needs fewer labels
    far = t[t["n"] == 1000].set_index("feature")
    assert far.loc["m/block11/cls", "predicted"] > far.loc["m/block5/cls", "predicted"]


def _tiny_table() -> pd.DataFrame:
    """Two curves, one seed per n (so every fit point weighs the same), with wiggles that no
    family fits exactly, and a training curve."""
    rows = []
    wiggle = np.array([0.004, -0.003, 0.002, -0.004, 0.003, -0.002])
    for feat, probe, top in (("a", "logreg", 0.95), ("b", "knn5", 0.86)):
        for i, n in enumerate((10, 20, 30, 50, 100, 200)):
            y = top - 0.5 * n**-0.5 + wiggle[i]
            rows.append((feat, probe, n, 0, y, min(1.0, top + 0.3 * n**-0.5)))
    return pd.DataFrame(rows, columns=["feature", "probe", "n", "seed", "auroc", "train_auroc"])


def _pow3_by_scipy(n: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bounded least squares of c - a n^-b (c in [best mean, 1]), several starts."""
    best = None
    for b0 in (0.1, 0.5, 1.0, 2.0):
        r = least_squares(
            lambda p: p[0] - p[1] * n ** -p[2] - y,
            x0=[min(1.0, y.max() + 0.01), 0.5, b0],
            bounds=([y.max(), 0, 0.01], [1.0, np.inf, 3.0]),
            xtol=1e-14,
            ftol=1e-14,
            gtol=1e-14,
        )
        if best is None or r.cost < best.cost:
            best = r
    assert best is not None
    return np.asarray(best.x)


def test_benchmark_figures_equal_errors_computed_by_hand() -> None:
    from fmprobe.forecast.benchmark import TARGET_GRID

    df = _tiny_table()
    b = forecast_benchmark(curves=df, by="feature,probe", max_labels=50, level=0.9)
    assert b.methods == ("fmprobe", "fmprobe_no_train", "pow3", "mmf4", "wbl4", "last")
    s = b.summary.set_index(["method", "probe", "horizon"])
    # the forecast's own table at the same n is the reference for fmprobe
    with_t = forecast(curves=df, by="feature,probe", max_labels=50, at="100,200")
    no_t = forecast(curves=df, by="feature,probe", max_labels=50, train_metric="none")
    hand: dict[str, dict[str, list[float]]] = {}
    for (feat, probe), g in df.groupby(["feature", "probe"]):
        fit, far = g[g["n"] <= 50], g[g["n"] > 50]
        n_far, y_far = far["n"].to_numpy(float), far["auroc"].to_numpy()
        c, a, bb = _pow3_by_scipy(fit["n"].to_numpy(float), fit["auroc"].to_numpy())
        preds = {
            "last": np.full(len(far), fit["auroc"].iloc[-1]),
            "pow3": c - a * n_far**-bb,
        }
        for name, r in (("fmprobe", with_t), ("fmprobe_no_train", no_t)):
            t = r.table[(r.table["feature"] == feat) & r.table["n"].isin(n_far)]
            preds[name] = t.sort_values("n")["predicted"].to_numpy()
            lo, hi = t.sort_values("n")["lower"].to_numpy(), t.sort_values("n")["upper"].to_numpy()
            inside = ((lo <= y_far) & (y_far <= hi)).astype(float).tolist()
            hand.setdefault(f"cover_{name}", {}).setdefault(probe, []).extend(inside)
        for m, p in preds.items():
            hand.setdefault(m, {}).setdefault(probe, []).extend((p - y_far).tolist())
    for m in ("fmprobe", "fmprobe_no_train", "pow3", "last"):
        every = hand[m]["logreg"] + hand[m]["knn5"]
        for probe, errs in (("all", every), *hand[m].items()):
            row = s.loc[(m, probe, "all")]
            assert row["points"] == len(errs)
            assert row["mae"] == pytest.approx(np.mean(np.abs(errs)), abs=2e-5), (m, probe)
            assert row["bias"] == pytest.approx(np.mean(errs), abs=2e-5), (m, probe)
        if m.startswith("fmprobe"):
            cov = hand[f"cover_{m}"]["logreg"] + hand[f"cover_{m}"]["knn5"]
            assert s.loc[(m, "all", "all"), "coverage"] == pytest.approx(np.mean(cov))
        else:
            assert np.isnan(s.loc[(m, "all", "all"), "coverage"])
    # labels needed: the (curve, target) pairs above the best fitted mean reached later, and
    # pow3's whole labels n = ceil((a / (c - t))^(1/b)) against the log-linear first crossing
    pairs, within = 0, 0
    for _, g in df.groupby("feature"):
        fit, far = g[g["n"] <= 50], g[g["n"] > 50]
        c, a, bb = _pow3_by_scipy(fit["n"].to_numpy(float), fit["auroc"].to_numpy())
        for t in TARGET_GRID:
            if fit["auroc"].max() >= t or far["auroc"].max() < t:
                continue
            pts = [(50.0, fit["auroc"].iloc[-1]), *zip(far["n"], far["auroc"], strict=True)]
            j = next(i for i, (_, y) in enumerate(pts) if y >= t and i > 0)
            (n0, y0), (n1, y1) = pts[j - 1], pts[j]
            truth = np.exp(np.log(n0) + (t - y0) / (y1 - y0) * (np.log(n1) - np.log(n0)))
            pred = np.ceil((a / (c - t)) ** (1 / bb)) if c > t else np.inf
            pairs += 1
            within += 0.5 <= pred / truth <= 2
    row = s.loc[("pow3", "all", "all")]
    assert pairs > 0 and row["ln_pairs"] == pairs
    assert row["ln_within_2x"] == pytest.approx(within / pairs)


def test_python_api_equals_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "results.parquet"
    _results_table().to_parquet(src)
    out = tmp_path / "f.csv"
    res = CliRunner().invoke(
        main,
        [
            "forecast",
            str(src),
            "--max-labels",
            "50",
            "--at",
            "1000",
            "--target",
            "0.9,0.95",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    api = forecast(curves=src, max_labels=50, at="1000", target="0.9,0.95").table
    whole = [c for c in api.columns if str(api[c].dtype) == "Int64"]
    assert "n_needed_0.9" in whole
    api = api.astype({c: float for c in whole})
    cli = pd.read_csv(out)
    assert cli.columns.tolist() == api.columns.tolist()
    pd.testing.assert_frame_equal(cli, api, check_dtype=False, atol=1e-9)
    assert "n_needed_0.95" in cli.columns


def test_config_yaml_equals_flags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "r.csv"
    _results_table().to_csv(src, index=False)
    conf = tmp_path / "c.yaml"
    conf.write_text("max_labels: 50\nat: [1000]\nlevel: 0.8\n")
    a = CliRunner().invoke(main, ["forecast", str(src), "--config", str(conf), "--json"])
    b = CliRunner().invoke(
        main,
        ["forecast", str(src), "--max-labels", "50", "--at", "1000", "--level", "0.8", "--json"],
    )
    assert a.exit_code == 0 and b.exit_code == 0, a.output
    assert a.stdout == b.stdout


def _bad_cases(tmp_path) -> list[tuple[list[str], str]]:  # type: ignore[no-untyped-def]
    good = tmp_path / "r.parquet"
    _results_table().to_parquet(good)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file")
    flat = tmp_path / "flat.csv"
    pd.DataFrame({"n": [10, 20, 40] * 2, "auroc": [0.7] * 6, "m": ["a"] * 6}).to_csv(flat)
    no_n = tmp_path / "no_n.csv"
    pd.DataFrame({"size": [10, 20, 40], "auroc": [0.6, 0.7, 0.8]}).to_csv(no_n)
    with_train = tmp_path / "train.csv"
    _results_table().assign(train_auroc=1.0).to_csv(with_train, index=False)
    bad_train = tmp_path / "bad_train.csv"
    _results_table().assign(train_auroc=2.0).to_csv(bad_train, index=False)
    g = str(good)
    return [
        ([str(with_train), "--train-metric", "train_aurco"], "did you mean 'train_auroc'"),
        ([g, "--train-metric", "train_auroc"], "--train-metric 'train_auroc' is not a column"),
        ([str(bad_train)], "outside [0, 1]"),
        ([g, "--metric", "aucroc"], "did you mean 'auroc'"),
        ([str(tmp_path / "missing.csv")], "does not exist"),
        ([str(broken)], "cannot be read"),
        ([g, "--level", "1.5"], "--level"),
        ([str(flat)], "no curve can be fitted"),
        ([g, "--families", "pow9"], "unknown family"),
        ([g, "--target", "high"], "--target"),
        ([g, "--target", "1.5"], "--target"),
        ([g, "--by", "model"], "--by column 'model'"),
        ([g, "--out", str(tmp_path / "x.txt")], "--out"),
        ([g, "--max-labels", "-5"], "--max-labels"),
        ([str(no_n)], "no column 'n'"),
        ([g, "--benchmark", "--max-labels", "1000"], "beyond --max-labels"),
    ]


def test_bad_input_is_one_line_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for args, words in _bad_cases(tmp_path):
        res = CliRunner().invoke(main, ["forecast", *args])
        assert res.exit_code == 2, (args, res.output)
        err = res.stderr.strip()
        assert err.count("\n") == 0 and err.startswith("fmprobe: error:"), (args, err)
        assert words in err, (args, err)


def test_plots(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    from fmprobe.forecast.plots import plot_forecasts

    r = forecast(curves=_results_table(), max_labels=50)
    paths = plot_forecasts(r, folder=tmp_path / "plots", target="0.9")
    assert len(paths) == 2 and all(p.stat().st_size > 1000 for p in paths)


def test_meta_forecast_equals_its_formula_and_rises() -> None:
    """The default forecast is y_K + Σ softplus(x·θ_j)·basis_j(n), written out here from the
    families' own formulas, and it and its quantiles are non-decreasing in n."""
    from fmprobe.forecast.families import DEFAULT_FAMILIES

    df, _ = _simulated_curves(20, seed=4)
    r = forecast(curves=df, by="curve")
    fits = r.fits
    assert fits.meta is not None and fits.features is not None and fits.last is not None
    assert set(r.curves["forecast_model"]) == {"pooled"}
    n = np.array([16.0, 64.0, 100.0, 1000.0, 1e5])
    x = fits.features
    w = np.log1p(np.exp(x @ load_calibration().models["pooled"].theta.T))
    ref = np.tile(fits.last[:, None], (1, len(n)))
    for j, f in enumerate(DEFAULT_FAMILIES):
        fam = FAMILIES[f]
        p = fits.params[f]
        nn = np.maximum(n[None, :], fam.turn(p)[:, None]) if fam.turn else n[None, :]
        v = np.clip(np.nan_to_num(fam.evaluate(nn, p[:, None, :])), 0, 1)
        ref += w[:, j : j + 1] * (v - fits.last[:, None])
    # the drift; the training-curve bases have no amplitude without a training curve
    assert fits.amp is not None and (fits.amp == 0).all()
    ref += w[:, 9:10] * np.maximum(np.log2(n[None, :] / fits.fit_max_n[:, None]), 0) / 10
    point = fits.center(np.tile(n, (len(ref), 1)))[0]
    np.testing.assert_allclose(point, np.clip(ref, 0, 1), atol=1e-12)
    # slopes and the last mean, from the table of means
    means = df.groupby(["curve", "n"])["auroc"].mean().unstack()
    order = r.curves["curve"].to_numpy()[r.fit_index]
    m = means.loc[order].to_numpy()
    np.testing.assert_allclose(x[:, 1], m[:, -1])
    np.testing.assert_allclose(x[:, 2], 10 * (m[:, -1] - m[:, -2]) / np.log2(64 / 45))
    np.testing.assert_allclose(x[:, 3], 10 * (m[:, -1] - m[:, 0]) / np.log2(64 / 16))
    sd = df[df["n"] == 64].groupby("curve")["auroc"].std().loc[order].to_numpy()
    np.testing.assert_allclose(x[:, 6], 10 * sd)
    dense = np.tile(np.geomspace(2, 1e7, 400), (len(ref), 1))
    point = fits.center(dense)[0]
    q = fits.quantiles(dense, np.array([0.05, 0.95]))
    for v in (point, q[0], q[1]):
        assert (np.diff(v, axis=1) >= -1e-12).all()
    assert (q[0] <= point + 1e-12).all() and (point <= q[1] + 1e-12).all()


def test_vap3_is_held_at_its_minimum_below_the_turn() -> None:
    fam = FAMILIES["vap3"]
    p = np.array([1.0, 0.5, -20.0, -0.5])  # falls until n = β/γ = 40
    n = np.geomspace(2, 1e5, 300)
    raw = fam.evaluate(n, p)
    rising = fam.evaluate_rising(n, p)
    # the lower envelope: the smallest value at or beyond each n
    envelope = np.minimum.accumulate(raw[::-1])[::-1]
    np.testing.assert_allclose(rising[n >= 40], raw[n >= 40])
    assert (np.diff(rising) >= -1e-15).all()
    assert rising[0] == pytest.approx(fam.evaluate(np.array(40.0), p), abs=1e-12)
    np.testing.assert_allclose(rising, envelope, atol=1e-5)  # the grid misses n = 40 by a hair


@pytest.mark.parametrize(
    ("name", "family", "known", "uses_train"),
    [
        ("logreg", "logreg", True, True),
        ("ridge", "ridge", True, True),
        ("knn5", "knn", True, False),
        ("knn20", "knn", True, False),
        ("attnpool", "mlp", True, False),
        ("lda", "lda", True, True),
        ("knn", "knn", True, True),
        ("rf", "rf", True, True),
        ("mlp", "mlp", True, False),
        ("LogReg", "logreg", True, True),
        ("svm", "pooled", False, True),
        ("knnx", "pooled", False, True),
        ("", "pooled", False, True),
    ],
)
def test_probe_family_table(name: str, family: str, known: bool, uses_train: bool) -> None:
    p = probe_family(name)
    assert (p.family, p.known, p.uses_train) == (family, known, uses_train)


def _pair_table(probe: str = "logreg") -> pd.DataFrame:
    """Hand-made test and training curves: the test curve rises as 0.9 - 0.5 n^-0.5 and two
    training curves fall, one towards the same plateau 0.9 and one towards 0.7."""
    rows = []
    for s in range(3):
        for n in (16, 23, 32, 45, 64, 128, 1024):
            jitter = 0.002 * (s - 1)
            y = 0.9 - 0.5 * n**-0.5 + jitter
            rows.append(("same", probe, n, s, y, min(1.0, 0.9 + 0.4 * n**-0.5 + jitter)))
            rows.append(("low", probe, n, s, y, 0.7 + 0.4 * n**-0.5 + jitter))
    return pd.DataFrame(rows, columns=["curve", "probe", "n", "seed", "auroc", "train_auroc"])


def test_forecast_with_and_without_the_training_curve() -> None:
    df = _pair_table()
    with_t = forecast(curves=df, by="curve,probe", max_labels=64, at="1e5")
    no_t = forecast(curves=df, by="curve,probe", max_labels=64, at="1e5", train_metric="none")
    assert with_t.train_metric == "train_auroc" and no_t.train_metric is None
    assert with_t.curves["forecast_model"].tolist() == ["logreg+train", "logreg+train"]
    assert no_t.curves["forecast_model"].tolist() == ["logreg", "logreg"]

    def far(r: object, curve: str) -> float:
        t = r.table  # type: ignore[attr-defined]
        return float(t[(t["curve"] == curve) & (t["n"] == 1e5)]["predicted"].iloc[0])

    # without it the two curves are the same test curve, so the same forecast
    assert far(no_t, "same") == pytest.approx(far(no_t, "low"), abs=1e-12)
    # with it the forecast follows the training curve: lower where training falls to 0.7
    assert far(with_t, "low") < far(with_t, "same") - 0.005
    # and the training curve that brackets the known plateau (0.9 - 0.5/sqrt(1e5) = 0.8984)
    # from above brings the far forecast nearer to it than the test curve alone
    truth = 0.9 - 0.5 * 1e5**-0.5
    assert abs(far(with_t, "same") - truth) < abs(far(no_t, "same") - truth)
    # a forecast at a seed-free table of means is the same as the seed-level table's
    means = df.groupby(["curve", "probe", "n"], as_index=False)[["auroc", "train_auroc"]].mean()
    r = forecast(curves=means, by="curve,probe", max_labels=64, at="1e5")
    assert r.curves["forecast_model"].tolist() == ["logreg+train", "logreg+train"]


@pytest.mark.parametrize("probe", ["mlp", "attnpool", "knn5"])
def test_families_that_do_not_read_the_training_curve(probe: str) -> None:
    """The mlp family and fmprobe's kNN probes ignore a training column: the forecast is the
    one told not to read it, and the two training curves of _pair_table change nothing."""
    df = _pair_table(probe)
    with_t = forecast(curves=df, by="curve,probe", max_labels=64, at="1e5", target=0.89)
    no_t = forecast(
        curves=df, by="curve,probe", max_labels=64, at="1e5", target=0.89, train_metric="none"
    )
    family = {"mlp": "mlp", "attnpool": "mlp", "knn5": "knn"}[probe]
    assert with_t.curves["forecast_model"].tolist() == [family, family]
    cols = ["predicted", "lower", "upper", "n_needed", "n_needed_lower", "n_needed_upper"]
    pd.testing.assert_frame_equal(with_t.table[cols], no_t.table[cols])
    far = with_t.table[with_t.table["n"] == 1e5].set_index("curve")["predicted"]
    assert far["low"] == far["same"]


def test_training_features_and_the_forecast_formula() -> None:
    """The meta-model's training features and bases written out from the table of means: gap
    and slopes by hand, the training plateau against scipy's bounded pow3 fit of 1 - train,
    and the forecast as y_K + Σ softplus(x·θ_j)·basis_j(n) with the calibration's θ."""
    from fmprobe.forecast import predict
    from fmprobe.forecast.families import DEFAULT_FAMILIES

    df = _pair_table()
    r = forecast(curves=df, by="curve,probe", max_labels=64)
    fits = r.fits
    assert fits.features is not None and fits.amp is not None and fits.last is not None
    assert fits.meta is not None and fits.model is not None
    x = pd.DataFrame(fits.features, columns=predict.FEATURES)
    means = df[df["n"] <= 64].groupby(["curve", "n"])[["auroc", "train_auroc"]].mean()
    for i, curve in enumerate(r.curves["curve"].to_numpy()[r.fit_index]):
        m = means.loc[curve]
        y, t, n = m["auroc"].to_numpy(), m["train_auroc"].to_numpy(), m.index.to_numpy(float)
        step, span = np.log2(n[-1] / n[-2]), np.log2(n[-1] / n[0])
        assert x.loc[i, "has_train"] == 1.0 and x.loc[i, "probe_logreg"] == 1.0
        assert x.loc[i, "train_last"] == pytest.approx(t[-1])
        assert x.loc[i, "gap"] == pytest.approx(10 * (t[-1] - y[-1]))
        gap_slope = 10 * ((t[-1] - y[-1]) - (t[-2] - y[-2])) / step
        assert x.loc[i, "gap_slope"] == pytest.approx(gap_slope)
        assert x.loc[i, "train_slope_last"] == pytest.approx(10 * (t[-1] - t[-2]) / step)
        assert x.loc[i, "train_slope_all"] == pytest.approx(10 * (t[-1] - t[0]) / span)
        u = 1 - t
        ref = least_squares(
            lambda p, u=u, n=n: p[0] - p[1] * n ** -p[2] - u,
            x0=[min(1.0, u.max() + 0.01), 0.3, 0.5],
            bounds=([u.max(), 0, 0.01], [1.0, np.inf, 3.0]),
            xtol=1e-14,
            ftol=1e-14,
            gtol=1e-14,
        )
        plateau = 1 - ref.x[0]
        assert x.loc[i, "train_plateau_gap"] == pytest.approx(10 * (plateau - y[-1]), abs=1e-4)
        assert fits.amp[i].tolist() == pytest.approx(
            [max(0, t[-1] - y[-1]), max(0, t[-1] - y[-1]), max(0, plateau - y[-1])], abs=1e-5
        )
    cal = load_calibration()
    grid = np.array([16.0, 64.0, 100.0, 1000.0, 1e5])
    for i in range(len(fits.fit_max_n)):
        theta = cal.models[fits.model[i]].theta
        w = np.logaddexp(0, fits.features[i] @ theta.T)
        ref = np.full(len(grid), fits.last[i])
        for j, f in enumerate(DEFAULT_FAMILIES):
            fam, p = FAMILIES[f], fits.params[f][i]
            nn = np.maximum(grid, fam.turn(p)) if fam.turn else grid
            ref += w[j] * (np.clip(np.nan_to_num(fam.evaluate(nn, p)), 0, 1) - fits.last[i])
        L = np.log2(grid / fits.fit_max_n[i])
        ref += w[9] * np.maximum(L, 0) / 10
        for j, beta in enumerate((0.25, 1.0, 0.5)):
            ref += w[10 + j] * fits.amp[i, j] * (1 - (grid / fits.fit_max_n[i]) ** -beta)
        got = fits.curve(i).center(grid[None, :])[0][0]
        np.testing.assert_allclose(got, np.clip(ref, 0, 1), atol=1e-12)


def test_unknown_probe_uses_the_pooled_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    df = _pair_table()
    df = df[df["curve"] == "same"]
    table = pd.concat(
        [df.assign(probe="svm", curve="svm"), df.assign(curve="logreg")], ignore_index=True
    )
    r = forecast(curves=table, by="curve,probe", max_labels=64, at="1e4")
    c = r.curves.set_index("curve")
    assert c.loc["svm", "status"] == "ok_unknown_probe"
    assert c.loc["svm", "forecast_model"] == "pooled+train"
    assert c.loc["logreg", "status"] == "ok" and c.loc["logreg", "forecast_model"] == "logreg+train"
    # the pooled model is the one a table without a probe column gets
    plain = forecast(curves=df.drop(columns=["probe"]), by="curve", max_labels=64, at="1e4")
    assert plain.curves["status"].tolist() == ["ok"]
    assert plain.curves["forecast_model"].tolist() == ["pooled+train"]
    svm = r.table[r.table["curve"] == "svm"]["predicted"].to_numpy()
    np.testing.assert_allclose(svm, plain.table["predicted"].to_numpy(), atol=1e-12)
    # the probe column is read when it is not one of --by, and a curve of several probes is
    # unknown
    one = forecast(curves=df, by="curve", max_labels=64)
    assert one.curves["forecast_model"].tolist() == ["logreg+train"]
    mixed = forecast(curves=table.assign(curve="x"), by="curve", max_labels=64)
    assert mixed.curves["status"].tolist() == ["ok_unknown_probe"]
    src = tmp_path / "t.csv"
    table.to_csv(src, index=False)
    res = CliRunner().invoke(main, ["forecast", str(src), "--by", "curve,probe"])
    assert res.exit_code == 0, res.output
    assert "1 curve(s) of a probe not known (svm) use the pooled model" in res.stderr


def test_knn_probes_leave_their_leave_one_out_training_curve_out() -> None:
    df = _pair_table("knn5")
    r = forecast(curves=df, by="curve,probe", max_labels=64, at="1e4")
    assert r.curves["forecast_model"].tolist() == ["knn", "knn"]
    ref = forecast(curves=df, by="curve,probe", max_labels=64, at="1e4", train_metric="none")
    np.testing.assert_allclose(r.table["predicted"], ref.table["predicted"], atol=1e-12)


def test_old_tables_without_training_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = _results_table()
    r = forecast(curves=old, max_labels=50, at="1000")
    assert r.train_metric is None
    assert set(r.curves["forecast_model"]) == {"logreg"} and set(r.curves["status"]) == {"ok"}
    # the same table with a training column, told not to read it, forecasts the same
    new = old.assign(train_auroc=np.minimum(1.0, old["auroc"] + 0.05))
    same = forecast(curves=new, max_labels=50, at="1000", train_metric="none")
    pd.testing.assert_frame_equal(r.table, same.table)
    read = forecast(curves=new, max_labels=50, at="1000")
    assert read.train_metric == "train_auroc" and set(read.curves["forecast_model"]) == {
        "logreg+train"
    }
    src = tmp_path / "new.csv"
    new.to_csv(src, index=False)
    a = CliRunner().invoke(main, ["forecast", str(src), "--max-labels", "50", "--json"])
    b = CliRunner().invoke(
        main,
        ["forecast", str(src), "--max-labels", "50", "--train-metric", "train_auroc", "--json"],
    )
    assert a.exit_code == 0 and b.exit_code == 0, a.output
    assert a.stdout == b.stdout


def test_calibration_is_data_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from fmprobe.forecast import predict
    from fmprobe.forecast.calibration import MODEL_NAMES

    cal = load_calibration()
    assert cal.features == predict.FEATURES and cal.bases == predict.BASES
    assert sorted(cal.models) == sorted(MODEL_NAMES)
    path = tmp_path / "cal.json"
    cal.write(path)
    back = parse_calibration(json.loads(path.read_text()))
    for name, m in cal.models.items():
        np.testing.assert_allclose(back.models[name].theta, m.theta, atol=1e-5)
        np.testing.assert_allclose(back.models[name].z_table, m.z_table, atol=1e-4)
    # a model that does not read the training curve gives its bases no weight
    for name in ("probe", "pooled"):
        train_rows = [predict.BASES.index(b) for b in predict.TRAIN_BASES]
        train_cols = [predict.FEATURES.index(f) for f in predict.TRAIN_FEATURES]
        assert (cal.models[name].theta[np.ix_(range(len(predict.BASES)), train_cols)] == 0).all()
        assert (cal.models[name].theta[train_rows, 0] <= -20).all()


def test_benchmark_cli_equals_the_library(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "tiny.csv"
    _tiny_table().to_csv(src, index=False)
    args = ["forecast", str(src), "--by", "feature,probe", "--benchmark", "--max-labels", "50"]
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    got = pd.read_json(io.StringIO(res.stdout), orient="records")
    ref = forecast_benchmark(curves=src, by="feature,probe", max_labels=50).summary
    assert got[["method", "probe", "horizon"]].values.tolist() == (
        ref[["method", "probe", "horizon"]].values.tolist()
    )
    np.testing.assert_allclose(got["mae"], ref["mae"], atol=1e-12)
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0
    assert "probe knn5, horizon all:" in text.stdout and "fmprobe_no_train" in text.stdout
