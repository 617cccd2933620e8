"""Sweep throughput: fmprobe's batched logistic-regression probes against scikit-learn at its
best on the same cores, per label count n, in one process run.

Same synthetic data for both (D = 768, a 10,000-row training pool, 5,000 test rows). For each n
the same (n, seed) subsets are fitted by
- fmprobe: ``fmprobe.sweep.sweep`` end to end (store read, subsets, fits, test scoring, AUROC,
  Parquet) with its default settings (``--workers auto``: this process and, for a sweep long
  enough to pay for them, one worker process per further core, one thread each; ``--workers
  N`` to measure another setting);
- scikit-learn: ``LogisticRegression(C=1)`` (default lbfgs, tol 1e-4) + ``roc_auc_score`` on the
  test rows, one process per core with one BLAS thread each (with default BLAS threads
  scikit-learn is much slower on few cores, so that would be no fair reference).
Both process pools are started before the timing (each side's start-up, once per process, is
printed apart). fmprobe first fits the same subsets as scikit-learn; when that takes less than
half the time budget it is timed again on as many seeds as fill it. The figure is probes per
second; the ratio is fmprobe / scikit-learn. As a correctness check, both sides' AUROC on three
subsets is compared with the AUROC at the exact optimum (newton-cholesky in float64 at tol
1e-10).

With ``--load K`` everything is measured twice in the same run: on the machine as it is, then
while K busy processes (a bounded CPU loop the benchmark starts and stops itself) share it;
the report gives both ratios and fmprobe's loaded throughput as a share of its own idle one.
The start-up of a command (``fmprobe sweep`` of one probe in a fresh process, imports
included) is timed too.

    python benchmarks/bench_sweep.py                 # n = 20, 100, 500, 2000
    python benchmarks/bench_sweep.py --n 20,100,500,2000 --seconds 10 --load 2
    python benchmarks/bench_sweep.py --n 20,100 --seconds 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

POOL, TEST, D = 10_000, 5_000, 768


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(POOL + TEST, D)).astype(np.float32)
    w = rng.normal(size=D) / np.sqrt(D)
    y = (X @ w * 3 + rng.normal(size=len(X)) > 0.5).astype(int)
    return X, y


_STATE: dict[str, np.ndarray] = {}


def _init(X: np.ndarray, y: np.ndarray, pool: np.ndarray, test: np.ndarray) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _STATE.update(X=X.astype(np.float64), y=y, pool=pool, test=test)


def _sk_fit(idx: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    X, y, test = _STATE["X"], _STATE["y"], _STATE["test"]
    clf = LogisticRegression(C=1.0).fit(X[idx], y[idx])
    return float(roc_auc_score(y[test], clf.decision_function(X[test])))


def _exact_auroc(
    X: np.ndarray, y: np.ndarray, pool: np.ndarray, test: np.ndarray, n: int, seed: int
) -> float:
    """AUROC at the exact optimum (newton-cholesky, float64, tol 1e-10) for one subset."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from fmprobe.sweep.splits import nested_order

    idx = pool[nested_order(y[pool], seed=seed)[:n]]
    Xd = X.astype(np.float64)
    clf = LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-10, max_iter=1000)
    clf.fit(Xd[idx], y[idx])
    return float(roc_auc_score(y[test], clf.decision_function(Xd[test])))


def _best_seconds(fn: Callable[[], object], reps: int = 5) -> float:
    """The fastest of ``reps`` timed calls of ``fn`` (the GPU synchronised after each)."""
    import torch

    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def device_rates(device: str) -> dict[str, float]:
    """Throughputs of one CPU core (one thread) or of the GPU, measured here: float32 and
    float64 matrix products (FLOP/s), the sort of one row of test scores (s), and the read
    bandwidth of a matrix-vector product over an n × D float32 block (bytes/s, by n)."""
    import torch
    from threadpoolctl import threadpool_limits

    dev = torch.device(device)
    rates: dict[str, float] = {}
    with threadpool_limits(1):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for dt, name in ((torch.float32, "gemm32"), (torch.float64, "gemm64")):
                a = torch.randn(TEST, D, dtype=dt, device=dev)
                b = torch.randn(D, 256, dtype=dt, device=dev)
                rates[name] = 2 * TEST * D * 256 / _best_seconds(lambda: a @ b)  # noqa: B023
            keys = np.random.default_rng(0).integers(0, 1 << 40, size=(64, TEST))
            if dev.type == "cpu":  # the CPU metrics sort packed int64 keys with numpy
                rates["sort_row"] = _best_seconds(lambda: np.sort(keys, axis=1)) / 64
            else:
                kt = torch.from_numpy(keys).to(dev)
                rates["sort_row"] = _best_seconds(lambda: torch.sort(kt, dim=1)) / 64
            for n in (500, 2000, 8000):
                Xn = torch.randn(n, D, device=dev)
                v = torch.randn(D, device=dev)
                if dev.type == "cpu":  # the CPU L-BFGS's products are numpy's
                    Xa, va = Xn.numpy(), v.numpy()
                    sec = _best_seconds(lambda: Xa @ va, reps=50)  # noqa: B023
                else:
                    sec = _best_seconds(lambda: Xn @ v, reps=50)  # noqa: B023
                rates[f"bw{n}"] = n * D * 4 / sec
        finally:
            torch.set_num_threads(threads)
    return rates


def floor_rate(
    n: int, iters: float, rates: dict[str, float], units: int, kernel_max_n: int
) -> float:
    """Probes/s if every probe cost only its arithmetic and memory traffic at ``rates``
    (``units`` cores or one GPU): the test-set product (2·T·D FLOPs), the sort of its T
    scores, and the fit: for the kernel Newton solver the Gram matrix (n²·D FLOPs) and one
    Cholesky factorisation (n³/3) per iteration, for L-BFGS two reads of the n × D rows per
    iteration; ``iters`` is the mean iteration count the sweep reported."""
    t = 2 * TEST * D / rates["gemm32"] + rates["sort_row"]
    if n <= kernel_max_n:
        t += n * n * D / rates["gemm32"] + iters * n**3 / 3 / rates["gemm64"]
    else:
        bw = rates[min((k for k in rates if k.startswith("bw")), key=lambda k: abs(int(k[2:]) - n))]
        t += iters * 2 * n * D * 4 / bw
    return units / t


def _max_err(auroc: pd.Series, exact: dict[int, float]) -> float:
    """Largest |AUROC − AUROC at the exact optimum| over the seeds checked."""
    return float(f"{max(abs(auroc[s] - a) for s, a in exact.items()):.1e}")


def _busy(deadline: float) -> None:
    """A CPU-bound loop that ends by itself at ``deadline`` (a process of the load)."""
    x = 0
    while time.time() < deadline:
        x = (x * 1103515245 + 12345) % 2147483648


def start_load(k: int, seconds: float) -> list[object]:
    """``k`` busy processes for at most ``seconds``."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_busy, args=(time.time() + seconds,), daemon=True) for _ in range(k)
    ]
    for p in procs:
        p.start()
    return procs


def stop_load(procs: list[object]) -> None:
    for p in procs:
        p.terminate()  # type: ignore[attr-defined]
        p.join()  # type: ignore[attr-defined]


def cli_start_seconds(store: Path, tmpd: Path) -> float:
    """Wall time of ``fmprobe sweep`` fitting one probe in a fresh process (imports included),
    best of two."""
    import subprocess
    import sys

    best = float("inf")
    for i in range(2):
        out = tmpd / f"start{i}.parquet"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fmprobe.cli", "sweep", "--store", str(store),
                        "--out", str(out), "--features", "bench", "--tasks", "label", "--n", "20",
                        "--seeds", "1", "--split-col", "split", "--quiet"], check=True)  # fmt: skip
        best = min(best, time.perf_counter() - t0)
    return best


def measure(
    n: int, *, args: argparse.Namespace, ex: ProcessPoolExecutor, store: Path, tmpd: Path,
    sp: object, y: np.ndarray, cores: int, workers: int | str, tag: str,
) -> tuple[float, float, int, int, dict[int, float], Path]:  # fmt: skip
    """Probes/s of scikit-learn and fmprobe at label count ``n`` (the same subsets)."""
    from fmprobe.sweep import sweep
    from fmprobe.sweep.splits import nested_order

    train = sp.train  # type: ignore[attr-defined]
    seeds, sk_auc, t0 = 0, {}, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        batch = range(seeds, seeds + 4 * cores)
        idx = [train[nested_order(y[train], seed=s)[:n]] for s in batch]
        for s, a in zip(batch, ex.map(_sk_fit, idx), strict=True):
            sk_auc[s] = a
        seeds += len(batch)
    sk_rate = seeds / (time.perf_counter() - t0)
    # fmprobe: the same seeds (hence the same subsets), whole sweep call timed; when that took
    # less than half the budget, timed again on as many seeds as fill it (a sweep's fixed cost,
    # ~0.3 s, would otherwise weigh on the rate)
    fm_seeds = max(seeds, 8)
    first = None
    for attempt in range(2):
        out = tmpd / f"r{n}-{tag}-{attempt}.parquet"
        t0 = time.perf_counter()
        sweep(store=str(store), out=str(out), features="bench", tasks="label", n=str(n),
              seeds=fm_seeds, split_col="split", C=1.0, device=args.device, workers=workers,
              progress=False)  # fmt: skip
        elapsed = time.perf_counter() - t0
        fm_rate = fm_seeds / elapsed
        first = first or out
        if elapsed >= args.seconds / 2:
            break
        fm_seeds = int(fm_rate * args.seconds)
    return fm_rate, sk_rate, seeds, fm_seeds, sk_auc, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="20,100,500,2000")
    ap.add_argument("--seconds", type=float, default=15.0, help="time budget per n and side")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--workers", default="auto", help="fmprobe's --workers (default: auto)")
    ap.add_argument("--load", type=int, default=0, help="also measure beside K busy processes")
    args = ap.parse_args()

    import torch

    from fmprobe.probes.logreg import kernel_max_n
    from fmprobe.store import import_features
    from fmprobe.sweep.processes import available_cores, worker_pool
    from fmprobe.sweep.splits import make_split

    X, y = make_data()
    cores = available_cores()
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rates = device_rates(dev)
    units = cores if dev == "cpu" else 1
    kmax = kernel_max_n(torch.device(dev))
    print("device rates:", {k: f"{v:.3g}" for k, v in rates.items()})
    workers = args.workers if args.workers == "auto" else int(args.workers)
    pool = (cores - 1) if workers == "auto" else int(workers)
    t0 = time.perf_counter()
    if pool > 1 or (workers == "auto" and pool >= 1):
        worker_pool(pool)
    print(f"fmprobe --workers {workers}: {pool} worker processes started in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        np.save(tmpd / "f.npy", X)
        split = np.where(np.arange(len(X)) < POOL, "train", "test")
        pd.DataFrame({"id": [f"r{i}" for i in range(len(X))], "label": y, "split": split}).to_csv(
            tmpd / "t.csv", index=False
        )
        store = tmpd / "s.zarr"
        import_features(store, name="bench", features=tmpd / "f.npy", labels=tmpd / "t.csv")
        start = cli_start_seconds(store, tmpd)
        print(f"fmprobe sweep start-up (fresh process, one probe): {start:.1f} s")
        sp = make_split(n_rows=len(X), split_values=split, split_col="split")
        with ProcessPoolExecutor(
            cores, initializer=_init, initargs=(X, y, sp.train, sp.test)
        ) as ex:
            t0 = time.perf_counter()
            list(ex.map(_sk_fit, [sp.train[:50]] * cores))  # warm the workers
            print(
                f"scikit-learn pool ({cores} processes) started in {time.perf_counter() - t0:.1f} s"
            )
            for load in sorted({0, args.load}):
                procs = start_load(load, 4 * args.seconds * len(args.n.split(",")) * 3)
                try:
                    for n in [int(v) for v in args.n.split(",")]:
                        fm_rate, sk_rate, seeds, fm_seeds, sk_auc, out = measure(
                            n, args=args, ex=ex, store=store, tmpd=tmpd, sp=sp, y=y,
                            cores=cores, workers=workers, tag=f"l{load}",
                        )  # fmt: skip
                        res = pd.read_parquet(out).set_index("seed")
                        floor = floor_rate(n, float(res["n_iter"].mean()), rates, units, kmax)
                        exact = {s: _exact_auroc(X, y, sp.train, sp.test, n, s) for s in range(3)}
                        row = {
                            "load": load,
                            "n": n,
                            "fmprobe_probes_per_s": round(fm_rate, 1),
                            "sklearn_probes_per_s": round(sk_rate, 1),
                            "ratio": round(fm_rate / sk_rate, 2),
                            "floor_probes_per_s": round(floor, 1),
                            "share_of_floor": round(fm_rate / floor, 3),
                            "fmprobe_mean_iters": round(float(res["n_iter"].mean()), 1),
                            "fmprobe_auroc_err": _max_err(res["auroc"], exact),
                            "sklearn_auroc_err": _max_err(pd.Series(sk_auc), exact),
                            "sklearn_seeds": seeds,
                            "fmprobe_seeds": fm_seeds,
                        }
                        results.append(row)
                        print(json.dumps(row), flush=True)
                finally:
                    stop_load(procs)
    idle = {r["n"]: r["fmprobe_probes_per_s"] for r in results if r["load"] == 0}
    for r in results:
        if r["load"]:
            r["share_of_idle"] = round(r["fmprobe_probes_per_s"] / idle[r["n"]], 3)
    summary = {
        "device": dev,
        "device_rates": rates,
        "cores": cores,
        "fmprobe_workers": workers,
        "start_up_seconds": round(start, 2),
        "D": D,
        "test_rows": TEST,
        "results": results,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
