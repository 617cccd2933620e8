"""The batched logistic regression against scikit-learn at tight tolerance, and the estimator
against scikit-learn's estimator checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.estimator_checks import check_estimator

from fmprobe.probes.estimator import LogisticProbe
from fmprobe.probes.logreg import batched_mv, batched_rmv, fit_logreg, lbfgs_direction, push_pair
from fmprobe.probes.simple import knn_scores, ridge_fit_predict


def problem(
    n: int, D: int, K: int, seed: int, separable: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D)) + 3.0
    if K == 2:
        logit = X[:, 0] - X[:, 1] + (0 if separable else rng.normal(size=n))
        y = (logit > np.median(logit)).astype(int)
    else:
        y = rng.integers(0, K, n)
        X[np.arange(n), y % D] += 1.5
    return X, y


def sklearn_reference(X: np.ndarray, y: np.ndarray, C: float) -> LogisticRegression:
    solver = "newton-cholesky" if len(np.unique(y)) == 2 else "lbfgs"
    return LogisticRegression(C=C, solver=solver, tol=1e-12, max_iter=100_000).fit(X, y)


def objective(X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, C: float) -> float:
    from scipy.special import logsumexp

    z = X @ W.T + b
    return float((logsumexp(z, axis=1) - z[np.arange(len(y)), y]).sum() + (W**2).sum() / (2 * C))


CASES = [
    (20, 64, 2, 1.0, False),  # N < D
    (50, 10, 2, 0.1, False),
    (200, 16, 2, 10.0, False),
    (30, 8, 2, 1.0, True),  # separable
    (600, 12, 2, 1.0, False),  # large n: L-BFGS
    (40, 20, 3, 1.0, False),  # multinomial, N < D
    (300, 10, 5, 0.5, False),
]


@pytest.mark.parametrize(("n", "D", "K", "C", "separable"), CASES)
@pytest.mark.parametrize("solver", ["auto", "lbfgs", "newton-kernel"])
def test_agrees_with_sklearn_at_tight_tolerance(
    n: int, D: int, K: int, C: float, separable: bool, solver: str
) -> None:
    if solver == "newton-kernel" and K > 2:
        pytest.skip("binary only")
    X, y = problem(n, D, K, seed=n + D, separable=separable)
    ref = sklearn_reference(X, y, C)
    Xc = X - X.mean(0)
    fit = fit_logreg(
        torch.tensor(Xc)[None],
        torch.tensor(y)[None],
        C,
        n_classes=K,
        solver=solver,
        tol=1e-10,
        max_iter=5000,
    )
    coef = fit.coef[0].numpy().T
    intercept = fit.intercept[0].numpy() - coef @ X.mean(0)
    if K > 2:
        # sklearn's multinomial lbfgs stops a little short of the optimum even at tol=1e-12:
        # ours must reach an objective at least as low, and the same coefficients to 1e-4
        assert (
            objective(X, y, coef, intercept, C)
            <= objective(X, y, ref.coef_, ref.intercept_, C) + 1e-9
        )
        np.testing.assert_allclose(coef, ref.coef_, atol=1e-4)
        np.testing.assert_allclose(intercept, ref.intercept_, atol=1e-4)
    else:
        np.testing.assert_allclose(coef, ref.coef_, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(intercept, ref.intercept_, atol=1e-5, rtol=1e-4)
    assert bool(fit.converged[0])


def test_float32_batch_gives_the_exact_optimum_auroc() -> None:
    """The default path (float32 features, default tolerance) ranks test rows as the exact
    optimum does: AUROC within 1e-4."""
    rng = np.random.default_rng(0)
    X, y = problem(3000, 48, 2, seed=1)
    Xte, yte = X[2000:], y[2000:]
    Xc = (X - X[:2000].mean(0)).astype(np.float32)
    for n in (20, 100, 500, 2000):
        idx = np.stack([rng.choice(2000, n, replace=False) for _ in range(4)])
        idx = np.stack(
            [
                i
                if len(np.unique(y[i])) == 2
                else np.r_[i[:-2], np.flatnonzero(y == 0)[0], np.flatnonzero(y == 1)[0]]
                for i in idx
            ]
        )
        fit = fit_logreg(torch.tensor(Xc[idx]), torch.tensor(y[idx]), 1.0, n_classes=2)
        scores = fit.decision_function(torch.tensor(Xc[2000:])).numpy()
        for b in range(len(idx)):
            ref = sklearn_reference(X[idx[b]], y[idx[b]], 1.0)
            assert (
                abs(roc_auc_score(yte, scores[b]) - roc_auc_score(yte, ref.decision_function(Xte)))
                <= 1e-4
            )


def test_masked_rows_do_not_count() -> None:
    X, y = problem(60, 8, 2, seed=3)
    keep = np.arange(60) % 3 != 0
    mask = torch.tensor(keep)[None]
    for solver in ("newton-kernel", "lbfgs"):
        a = fit_logreg(
            torch.tensor(X)[None],
            torch.tensor(y)[None],
            1.0,
            n_classes=2,
            mask=mask,
            solver=solver,
            tol=1e-10,
        )
        b = fit_logreg(
            torch.tensor(X[keep])[None],
            torch.tensor(y[keep])[None],
            1.0,
            n_classes=2,
            solver=solver,
            tol=1e-10,
        )
        torch.testing.assert_close(a.coef, b.coef, atol=1e-7, rtol=1e-6)


def test_batch_equals_one_by_one() -> None:
    Xs, ys = zip(*[problem(40, 12, 2, seed=s) for s in range(5)], strict=True)
    X, y = torch.tensor(np.stack(Xs)), torch.tensor(np.stack(ys))
    C = torch.tensor([0.1, 0.5, 1.0, 2.0, 10.0], dtype=torch.float64)
    batch = fit_logreg(X, y, C, n_classes=2, tol=1e-10)
    for b in range(5):
        one = fit_logreg(X[b : b + 1], y[b : b + 1], float(C[b]), n_classes=2, tol=1e-10)
        torch.testing.assert_close(batch.coef[b], one.coef[0], atol=1e-8, rtol=1e-7)


def test_batched_products_equal_matmul() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    V, U = (
        torch.randn(3, 5, 2, generator=g, dtype=torch.float64),
        torch.randn(3, 7, 1, generator=g, dtype=torch.float64),
    )
    torch.testing.assert_close(batched_mv(A, V), A @ V)
    torch.testing.assert_close(batched_rmv(A, U), A.transpose(1, 2) @ U)


def _two_loop(g: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Nocedal & Wright, Algorithm 7.4, pairs oldest first: the textbook H·g."""
    if not pairs:
        return g / np.linalg.norm(g)
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        a = (s @ q) / (s @ y)
        q -= a * y
        alphas.append(a)
    s, y = pairs[-1]
    r = q * (s @ y) / (y @ y)
    for (s, y), a in zip(pairs, reversed(alphas), strict=True):
        r += s * (a - (y @ r) / (s @ y))
    return r


def test_compact_lbfgs_direction_equals_the_two_loop_recursion() -> None:
    """Pairs pushed one by one (some skipped, more than the memory holds) give the textbook
    two-loop product of the pairs kept, for every problem of the batch."""
    rng = np.random.default_rng(0)
    B, P, m = 3, 6, 4
    A = [rng.normal(size=(P, P)) for _ in range(B)]
    H = [a @ a.T + P * np.eye(P) for a in A]  # SPD curvature: s·y > 0
    S = torch.zeros(B, m, P, dtype=torch.float64)
    Y, SY, YY = (
        torch.zeros_like(S),
        torch.zeros(B, m, m, dtype=torch.float64),
        torch.zeros(B, m, m, dtype=torch.float64),
    )
    kept: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(B)]
    g = torch.tensor(rng.normal(size=(B, P)))
    for step in range(7):
        for b in range(B):
            ref = _two_loop(g[b].numpy(), kept[b][-m:])
            np.testing.assert_allclose(lbfgs_direction(g, S, Y, SY, YY)[b].numpy(), ref, rtol=1e-10)
        s_vec = torch.tensor(rng.normal(size=(B, P)))
        y_vec = torch.stack([torch.tensor(H[b]) @ s_vec[b] for b in range(B)])
        good = torch.tensor([True, step % 3 != 1, step % 2 == 0])
        S, Y, SY, YY = push_pair(S, Y, SY, YY, s_vec, y_vec, good)
        for b in range(B):
            if good[b]:
                kept[b].append((s_vec[b].numpy(), y_vec[b].numpy()))


def test_large_lbfgs_batch_with_early_finishers_matches_sklearn() -> None:
    """Problems large enough for the per-problem line search (n·D ≥ 2^16), with C values that
    converge after different iteration counts, each equal to its own sklearn optimum."""
    Xs, ys = zip(*[problem(200, 400, 2, seed=s) for s in range(3)], strict=True)
    X, y = torch.tensor(np.stack(Xs), dtype=torch.float32), torch.tensor(np.stack(ys))
    Cs = [0.001, 0.1, 10.0]
    fit = fit_logreg(X - X.mean((0, 1)), y, torch.tensor(Cs, dtype=torch.float64), n_classes=2,
                     solver="lbfgs", tol=1e-7, max_iter=5000)  # fmt: skip
    assert bool(fit.converged.all())
    for b, C in enumerate(Cs):
        Xc = Xs[b] - X.mean((0, 1)).double().numpy()
        ref = sklearn_reference(Xc, ys[b], C)
        z = fit.decision_function(torch.tensor(Xc, dtype=torch.float32))[b].double().numpy()
        np.testing.assert_allclose(
            z, ref.decision_function(Xc), atol=2e-3 * max(1, np.abs(z).max())
        )


def test_ridge_and_knn_match_sklearn() -> None:
    for n, D, K in ((30, 50, 2), (200, 10, 3)):
        X, y = problem(n, D, K, seed=7)
        T = problem(40, D, K, seed=8)[0]
        ref = RidgeClassifier(alpha=0.5).fit(X, y).decision_function(T)
        got = ridge_fit_predict(
            torch.tensor(X)[None], torch.tensor(y)[None], torch.tensor(T), 2.0, n_classes=K
        )[0]
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-8)
        for k, s in zip(
            (1, 5),
            knn_scores(
                torch.tensor(X)[None],
                torch.tensor(y)[None],
                torch.tensor(T),
                ks=(1, 5),
                n_classes=K,
            ),
            strict=True,
        ):
            p = (
                KNeighborsClassifier(k, metric="cosine", algorithm="brute")
                .fit(X, y)
                .predict_proba(T)
            )
            np.testing.assert_allclose(s[0].numpy(), p[:, 1] if K == 2 else p, atol=1e-12)


def test_logistic_probe_passes_sklearn_estimator_checks() -> None:
    failures = [
        c for c in check_estimator(LogisticProbe(), on_fail=None) if c["status"] == "failed"
    ]
    assert not failures, [(c["check_name"], str(c["exception"])[:200]) for c in failures]


def test_logistic_probe_equals_sklearn_on_string_labels() -> None:
    X, y = problem(120, 6, 3, seed=2)
    labels = np.array(["cardiomegaly", "effusion", "normal"])[y]
    ours = LogisticProbe(C=0.3, tol=1e-10).fit(X, labels)
    ref = LogisticRegression(C=0.3, tol=1e-12, max_iter=100_000).fit(X, labels)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    assert (ours.predict(X) == ref.predict(X)).all()


def test_kernel_newton_survives_a_thread_count_change() -> None:
    """Some MKL builds return wrong pivots from batched LU once the thread count changed
    (seen with torch 2.15): the solver must not depend on batched LU."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.set_num_threads(max(2, before))
        X, y = problem(300, 24, 2, seed=11)
        Xc = X - X.mean(0)
        fits = fit_logreg(torch.tensor(np.stack([Xc] * 3)), torch.tensor(np.stack([y] * 3)), 0.5, n_classes=2,
                          solver="newton-kernel", tol=1e-10)  # fmt: skip
        ref = sklearn_reference(X, y, 0.5)
        for b in range(3):
            np.testing.assert_allclose(fits.coef[b].numpy().T, ref.coef_, atol=1e-6, rtol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_backends_solve_the_same_problem() -> None:
    """The sklearn backend is scikit-learn itself; the torch engine agrees with it; cuML, when
    absent, is a one-line error."""
    from fmprobe.errors import UsageError
    from fmprobe.probes.backends import check_backend, fit_logreg_with

    X, y = problem(60, 8, 3, seed=4)
    ref = sklearn_reference(X, y, 0.3)
    ours = LogisticProbe(C=0.3, backend="sklearn").fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    Xt, yt = torch.tensor(np.stack([X, X[::-1]])), torch.tensor(np.stack([y, y[::-1]]))
    a = fit_logreg_with("sklearn", Xt, yt, torch.tensor([0.3, 3.0]), n_classes=3)
    b = fit_logreg_with("torch", Xt, yt, torch.tensor([0.3, 3.0]), n_classes=3, tol=1e-10)
    torch.testing.assert_close(
        a.decision_function(Xt), b.decision_function(Xt), atol=1e-4, rtol=1e-4
    )
    try:
        import cuml  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="needs RAPIDS cuML"):
            check_backend("cuml")
    with pytest.raises(UsageError, match="did you mean 'torch'"):
        check_backend("troch")


@pytest.mark.parametrize("K", [2, 4])
def test_cpu_one_by_one_lbfgs_equals_sklearn_and_the_batched_solver(
    K: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Problems of n·D ≥ 2^16 on a CPU go to the numpy one-by-one L-BFGS: each equals its own
    sklearn optimum (masked rows left out, a C per problem), a warm start reaches the same
    optimum, and the batched torch L-BFGS (forced by raising the threshold) agrees."""
    from fmprobe.probes import logreg

    n, D = 300, 240
    Xs, ys = zip(*[problem(n, D, K, seed=10 + s) for s in range(3)], strict=True)
    mean = np.mean(np.concatenate(Xs), 0)
    X = torch.tensor(np.stack(Xs) - mean)
    y = torch.tensor(np.stack(ys))
    keep = np.ones((3, n), bool)
    keep[1, ::4] = False  # problem 1 leaves a quarter of its rows out
    Cs = torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64)
    assert n * D >= logreg.common.CPU_ONE_BY_ONE
    kw = dict(n_classes=K, mask=torch.tensor(keep), solver="lbfgs", tol=1e-10, max_iter=5000)
    ours = fit_logreg(X, y, Cs, **kw)  # type: ignore[arg-type]
    assert bool(ours.converged.all())
    for b in range(3):
        Xk, yk = Xs[b][keep[b]] - mean, ys[b][keep[b]]
        ref = sklearn_reference(Xk, yk, float(Cs[b]))
        z = ours.decision_function(torch.tensor(Xk))[b].numpy()
        ref_z = ref.decision_function(Xk)
        if K == 2:
            np.testing.assert_allclose(z, ref_z, atol=1e-5 * max(1, np.abs(ref_z).max()))
        else:  # softmax logits are defined up to a constant per row
            np.testing.assert_allclose(z - z.mean(1, keepdims=True),
                                       ref_z - ref_z.mean(1, keepdims=True), atol=2e-4)  # fmt: skip
    warm = fit_logreg(X, y, Cs, init=ours, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(warm.coef, ours.coef, atol=1e-6, rtol=1e-5)
    assert int(warm.n_iter.sum()) * 3 <= int(ours.n_iter.sum())  # it starts near the optimum
    monkeypatch.setattr(logreg.common, "CPU_ONE_BY_ONE", 1 << 40)
    batched = fit_logreg(X, y, Cs, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(batched.coef, ours.coef, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("K", [2, 3])
def test_batched_lbfgs_with_early_finishers_matches_sklearn(K: int) -> None:
    """The batched torch L-BFGS (small problems; the path a GPU takes) on problems that converge
    after different iteration counts: the pending ones continue on gathered rows, and each
    ends at its own sklearn optimum."""
    Xs, ys = zip(*[problem(100, 40, K, seed=20 + s) for s in range(3)], strict=True)
    mean = np.mean(np.concatenate(Xs), 0)
    X, y = torch.tensor(np.stack(Xs) - mean), torch.tensor(np.stack(ys))
    Cs = [0.001, 0.1, 10.0]
    fit = fit_logreg(X, y, torch.tensor(Cs, dtype=torch.float64), n_classes=K, solver="lbfgs",
                     tol=1e-9, max_iter=5000)  # fmt: skip
    assert bool(fit.converged.all()) and len(set(fit.n_iter.tolist())) > 1
    for b, C in enumerate(Cs):
        ref = sklearn_reference(Xs[b] - mean, ys[b], C)
        z = fit.decision_function(torch.tensor(Xs[b] - mean))[b].numpy()
        ref_z = ref.decision_function(Xs[b] - mean)
        if K > 2:
            z, ref_z = z - z.mean(1, keepdims=True), ref_z - ref_z.mean(1, keepdims=True)
        np.testing.assert_allclose(z, ref_z, atol=2e-4 * max(1, np.abs(ref_z).max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_newton_numpy_and_torch_paths_match_sklearn(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel Newton solver on a CPU (numpy with LAPACK per problem) and in torch (the GPU's
    path, forced here on the CPU) on one batch with masked rows, a C per problem and a
    separable problem that converges later: both reach each problem's sklearn optimum, with the
    same iteration counts (the same algorithm)."""
    from fmprobe.probes import logreg

    n, D = 60, 90  # n < D: the Gram matrix is what the solver works on
    Xs, ys = zip(*[problem(n, D, 2, seed=30 + s, separable=s == 2) for s in range(3)], strict=True)
    mean = np.mean(np.concatenate(Xs), 0)
    X = torch.tensor(np.stack(Xs) - mean, dtype=dtype)
    y = torch.tensor(np.stack(ys))
    keep = np.ones((3, n), bool)
    keep[0, 1::5] = False
    Cs = torch.tensor([0.01, 1.0, 5.0], dtype=torch.float64)
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    kw = dict(n_classes=2, mask=torch.tensor(keep), solver="newton-kernel", tol=tol)
    fits = {}
    for path, flag in (("numpy", True), ("torch", False)):
        monkeypatch.setattr(logreg.common, "CPU_NUMPY_KERNEL", flag)
        fits[path] = fit_logreg(X, y, Cs, **kw)  # type: ignore[arg-type]
        assert bool(fits[path].converged.all())
    assert fits["numpy"].n_iter.tolist() == fits["torch"].n_iter.tolist()
    for b in range(3):
        Xk = (Xs[b][keep[b]] - mean).astype(np.float32 if dtype == torch.float32 else np.float64)
        ref = sklearn_reference(Xk.astype(np.float64), ys[b][keep[b]], float(Cs[b]))
        ref_z = ref.decision_function(Xk.astype(np.float64))
        atol = (1e-6 if dtype == torch.float64 else 1e-4) * max(1.0, np.abs(ref_z).max())
        for fit in fits.values():
            z = fit.decision_function(torch.tensor(Xk, dtype=torch.float64))[b].numpy()
            np.testing.assert_allclose(z, ref_z, atol=atol)


def test_kernel_newton_step_length_is_the_line_minimum() -> None:
    """``step_length`` finds the minimum of the objective along a Newton step: compared with
    scipy's bounded scalar minimiser on the same one-dimensional function."""
    from scipy.optimize import minimize_scalar
    from scipy.special import expit

    from fmprobe.probes.logreg import step_length

    rng = np.random.default_rng(5)
    n = 40
    A = rng.normal(size=(n, 30))
    K = A @ A.T
    y = (rng.random(n) < 0.4).astype(float)
    m = (rng.random(n) < 0.9).astype(float)
    alpha, da = rng.normal(size=n) * 0.1, rng.normal(size=n)
    b, db, invC = 0.3, -0.2, 1 / 0.7

    def phi(t: float) -> float:
        a = alpha - t * da
        z = K @ a + (b - t * db)
        return float((m * (np.logaddexp(0, z) - y * z)).sum() + 0.5 * invC * a @ K @ a)

    # descent direction for phi at t=0 (a Newton step would be one): flip da, db if needed
    if phi(1e-6) > phi(0.0):
        da, db = -da, -db
    z = K @ alpha + b
    kd = K @ da
    t = step_length(z[None], (kd + db)[None], kd[None], da[None], (K @ alpha)[None],
                     m[None], y[None], np.array([invC]), expit, iters=30)  # fmt: skip
    ref = minimize_scalar(phi, bounds=(1e-3, 64.0), method="bounded", options={"xatol": 1e-10})
    assert abs(float(t[0]) - ref.x) <= 1e-6 * max(1.0, ref.x)


def ill_conditioned(n: int, D: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated features (singular values from 10³ to 10⁻², as untrained networks give) and
    labels that depend on weak directions too: plain L-BFGS needs thousands of iterations."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    Z = rng.normal(size=(n, D))
    X = (Z * np.logspace(3, -2, D)) @ Q.T
    y = np.argmax(Z[:, :K] * 2 + Z[:, D // 2 : D // 2 + K] + 0.3 * rng.normal(size=(n, K)), 1)
    return X - X.mean(0), y


def newton_reference(X: np.ndarray, y: np.ndarray, C: float) -> LogisticRegression:
    """scikit-learn's Newton (Cholesky) solver: on ill-conditioned features sklearn's lbfgs
    stops at its evaluation limit, far from the optimum."""
    return LogisticRegression(C=C, solver="newton-cholesky", tol=1e-12, max_iter=1000).fit(X, y)


@pytest.mark.parametrize("one_by_one", [False, True])
def test_per_feature_penalty_of_one_over_c_is_the_plain_objective(one_by_one: bool) -> None:
    """``penalty`` = 1/C for every feature gives the iterates of the plain L2 term."""
    from fmprobe.probes.logreg import lbfgs, lbfgs_cpu

    X, y = problem(120, 9, 3, seed=3)
    Xt, yt = torch.tensor(X - X.mean(0))[None], torch.tensor(y)[None]
    m = torch.ones(1, 120, dtype=torch.float64)
    C = torch.tensor([0.7], dtype=torch.float64)
    run = lbfgs_cpu if one_by_one else lbfgs
    kw = dict(n_classes=3, max_iter=40, tol=1e-12, init=None)
    plain = run(Xt, yt, m, C, **kw)  # type: ignore[arg-type]
    weighted = run(Xt, yt, m, C, penalty=torch.full((1, 9), 1 / 0.7, dtype=torch.float64), **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(weighted.coef, plain.coef, atol=1e-12, rtol=1e-10)
    assert int(weighted.n_iter[0]) == int(plain.n_iter[0])
    # a different weight per feature is a different objective: sklearn's on rescaled features
    pen = torch.linspace(0.5, 4.0, 9, dtype=torch.float64)[None]
    w = run(Xt, yt, m, C, penalty=pen, **{**kw, "max_iter": 2000})  # type: ignore[arg-type]
    scale = 1 / np.sqrt(pen[0].numpy())  # W_j = scale_j·V_j turns Σ pen_j W_j²/2 into ||V||²/2
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit((X - X.mean(0)) * scale, y)
    np.testing.assert_allclose(w.coef[0].numpy().T / scale, ref.coef_, atol=1e-5)


@pytest.mark.parametrize("one_by_one", [False, True])
def test_whitened_lbfgs_solves_correlated_features(one_by_one: bool) -> None:
    """On features with singular values over five orders of magnitude, whitened L-BFGS reaches
    sklearn's optimum in a budget where plain L-BFGS stays far from it."""
    from fmprobe.probes.logreg import lbfgs, lbfgs_whitened, rotation

    n, D, K, C = 400, 40, 4, 1.0
    X, y = ill_conditioned(n, D, K, seed=0)
    Xt, yt = torch.tensor(X)[None], torch.tensor(y)[None]
    m = torch.ones(1, n, dtype=torch.float64)
    Ct = torch.tensor([C], dtype=torch.float64)
    ref = newton_reference(X, y, C)
    best = objective(X, y, ref.coef_, ref.intercept_, C)
    kw = dict(n_classes=K, max_iter=300, tol=1e-13, init=None)
    rot = rotation(Xt, m)
    s_ref = np.linalg.svd(X)[1]  # from XᵀX: accurate to rounding of the largest
    np.testing.assert_allclose(np.sort(rot.s[0].numpy()), np.sort(s_ref), atol=1e-10 * s_ref[0])
    w = lbfgs_whitened(Xt, yt, m, Ct, one_by_one=one_by_one, **kw)  # type: ignore[arg-type]
    W, b = w.coef[0].numpy().T, w.intercept[0].numpy()
    assert objective(X, y, W, b, C) - best <= 1e-9 * best
    np.testing.assert_allclose(X @ W.T + b - (X @ W.T + b).mean(1, keepdims=True),
                               ref.decision_function(X) - ref.decision_function(X).mean(1, keepdims=True),
                               atol=1e-3)  # fmt: skip
    p = lbfgs(Xt, yt, m, Ct, **kw)  # type: ignore[arg-type]
    assert objective(X, y, p.coef[0].numpy().T, p.intercept[0].numpy(), C) - best > 1e-6 * best


def test_primal_newton_in_the_span_of_the_rows_equals_sklearn() -> None:
    """n < D: Newton on the n coordinates of the rows' span reaches sklearn's optimum, and its
    weights lie in that span."""
    from fmprobe.probes.logreg import newton_primal_span

    n, D, K, C = 30, 90, 3, 50.0
    Xs, ys = zip(*[problem(n, D, K, seed=20 + s) for s in range(2)], strict=True)
    X = torch.tensor(np.stack([x - x.mean(0) for x in Xs]))
    y = torch.tensor(np.stack(ys))
    m = torch.ones(2, n, dtype=torch.float64)
    fit = newton_primal_span(X, y, m, torch.full((2,), C, dtype=torch.float64), n_classes=K,
                             init=None)  # fmt: skip
    for b in range(2):
        Xb = X[b].numpy()
        ref = sklearn_reference(Xb, ys[b], C)
        W = fit.coef[b].numpy().T
        assert objective(Xb, ys[b], W, fit.intercept[b].numpy(), C) <= (
            objective(Xb, ys[b], ref.coef_, ref.intercept_, C) * (1 + 1e-9)
        )
        resid = W.T - Xb.T @ np.linalg.lstsq(Xb.T, W.T, rcond=None)[0]  # off the rows' span
        assert np.abs(resid).max() <= 1e-9 * np.abs(W).max()


def fenchel_young_bound(X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray,
                       C: float) -> float:  # fmt: skip
    """A lower bound of the minimum from the model's own probabilities q (their sum over the
    rows equals the labels': the intercepts are at their optimum):
    Σᵢ H(qᵢ) − (C/2)‖Xᵀ(q − t)‖², H the entropy."""
    from scipy.special import softmax

    q = softmax(X @ W.T + b, axis=1)
    t = np.eye(q.shape[1])[y]
    assert np.abs((q - t).sum(0)).max() <= 1e-8 * len(y)
    H = -(q * np.log(np.clip(q, 1e-300, None))).sum()
    return float(H - C / 2 * ((X.T @ (q - t)) ** 2).sum())


def test_correlated_multiclass_problems_at_large_c_are_certified() -> None:
    """The features and C that left 10-class probes of the demo uncertified (correlated
    features, nearly separable at large C, (D + 1)·K beyond 1,536 parameters): every problem
    certified; the objective is within 10⁻⁶ of a lower bound of the minimum computed here and
    no worse than sklearn's Newton solver's (which on these features falls back to lbfgs
    with a warning), solving the same problem on the rows' coordinates X·Vᵀ (X = U S Vᵀ; the
    optimum's weights lie in the rows' span: sklearn on all 300 features takes 40 s each)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    n, D, K = 150, 300, 6
    Xs, ys = zip(*[ill_conditioned(n, D, K, seed=s) for s in range(3)], strict=True)
    Cs = [1.0, 100.0, 1e4]
    fit = fit_logreg(torch.tensor(np.stack(Xs)).float(), torch.tensor(np.stack(ys)),
                     torch.tensor(Cs, dtype=torch.float64), n_classes=K)  # fmt: skip
    assert bool(fit.converged.all())
    for b in range(3):
        W, bias = fit.coef[b].double().numpy().T, fit.intercept[b].double().numpy()
        got = objective(Xs[b], ys[b], W, bias, Cs[b])
        assert got - fenchel_young_bound(Xs[b], ys[b], W, bias, Cs[b]) <= 1e-6 * got
        Xr = Xs[b] @ np.linalg.svd(Xs[b], full_matrices=False)[2].T
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ref = newton_reference(Xr, ys[b], Cs[b])
        assert got <= objective(Xr, ys[b], ref.coef_, ref.intercept_, Cs[b]) * (1 + 1e-6)
