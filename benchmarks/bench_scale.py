"""Scale-out: throughput of `--engine ray` with 1 and 2 workers on this machine, for embedding
(builtin:digits, ViT-Tiny/16 at 224 px, random init) and for a sweep (synthetic D = 768
features, n = 20..500, 32 seeds). Each figure is the wall time of the whole call (Ray start
excluded: the cluster is started before the clock).

    python benchmarks/bench_scale.py [--workers 1,2] [--images 1797]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--seeds", type=int, default=32)
    args = ap.parse_args()
    import ray

    from fmprobe.embed import embed
    from fmprobe.store import import_features
    from fmprobe.sweep import sweep

    rng = np.random.default_rng(0)
    N, D = 6000, 768
    X = rng.normal(size=(N, D)).astype(np.float32)
    y = (X @ rng.normal(size=D) / np.sqrt(D) * 3 + rng.normal(size=N) > 0).astype(int)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        np.save(t / "f.npy", X)
        pd.DataFrame({"id": [f"r{i}" for i in range(N)], "label": y}).to_csv(
            t / "t.csv", index=False
        )
        for k in (f"f{i}" for i in range(4)):
            import_features(
                t / "s.zarr", name=f"m/{k}/cls", features=t / "f.npy", labels=t / "t.csv"
            )
        for w in [int(v) for v in args.workers.split(",")]:
            ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
            try:
                t0 = time.perf_counter()
                rep = embed(data="builtin:digits", model="timm:vit_tiny_patch16_224",
                            random_init=True, store=str(t / f"e{w}.zarr"), engine="ray",
                            workers=w, num_workers=0, progress=False)  # fmt: skip
                emb = rep.rows_embedded / (time.perf_counter() - t0)
                t0 = time.perf_counter()
                r = sweep(store=str(t / "s.zarr"), out=str(t / f"r{w}.parquet"), features="*",
                          n="20,100,500", seeds=args.seeds, engine="ray", seeds_per_unit=8,
                          progress=False)  # fmt: skip
                swp = r.probes_fitted / (time.perf_counter() - t0)
            finally:
                ray.shutdown()
            row = {
                "workers": w,
                "embed_images_per_s": round(emb, 1),
                "sweep_probes_per_s": round(swp, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]
    for r in rows[1:]:
        e = r["embed_images_per_s"] / base["embed_images_per_s"]
        s = r["sweep_probes_per_s"] / base["sweep_probes_per_s"]
        print(f"{r['workers']} vs {base['workers']} workers: embed x{e:.2f}, sweep x{s:.2f}")


if __name__ == "__main__":
    main()
