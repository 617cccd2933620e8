"""Cold-start selection: known answers on hand-made point sets, brute-force references for
k-center, ProbCover's radius and coverage and BAL's CDD, scikit-learn's k-means (seeding,
iterations and inertia), faiss against torch, the contract (exactly B unique rows, seeds, row
order, exclusion) and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score

from fmprobe.cli import main
from fmprobe.errors import FmprobeError, UsageError
from fmprobe.select import STRATEGIES, select, select_indices
from fmprobe.select.base import Problem, l2_normalise
from fmprobe.select.compute import knn, nearest_other_label, resolve_backend
from fmprobe.select.coverage import probcover_delta
from fmprobe.select.kmeans import kmeans, lloyd
from fmprobe.select.kmeans import kmeans_plusplus as our_kmeans_plusplus
from fmprobe.store import import_features

HAS_FAISS = resolve_backend("cpu").name == "faiss"
BACKENDS = ["torch", *(["faiss"] if HAS_FAISS else [])]
KW = {"probcover": {"k": 5}}


def blobs(n_per: int = 40, k: int = 5, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """``k`` tight clusters far apart, rows shuffled; returns (x, cluster of each row)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 10
    y = np.repeat(np.arange(k), n_per)
    x = centers[y] + spread * rng.normal(size=(len(y), dim))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


@pytest.fixture(scope="module")
def five() -> tuple[np.ndarray, np.ndarray]:
    return blobs()


@pytest.fixture(scope="module")
def mixed() -> np.ndarray:
    """Overlapping clusters of unequal sizes plus uniform noise: no strategy gets it easy."""
    rng = np.random.default_rng(3)
    parts = [rng.normal(loc=rng.normal(size=12) * 2, size=(m, 12)) for m in (60, 30, 15, 8)]
    parts.append(rng.uniform(-6, 6, size=(27, 12)))
    return np.concatenate(parts).astype(np.float32)


# --- known answers --------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["kmeans", "typiclust", "probcover", "coreset", "usl"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_five_tight_clusters_get_one_pick_each(five, strategy: str, backend: str) -> None:
    x, y = five
    for seed in range(3):
        sel = select_indices(
            x, budget=5, strategy=strategy, seed=seed, backend=backend, **KW.get(strategy, {})
        )
        assert sorted(y[sel.indices].tolist()) == [0, 1, 2, 3, 4], (strategy, seed)


def test_kmeans_picks_the_member_nearest_each_centroid(five) -> None:
    x, y = five
    sel = select_indices(x, budget=5, strategy="kmeans")
    for row in sel.indices:
        members = np.flatnonzero(y == y[row])
        centroid = x[members].mean(0)
        assert row == members[np.argmin(((x[members] - centroid) ** 2).sum(1))]


def test_typiclust_picks_the_most_typical_member(five) -> None:
    x, y = five
    xn = l2_normalise(x)
    sel = select_indices(x, budget=5, strategy="typiclust")
    for row, score in zip(sel.indices, sel.scores, strict=True):
        m = xn[y == y[row]]
        d = np.sqrt(((m[:, None] - m[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        typ = 1 / (np.sort(d, 1)[:, :20].mean(1) + 1e-5)
        assert score == pytest.approx(typ.max(), rel=1e-4)
        assert np.flatnonzero(y == y[row])[np.argmax(typ)] == row


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_center_picks_the_farthest_row_each_time(mixed, backend: str) -> None:
    x = mixed.astype(np.float64)
    sel = select_indices(
        mixed, budget=8, strategy="coreset", exclude=np.array([0]), backend=backend
    )
    centers = [0]
    for row, score in zip(sel.indices, sel.scores, strict=True):
        d = np.sqrt(((x[:, None] - x[centers][None]) ** 2).sum(-1)).min(1)
        d[centers] = -1
        assert row == np.argmax(d)
        assert score == pytest.approx(d.max(), rel=1e-4)
        centers.append(int(row))


def test_probcover_radius_is_the_largest_at_95_percent_purity(mixed) -> None:
    x = l2_normalise(mixed)
    labels = KMeans(4, n_init=1, random_state=0).fit(x).labels_
    be = resolve_backend("cpu", "torch")
    problem = Problem(x=x, labelled=np.zeros(len(x), bool), budget=1, seed=0, backend=be)
    delta = probcover_delta(x, labels, np.arange(len(x)), problem, 0.95)
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))

    def purity(r: float) -> float:
        balls = d < r
        return float(np.mean([np.all(labels[b] == labels[i]) for i, b in enumerate(balls)]))

    assert purity(delta) >= 0.95
    assert purity(delta * (1 + 1e-4)) < 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_probcover_coverage_matches_a_brute_force_count(mixed, backend: str) -> None:
    for budget, kw in ((6, {"k": 4}), (200, {"delta": 0.6})):
        if budget > len(mixed):
            budget = len(mixed)
        sel = select_indices(mixed, budget=budget, strategy="probcover", backend=backend, **kw)
        x = l2_normalise(mixed).astype(np.float64)
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        balls = d < sel.info["delta"]
        covered = np.zeros(len(x), bool)
        for row, gain in zip(sel.indices, sel.scores, strict=True):
            new = balls[row] & ~covered
            assert gain == new.sum()
            covered |= new
        assert sel.info["coverage"] == pytest.approx(covered.mean())
        # the first pick has the largest ball (ties to any largest)
        assert balls[sel.indices[0]].sum() == balls.sum(1).max()


def test_fps_returns_pairs_of_far_apart_rows_without_duplicates(five) -> None:
    x, y = five
    sel = select_indices(x, budget=7, strategy="fps")
    assert len(set(sel.indices.tolist())) == 7
    a, b = sel.indices[:2]
    members = np.flatnonzero(y == y[a]) if y[a] == y[b] else np.flatnonzero(np.isin(y, y[[a, b]]))
    d = np.sqrt(((x[members, None] - x[None, members]) ** 2).sum(-1))
    assert np.linalg.norm(x[a] - x[b]) == pytest.approx(d.max(), rel=1e-5)


def test_repdiv_diversity_picks_maximise_the_minimum_cosine_distance(mixed) -> None:
    sel = select_indices(mixed, budget=10, strategy="repdiv")
    x = l2_normalise(mixed).astype(np.float64)
    chosen = list(sel.indices[:7])
    for row in sel.indices[7:]:
        dist = (1 - x @ x[chosen].T).min(1)
        dist[chosen] = -1
        assert row == np.argmax(dist)
        chosen.append(int(row))


def test_repdiv_representative_picks_are_greedy_facility_location(mixed, monkeypatch) -> None:
    import fmprobe.select.coverage as coverage

    monkeypatch.setattr(coverage, "REPDIV_NEIGHBOURS", len(mixed))  # the dense objective
    x = l2_normalise(mixed).astype(np.float64)
    sim = np.clip(x @ x.T, 0, None)
    sel = select_indices(mixed, budget=10, strategy="repdiv")
    cur = np.zeros(len(x))
    for row, score in zip(sel.indices[:7], sel.scores[:7], strict=True):
        gains = np.clip(sim - cur[:, None], 0, None).sum(0)
        gains[sel.indices[: list(sel.indices).index(row)]] = -1
        assert row == np.argmax(gains)
        assert score == pytest.approx(gains.max(), rel=1e-5)
        cur = np.maximum(cur, sim[:, row])


def test_bal_picks_the_smallest_cdd_of_a_brute_force_loop(mixed, monkeypatch) -> None:
    """CDD recomputed by a plain loop over rows and centroids, from the partition the strategy
    used (captured by wrapping the public k-means it calls)."""
    import fmprobe.select.clustering as clustering

    seen = []

    def recording_kmeans(x, k, **kw):
        res = kmeans(x, k, **kw)
        seen.append((x.copy(), res.centroids.copy()))
        return res

    monkeypatch.setattr(clustering, "kmeans", recording_kmeans)
    excluded = np.array([4, 9])
    sel = select_indices(mixed, budget=10, strategy="bal", exclude=excluded)
    ((x_seen, centroids),) = seen
    assert len(centroids) == min(100, max(2, len(mixed) // 10))
    cdd = np.empty(len(mixed))
    for i in range(len(mixed)):  # rows of the caller's array: find the same row in x_seen
        j = int(np.flatnonzero((x_seen == mixed[i]).all(1))[0])
        dists = sorted(
            float(
                np.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(x_seen[j], c, strict=True)))
            )
            for c in centroids
        )
        cdd[i] = dists[1] - dists[0]
    pool = [i for i in range(len(mixed)) if i not in excluded]
    expected = sorted(pool, key=lambda i: cdd[i])[:10]
    assert sorted(sel.indices.tolist()) == sorted(expected)
    np.testing.assert_allclose(sel.scores, cdd[sel.indices], rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(sel.scores) >= 0)


# --- the computing primitives against references --------------------------------------------


class _SameDraws:
    """A numpy Generator's two calls k-means++ makes, answered from a RandomState in the
    order scikit-learn's ``kmeans_plusplus`` draws: a uniform row, then the candidates."""

    def __init__(self, seed: int) -> None:
        self.rs = np.random.RandomState(seed)

    def integers(self, n: int) -> int:
        return int(self.rs.choice(n, p=np.full(n, 1.0 / n)))

    def random(self, size: int) -> np.ndarray:
        return self.rs.uniform(size=size)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data.astype(np.float32)


@pytest.mark.parametrize("k", [10, 50])
def test_kmeans_plusplus_is_scikit_learns_greedy_seeding(digits, k: int) -> None:
    be = resolve_backend("cpu")
    for seed in range(3):
        ours = our_kmeans_plusplus(digits, k, rngs=[_SameDraws(seed)], be=be)[0]  # type: ignore[list-item]
        _, ref = kmeans_plusplus(digits, k, random_state=np.random.RandomState(seed))
        assert ours.tolist() == ref.tolist()


def test_lloyd_iterations_equal_scikit_learns_from_the_same_start(digits) -> None:
    # digits are whole numbers: a row can lie exactly as far from two centres, a tie that
    # scikit-learn breaks by rounding (it centres the data first) and this by the lower index;
    # a jitter far below the pixel step removes the ties, not the structure
    x = digits + np.random.default_rng(0).uniform(-0.01, 0.01, digits.shape).astype(np.float32)
    be = resolve_backend("cpu")
    for k, seed in ((10, 0), (30, 1)):
        start = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
        ours = lloyd(x, start, be=be)
        ref = KMeans(k, init=start, n_init=1, tol=1e-4, max_iter=300, algorithm="lloyd").fit(x)
        assert ours.converged and ours.iterations == ref.n_iter_
        assert np.array_equal(ours.labels, ref.labels_)
        assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-5)
        np.testing.assert_allclose(ours.centroids, ref.cluster_centers_, atol=1e-3)


@pytest.fixture
def one_thread():
    """Both k-means on one thread: on a machine shared by many processes, thread pools that
    wait on each other make these small problems 10-30 times slower (measured)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("normalise", [False, True])
def test_kmeans_inertia_within_one_percent_of_scikit_learn(digits, normalise, one_thread) -> None:
    x = l2_normalise(digits) if normalise else digits
    be = resolve_backend("cpu")
    for k in (10, 20, 50, 100):
        ref = KMeans(k, n_init=10, random_state=0).fit(x).inertia_
        ours = kmeans(x, k, seed=0, be=be, n_init=10)
        assert ours.n_init == 10 and ours.converged
        assert ours.inertia <= 1.01 * ref, (k, ours.inertia / ref)
        assert ours.inertia == pytest.approx(
            float(((x - ours.centroids[ours.labels]) ** 2).sum()), rel=1e-5
        )


def test_kmeans_finds_separated_clusters_and_keeps_every_cluster(five, mixed) -> None:
    be = resolve_backend("cpu")
    x, y = five
    assert adjusted_rand_score(y, kmeans(x, 5, seed=0, be=be).labels) == 1.0
    dup = np.repeat(mixed[:3], 10, axis=0)  # 3 distinct points, 6 clusters asked
    km = kmeans(dup, 6, seed=0, be=be)
    assert np.bincount(km.labels, minlength=6).min() >= 1 and km.inertia == pytest.approx(0.0)


def test_blocks_are_sized_by_rows_not_by_columns() -> None:
    be = resolve_backend("cpu", "torch")
    assert be.block_rows(10, 20_000) == 20_000  # few anchors: all rows in one block
    assert be.block_rows(10) == 10
    assert be.block_rows(1_000_000, 1_000_000) * 1_000_000 * 4 <= 256 * 2**20


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")
def test_faiss_and_torch_kmeans_agree_on_a_large_problem() -> None:
    x, _ = blobs(n_per=150, k=20, dim=24, spread=1.0, seed=5)  # 3,000 rows x 400 centroids
    a = kmeans(x, 400, seed=0, be=resolve_backend("cpu", "faiss"), n_init=1)
    b = kmeans(x, 400, seed=0, be=resolve_backend("cpu", "torch"), n_init=1)
    assert np.array_equal(a.labels, b.labels) and a.iterations == b.iterations
    assert a.inertia == pytest.approx(b.inertia, rel=1e-6)


@pytest.fixture(scope="module")
def large() -> np.ndarray:
    """Enough rows (1,200² pairs) that searches run through faiss on the faiss backend."""
    rng = np.random.default_rng(8)
    centers = rng.normal(size=(15, 12)) * 3
    return (centers[rng.integers(0, 15, 1200)] + rng.normal(size=(1200, 12))).astype(np.float32)


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")
def test_faiss_and_torch_searches_agree(large) -> None:
    mixed = large
    f, t = resolve_backend("cpu", "faiss"), resolve_backend("cpu", "torch")
    d_f, i_f = knn(mixed, mixed, 7, f, self_search=True)
    d_t, i_t = knn(mixed, mixed, 7, t, self_search=True)
    assert np.array_equal(i_f, i_t)
    np.testing.assert_allclose(d_f, d_t, rtol=1e-5)
    brute = ((mixed[:, None].astype(np.float64) - mixed[None]) ** 2).sum(-1)
    np.fill_diagonal(brute, np.inf)
    np.testing.assert_allclose(d_t, np.sort(brute, 1)[:, :7], rtol=1e-4)
    labels = np.arange(len(mixed)) % 3
    q = np.arange(len(mixed))
    np.testing.assert_allclose(
        nearest_other_label(mixed, labels, q, f),
        nearest_other_label(mixed, labels, q, t),
        rtol=1e-4,
    )


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_faiss_and_torch_select_the_same_rows(large, strategy: str) -> None:
    kw = KW.get(strategy, {})
    a = select_indices(large, budget=12, strategy=strategy, backend="faiss", **kw)
    b = select_indices(large, budget=12, strategy=strategy, backend="torch", **kw)
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4)


# --- the contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exact_budget_unique_rows_deterministic_and_order_free(mixed, strategy: str) -> None:
    kw = KW.get(strategy, {})
    n = len(mixed)
    perm = np.random.default_rng(1).permutation(n)
    excluded = np.array([3, 50, 77])
    for budget in (1, 2, 7, 33, n - len(excluded)):
        sel = select_indices(mixed, budget=budget, strategy=strategy, exclude=excluded, **kw)
        assert sel.indices.dtype == np.int64 and len(sel.indices) == budget
        assert len(np.unique(sel.indices)) == budget
        assert not np.isin(sel.indices, excluded).any()
        assert sel.scores.shape == (budget,)
        again = select_indices(mixed, budget=budget, strategy=strategy, exclude=excluded, **kw)
        assert again.indices.tolist() == sel.indices.tolist()
        mask = np.zeros(n, bool)
        mask[excluded] = True
        shuffled = select_indices(
            mixed[perm], budget=budget, strategy=strategy, exclude=mask[perm], **kw
        )
        assert perm[shuffled.indices].tolist() == sel.indices.tolist()


def test_seeds_change_the_random_picks_and_budgets_are_nested(mixed) -> None:
    a = select_indices(mixed, budget=20, strategy="random", seed=0).indices
    b = select_indices(mixed, budget=20, strategy="random", seed=1).indices
    assert a.tolist() != b.tolist()
    small = select_indices(mixed, budget=5, strategy="random", seed=0).indices
    assert small.tolist() == a[:5].tolist()


def test_unreadable_rows_are_never_picked(mixed) -> None:
    x = mixed.copy()
    x[[0, 5]] = np.nan
    for strategy in STRATEGIES:
        sel = select_indices(x, budget=20, strategy=strategy, **KW.get(strategy, {}))
        assert not np.isin(sel.indices, [0, 5]).any()


def test_bad_arguments_are_one_line_usage_errors(mixed) -> None:
    with pytest.raises(UsageError, match="more than the 140 rows available"):
        select_indices(mixed, budget=141, strategy="kmeans")
    with pytest.raises(UsageError, match="more than the 138 rows"):
        select_indices(mixed, budget=139, strategy="kmeans", exclude=np.array([1, 2]))
    with pytest.raises(UsageError, match="did you mean 'typiclust'"):
        select_indices(mixed, budget=3, strategy="typiclus")
    with pytest.raises(UsageError, match="positive integer"):
        select_indices(mixed, budget=0, strategy="random")
    with pytest.raises(UsageError, match="expected a positive radius"):
        select_indices(mixed, budget=3, strategy="probcover", delta=-1.0)
    with pytest.raises(UsageError, match="exclude"):
        select_indices(mixed, budget=3, strategy="random", exclude=np.array([500]))


# --- the store and the command line ---------------------------------------------------------


def make_store(tmp: Path, x: np.ndarray, ids: list[str], name: str = "s.zarr") -> Path:
    np.save(tmp / f"{name}.npy", x)
    pd.DataFrame({"id": ids}).to_csv(tmp / f"{name}.csv", index=False)
    import_features(
        tmp / name, name="m/last/cls", features=tmp / f"{name}.npy", labels=tmp / f"{name}.csv"
    )
    return tmp / name


def test_select_reads_the_store_and_ignores_its_row_order(tmp_path: Path, mixed) -> None:
    ids = [f"img{i:03d}" for i in range(len(mixed))]
    perm = np.random.default_rng(2).permutation(len(mixed))
    a = make_store(tmp_path, mixed, ids, "a.zarr")
    b = make_store(tmp_path, mixed[perm], [ids[i] for i in perm], "b.zarr")
    for strategy in ("typiclust", "coreset", "repdiv"):
        ra = select(
            store=a, feature="m/last/cls", budget=9, strategy=strategy, out=tmp_path / "a.csv"
        )
        rb = select(
            store=b, feature="m/last/cls", budget=9, strategy=strategy, out=tmp_path / "b.csv"
        )
        assert ra.ids == rb.ids
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
        )


def test_cli_writes_ids_and_continues_from_an_excluded_set(tmp_path: Path, mixed) -> None:
    ids = [f"img{i:03d}" for i in range(len(mixed))]
    store = make_store(tmp_path, mixed, ids)
    runner = CliRunner()
    base = ["select", "--store", str(store), "--feature", "m/last/cls", "--strategy", "typiclust"]
    res = runner.invoke(
        main, [*base, "--budget", "10", "--out", str(tmp_path / "first.csv"), "--json"]
    )
    assert res.exit_code == 0, res.output
    first = pd.read_csv(tmp_path / "first.csv")
    assert list(first.columns) == ["id", "rank", "score"]
    assert first["rank"].tolist() == list(range(1, 11))
    assert first["id"].is_unique and set(first["id"]) <= set(ids)
    res = runner.invoke(
        main,
        [
            *base,
            "--budget",
            "15",
            "--exclude",
            str(tmp_path / "first.csv"),
            "--out",
            str(tmp_path / "more.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    more = pd.read_csv(tmp_path / "more.csv")
    assert len(more) == 15 and not set(more["id"]) & set(first["id"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "500", "--strategy", "kmeans"], "more than the 140 rows available"),
        (["--budget", "5", "--strategy", "kmean"], "did you mean 'kmeans'"),
        (["--budget", "5", "--strategy", "kmeans", "--feature", "m/last/clz"], "not in"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, mixed, args, message) -> None:
    store = make_store(tmp_path, mixed, [f"i{i}" for i in range(len(mixed))])
    cmd = ["select", "--store", str(store), "--out", str(tmp_path / "o.csv")]
    if "--feature" not in args:
        cmd += ["--feature", "m/last/cls"]
    res = CliRunner().invoke(main, [*cmd, *args])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "o.csv").exists()


def test_exclude_with_unknown_ids_is_refused(tmp_path: Path, mixed) -> None:
    store = make_store(tmp_path, mixed, [f"i{i}" for i in range(len(mixed))])
    pd.DataFrame({"id": ["i1", "nope"]}).to_csv(tmp_path / "done.csv", index=False)
    with pytest.raises(UsageError, match="1 ids are not in the store"):
        select(
            store=store,
            feature="m/last/cls",
            budget=3,
            strategy="random",
            exclude=tmp_path / "done.csv",
        )


def test_out_is_parquet_or_csv_by_suffix_and_json_lists_the_picks(tmp_path: Path, mixed) -> None:
    store = make_store(tmp_path, mixed, [f"i{i:03d}" for i in range(len(mixed))])
    base = ["select", "--store", str(store), "--feature", "m/last/cls", "--budget", "12"]
    for strategy in ("random", "kmeans"):
        res = CliRunner().invoke(
            main, [*base, "--strategy", strategy, "--out", str(tmp_path / "p.parquet"), "--json"]
        )
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        res = CliRunner().invoke(
            main, [*base, "--strategy", strategy, "--out", str(tmp_path / "c.csv")]
        )
        assert res.exit_code == 0, res.output
        parquet, csv = (
            pd.read_parquet(tmp_path / "p.parquet"),
            pd.read_csv(tmp_path / "c.csv", dtype={"id": str}),
        )
        pd.testing.assert_frame_equal(parquet, csv)
        assert report["ids"] == parquet["id"].tolist() and report["n_init"] == 3
        want = [None if np.isnan(v) else v for v in parquet["score"]]
        assert (
            report["scores"] == pytest.approx(want)
            if strategy == "kmeans"
            else report["scores"] == want
        )
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failed_write_leaves_no_file_and_is_one_line(tmp_path: Path, mixed, monkeypatch) -> None:
    import errno

    store = make_store(tmp_path, mixed, [f"i{i}" for i in range(len(mixed))])

    def full_disk(self, path, *a, **kw):
        Path(path).write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    with pytest.raises(FmprobeError, match=r"(?i)no space left on (the )?device") as err:
        select(
            store=store,
            feature="m/last/cls",
            budget=5,
            strategy="random",
            out=tmp_path / "o.parquet",
        )
    assert not isinstance(err.value, UsageError)
    assert [p.name for p in tmp_path.iterdir() if "o.parquet" in p.name] == []
    res = CliRunner().invoke(
        main,
        ["select", "--store", str(store), "--feature", "m/last/cls", "--budget", "5",
         "--strategy", "random", "--out", str(tmp_path / "o.parquet")],
    )  # fmt: skip
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", "-1"], "--seed -1: expected a non-negative integer"),
        (["--n-init", "0"], "--n-init 0: expected a positive integer"),
        (["--out", "picks.txt"], "expected a .csv or .parquet file name"),
    ],
)
def test_cli_bad_seed_n_init_and_suffix_exit_2(tmp_path: Path, mixed, args, message) -> None:
    store = make_store(tmp_path, mixed, [f"i{i}" for i in range(len(mixed))])
    cmd = ["select", "--store", str(store), "--feature", "m/last/cls", "--budget", "5",
           "--strategy", "kmeans", "--out", str(tmp_path / "o.csv")]  # fmt: skip
    res = CliRunner().invoke(main, [*cmd, *args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "o.csv").exists()
