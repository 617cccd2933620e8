"""Time and peak memory of every selection strategy: B = 1,000 picks from N = 100,000 × 768
random-but-clustered float32 features (200 Gaussian clusters of unequal size and spread).
Each strategy runs in its own process, so its peak resident memory (features included) is
its own. ``--kmeans`` instead sets fmprobe's k-means beside scikit-learn's ``KMeans`` (same
``n_init``, same threads, one process): inertia ratio and time ratio on digits (raw and
L2-normalised) and on the clustered features.

    python benchmarks/bench_select.py                 # the full size
    python benchmarks/bench_select.py --n 10000       # a quick run
    python benchmarks/bench_select.py --strategies typiclust,probcover --device cuda
    python benchmarks/bench_select.py --kmeans --n 20000 --d 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_features(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = 200
    weights = rng.dirichlet(np.full(k, 0.7))
    centers = rng.normal(size=(k, d)).astype(np.float32)
    spread = rng.uniform(0.3, 1.0, size=k).astype(np.float32)
    y = rng.choice(k, size=n, p=weights)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 10_000):
        yy = y[s : s + 10_000]
        noise = rng.standard_normal((len(yy), d), dtype=np.float32)
        x[s : s + 10_000] = centers[yy] + spread[yy, None] * noise
    return x


def child(path: str, strategy: str, budget: int, device: str | None) -> None:
    from fmprobe.select import select_indices

    x = np.load(path)
    t0 = time.perf_counter()
    sel = select_indices(x, budget=budget, strategy=strategy, seed=0, device=device)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux
    unique = len(set(sel.indices.tolist()))
    print(json.dumps({"seconds": seconds, "peak_gb": peak, "unique": unique, **sel.info}))


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def kmeans_vs_sklearn(n: int, d: int, n_inits: list[int], seeds: int, sets: list[str]) -> None:
    """Mean over ``seeds`` of inertia(fmprobe) / inertia(sklearn) and of the time ratio, per
    data set, k and n_init; sklearn's ``KMeans(n_init=..., random_state=seed)``."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits

    from fmprobe.select.base import l2_normalise
    from fmprobe.select.compute import resolve_backend
    from fmprobe.select.kmeans import kmeans

    be = resolve_backend("cpu")
    digits = load_digits().data.astype(np.float32)
    data = {
        "digits": lambda: ("digits", digits, (10, 20, 50, 100)),
        "digits-l2": lambda: ("digits, L2-normalised", l2_normalise(digits), (10, 20, 50, 100)),
        "clustered": lambda: (f"clustered {n:,} x {d}", make_features(n, d), (10, 100, 500)),
    }
    unknown = sorted(set(sets) - set(data))
    if unknown:
        raise SystemExit(f"--sets: unknown {unknown}; choose from {', '.join(data)}")
    print(f"k-means: fmprobe ({be.name}) / scikit-learn KMeans, mean over {seeds} seeds")
    print(f"{'data':<26} {'k':>5} {'n_init':>6} {'inertia':>9} {'time':>7} {'sk s':>7} {'it':>8}")
    for key in sets:
        name, x, ks = data[key]()
        for k in ks:
            for n_init in n_inits:
                ratios, times, sk_s, its = [], [], [], []
                for seed in range(seeds):
                    ref, t_ref = _timed(
                        lambda: KMeans(k, n_init=n_init, random_state=seed).fit(x)  # noqa: B023
                    )
                    ours, t_ours = _timed(
                        lambda: kmeans(x, k, seed=seed, be=be, n_init=n_init)  # noqa: B023
                    )
                    ratios.append(ours.inertia / ref.inertia_)
                    times.append(t_ours / t_ref)
                    sk_s.append(t_ref)
                    its.append(f"{ours.iterations}/{ref.n_iter_}")
                print(
                    f"{name:<26} {k:>5} {n_init:>6} {np.mean(ratios):>9.4f} "
                    f"{np.mean(times):>7.2f} {np.mean(sk_s):>7.2f} {its[0]:>8}",
                    flush=True,
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--budget", type=int, default=1_000)
    ap.add_argument("--strategies", default=None, help="Comma list (default: all).")
    ap.add_argument("--device", default=None)
    ap.add_argument("--kmeans", action="store_true", help="k-means against scikit-learn's.")
    ap.add_argument("--n-init", default="1,10", help="--kmeans: comma list of n_init.")
    ap.add_argument("--seeds", type=int, default=3, help="--kmeans: seeds per row.")
    ap.add_argument("--sets", default="digits,digits-l2,clustered", help="--kmeans: data sets.")
    ap.add_argument("--threads", type=int, default=None, help="Limit BLAS/OpenMP/torch threads.")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    if args.kmeans:
        n_inits = [int(v) for v in args.n_init.split(",")]
        kmeans_vs_sklearn(args.n, args.d, n_inits, args.seeds, args.sets.split(","))
        return
    if args.child:
        child(args.child[0], args.child[1], args.budget, args.device)
        return
    from fmprobe.select import STRATEGIES

    names = args.strategies.split(",") if args.strategies else list(STRATEGIES)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "x.npy")
        np.save(path, make_features(args.n, args.d))
        print(f"B = {args.budget} from N = {args.n:,} × D = {args.d} (float32)", flush=True)
        print(f"{'strategy':<10} {'seconds':>9} {'peak GB':>8}  details", flush=True)
        for name in names:
            cmd = [sys.executable, __file__, "--child", path, name, "--budget", str(args.budget)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.device:
                cmd += ["--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{name:<10} failed: {tail}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            details = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r.items()
                if k not in ("seconds", "peak_gb")
            )
            print(f"{name:<10} {r['seconds']:>9.1f} {r['peak_gb']:>8.2f}  {details}", flush=True)


if __name__ == "__main__":
    main()
