"""Time and peak memory of every selection strategy: B = 1,000 picks from N = 100,000 × 768
random-but-clustered float32 features (200 Gaussian clusters of unequal size and spread).
Each strategy runs in its own process, so its peak resident memory (features included) is
its own.

    python benchmarks/bench_select.py                 # the full size
    python benchmarks/bench_select.py --n 10000       # a quick run
    python benchmarks/bench_select.py --strategies typiclust,probcover --device cuda
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--budget", type=int, default=1_000)
    ap.add_argument("--strategies", default=None, help="Comma list (default: all).")
    ap.add_argument("--device", default=None)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
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
