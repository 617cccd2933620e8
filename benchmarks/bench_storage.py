"""Object storage against a local disk, in one run: embed images/s and sweep probes/s with the
store (and the sweep's results) on a local S3 server (moto's, on 127.0.0.1, started here)
against the same work on local paths. The figure is the ratio S3 / local.

moto's server is a Python process on this machine: it measures the cost of fmprobe's object
storage path (requests, listings, one object per chunk and per unit), not a cloud's
bandwidth.

    python benchmarks/bench_storage.py                # digits, tiny ViT; 3,000-row sweep
    python benchmarks/bench_storage.py --seeds 64 --json storage.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 32, "num_heads": 2}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _embed(store: str) -> float:
    from fmprobe.embed import embed

    report = embed(data="builtin:digits", model="timm:vit_tiny_patch16_224", random_init=True,
                   model_kwargs=TINY_VIT, store=store, layers="3", num_workers=0,
                   progress=False)  # fmt: skip
    return report.rows_embedded / report.loop_seconds


def _sweep(store: str, out: str, seeds: int) -> float:
    from fmprobe.sweep import sweep

    t0 = time.perf_counter()
    report = sweep(store=store, out=out, features="f", tasks="y", n="20,100,500", seeds=seeds,
                   workers=1, progress=False)  # fmt: skip
    return report.probes_fitted / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from moto.server import ThreadedMotoServer

    from fmprobe.store import import_features

    port = _port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")  # fmt: skip
    import s3fs

    s3fs.S3FileSystem().mkdir("bench")
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmpd = Path(tmp)
            rng = np.random.default_rng(0)
            X = rng.normal(size=(3000, 384)).astype(np.float32)
            y = (X[:, 0] + rng.normal(size=3000) > 0).astype(int)
            np.save(tmpd / "x.npy", X)
            pd.DataFrame({"id": [f"r{i}" for i in range(3000)], "y": y}).to_csv(
                tmpd / "t.csv", index=False
            )
            for where, root in (("local disk", str(tmpd)), ("local S3 (moto)", "s3://bench")):
                store = f"{root}/f.zarr"
                import_features(store, name="f", features=tmpd / "x.npy", labels=tmpd / "t.csv")
                rows.append({
                    "where": where,
                    "embed_images_per_s": round(_embed(f"{root}/digits.zarr"), 1),
                    "sweep_probes_per_s": round(_sweep(store, f"{root}/r.parquet", args.seeds), 1),
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    local, remote = rows
    summary = {
        "rows": rows,
        "embed_ratio_s3_over_local": round(
            remote["embed_images_per_s"] / local["embed_images_per_s"], 3
        ),
        "sweep_ratio_s3_over_local": round(
            remote["sweep_probes_per_s"] / local["sweep_probes_per_s"], 3
        ),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
