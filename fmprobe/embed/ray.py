"""``fmprobe embed --engine ray``: the store's chunks split into contiguous ranges, one Ray task
per range, each an ``embed(..., shard="I/N")`` writing disjoint chunks of the one store.

The driver creates the store and the model group first; workers only fill chunks, each chunk's
ledger entry written after its data, so a killed worker loses the chunks in flight and Ray's
retry (or a rerun, with any engine) embeds only what is missing. Tasks take one GPU each when
the cluster has GPUs. The store must be reachable from every worker (a shared filesystem or
object storage).
"""

from __future__ import annotations

from typing import Any

from fmprobe.embed.run import EmbedReport, embed_shard
from fmprobe.errors import FmprobeError
from fmprobe.parallel import ray_session


def _embed_shard(args: dict[str, Any], shard: str, threads: int) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return embed_shard(args, shard=shard).to_dict()


def embed_on_ray(
    args: dict[str, Any], *, address: str | None, workers: int | None, n_chunks: int
) -> EmbedReport:
    """Run ``embed(**args)`` as ``workers`` shards on Ray (default: one per GPU of the cluster,
    else one per CPU); returns the combined report."""
    with ray_session(address) as ray:
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        k = max(1, min(workers or (gpus or cpus), n_chunks))
        if gpus:
            remote = ray.remote(num_gpus=1, max_retries=3)(_embed_shard)
            threads = 0
        else:
            threads = max(1, cpus // k)
            remote = ray.remote(num_cpus=threads, max_retries=3)(_embed_shard)
            args = {**args, "device": "cpu"}
        refs = [remote.remote(args, f"{i}/{k}", threads) for i in range(k)]
        try:
            reports = ray.get(refs)
        except ray.exceptions.RayError as exc:
            raise FmprobeError(
                f"a Ray embedding task failed ({type(exc).__name__}); finished chunks are kept, "
                "rerun the same command to resume"
            ) from exc
    first = reports[0]
    return EmbedReport(
        store=first["store"],
        model=first["model"],
        features=first["features"],
        rows_total=first["rows_total"],
        rows_embedded=sum(r["rows_embedded"] for r in reports),
        chunks_total=sum(r["chunks_total"] for r in reports),
        chunks_already_done=sum(r["chunks_already_done"] for r in reports),
        device=f"ray:{k}x{'gpu' if gpus else 'cpu'}",
        loop_seconds=max(r.get("loop_seconds", 0.0) for r in reports),
    )
