"""``embed()``: the request checked, the writer's locks taken, then one run (``run``): here,
or as shards on Ray (``ray``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fmprobe import locks
from fmprobe.data import parse_data
from fmprobe.devices import resolve_device
from fmprobe.embed.run import EmbedReport, check_request, run_embed


def embed(
    *,
    data: str,
    model: str,
    store: str,
    layers: str | Sequence[int] | None = None,
    pools: str | Sequence[str] | None = None,
    tokens: bool = False,
    dtype: str = "float32",
    batch_size: int = 64,
    device: str | None = None,
    num_workers: int | None = None,
    weights: str | None = None,
    random_init: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    chunk_rows: int = 256,
    strict: bool = False,
    overwrite: bool = False,
    amp: bool = True,
    shard: str | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    verify: bool = False,
    progress: bool = True,
) -> EmbedReport:
    """Embed ``data`` with ``model`` into ``store`` (created if missing, resumed if partial).

    Parameters
    ----------
    data : str
        ``builtin:digits``, an image folder, a CSV/Parquet manifest or an HDF5/NPZ array file.
    model : str
        A preset name, ``timm:<name>``, ``open_clip:<arch>[/<pretrained>]`` or
        ``hf:<repo or local dir>``.
    store : str
        The Zarr feature store (a directory).
    layers : str or sequence of int, optional
        Blocks to keep (``"2,5,8,11"``, ``"-1"``, ``"last"``); default four evenly spaced blocks
        ending at the last.
    pools : str, optional
        Comma list of ``cls``, ``mean``, ``attn``; default all that the model supports.
    tokens : bool
        Also store the patch tokens (float16) of each layer, for attention-pooling probes.
    dtype : {"float32", "float16"}
        Storage dtype of pooled features.
    name : str, optional
        The model group's name in the store (default: from the model spec, e.g.
        ``timm-vit_small_patch16_224``).
    shard : str, optional
        ``"I/N"``: embed only the I-th of N contiguous, chunk-aligned row ranges (array jobs
        writing disjoint chunks of one store; run the N shards in any order or at once).
    engine : {"local", "ray"}
        ``ray`` runs ``workers`` shards as Ray tasks (one GPU each when the cluster has GPUs).
    verify : bool
        Also read every finished chunk (checksums) and re-embed those that do not decode;
        chunks whose files are missing are always re-embedded.

    Returns
    -------
    EmbedReport
        Rows embedded, unreadable images (id, reason), timing.

    Examples
    --------
    >>> embed(data="builtin:digits", model="timm:vit_tiny_patch16_224", random_init=True,
    ...       store="digits.zarr")  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    args = dict(data=data, model=model, store=store, layers=layers, pools=pools, tokens=tokens,
                dtype=dtype, batch_size=batch_size, device=device, num_workers=num_workers,
                weights=weights, random_init=random_init, model_kwargs=model_kwargs, name=name,
                chunk_rows=chunk_rows, strict=strict, amp=amp, verify=verify)  # fmt: skip
    plan = check_request(model=model, layers=layers, pools=pools, tokens=tokens, dtype=dtype,
                  batch_size=batch_size, weights=weights, random_init=random_init,
                  model_kwargs=model_kwargs, name=name, chunk_rows=chunk_rows,
                  overwrite=overwrite, shard=shard, engine=engine)  # fmt: skip
    dev = resolve_device(device)
    dataset = parse_data(data)
    folder = locks.lock_dir(store)
    with (
        locks.hold(folder / "store.lock" if folder else None, what=f"the store {store!r}",
                   shared=not overwrite),
        locks.writer(store, plan.key, what=f"{plan.key!r} in {store!r}", shard=plan.shard),
    ):  # fmt: skip
        remote = None
        if engine == "ray":
            from fmprobe.embed.ray import embed_on_ray

            def remote(n_chunks: int) -> EmbedReport:
                return embed_on_ray(args, address=address, workers=workers, n_chunks=n_chunks)

        return run_embed(plan, dataset, store, dev, args=args, overwrite=overwrite,
                         progress=progress, t0=t0, remote=remote)  # fmt: skip
