"""Statistics on saved predictions: the hierarchical paired bootstrap against a slow numpy
loop over the same draws, DeLong against its definition and against the bootstrap, subgroup
metrics against scikit-learn, and one-line errors."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score, roc_auc_score

from fmprobe.cli import main
from fmprobe.errors import UsageError
from fmprobe.stats import (
    compare,
    delong,
    metric_replicates,
    paired_bootstrap,
    pool_deltas,
    stratified_indices,
    subgroup_metrics,
)
from fmprobe.store import import_features
from fmprobe.sweep import sweep

# --- a slow, direct implementation of appendix A.8 --------------------------------------------


def _sk_metric(y: np.ndarray, s: np.ndarray, metric: str) -> float:
    if s.ndim == 2:  # (T, K) class scores: macro one-vs-rest
        cols = [c for c in range(s.shape[1]) if 0 < (y == c).sum() < len(y)]
        f = roc_auc_score if metric == "auroc" else average_precision_score
        return float(np.mean([f(y == c, s[:, c]) for c in cols]))
    return float((roc_auc_score if metric == "auroc" else average_precision_score)(y, s))


def _slow_deltas(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str, R: int, rng: np.random.Generator
) -> np.ndarray:
    """One replicate at a time: draw T uniforms, pick within each class, score every seed
    with scikit-learn on the gathered rows, average the seeds, subtract."""
    members = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    out = []
    for _ in range(R):
        u = rng.random(len(y))
        idx = np.empty(len(y), dtype=int)
        for m in members.values():
            for j in m:
                idx[j] = m[int(u[j] * len(m))]
        ma = np.mean([_sk_metric(y[idx], s[idx], metric) for s in a])
        mb = np.mean([_sk_metric(y[idx], s[idx], metric) for s in b])
        out.append(ma - mb)
    return np.array(out)


def _slow_summary(d: np.ndarray) -> tuple[float, float, float]:
    return float(np.mean(d)), float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


# --- the vectorised pieces ----------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["auroc", "auprc"])
def test_metric_replicates_equal_sklearn_on_the_gathered_rows(metric: str) -> None:
    rng = np.random.default_rng(1)
    T = 80
    y = rng.integers(0, 2, T)
    s = np.round(rng.normal(size=(3, T)) + y, 1).astype(np.float32)  # many ties
    idx = np.concatenate([np.arange(T)[None], stratified_indices(y, replicates=15, rng=rng)])
    got = metric_replicates(s, y, idx, metric=metric)
    ref = [[_sk_metric(y[i], s[k][i], metric) for i in idx] for k in range(3)]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    y3 = rng.integers(0, 3, T)
    p = rng.dirichlet(np.ones(3), size=(2, T)).astype(np.float32)
    got3 = metric_replicates(p, y3, idx[:5] % T, metric=metric)
    ref3 = [[_sk_metric(y3[i], p[k][i], metric) for i in idx[:5] % T] for k in range(2)]
    np.testing.assert_allclose(got3, ref3, rtol=0, atol=1e-12)


def test_stratified_indices_keep_every_class_count() -> None:
    y = np.random.default_rng(0).choice(3, size=50, p=[0.7, 0.2, 0.1])
    idx = stratified_indices(y, replicates=200, rng=np.random.default_rng(0))
    assert np.array_equal(y[idx], np.broadcast_to(y, idx.shape))
    counts = np.bincount(idx.ravel(), minlength=50) / 200
    assert counts.min() > 0.5 and counts.max() < 1.6  # every row drawn about once per replicate


@pytest.mark.parametrize("metric", ["auroc", "auprc"])
def test_paired_bootstrap_equals_the_slow_loop(metric: str) -> None:
    rng = np.random.default_rng(2)
    T = 70
    y = (rng.random(T) < 0.3).astype(int)
    a = (y + rng.normal(size=(3, T))).astype(np.float32)
    b = (y + 1.5 * rng.normal(size=(2, T))).astype(np.float32)
    r = paired_bootstrap(y=y, scores_a=a, scores_b=b, metric=metric, replicates=60, rng=7)
    slow = _slow_deltas(y, a, b, metric, 60, np.random.default_rng(7))
    np.testing.assert_allclose(r.deltas, slow, rtol=0, atol=1e-12)
    np.testing.assert_allclose((r.difference, r.lower, r.upper), _slow_summary(slow), atol=1e-12)
    assert r.a_mean == pytest.approx(np.mean([_sk_metric(y, s, metric) for s in a]), abs=1e-12)


# --- DeLong -----------------------------------------------------------------------------------


def test_delong_equals_its_definition() -> None:
    rng = np.random.default_rng(3)
    T = 120
    y = rng.integers(0, 2, T)
    a, b = y + rng.normal(size=T), np.round(y + rng.normal(size=T), 1)
    d = delong(y=y, scores_a=a, scores_b=b)
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()

    def psi(s: np.ndarray) -> np.ndarray:  # (m, n) Mann-Whitney kernel
        return (s[pos][:, None] > s[neg][None]) + 0.5 * (s[pos][:, None] == s[neg][None])

    ka, kb = psi(a), psi(b)
    assert d.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert d.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    v10 = np.stack([ka.mean(1), kb.mean(1)])
    v01 = np.stack([ka.mean(0), kb.mean(0)])
    c = np.array([1, -1])
    var = c @ np.cov(v10) @ c / m + c @ np.cov(v01) @ c / n
    assert d.se == pytest.approx(np.sqrt(var), rel=1e-10)


def test_bootstrap_agrees_with_delong_for_one_seed() -> None:
    rng = np.random.default_rng(4)
    T = 600
    y = (rng.random(T) < 0.4).astype(int)
    shared = rng.normal(size=T)  # correlated classifiers, as two features of one image
    a = (1.2 * y + shared + 0.6 * rng.normal(size=T)).astype(np.float32)[None]
    b = (0.8 * y + shared + 0.6 * rng.normal(size=T)).astype(np.float32)[None]
    r = paired_bootstrap(y=y, scores_a=a, scores_b=b, replicates=1000, rng=0)
    d = delong(y=y, scores_a=a[0], scores_b=b[0])
    ratio = r.deltas.std(ddof=1) / d.se
    print(f"bootstrap SE {r.deltas.std(ddof=1):.5f} / DeLong SE {d.se:.5f} = {ratio:.3f}")
    assert 0.85 < ratio < 1.15
    assert d.lower > 0 and r.lower > 0  # a clear difference: both intervals exclude 0
    assert r.observed == pytest.approx(d.difference, abs=1e-9)
    assert abs(r.lower - d.lower) < 0.3 * d.se and abs(r.upper - d.upper) < 0.3 * d.se
    assert r.p_value < 0.01 and d.p_value < 0.01


# --- a sweep with saved predictions -----------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("stats")
    N, D = 500, 16
    X = rng.normal(size=(N, D)).astype(np.float32)
    finding = (X[:, 0] + X[:, 1] + rng.normal(size=N) > 0.8).astype(int)
    tissue = np.array(["tumor", "stroma", "fat"])[np.argmax(X[:, 2:5] + rng.normal(size=(N, 3)), 1)]
    table = pd.DataFrame({
        "id": [f"case{i:03d}" for i in range(N)],
        "finding": finding,
        "tissue": tissue,
        "sex": rng.choice(["F", "M"], N),
        "site": rng.choice(["A", "B", "C"], N),
    })  # fmt: skip
    np.save(root / "a.npy", X)
    np.save(root / "b.npy", X[:, :8] + 1.5 * rng.normal(size=(N, 8)).astype(np.float32))
    table.to_csv(root / "t.csv", index=False)
    store = root / "s.zarr"
    for name, f in (("enc_a/last/cls", "a.npy"), ("enc_b/last/cls", "b.npy")):
        import_features(store, name=name, features=root / f, labels=root / "t.csv")
    out = root / "r.parquet"
    sweep(store=str(store), out=str(out), tasks="finding,tissue", n="20,100", seeds=3, C=0.5,
          save_predictions=True, progress=False)  # fmt: skip
    return store, out


def test_compare_equals_the_slow_loop_and_the_results_table(swept: tuple[Path, Path]) -> None:
    _, out = swept
    c = compare(results=out, a="enc_a/last/cls", b="enc_b/last/cls", n=100, replicates=40, seed=3)
    t = c.table.set_index("task")
    assert list(t.index) == ["finding", "tissue", "all"]
    res = pd.read_parquet(out)
    folder = out.with_name(out.name + ".predictions")
    preds = pd.concat([pd.read_parquet(p) for p in folder.glob("[!t]*.parquet")])
    pooled = []
    for task in ("finding", "tissue"):
        p = preds[(preds.task == task) & (preds.n == 100)].sort_values("seed")
        test = pd.read_parquet(folder / "tests" / f"{p.test.iloc[0]}.parquet")
        y = test["y"].to_numpy()
        K = int(p.n_classes.iloc[0])

        def arm(f: str, p: pd.DataFrame = p, y: np.ndarray = y, K: int = K) -> np.ndarray:
            s = np.stack(list(p[p.feature == f].scores))
            return s.reshape(len(s), len(y), K) if K > 2 else s

        rng = np.random.default_rng([3, zlib.crc32(task.encode())])
        slow = _slow_deltas(y, arm("enc_a/last/cls"), arm("enc_b/last/cls"), "auroc", 40, rng)
        pooled.append(slow)
        diff, lo, hi = _slow_summary(slow)
        assert (t.loc[task, "difference"], t.loc[task, "lower"], t.loc[task, "upper"]) == (
            pytest.approx(diff, abs=1e-12), pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))  # fmt: skip
        ref = res[(res.task == task) & (res.n == 100)].groupby("feature")["auroc"].mean()
        assert t.loc[task, "a_mean"] == pytest.approx(ref["enc_a/last/cls"], abs=1e-9)
        assert t.loc[task, "b_mean"] == pytest.approx(ref["enc_b/last/cls"], abs=1e-9)
    # the pooled row: the two tasks' differences averaged within each replicate, by hand
    per_replicate = [(d_f + d_t) / 2 for d_f, d_t in zip(pooled[0], pooled[1], strict=True)]
    diff, lo, hi = _slow_summary(np.array(per_replicate))
    far = min(sum(d <= 0 for d in per_replicate), sum(d >= 0 for d in per_replicate))
    assert t.loc["all", "difference"] == pytest.approx(diff, abs=1e-12)
    assert (t.loc["all", "lower"], t.loc["all", "upper"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))  # fmt: skip
    assert t.loc["all", "p_value"] == pytest.approx(min(1.0, 2 * (1 + far) / 41))
    assert (t.loc["all", "pool"], t.loc["all", "tasks"]) == ("mean", 2)
    assert t.loc["all", "a_mean"] == pytest.approx(t.loc[["finding", "tissue"], "a_mean"].mean())
    assert (t["lower"] > 0).all()  # enc_a holds the signal, enc_b a noisy half of it
    mix = compare(results=out, a="enc_a/last/cls", b="enc_b/last/cls", n=100, replicates=40,
                  seed=3, pool="mixture").table.set_index("task")  # fmt: skip
    diff, lo, hi = _slow_summary(np.concatenate(pooled))
    assert mix.loc["all", "difference"] == pytest.approx(diff, abs=1e-12)
    assert (mix.loc["all", "lower"], mix.loc["all", "upper"]) == (pytest.approx(lo), pytest.approx(hi))  # fmt: skip
    assert mix.loc["all", "pool"] == "mixture"
    # the task rows do not depend on the pooling
    pd.testing.assert_frame_equal(mix.drop(index="all"), t.drop(index="all"))


def test_compare_probes_one_seed_delong_and_timing(
    swept: tuple[Path, Path], tmp_path: Path
) -> None:
    store, _ = swept
    out = tmp_path / "r.parquet"
    sweep(store=str(store), out=str(out), features="enc_a/last/cls", tasks="finding",
          probe="logreg,knn", knn_k="5", n="100", seeds=1, save_predictions=True, progress=False)  # fmt: skip
    c = compare(results=out, compare="probe", a="logreg", b="knn5")
    row = c.table.iloc[0]
    assert c.fixed == {"feature": "enc_a/last/cls", "sampler": "random"} and c.n == 100
    assert 0 <= row.delong_p <= 1  # one seed per arm and AUROC: DeLong beside the bootstrap
    assert row.delong_lower < row.observed < row.delong_upper
    assert max(row.lower, row.delong_lower) < min(row.upper, row.delong_upper)
    start = time.perf_counter()
    big = compare(results=out, compare="probe", a="logreg", b="knn5", replicates=500)
    assert time.perf_counter() - start < 10 and len(big.table) == 2


def test_subgroup_metrics_equal_sklearn_per_subgroup(swept: tuple[Path, Path]) -> None:
    store, out = swept
    sg = subgroup_metrics(results=out, group_by="sex,site", store=store, n=20, replicates=30)
    t = sg.table
    folder = out.with_name(out.name + ".predictions")
    preds = pd.concat([pd.read_parquet(p) for p in folder.glob("[!t]*.parquet")])
    meta = pd.read_csv(store.parent / "t.csv").set_index("id")
    checked = 0
    for row in t[t.task != "all"].itertuples():
        p = preds[(preds.feature == row.feature) & (preds.task == row.task) & (preds.n == 20)]
        test = pd.read_parquet(folder / "tests" / f"{p.test.iloc[0]}.parquet")
        sub = (meta.loc[test["id"], row.group_by].astype(str) == row.group).to_numpy()
        y = test["y"].to_numpy()
        K = int(p.n_classes.iloc[0])
        scores = [np.asarray(s).reshape(len(y), K) if K > 2 else np.asarray(s) for s in p.scores]
        ref = np.mean([_sk_metric(y[sub], s[sub], "auroc") for s in scores])
        assert row.score == pytest.approx(ref, abs=1e-12) and row.n_test == sub.sum()
        assert row.lower <= row.score <= row.upper
        checked += 1
    assert checked == 2 * 2 * (2 + 3)
    per_task = t[t.task != "all"].groupby(["feature", "group_by", "group"])["score"].mean()
    pooled = t[t.task == "all"].set_index(["feature", "group_by", "group"])["score"]
    pd.testing.assert_series_equal(pooled.sort_index(), per_task.sort_index(), check_names=False)


def test_compare_within_subgroups(swept: tuple[Path, Path]) -> None:
    store, out = swept
    c = compare(results=out, a="enc_a/last/cls", b="enc_b/last/cls", n=100, replicates=20,
                group_by="sex", store=store)  # fmt: skip
    assert set(zip(c.table.task, c.table.group, strict=True)) == {
        (t, g) for t in ("finding", "tissue", "all") for g in ("F", "M")
    }


# --- errors -----------------------------------------------------------------------------------


def test_bad_input_is_one_line_with_exit_code_2(swept: tuple[Path, Path], tmp_path: Path) -> None:
    store, out = swept
    other = tmp_path / "plain.parquet"
    sweep(store=str(store), out=str(other), features="enc_a/*", tasks="finding", n="20", seeds=1,
          progress=False)  # fmt: skip
    cases = [
        ([str(other), "--a", "x", "--b", "y"], "rerun the same `fmprobe sweep` command with --save-predictions"),
        ([str(out), "--a", "enc_a/last/clss", "--b", "enc_b/last/cls", "--n", "20"], "did you mean 'enc_a/last/cls'"),
        ([str(out), "--a", "enc_a/last/cls", "--b", "enc_b/last/cls", "--n", "30"], "--n 30 is not in the results of both arms; available: 20, 100"),
        ([str(out), "--a", "enc_a/last/cls", "--b", "enc_b/last/cls"], "several label counts (20, 100); pick one with --n"),
        ([str(out), "--a", "enc_a/last/cls", "--b", "enc_b/last/cls", "--n", "20", "--group-by", "sex"], "--group-by needs --store"),
        ([str(out), "--a", "enc_a/last/cls", "--b", "enc_b/last/cls", "--n", "20", "--group-by", "sexx", "--store", str(store)], "did you mean 'sex'"),
        ([str(tmp_path / "none.parquet"), "--a", "x", "--b", "y"], "does not exist"),
    ]  # fmt: skip
    for args, message in cases:
        r = CliRunner().invoke(main, ["compare", *args])
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fmprobe: error:"), r.stderr
        assert message in lines[0], lines[0]
    with pytest.raises(UsageError, match="at least 10"):
        compare(results=out, a="enc_a/last/cls", b="enc_b/last/cls", n=20, replicates=3)


def test_damaged_or_foreign_files_are_one_line_with_exit_code_2(
    swept: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    _, out = swept
    copy = tmp_path / "r.parquet"
    shutil.copy(out, copy)
    shutil.copytree(out.with_name(out.name + ".predictions"), tmp_path / "r.parquet.predictions")
    args = ["--a", "enc_a/last/cls", "--b", "enc_b/last/cls", "--n", "100"]
    (tmp_path / "table.csv").write_text("feature,task\nx,y\n")
    (tmp_path / "half.parquet").write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])
    for bad in ("table.csv", "half.parquet"):
        r = CliRunner().invoke(main, ["compare", str(tmp_path / bad), *args])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1, r.output
        assert "is not a readable Parquet file" in lines[0] and bad in lines[0]
    part = sorted((tmp_path / "r.parquet.predictions").glob("[!t]*.parquet"))[0]
    part.write_bytes(b"PAR1 not really")
    r = CliRunner().invoke(main, ["compare", str(copy), *args])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert part.name in lines[0] and "--save-predictions" in lines[0]


def test_pool_deltas_average_the_defined_tasks_per_replicate() -> None:
    a, b = np.array([0.1, -0.2, 0.3]), np.array([0.3, 0.0, 0.1])
    undefined = np.full(3, np.nan)  # e.g. a subgroup whose test rows hold one class
    np.testing.assert_allclose(pool_deltas([a, undefined, b]), [0.2, -0.1, 0.2])
    np.testing.assert_allclose(pool_deltas([a, b], "mixture"), np.concatenate([a, b]))
    assert np.isnan(pool_deltas([undefined])).all()


def test_a_nan_score_makes_the_seed_nan_in_every_class() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 40)
    p = rng.dirichlet(np.ones(3), size=(2, 40))
    p[1, 7, 2] = np.nan  # seed 1: one NaN in class 2's column
    idx = np.concatenate([np.arange(40)[None], stratified_indices(y, replicates=5, rng=rng)])
    got = metric_replicates(p, y, idx)
    assert np.isnan(got[1]).all()  # not the mean of classes 0 and 1
    np.testing.assert_allclose(
        got[0], [_sk_metric(y[i], p[0][i], "auroc") for i in idx], atol=1e-12
    )


def test_cli_json_and_table(swept: tuple[Path, Path]) -> None:
    _, out = swept
    args = ["compare", str(out), "--a", "enc_a/last/cls", "--b", "enc_b/last/cls", "--n", "100",
            "--replicates", "50", "--metric", "auprc"]  # fmt: skip
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [x["task"] for x in rows] == ["finding", "tissue", "all"]
    for x in rows:
        assert {"task", "metric", "difference", "lower", "upper", "p_value"} <= set(x)
        assert x["metric"] == "auprc" and x["lower"] <= x["difference"] <= x["upper"]
    assert rows[-1]["pool"] == "mean" and rows[-1]["tasks"] == 2 and rows[0]["pool"] == ""
    text = CliRunner().invoke(main, args).stdout
    assert (
        "95% CI" in text and "all: the mean over the tasks of each replicate's difference" in text
    )
