"""``fmprobe embed --engine ray``: the store's chunks split into contiguous ranges, one Ray task
per range, each an ``embed(..., shard="I/N")`` writing disjoint chunks of the one store.

The driver creates the store and the model group first; workers only fill chunks, each chunk's
ledger entry written after its data, so a killed worker loses the chunks in flight and Ray's
retry (or a rerun, with any engine) embeds only what is missing. Tasks take one GPU each when
the cluster has GPUs. The store must be reachable from every worker (a shared filesystem).
"""

from __future__ import annotations

from typing import Any

from fmprobe.errors import FmprobeError, UsageError


def _embed_shard(args: dict[str, Any], shard: str, threads: int) -> dict[str, Any]:
    import torch

    from fmprobe.embed import embed

    if threads:
        torch.set_num_threads(threads)
    return embed(**args, shard=shard, progress=False).to_dict()


def embed_on_ray(
    args: dict[str, Any], *, address: str | None, workers: int | None, n_chunks: int
) -> Any:
    """Run ``embed(**args)`` as ``workers`` shards on Ray (default: one per GPU of the cluster,
    else one per CPU); returns the combined EmbedReport."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--engine ray needs Ray: pip install 'fmprobe[ray]' (or use --engine local)"
        ) from None
    from fmprobe.embed import EmbedReport

    started_here = False
    if not ray.is_initialized():
        try:
            ray.init(
                address=address, include_dashboard=False, log_to_driver=False,
                configure_logging=False,
            )  # fmt: skip
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(f"--address {address!r}: cannot reach a Ray cluster ({exc})") from None
        started_here = True
    try:
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        k = workers or (gpus or cpus)
        k = max(1, min(k, n_chunks))
        if gpus:
            remote = ray.remote(num_gpus=1, max_retries=3)(_embed_shard)
            threads = 0
        else:
            per = max(1, cpus // k)
            remote = ray.remote(num_cpus=per, max_retries=3)(_embed_shard)
            threads = per
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
    finally:
        if started_here:
            ray.shutdown()
