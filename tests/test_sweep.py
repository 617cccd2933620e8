"""The sweep: splits and nested subsets, results against scikit-learn fitted on the same rows,
resume after kill -9, multi-label masking, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

from fmprobe.errors import UsageError
from fmprobe.probes.folds import fold_masks
from fmprobe.store import import_features, open_store
from fmprobe.sweep import ConvergenceWarning, sweep
from fmprobe.sweep.splits import make_split, nested_order
from fmprobe.sweep.tasks import load_tasks

# --- splits and subsets ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_nested_order_prefixes_are_nested_stratified_and_hold_every_class(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=300, p=[0.7, 0.2, 0.1])
    order = nested_order(y, seed=seed)
    assert sorted(order.tolist()) == list(range(300))
    assert set(y[order[:3]]) == {0, 1, 2}
    for n in (10, 20, 50, 100, 200):
        counts = np.bincount(y[order[:n]], minlength=3)
        expected = n * np.bincount(y, minlength=3) / 300
        assert np.all(np.abs(counts - expected) <= 2), (n, counts, expected)
    assert np.array_equal(order, nested_order(y, seed=seed))
    assert not np.array_equal(order, nested_order(y, seed=seed + 100))


def test_stratified_and_grouped_splits() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(2, size=1000, p=[0.8, 0.2])
    s = make_split(n_rows=1000, stratify=y, test_frac=0.25, seed=0)
    assert len(np.intersect1d(s.train, s.test)) == 0 and len(s.train) + len(s.test) == 1000
    assert abs(len(s.test) - 250) <= 2
    assert abs(y[s.test].mean() - y.mean()) < 0.02
    patients = rng.integers(0, 200, 1000)
    g = make_split(n_rows=1000, stratify=y, groups=patients, test_frac=0.25, seed=0)
    assert not set(patients[g.train]) & set(patients[g.test])
    assert 0.18 < len(g.test) / 1000 < 0.32
    col = np.where(np.arange(1000) < 700, "train", "test")
    c = make_split(n_rows=1000, split_values=col, split_col="split")
    assert np.array_equal(c.test, np.arange(700, 1000))
    with pytest.raises(UsageError, match="'train', 'test' or 'val'"):
        make_split(n_rows=3, split_values=np.array(["train", "dev", "test"]), split_col="split")
    v = make_split(
        n_rows=4, split_values=np.array(["train", "val", "test", "train"]), split_col="s"
    )
    assert list(v.train) == [0, 3] and list(v.test) == [2]  # val rows: neither side


def test_fold_masks_partition_the_rows() -> None:
    y = np.array([0] * 12 + [1] * 8)
    m = fold_masks(y, k=4, seed=0)
    assert m.shape == (4, 20) and np.array_equal(m.sum(0), np.ones(20))
    assert all(y[f].sum() == 2 for f in m)


# --- a store made of a known problem ----------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("sweep")
    N, D = 400, 24
    X = rng.normal(size=(N, D)).astype(np.float32)
    finding = (X[:, 0] + X[:, 1] + rng.normal(size=N) > 0.8).astype(int)
    tissue = np.array(["tumor", "stroma", "fat"])[np.argmax(X[:, 2:5] + rng.normal(size=(N, 3)), 1)]
    table = pd.DataFrame({
        "id": [f"case{i:03d}" for i in range(N)],
        "finding": finding,
        "tissue": tissue,
        "patient": rng.integers(0, 150, N),
        "constant": 1,
    })  # fmt: skip
    np.save(root / "a.npy", X)
    np.save(root / "b.npy", X[:, :12] + rng.normal(size=(N, 12)).astype(np.float32))
    table.to_csv(root / "t.csv", index=False)
    import_features(
        root / "s.zarr", name="enc_a/last/cls", features=root / "a.npy", labels=root / "t.csv"
    )
    import_features(
        root / "s.zarr", name="enc_b/last/cls", features=root / "b.npy", labels=root / "t.csv"
    )
    return root / "s.zarr"


def _near_tie_share(positive: np.ndarray, s: np.ndarray) -> float:
    """Share of (positive, negative) test pairs whose exact-optimum scores lie within 1e-4 (of
    the score scale) of each other: pairs that any solver tolerance may order either way (on
    a 100-row test set one such pair moves the AUROC by ~5e-4)."""
    eps = 1e-4 * max(1.0, float(np.abs(s).max()))
    pos, neg = s[positive], s[~positive]
    return float((np.abs(pos[:, None] - neg[None, :]) <= eps).sum() / (len(pos) * len(neg)))


def test_results_equal_sklearn_on_the_same_rows(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    sweep(store=str(store), out=str(out), features="enc_a/*", tasks="finding,tissue",
          n="10,40,all", seeds=3, C=0.5, progress=False)  # fmt: skip
    res = pd.read_parquet(out)
    assert len(res) == 2 * 3 * 3
    required = ["feature", "task", "probe", "sampler", "n", "seed", "n_pos", "auroc", "auprc",
                "balanced_accuracy", "fit_seconds"]  # fmt: skip
    assert set(required) <= set(res.columns)
    fs = open_store(store)
    X = fs.read_feature("enc_a/last/cls").astype(np.float64)
    tasks, _ = load_tasks(fs, ["finding", "tissue"])
    split = make_split(n_rows=fs.n, stratify=tasks[0].codes, test_frac=0.25, seed=0)
    for task in tasks:
        y = task.codes
        pool, test = split.train, split.test
        for row in res[res.task == task.name].itertuples():
            order = nested_order(y[pool], seed=row.seed)
            idx = pool[order[: row.n]]
            assert row.n == len(idx) and (
                row.n_pos == (y[idx] == 1).sum() if task.n_classes == 2 else True
            )
            ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=100_000).fit(X[idx], y[idx])
            if task.n_classes == 2:
                s = ref.decision_function(X[test])
                slack = _near_tie_share(y[test] == 1, s)
                assert abs(row.auroc - roc_auc_score(y[test], s)) <= 1e-4 + slack
                ap_slack = 1 / (y[test] == 1).sum() if slack else 0.0
                assert abs(row.auprc - average_precision_score(y[test], s)) <= 1e-4 + ap_slack
            else:
                p = ref.predict_proba(X[test])
                slack = np.mean([_near_tie_share(y[test] == k, p[:, k]) for k in range(p.shape[1])])
                assert abs(row.auroc - roc_auc_score(y[test], p, multi_class="ovr")) <= 1e-4 + slack
            # float32 features: a test row sitting on a decision boundary may flip; allow one
            one_flip = 1 / (task.n_classes * np.bincount(y[test]).min())
            assert (
                abs(row.balanced_accuracy - balanced_accuracy_score(y[test], ref.predict(X[test])))
                <= one_flip + 1e-9
            )


def test_training_metrics_equal_sklearn_on_the_same_subsets(store: Path, tmp_path: Path) -> None:
    """train_auroc / train_auprc / train_logloss: the fitted probe on its own n labels
    (resubstitution for logreg and ridge; leave-one-out for kNN, against a brute-force loop)."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.metrics import log_loss

    out = tmp_path / "r.parquet"
    sweep(store=str(store), out=str(out), features="enc_a/last/cls", tasks="finding,tissue",
          probe="logreg,ridge,knn", knn_k="3,30", n="25,80", seeds=2, C=0.5,
          progress=False)  # fmt: skip
    res = pd.read_parquet(out)
    fs = open_store(store)
    X = fs.read_feature("enc_a/last/cls").astype(np.float64)
    tasks, _ = load_tasks(fs, ["finding", "tissue"])
    split = make_split(n_rows=fs.n, stratify=tasks[0].codes, test_frac=0.25, seed=0)
    assert set(res[(res.probe == "knn30") & (res.n == 25)].status) == {"k_exceeds_n"}
    for task in tasks:
        y = task.codes
        for row in res[(res.task == task.name) & (res.status == "ok")].itertuples():
            idx = split.train[nested_order(y[split.train], seed=row.seed)[: row.n]]
            Xi, yi = X[idx], y[idx]
            if row.probe == "logreg":
                ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=100_000).fit(Xi, yi)
                p = ref.predict_proba(Xi)
                assert abs(row.train_logloss - log_loss(yi, p)) <= 1e-4 * max(1, log_loss(yi, p))
                s = p[:, 1] if task.n_classes == 2 else p
            elif row.probe == "ridge":
                s = RidgeClassifier(alpha=1 / 0.5).fit(Xi, yi).decision_function(Xi)
                assert np.isnan(row.train_logloss)
            else:
                k = int(row.probe[3:])
                Xn = Xi / np.linalg.norm(Xi, axis=1, keepdims=True)
                shares = np.zeros((len(yi), task.n_classes))
                for a in range(len(yi)):  # brute force: the k most similar other rows
                    sims = [(-(Xn[a] @ Xn[b]), b) for b in range(len(yi)) if b != a]
                    nearest = [b for _, b in sorted(sims)[:k]]
                    shares[a] = np.bincount(yi[nearest], minlength=task.n_classes) / k
                s = shares[:, 1] if task.n_classes == 2 else shares
                clipped = np.clip(shares, np.finfo(float).eps, 1 - np.finfo(float).eps)
                clipped /= clipped.sum(1, keepdims=True)
                assert np.isclose(
                    row.train_logloss, -np.mean(np.log(clipped[np.arange(len(yi)), yi]))
                )
            ref_auc = (
                roc_auc_score(yi, s)
                if task.n_classes == 2  # macro one-vs-rest, also for ridge's decision values
                else np.mean([roc_auc_score(yi == c, s[:, c]) for c in range(task.n_classes)])
            )
            assert abs(row.train_auroc - ref_auc) <= 1e-4, (row.probe, row.n, row.seed)
            if task.n_classes == 2:
                assert abs(row.train_auprc - average_precision_score(yi, s)) <= 1e-4


def test_n_larger_than_the_pool_and_other_probes(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    sweep(store=str(store), out=str(out), features="enc_b/last/cls", tasks="finding",
          probe="logreg,ridge,knn", knn_k="1,5", n="2,1,5000", seeds=2, progress=False)  # fmt: skip
    res = pd.read_parquet(out)
    assert set(res.probe) == {"logreg", "ridge", "knn1", "knn5"}
    assert (
        set(res[res.n == 5000].status) == {"n_exceeds_pool"}
        and res[res.n == 5000].auroc.isna().all()
    )
    assert set(res[res.n == 1].status) == {"n_below_classes"}
    ok = res[(res.n == 2) & (res.probe != "knn5")]
    assert (ok.status == "ok").all() and (ok.n_pos == 1).all()
    five = res[(res.n == 2) & (res.probe == "knn5")]  # 5 neighbours of 2 labels: no probe
    assert set(five.status) == {"k_exceeds_n"} and five.auroc.isna().all()


def _cv_reference(X: np.ndarray, y: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """scikit-learn's grid search on fmprobe's folds: the mean validation AUROC of each C of
    logspace(-4, 4, 10)."""
    from fmprobe.probes.folds import fold_masks

    k = min(folds, np.bincount(y).min())
    masks = fold_masks(y, k=k, seed=seed)
    means = []
    for c in np.logspace(-4, 4, 10):
        scores = []
        for held in masks:
            m = LogisticRegression(C=c, tol=1e-10, max_iter=100_000).fit(X[~held], y[~held])
            scores.append(roc_auc_score(y[held], m.decision_function(X[held])))
        means.append(np.mean(scores))
    return np.asarray(means)


def test_C_auto_equals_sklearn_grid_search_on_the_same_folds(store: Path, tmp_path: Path) -> None:
    """Each row's C is what scikit-learn's grid search picks on the same subset and folds (up
    to near ties of the mean validation AUROC), and it does not depend on the other seeds of
    the sweep: seed 0 alone gives seed 0's row of a 5-seed sweep."""
    out1, out5 = tmp_path / "one.parquet", tmp_path / "five.parquet"
    args = dict(store=str(store), features="enc_a/last/cls", tasks="finding", n="12,60", C="auto",
                folds=3, progress=False)  # fmt: skip
    sweep(out=str(out5), seeds=5, **args)  # type: ignore[arg-type]
    sweep(out=str(out1), seeds=1, **args)  # type: ignore[arg-type]
    five, one = pd.read_parquet(out5), pd.read_parquet(out1)
    cols = ["n", "seed", "C", "C_selection", "auroc"]
    pd.testing.assert_frame_equal(
        five[five.seed == 0][cols].reset_index(drop=True), one[cols].reset_index(drop=True)
    )
    fs = open_store(store)
    X = fs.read_feature("enc_a/last/cls").astype(np.float64)
    tasks, _ = load_tasks(fs, ["finding"])
    y = tasks[0].codes
    split = make_split(n_rows=fs.n, stratify=y, test_frac=0.25, seed=0)
    grid = np.logspace(-4, 4, 10)
    unique = 0
    for row in five.itertuples():
        idx = split.train[nested_order(y[split.train], seed=row.seed)[: row.n]]
        if np.bincount(y[idx]).min() < 2:
            assert row.C_selection == "fallback" and row.C == 1.0
            continue
        means = _cv_reference(X[idx], y[idx], folds=3, seed=row.seed)
        best = np.flatnonzero(means >= means.max() - 1e-9)  # the grid points that tie for best
        assert row.C_selection == "cv"
        assert np.isclose(grid[best], row.C).any(), (row.n, row.seed, row.C, grid[best])
        # sklearn's choice among exact ties is the smallest C, as fmprobe's
        assert np.isclose(grid[best[0]], row.C) or means[best].ptp() > 0, (row.n, row.seed)
        unique += len(best) == 1
    assert unique >= 3  # the test has rows where the grid has one clear winner


def test_folds_below_two_are_refused(store: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="at least 2 folds"):
        sweep(store=str(store), out=str(tmp_path / "r.parquet"), tasks="finding", C="auto", folds=1,
              progress=False)  # fmt: skip


@pytest.mark.parametrize("scaling", ["standardize", "l2_normalize"])
def test_standardize_and_l2_normalize_equal_sklearn_pipelines(
    store: Path, tmp_path: Path, scaling: str
) -> None:
    """``--standardize`` = StandardScaler fitted on each subsample, ``--l2-normalize`` =
    Normalizer, each before scikit-learn's LogisticRegression at the same C."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    out = tmp_path / "r.parquet"
    sweep(store=str(store), out=str(out), features="enc_a/last/cls", tasks="finding", n="20,80",
          seeds=3, C=0.7, progress=False, **{scaling: True})  # type: ignore[arg-type]  # fmt: skip
    res = pd.read_parquet(out)
    assert res[scaling].all()
    fs = open_store(store)
    X = fs.read_feature("enc_a/last/cls").astype(np.float64)
    tasks, _ = load_tasks(fs, ["finding"])
    y = tasks[0].codes
    split = make_split(n_rows=fs.n, stratify=y, test_frac=0.25, seed=0)
    scaler = StandardScaler() if scaling == "standardize" else Normalizer()
    for row in res.itertuples():
        idx = split.train[nested_order(y[split.train], seed=row.seed)[: row.n]]
        ref = make_pipeline(scaler, LogisticRegression(C=0.7, tol=1e-10, max_iter=100_000))
        s = ref.fit(X[idx], y[idx]).decision_function(X[split.test])
        slack = _near_tie_share(y[split.test] == 1, s)
        assert abs(row.auroc - roc_auc_score(y[split.test], s)) <= 1e-4 + slack


def test_probes_without_a_certified_optimum_give_one_aggregated_warning(
    store: Path, tmp_path: Path
) -> None:
    match = r"\d+ of \d+ probes have no certified optimum after max_iter=2"
    with pytest.warns(ConvergenceWarning, match=match) as rec:
        report = sweep(store=str(store), out=str(tmp_path / "r.parquet"), features="enc_a/last/cls",
                       tasks="tissue", n="200", seeds=3, C=100.0, max_iter=2, progress=False)  # fmt: skip
    assert len(rec) == 1
    res = pd.read_parquet(tmp_path / "r.parquet")
    assert report.not_converged == int((~res.converged).sum()) > 0


def test_multilabel_missing_labels_are_masked_per_task(store: Path, tmp_path: Path) -> None:
    fs = open_store(store)
    ids = fs.ids
    rng = np.random.default_rng(1)
    extra = pd.DataFrame({"id": ids, "effusion": rng.integers(0, 2, len(ids)).astype(float),
                          "nodule": rng.integers(0, 2, len(ids)).astype(float)})  # fmt: skip
    extra.loc[::3, "effusion"] = np.nan
    extra.loc[1::5, "nodule"] = np.nan
    extra.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "r.parquet"
    sweep(store=str(store), out=str(out), features="enc_a/last/cls", tasks="effusion,nodule",
          labels=str(tmp_path / "labels.csv"), n="all", seeds=1, progress=False)  # fmt: skip
    res = pd.read_parquet(out).set_index("task")
    split = make_split(
        n_rows=len(ids), stratify=np.where(extra.effusion.isna(), -1, extra.effusion), seed=0
    )
    for task in ("effusion", "nodule"):
        labelled = extra[task].notna().to_numpy()
        assert res.loc[task, "n"] == labelled[split.train].sum()
        assert res.loc[task, "n_test"] == labelled[split.test].sum()


def _sweep_cmd(store: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "fmprobe.cli", "sweep", "--store", str(store), "--out", str(out),
            "--features", "enc_a/last/cls", "--tasks", "finding", "--n", "10,20,50,100,all",
            "--seeds", "256", "--quiet"]  # fmt: skip


def test_kill_9_then_rerun_equals_an_uninterrupted_run(store: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full.parquet", tmp_path / "killed.parquet"
    subprocess.run(_sweep_cmd(store, full), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        _sweep_cmd(store, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    parts = tmp_path / "killed.parquet.parts"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 2:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_parts = len(list(parts.glob("*.parquet")))
    assert 0 < n_parts < 40 and not killed.exists(), "the kill should land mid-run"
    subprocess.run(_sweep_cmd(store, killed), check=True, env=env, capture_output=True)
    a = pd.read_parquet(full).drop(columns="fit_seconds")
    b = pd.read_parquet(killed).drop(columns="fit_seconds")
    pd.testing.assert_frame_equal(a, b)


def test_config_equals_flags(store: Path, tmp_path: Path) -> None:
    import yaml

    cfg = {"store": str(store), "features": ["enc_b/last/cls"], "tasks": "finding", "n": [10, "all"],
           "seeds": 2, "C": 0.3, "quiet": True}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run_cli("sweep", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "a.parquet"),
            check=True)  # fmt: skip
    run_cli("sweep", "--store", str(store), "--features", "enc_b/last/cls", "--tasks", "finding", "--n", "10,all",
            "--seeds", "2", "--C", "0.3", "--quiet", "--out", str(tmp_path / "b.parquet"), check=True)  # fmt: skip
    a = pd.read_parquet(tmp_path / "a.parquet").drop(columns="fit_seconds")
    b = pd.read_parquet(tmp_path / "b.parquet").drop(columns="fit_seconds")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--features", "enc_c/*"], "matches no feature"),
        (["--tasks", "findng"], "did you mean 'finding'"),
        (["--tasks", "constant"], "a task needs at least two"),
        (["--n", "0"], "at least 1"),
        (["--n", "ten"], "label counts"),
        (["--probe", "svm"], "valid probes"),
        (["--C", "-1"], "positive"),
        (["--group-col", "patiant"], "did you mean 'patient'"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(
    store: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    proc = run_cli("sweep", "--store", str(store), "--out", str(tmp_path / "r.parquet"), "--tasks",
                   "finding", "--quiet", *args)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr


def test_nested_order_head_equals_the_full_orderings_prefix() -> None:
    rng = np.random.default_rng(5)
    y = rng.choice(4, size=5000, p=[0.5, 0.3, 0.15, 0.05])
    for seed in range(3):
        full = nested_order(y, seed=seed)
        for n in (1, 4, 37, 1000, 4999):
            np.testing.assert_array_equal(nested_order(y, seed=seed, n_max=n), full[:n])


def test_orderings_kept_for_the_process_equal_fresh_ones(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each seed's nested ordering is computed once per process and task pool and reused by
    every feature: the kept orderings equal ``nested_order`` computed afresh, and a sweep gives
    the same table with them kept, rebuilt, or evicted after every few (a tiny cache)."""
    from fmprobe.sweep import subsets

    labels = np.random.default_rng(0).integers(0, 3, size=500)
    subsets.clear_caches()
    first = subsets.nested_orders(labels, [0, 1, 2], 200)
    again = subsets.nested_orders(labels, [0, 1, 2], 200)
    for seed in (0, 1, 2):
        assert again[seed] is first[seed]  # kept, not recomputed
        np.testing.assert_array_equal(first[seed], nested_order(labels, seed=seed, n_max=200))
        assert not first[seed].flags.writeable
    args = dict(store=str(store), features="enc_*", tasks="finding", n="10,40", seeds=3,
                progress=False)  # fmt: skip
    subsets.clear_caches()
    sweep(out=str(tmp_path / "a.parquet"), **args)  # type: ignore[arg-type]
    sweep(out=str(tmp_path / "b.parquet"), **args)  # type: ignore[arg-type]
    monkeypatch.setattr(subsets, "ORDERS_CACHE_ELEMENTS", 50)
    subsets.clear_caches()
    sweep(out=str(tmp_path / "c.parquet"), **args)  # type: ignore[arg-type]
    a = pd.read_parquet(tmp_path / "a.parquet").drop(columns="fit_seconds")
    for other in ("b", "c"):
        b = pd.read_parquet(tmp_path / f"{other}.parquet").drop(columns="fit_seconds")
        pd.testing.assert_frame_equal(a, b)


def test_out_of_memory_halves_the_batch_and_gives_the_same_results(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fmprobe.sweep import units

    args = dict(
        store=str(store),
        features="enc_a/last/cls",
        tasks="finding",
        n="10,40",
        seeds=8,
        progress=False,
    )
    sweep(out=str(tmp_path / "a.parquet"), **args)  # type: ignore[arg-type]
    real = units.fit_score_batch
    sizes: list[int] = []

    def small_device(Xb: torch.Tensor, *a: object, **k: object) -> object:
        sizes.append(Xb.shape[0])
        if Xb.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: batch too large for the device")
        return real(Xb, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(units, "fit_score_batch", small_device)
    sweep(out=str(tmp_path / "b.parquet"), **args)  # type: ignore[arg-type]
    assert max(sizes) == 8 and sizes[-1] <= 2
    a = pd.read_parquet(tmp_path / "a.parquet").drop(columns="fit_seconds")
    b = pd.read_parquet(tmp_path / "b.parquet").drop(columns="fit_seconds")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-9)


# --- cold-start samplers ------------------------------------------------------------------------


def test_cold_start_samplers_train_on_the_selected_rows(store: Path, tmp_path: Path) -> None:
    """With ``--sampler kmeans,coreset`` each training set is what ``select_indices`` picks from
    the pool; a multiclass subset missing classes is fitted on the classes it has (sklearn on
    the same rows, absent classes scored 0), a one-class binary subset scores a constant."""
    from fmprobe.select import select_indices

    out = tmp_path / "r.parquet"
    sweep(store=str(store), out=str(out), features="enc_a/*", tasks="finding,tissue",
          sampler="random,kmeans,coreset", n="2,3,30", seeds=2, C=0.5, progress=False)  # fmt: skip
    res = pd.read_parquet(out)
    assert set(res.sampler) == {"random", "kmeans", "coreset"}
    assert len(res) == 2 * 3 * 3 * 2
    fs = open_store(store)
    X32 = fs.read_feature("enc_a/last/cls")
    X = X32.astype(np.float64)
    tasks, _ = load_tasks(fs, ["finding", "tissue"])
    split = make_split(n_rows=fs.n, stratify=tasks[0].codes, test_frac=0.25, seed=0)
    pool, test = split.train, split.test
    statuses = set()
    for task in tasks:
        y = task.codes
        K = task.n_classes
        for row in res[(res.task == task.name) & (res.sampler != "random")].itertuples():
            sel = select_indices(X32[pool], budget=row.n, strategy=row.sampler, seed=row.seed)
            idx = pool[sel.indices]
            present = np.unique(y[idx])
            statuses.add(row.status)
            if len(present) == 1:
                assert row.status == "single_class"
                if K == 2:
                    assert row.auroc == 0.5
                continue
            assert row.status == ("ok" if len(present) == K else "classes_missing")
            ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=100_000).fit(X[idx], y[idx])
            if K == 2:
                assert row.n_pos == (y[idx] == 1).sum()
                assert (
                    abs(row.auroc - roc_auc_score(y[test], ref.decision_function(X[test]))) <= 1e-4
                )
            else:
                p = np.zeros((len(test), K))
                p[:, present] = ref.predict_proba(X[test])
                assert abs(row.auroc - roc_auc_score(y[test], p, multi_class="ovr")) <= 1e-4
    assert "classes_missing" in statuses or "single_class" in statuses
    with pytest.raises(UsageError, match="did you mean 'kmeans'"):
        sweep(store=str(store), out=str(tmp_path / "x.parquet"), sampler="kmean", progress=False)


def test_saved_predictions_reproduce_the_metrics_and_fill_in_on_resume(
    store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.parquet"
    kw = dict(store=str(store), out=str(out), features="enc_a/*", tasks="finding,tissue",
              n="10,all", seeds=2, C=0.5, progress=False)  # fmt: skip
    sweep(**kw)  # type: ignore[arg-type]
    assert not (tmp_path / "r.parquet.predictions").exists()
    report = sweep(**kw, save_predictions=True)  # type: ignore[arg-type]
    assert report.probes_fitted == 2 * 2 * 2  # the units without predictions ran again
    res = pd.read_parquet(out)
    folder = tmp_path / "r.parquet.predictions"
    duckdb = pytest.importorskip("duckdb")
    # one glob, one table (the test tables are in tests/): as users read it with duckdb
    preds = duckdb.sql(f"select * from read_parquet('{folder}/*.parquet')").df()
    assert len(preds) == len(res)
    assert len(duckdb.sql(f"select * from read_parquet('{folder}/tests/*.parquet')").df()) > 0
    fs = open_store(store)
    for row in preds.itertuples():
        test = pd.read_parquet(folder / "tests" / f"{row.test}.parquet")
        assert list(test["id"]) == list(fs.ids[test["row"].to_numpy()])
        K = row.n_classes
        s = np.asarray(row.scores).reshape(len(test), -1) if K > 2 else np.asarray(row.scores)
        ref = res[(res.task == row.task) & (res.n == row.n) & (res.seed == row.seed)].iloc[0]
        y = test["y"].to_numpy()
        auc = roc_auc_score(y, s, multi_class="ovr") if K > 2 else roc_auc_score(y, s)
        assert abs(auc - ref.auroc) < 1e-9


def test_sklearn_backend_gives_the_torch_engines_results(store: Path, tmp_path: Path) -> None:
    kw = dict(store=str(store), features="enc_a/*", tasks="finding,tissue", n="10,40", seeds=3,
              C=0.5, progress=False)  # fmt: skip
    with warnings.catch_warnings():  # near-separable subsets at C=1e4 may stop at max_iter
        warnings.simplefilter("ignore", ConvergenceWarning)
        sweep(out=str(tmp_path / "t.parquet"), **kw)  # type: ignore[arg-type]
        sweep(out=str(tmp_path / "s.parquet"), backend="sklearn", **kw)  # type: ignore[arg-type]
    t, s = pd.read_parquet(tmp_path / "t.parquet"), pd.read_parquet(tmp_path / "s.parquet")
    ok = s["converged"].to_numpy(bool) & t["converged"].to_numpy(bool)
    assert ok.sum() >= len(s) // 2
    np.testing.assert_allclose(t["auroc"][ok], s["auroc"][ok], atol=1e-4)


def test_test_where_trains_on_the_rest_and_group_by_writes_subgroups(
    store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.parquet"
    report = sweep(store=str(store), out=str(out), features="enc_a/*", tasks="finding", n="20",
                   seeds=2, C=0.5, test_where="tissue=fat", group_by="patient_half",
                   labels=str(_with_half(store, tmp_path)), progress=False)  # fmt: skip
    res = pd.read_parquet(out)
    fs = open_store(store)
    table = fs.samples()
    fat = (table["tissue"] == "fat").to_numpy()
    assert (res["n_test"] == fat.sum()).all() and (res["split"] == "where:tissue=fat").all()
    X = fs.read_feature("enc_a/last/cls").astype(np.float64)
    y = table["finding"].to_numpy()
    pool, test = np.flatnonzero(~fat), np.flatnonzero(fat)
    for row in res.itertuples():
        idx = pool[nested_order(y[pool], seed=row.seed)[: row.n]]
        ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=100_000).fit(X[idx], y[idx])
        assert abs(row.auroc - roc_auc_score(y[test], ref.decision_function(X[test]))) <= 1e-4
    sub = pd.read_parquet(report.subgroups)
    assert set(sub["group"].astype(str)) >= {"low", "high"}
    with pytest.raises(UsageError, match="no row has tissue"):
        sweep(store=str(store), out=str(tmp_path / "x.parquet"), tasks="finding", test_where="tissue=bone",
              progress=False)  # fmt: skip


def _with_half(store: Path, tmp_path: Path) -> Path:
    t = open_store(store).samples()
    t["patient_half"] = np.where(t["patient"] < 75, "low", "high")
    t[["id", "finding", "patient_half"]].to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


def test_attnpool_probe_in_a_sweep_equals_the_engine_called_directly(tmp_path: Path) -> None:
    """`--probe attnpool` on stored patch tokens: the rows' metrics are sklearn's on the scores
    that fit_predict_attnpool gives for the same subsets, and a rerun gives the same rows."""
    from fmprobe.embed import embed
    from fmprobe.probes.attnpool import AttnPoolConfig, fit_predict_attnpool

    store = tmp_path / "tok.zarr"
    embed(data="builtin:digits", model="timm:vit_tiny_patch16_224", random_init=True,
          model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 16,
                        "num_heads": 2}, tokens=True, store=str(store), num_workers=0,
          progress=False)  # fmt: skip
    settings = {"epochs": 3, "min_steps": 0, "width": 16, "heads": 2, "batch_size": 64}
    kw = dict(store=str(store), features="timm-*", probe="attnpool", tasks="label", n="30,100",
              seeds=2, attnpool=settings, progress=False)  # fmt: skip
    sweep(out=str(tmp_path / "a.parquet"), **kw)  # type: ignore[arg-type]
    res = pd.read_parquet(tmp_path / "a.parquet")
    assert set(res["probe"]) == {"attnpool"} and (res["status"] == "ok").all()
    feature = res["feature"].iloc[0]
    assert feature.endswith("/attnpool") and "block0+block1" in feature
    fs = open_store(store)
    tasks, _ = load_tasks(fs, ["label"])
    y = tasks[0].codes
    split = make_split(n_rows=fs.n, stratify=y, test_frac=0.25, seed=0)
    tokens = [fs.root[f"timm-vit_tiny_patch16_224/block{i}/tokens"] for i in (0, 1)]
    for n in (30, 100):
        idx = np.stack([nested_order(y[split.train], seed=s, n_max=n)[:n] for s in (0, 1)])
        scores, _ = fit_predict_attnpool(tokens=tokens, train_rows=split.train[idx],
                                         y_train=y[split.train][idx], test_rows=split.test,
                                         n_classes=10, seeds=[0, 1],
                                         config=AttnPoolConfig(**settings))  # fmt: skip
        for s in (0, 1):
            row = res[(res.n == n) & (res.seed == s)].iloc[0]
            ref = roc_auc_score(y[split.test], scores[s], multi_class="ovr")
            assert abs(row.auroc - ref) < 1e-9
    sweep(out=str(tmp_path / "b.parquet"), **kw)  # type: ignore[arg-type]
    a = pd.read_parquet(tmp_path / "a.parquet").drop(columns="fit_seconds")
    b = pd.read_parquet(tmp_path / "b.parquet").drop(columns="fit_seconds")
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(UsageError, match="sweep of its own"):
        sweep(store=str(store), out=str(tmp_path / "c.parquet"), probe="attnpool,logreg",
              progress=False)  # fmt: skip


def test_label_policies_reach_the_results_and_val_rows_are_in_neither_split(
    tmp_path: Path,
) -> None:
    """A CheXpert-style column (1, 0, −1, blank) under --uncertain zeros --blank negative: the
    probe trains on the mapped labels (checked against the mapping done by hand), the policy is
    recorded in every row, and a split column's ``val`` rows are used by neither side."""
    rng = np.random.default_rng(3)
    N = 240
    X = rng.normal(size=(N, 6)).astype(np.float32)
    raw = np.where(X[:, 0] > 0.3, "1", "0").astype(object)
    raw[rng.choice(N, 30, replace=False)] = "-1"
    raw[rng.choice(N, 20, replace=False)] = ""
    split = np.array(["train"] * 150 + ["val"] * 30 + ["test"] * 60)
    pd.DataFrame({"id": [f"s{i}" for i in range(N)], "finding": raw, "split": split}).to_csv(
        tmp_path / "t.csv", index=False
    )
    np.save(tmp_path / "x.npy", X)
    import_features(tmp_path / "s.zarr", name="f", features=tmp_path / "x.npy",
                    labels=tmp_path / "t.csv")  # fmt: skip
    out = tmp_path / "r.parquet"
    sweep(store=str(tmp_path / "s.zarr"), out=str(out), tasks="finding", split_col="split",
          n="all", seeds=1, C=1.0, uncertain="zeros", blank="negative", save_predictions=True,
          progress=False)  # fmt: skip
    res = pd.read_parquet(out)
    assert set(res.uncertain) == {"zeros"} and set(res.blank) == {"negative"}
    y = np.array([1 if v == "1" else 0 for v in raw])  # -1 → 0, blank → 0, by hand
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    assert res.n.iloc[0] == len(train) and res.n_test.iloc[0] == len(test)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(X[train], y[train])
    want = roc_auc_score(y[test], ref.decision_function(X[test]))
    assert abs(res.auroc.iloc[0] - want) <= 1e-4


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_cpu_sweeps_run_on_one_thread_and_gpu_sweeps_keep_torch_threads(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    """The local engine's thread rule, forced on both device types: a CPU sweep's units run on
    one torch thread (and one BLAS thread), a GPU sweep's keep the process's torch threads."""
    from fmprobe.sweep import units as units_mod

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []
    monkeypatch.setattr(units_mod, "resolve_device", lambda _d: torch.device(device))
    monkeypatch.setattr(units_mod.UnitRunner, "__init__", lambda self, job: None)
    monkeypatch.setattr(
        units_mod.UnitRunner,
        "run",
        lambda self, units, progress=None: seen.append(torch.get_num_threads()) or 0,
    )
    job = type("Job", (), {"device": device})()
    try:
        units_mod.execute_units(job, [])  # type: ignore[arg-type]
        assert seen == [1 if device == "cpu" else 2]
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
