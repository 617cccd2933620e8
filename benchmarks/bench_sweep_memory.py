"""Peak memory of a large sweep on the CPU: a 100,000 × 768 training pool, 10,000 test rows,
``--C auto`` (5 folds × 10 C values), n = 20/100/500/2000, 4 seeds. Prints wall time and the
process's peak resident memory (the store import included).

    python benchmarks/bench_sweep_memory.py
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fmprobe.store import import_features
from fmprobe.sweep import sweep

POOL, TEST, D = 100_000, 10_000, 768


def main() -> None:
    rng = np.random.default_rng(0)
    n_rows = POOL + TEST
    X = rng.normal(size=(n_rows, D)).astype(np.float32)
    y = (X[:, :8].sum(1) + rng.normal(size=n_rows) > 1).astype(int)
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        np.save(tmpd / "f.npy", X)
        del X
        split = np.where(np.arange(n_rows) < POOL, "train", "test")
        table = pd.DataFrame({"id": [f"r{i}" for i in range(n_rows)], "label": y, "split": split})
        table.to_csv(tmpd / "t.csv", index=False)
        import_features(tmpd / "s.zarr", name="big", features=tmpd / "f.npy", labels=tmpd / "t.csv")
        t0 = time.perf_counter()
        sweep(store=str(tmpd / "s.zarr"), out=str(tmpd / "r.parquet"), features="big",
              n="20,100,500,2000", seeds=4, split_col="split", C="auto", folds=5,
              progress=False)  # fmt: skip
        rows = len(pd.read_parquet(tmpd / "r.parquet"))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"{rows} probes in {time.perf_counter() - t0:.1f} s; peak RSS {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
