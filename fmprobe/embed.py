"""``fmprobe embed``: run a frozen encoder over a dataset once, into the feature store.

Work is done chunk by chunk (``chunk_rows`` rows); a chunk's features are written first and
its entry in the ``_done`` ledger last, so a killed run loses at most the chunks in flight and
the same command resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from PIL import Image

from fmprobe.data import Dataset, parse_data
from fmprobe.encoders import POOLS, Encoder, create_encoder, parse_model_name, pool_tokens
from fmprobe.encoders.base import check_weights_path, file_sha256
from fmprobe.errors import ImageReadError, ModelError, StoreError, UsageError
from fmprobe.parallel import fault_hook_for_tests, parse_shard
from fmprobe.store import ATTR, FeatureStore, create_store, open_store, store_exists

DTYPES = ("float32", "float16")


@dataclass
class EmbedReport:
    """What one ``embed`` call did."""

    store: str
    model: str
    features: list[str]
    rows_total: int
    rows_embedded: int
    chunks_total: int
    chunks_already_done: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # the whole call, model build included
    loop_seconds: float = 0.0  # decoding, forward passes and writes only
    device: str = "cpu"

    @property
    def images_per_second(self) -> float:
        """Throughput of the embedding loop (decode → forward → pool → write)."""
        return self.rows_embedded / self.loop_seconds if self.loop_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "model": self.model,
            "features": self.features,
            "rows_total": self.rows_total,
            "rows_embedded": self.rows_embedded,
            "chunks_total": self.chunks_total,
            "chunks_already_done": self.chunks_already_done,
            "unreadable": [{"id": i, "reason": r} for i, r in self.unreadable],
            "seconds": round(self.seconds, 3),
            "loop_seconds": round(self.loop_seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "device": self.device,
        }


def resolve_device(device: str | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was asked for but no CUDA device is visible; use --device cpu"
        )
    return dev


def parse_pools(pools: str | Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    """Return (pools, explicit); default: every pool the model supports."""
    if pools is None or pools == "":
        return POOLS, False
    items = [p.strip() for p in pools.split(",")] if isinstance(pools, str) else list(pools)
    bad = [p for p in items if p not in POOLS]
    if bad or not items:
        raise UsageError(f"--pools {bad[0] if bad else ''!r}: valid pools are {', '.join(POOLS)}")
    return tuple(p for p in POOLS if p in items), True


class _Rows(torch.utils.data.Dataset[tuple[int, torch.Tensor | None, str]]):
    """Decoding and preprocessing, run in DataLoader workers."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.transform(self.dataset.load(i)), ""
        except ImageReadError as exc:
            return i, None, str(exc) or "unreadable"
        except Exception as exc:
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(
    items: list[tuple[int, torch.Tensor | None, str]],
) -> tuple[list[int], torch.Tensor | None, list[int], list[str]]:
    rows = [i for i, _, _ in items]
    ok = [i for i, t, _ in items if t is not None]
    tensors = [t for _, t, _ in items if t is not None]
    errors = [e for _, _, e in items]
    return rows, (torch.stack(tensors) if tensors else None), ok, errors


def _batches(
    chunks: Sequence[int], *, n: int, chunk_rows: int, batch_size: int
) -> Iterator[list[int]]:
    for c in chunks:
        start, stop = c * chunk_rows, min(n, (c + 1) * chunk_rows)
        for b in range(start, stop, batch_size):
            yield list(range(b, min(stop, b + batch_size)))


def _request(
    *,
    model: str,
    layers: str | Sequence[int] | None,
    pools: tuple[str, ...],
    pools_explicit: bool,
    tokens: bool,
    dtype: str,
    weights: str | None,
    random_init: bool,
    model_kwargs: dict[str, Any] | None,
    chunk_rows: int,
) -> dict[str, Any]:
    """The settings that define a model group's content; a rerun must match them."""
    return {
        "model": parse_model_name(model).text,
        "layers": layers if isinstance(layers, str) or layers is None else list(layers),
        "pools": list(pools) if pools_explicit else None,
        "tokens": tokens,
        "dtype": dtype,
        "weights_sha256": file_sha256(Path(weights)) if weights else None,
        "random_init": random_init,
        "model_kwargs": dict(model_kwargs or {}),
        "chunk_rows": chunk_rows,
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("fmprobe", "torch", "timm", "open_clip_torch", "transformers", "zarr", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def _open_or_create(data: Dataset, store: str, *, overwrite: bool) -> FeatureStore:
    fingerprint = data.fingerprint()
    dataset_meta = {"fingerprint": fingerprint, **data.describe()}
    if not store_exists(store):
        if os.path.exists(store) and os.listdir(store):
            raise StoreError(
                f"--store {store!r} exists and is not a feature store; pick a new path"
            )
        return create_store(store, table=data.table, dataset=dataset_meta)
    fs = open_store(store, mode="a")
    if fs.fingerprint != fingerprint:
        if not overwrite:
            raise StoreError(
                f"the dataset {data.spec!r} changed since {store!r} was made (fingerprint "
                f"{fingerprint[:12]} vs {fs.fingerprint[:12]}); use a new --store, or pass "
                "--overwrite to rebuild this one from scratch"
            )
        return create_store(store, table=data.table, dataset=dataset_meta, overwrite=True)
    return fs


def _create_model_group(
    fs: FeatureStore,
    key: str,
    *,
    encoder: Encoder,
    layers: tuple[int, ...],
    pools: tuple[str, ...],
    tokens: bool,
    dtype: str,
    chunk_rows: int,
    request: dict[str, Any],
    device: torch.device,
) -> zarr.Group:
    n = fs.n
    x = encoder.transform(Image.new("RGB", (64, 64)))[None]
    recipe = encoder.embedding_recipe
    with torch.inference_mode():
        out = encoder.forward(x.to(device), layers, attn="attn" in pools, embedding=bool(recipe))
    group = fs.root.create_group(key, overwrite=True)
    n_chunks = -(-n // chunk_rows)
    group.create_array("_done", shape=(n_chunks,), chunks=(1,), dtype=bool, fill_value=False)
    group.create_array("_error", shape=(n,), chunks=(chunk_rows,), dtype=str)
    for li, layer in enumerate(layers):
        p, d = out.patch[li].shape[1:]
        for pool in pools:
            arr = group.create_array(
                f"block{layer}/{pool}",
                shape=(n, d),
                chunks=(chunk_rows, d),
                dtype=dtype,
                fill_value=np.nan,
            )
            arr.attrs[ATTR] = {"kind": "feature", "model": key, "layer": layer, "pool": pool}
        if tokens:
            arr = group.create_array(
                f"block{layer}/tokens",
                shape=(n, p, d),
                chunks=(min(chunk_rows, 64), p, d),
                dtype="float16",
                fill_value=np.nan,
            )
            arr.attrs[ATTR] = {"kind": "feature", "model": key, "layer": layer, "pool": "tokens"}
    if recipe is not None and out.embedding is not None:
        w = out.embedding.shape[1]
        arr = group.create_array(
            "embedding", shape=(n, w), chunks=(chunk_rows, w), dtype=dtype, fill_value=np.nan
        )
        arr.attrs[ATTR] = {"kind": "feature", "model": key, "layer": None, "pool": "embedding",
                           "recipe": recipe.to_dict()}  # fmt: skip
    group.attrs[ATTR] = {
        "kind": "model",
        "model": encoder.describe(),
        "request": request,
        "layers": list(layers),
        "pools": list(pools),
        "tokens": tokens,
        "dtype": dtype,
        "chunk_rows": chunk_rows,
        "dataset_fingerprint": fs.fingerprint,
        "versions": _versions(),
        "device": str(device),
    }
    return group


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
    progress: bool = True,
) -> EmbedReport:
    """Embed ``data`` with ``model`` into ``store`` (created if missing, resumed if partial).

    Parameters
    ----------
    data : str
        ``builtin:digits``, an image folder, a CSV/Parquet manifest or an HDF5/NPZ array file.
    model : str
        ``timm:<name>``, ``open_clip:<arch>[/<pretrained>]`` or ``hf:<repo or local dir>``.
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
    shard_i, shard_n = parse_shard(shard)
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine!r}: one of local, ray")
    if overwrite and (shard_n > 1 or engine == "ray"):
        raise UsageError(
            "--overwrite rebuilds the whole model group: run it once without --shard/--engine ray"
        )
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: valid dtypes are {', '.join(DTYPES)}")
    if batch_size < 1 or chunk_rows < 1:
        raise UsageError("--batch-size and --chunk-rows must be at least 1")
    if weights is not None and random_init:
        raise UsageError("--weights and --random-init exclude each other; pass one")
    if weights is not None:
        check_weights_path(weights)  # before anything is written to the store
    spec = parse_model_name(model)
    key = name or spec.key
    if "/" in key or key.startswith(("_", "samples")):
        raise UsageError(f"--name {key!r}: no '/', and it may not start with '_' or 'samples'")
    pool_list, pools_explicit = parse_pools(pools)
    dev = resolve_device(device)
    dataset = parse_data(data)
    with _creation_lock(store):  # shards started at once create the store and group once
        group, fs, encoder = _prepare_group(
            dataset, store, model=model, spec=spec, key=key, layers=layers, pool_list=pool_list,
            pools_explicit=pools_explicit, tokens=tokens, dtype=dtype, weights=weights,
            random_init=random_init, model_kwargs=model_kwargs, chunk_rows=chunk_rows,
            overwrite=overwrite, device=dev,
        )  # fmt: skip
    meta = group.attrs[ATTR]
    n = fs.n
    n_chunks = -(-n // chunk_rows)
    resolved, pool_list = tuple(meta["layers"]), tuple(meta["pools"])
    features = [f"{key}/block{i}/{p}" for i in resolved for p in pool_list]
    features += [f"{key}/block{i}/tokens" for i in resolved] if tokens else []
    features += [f"{key}/embedding"] if "embedding" in group else []
    if engine == "ray":
        from fmprobe.embed_ray import embed_on_ray

        args = dict(data=data, model=model, store=store, layers=layers, pools=pools,
                    tokens=tokens, dtype=dtype, batch_size=batch_size, device=device,
                    num_workers=num_workers, weights=weights, random_init=random_init,
                    model_kwargs=model_kwargs, name=name, chunk_rows=chunk_rows, strict=strict,
                    amp=amp)  # fmt: skip
        report = embed_on_ray(args, address=address, workers=workers, n_chunks=n_chunks)
        report.features = features
        report.unreadable = list(fs.errors(key).itertuples(index=False, name=None))
        report.seconds = time.perf_counter() - t0
        return report
    done = np.asarray(group["_done"][:])
    lo, hi = (shard_i * n_chunks) // shard_n, ((shard_i + 1) * n_chunks) // shard_n
    pending = [int(c) for c in np.flatnonzero(~done) if lo <= c < hi]
    report = EmbedReport(
        store=str(store),
        model=key,
        features=features,
        rows_total=n,
        rows_embedded=0,
        chunks_total=hi - lo,
        chunks_already_done=(hi - lo) - len(pending),
        device=str(dev),
    )
    if pending:
        if encoder is None:
            encoder = create_encoder(
                spec, weights=weights, random_init=random_init, model_kwargs=model_kwargs
            ).to(dev)
        _run(
            encoder,
            dataset,
            group,
            report,
            pending=pending,
            layers=resolved,
            pools=pool_list,
            tokens=tokens,
            batch_size=batch_size,
            chunk_rows=chunk_rows,
            device=dev,
            num_workers=num_workers,
            strict=strict,
            amp=amp,
            progress=progress,
        )
    report.unreadable = list(fs.errors(key).itertuples(index=False, name=None))
    report.seconds = time.perf_counter() - t0
    return report


@contextlib.contextmanager
def _creation_lock(store: str) -> Iterator[None]:
    """An exclusive lock file beside the store (POSIX ``flock``) while it and the model group
    are created or checked: concurrent shards must not both create them."""
    import fcntl

    path = os.path.abspath(store.rstrip("/")) + ".lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare_group(
    dataset: Dataset,
    store: str,
    *,
    model: str,
    spec: Any,
    key: str,
    layers: str | Sequence[int] | None,
    pool_list: tuple[str, ...],
    pools_explicit: bool,
    tokens: bool,
    dtype: str,
    weights: str | None,
    random_init: bool,
    model_kwargs: dict[str, Any] | None,
    chunk_rows: int,
    overwrite: bool,
    device: torch.device,
) -> tuple[Any, FeatureStore, Encoder | None]:
    """Open or create the store and the model's group; returns (group, store, the encoder if
    one had to be built to create the group)."""
    fs = _open_or_create(dataset, store, overwrite=overwrite)
    request = _request(
        model=model,
        layers=layers,
        pools=pool_list,
        pools_explicit=pools_explicit,
        tokens=tokens,
        dtype=dtype,
        weights=weights,
        random_init=random_init,
        model_kwargs=model_kwargs,
        chunk_rows=chunk_rows,
    )
    group = fs.root.get(key)
    if group is not None:
        old = group.attrs.get(ATTR, {}).get("request")
        if old != request and not overwrite:
            diff = sorted(k for k in request if (old or {}).get(k) != request[k])
            raise StoreError(
                f"{key!r} already exists in {store!r} with other settings ({', '.join(diff)}); "
                "pass --name to store this run beside it, or --overwrite to replace it"
            )
        if overwrite:
            group = None
    encoder: Encoder | None = None
    if group is None:
        encoder = create_encoder(
            spec, weights=weights, random_init=random_init, model_kwargs=model_kwargs
        ).to(device)
        resolved = encoder.resolve_layers(layers)
        if "attn" in pool_list and encoder.attn_source is None:
            if pools_explicit:
                raise ModelError(
                    f"--pools attn: {spec.text} has neither an attention-pooling head nor a "
                    "class token to take attention weights from; use --pools cls,mean"
                )
            pool_list = tuple(p for p in pool_list if p != "attn")
        group = _create_model_group(
            fs,
            key,
            encoder=encoder,
            layers=resolved,
            pools=pool_list,
            tokens=tokens,
            dtype=dtype,
            chunk_rows=chunk_rows,
            request=request,
            device=device,
        )
    return group, fs, encoder


def _run(
    encoder: Encoder,
    dataset: Dataset,
    group: zarr.Group,
    report: EmbedReport,
    *,
    pending: list[int],
    layers: tuple[int, ...],
    pools: tuple[str, ...],
    tokens: bool,
    batch_size: int,
    chunk_rows: int,
    device: torch.device,
    num_workers: int | None,
    strict: bool,
    amp: bool,
    progress: bool,
) -> None:
    from tqdm import tqdm

    n = len(dataset)
    cuda = device.type == "cuda"
    if num_workers is None:
        num_workers = min(8, max(0, (os.cpu_count() or 1) - 1))
    batches = list(_batches(pending, n=n, chunk_rows=chunk_rows, batch_size=batch_size))
    loader = torch.utils.data.DataLoader(
        _Rows(dataset, encoder.transform),
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=num_workers,
        pin_memory=cuda,
        persistent_workers=False,
    )
    channels_last = cuda and encoder.cls_source == "global_average"
    if channels_last:
        encoder.model.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and amp else nullcontext()
    arrays = {(i, p): group[f"block{i}/{p}"] for i in layers for p in pools}
    with_embedding = "embedding" in group
    if with_embedding:
        arrays[(-1, "embedding")] = group["embedding"]  # the published embedding, no layer
    token_arrays = {i: group[f"block{i}/tokens"] for i in layers} if tokens else {}
    total_rows = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    bar = tqdm(
        total=total_rows, unit="img", desc=report.model, file=sys.stderr, disable=not progress
    )
    writer = ThreadPoolExecutor(max_workers=1)
    in_flight: list[Future[None]] = []
    buffers: dict[int, dict[str, Any]] = {}
    try:
        for rows, x, ok, errors in loader:
            c = rows[0] // chunk_rows
            start = c * chunk_rows
            size = min(n, start + chunk_rows) - start
            buf = buffers.get(c)
            if buf is None:
                buf = buffers[c] = {
                    "filled": 0,
                    "errors": np.full(size, "", dtype=object),
                    "pooled": {
                        k: np.full((size, a.shape[1]), np.nan, np.float32)
                        for k, a in arrays.items()
                    },
                    "tokens": {
                        i: np.full((size, *a.shape[1:]), np.nan, np.float16)
                        for i, a in token_arrays.items()
                    },
                }
            for r, e in zip(rows, errors, strict=True):
                if e:
                    if strict:
                        raise ImageReadError(
                            f"image {dataset.ids[r]!r} could not be read ({e}); "
                            "rerun without --strict to skip and record unreadable images"
                        )
                    buf["errors"][r - start] = e
            if x is not None:
                local = np.asarray(ok) - start
                x = x.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), autocast:
                    out = encoder.forward(x, layers, attn="attn" in pools, embedding=with_embedding)
                if out.embedding is not None:
                    emb = out.embedding.float().cpu().numpy()
                    buf["pooled"][(-1, "embedding")][local] = emb
                attn = out.attn.float() if out.attn is not None else None
                for li, layer in enumerate(layers):
                    patch = out.patch[li].float()
                    layer_cls = out.cls[li]
                    cls = layer_cls.float() if layer_cls is not None else None
                    for p in pools:
                        vec = pool_tokens(p, patch=patch, cls=cls, attn=attn)
                        buf["pooled"][(layer, p)][local] = vec.cpu().numpy()
                    if tokens:
                        buf["tokens"][layer][local] = out.patch[li].half().cpu().numpy()
            buf["filled"] += len(rows)
            bar.update(len(rows))
            if buf["filled"] == size:
                in_flight = [f for f in in_flight if not f.done()]
                while len(in_flight) >= 2:
                    in_flight.pop(0).result()
                in_flight.append(
                    writer.submit(
                        _write_chunk, group, arrays, token_arrays, c, start, buffers.pop(c)
                    )
                )
                report.rows_embedded += size
    finally:
        for f in in_flight:
            f.result()
        writer.shutdown()
        bar.close()
        report.loop_seconds = time.perf_counter() - t0


def _write_chunk(
    group: zarr.Group,
    arrays: dict[tuple[int, str], Any],
    token_arrays: dict[int, Any],
    chunk: int,
    start: int,
    buf: dict[str, Any],
) -> None:
    stop = start + len(buf["errors"])
    for k, arr in arrays.items():
        arr[start:stop] = buf["pooled"][k].astype(arr.dtype)
    for i, arr in token_arrays.items():
        arr[start:stop] = buf["tokens"][i]
    group["_error"][start:stop] = np.asarray(buf["errors"], dtype=str)
    group["_done"][chunk] = True  # last: the chunk counts as done only once its data is on disk
    fault_hook_for_tests()
