"""One embed run: the request checked (``check_request``), the store and the model's group
created or resumed and its ledger repaired, then the pending chunks of this shard embedded
(``run_embed``); ``embed_shard`` is that for a Ray task, under its driver's locks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fmprobe.data import Dataset, parse_data
from fmprobe.devices import resolve_device
from fmprobe.encoders import POOLS, Encoder, ModelSpec, create_encoder, parse_model_name
from fmprobe.encoders.base import check_weights_path, file_sha256
from fmprobe.errors import ModelError, StoreError, UsageError
from fmprobe.options import check_engine, parse_shard, split_list
from fmprobe.store import ATTR, FeatureStore
from fmprobe.store.write import (
    GroupLayout,
    create_model_group,
    creation_lock,
    open_or_create_store,
    repair_ledger,
)

DTYPES = ("float32", "float16")


@dataclass
class EmbedReport:
    """What one ``embed`` call did.

    Attributes
    ----------
    store, model : str
        The store and the model's group name in it.
    features : list of str
        The feature keys of the group.
    rows_total, rows_embedded : int
        Rows of the dataset; rows embedded by this call (0 when everything was done).
    chunks_total, chunks_already_done : int
        Chunks of this shard; those done before the call.
    unreadable : list of (id, reason)
        Images recorded as unreadable.
    repaired : list of str
        Chunks found missing or damaged in a finished group, re-embedded by this call.
    seconds, loop_seconds : float
        The whole call (model build included); the embedding loop only.
    device : str
    """

    store: str
    model: str
    features: list[str]
    rows_total: int
    rows_embedded: int
    chunks_total: int
    chunks_already_done: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    seconds: float = 0.0
    loop_seconds: float = 0.0
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
            "repaired": self.repaired,
            "seconds": round(self.seconds, 3),
            "loop_seconds": round(self.loop_seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "device": self.device,
        }


def parse_pools(pools: str | Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    """``--pools`` → (pools in canonical order, whether they were asked for explicitly);
    default: every pool the model supports.

    >>> parse_pools("mean,cls")
    (('cls', 'mean'), True)
    """
    if pools is None or pools == "":
        return POOLS, False
    items = split_list(pools)
    bad = [p for p in items if p not in POOLS]
    if bad or not items:
        raise UsageError(f"--pools {bad[0] if bad else ''!r}: valid pools are {', '.join(POOLS)}")
    return tuple(p for p in POOLS if p in items), True


@dataclass(frozen=True)
class EmbedRequest:
    """The settings that define a model group's content; a rerun must ask for the same."""

    model: str
    layers: str | list[int] | None
    pools: list[str] | None  # None: the default (every pool the model supports)
    tokens: bool
    dtype: str
    weights_sha256: str | None
    random_init: bool
    model_kwargs: dict[str, Any]
    chunk_rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layers": self.layers,
            "pools": self.pools,
            "tokens": self.tokens,
            "dtype": self.dtype,
            "weights_sha256": self.weights_sha256,
            "random_init": self.random_init,
            "model_kwargs": self.model_kwargs,
            "chunk_rows": self.chunk_rows,
        }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("fmprobe", "torch", "timm", "open_clip_torch", "transformers", "zarr", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


@dataclass(frozen=True)
class EmbedPlan:
    """A checked ``embed`` call: the model, its group's name, the request and the shard."""

    spec: ModelSpec
    key: str
    request: EmbedRequest
    pools: tuple[str, ...]
    pools_explicit: bool
    weights: str | None
    shard: tuple[int, int]


def check_request(
    *,
    model: str,
    layers: str | Sequence[int] | None,
    pools: str | Sequence[str] | None,
    tokens: bool,
    dtype: str,
    batch_size: int,
    weights: str | None,
    random_init: bool,
    model_kwargs: dict[str, Any] | None,
    name: str | None,
    chunk_rows: int,
    overwrite: bool,
    shard: str | None,
    engine: str,
) -> EmbedPlan:
    """Every option checked before anything is built or written."""
    shard_i, shard_n = parse_shard(shard)
    check_engine(engine)
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
    pool_list, explicit = parse_pools(pools)
    request = EmbedRequest(
        model=spec.text,
        layers=layers if isinstance(layers, str) or layers is None else list(layers),
        pools=list(pool_list) if explicit else None,
        tokens=tokens,
        dtype=dtype,
        weights_sha256=file_sha256(Path(weights)) if weights else None,
        random_init=random_init,
        model_kwargs=dict(model_kwargs or {}),
        chunk_rows=chunk_rows,
    )
    return EmbedPlan(spec, key, request, pool_list, explicit, weights, (shard_i, shard_n))


def _build(plan: EmbedPlan, device: torch.device) -> Encoder:
    r = plan.request
    return create_encoder(
        plan.spec, weights=plan.weights, random_init=r.random_init, model_kwargs=r.model_kwargs
    ).to(device)


def _layout(encoder: Encoder, plan: EmbedPlan, device: torch.device) -> GroupLayout:
    """The group's arrays, from one forward pass of a blank image (token counts and widths
    are the model's, whatever its configuration)."""
    layers = encoder.resolve_layers(plan.request.layers)
    pools = plan.pools
    if "attn" in pools and encoder.attn_source is None:
        if plan.pools_explicit:
            raise ModelError(
                f"--pools attn: {plan.spec.text} has neither an attention-pooling head nor a "
                "class token to take attention weights from; use --pools cls,mean"
            )
        pools = tuple(p for p in pools if p != "attn")
    x = encoder.transform(Image.new("RGB", (64, 64)))[None]
    recipe = encoder.embedding_recipe
    with torch.inference_mode():
        out = encoder.forward(x.to(device), layers, attn="attn" in pools, embedding=bool(recipe))
    emb = out.embedding if recipe is not None else None
    return GroupLayout(
        layers=layers,
        widths=tuple(int(t.shape[2]) for t in out.patch),
        tokens_per_layer=tuple(int(t.shape[1]) for t in out.patch),
        pools=pools,
        tokens=plan.request.tokens,
        dtype=plan.request.dtype,
        chunk_rows=plan.request.chunk_rows,
        embedding_width=None if emb is None else int(emb.shape[1]),
        embedding_recipe=None if emb is None or recipe is None else recipe.to_dict(),
    )


def _prepare_group(
    dataset: Dataset, store: str, plan: EmbedPlan, *, overwrite: bool, device: torch.device
) -> tuple[Any, FeatureStore, Encoder | None]:
    """Open or create the store and the model's group; returns (group, store, the encoder if
    one had to be built to create the group)."""
    fs = open_or_create_store(
        store,
        table=dataset.table,
        dataset={"fingerprint": dataset.fingerprint(), **dataset.describe()},
        overwrite=overwrite,
    )
    request = plan.request.to_dict()
    group = fs.root.get(plan.key)
    if group is not None:
        old = group.attrs.get(ATTR, {}).get("request")
        if old != request and not overwrite:
            diff = sorted(k for k in request if (old or {}).get(k) != request[k])
            raise StoreError(
                f"{plan.key!r} already exists in {store!r} with other settings "
                f"({', '.join(diff)}); pass --name to store this run beside it, or --overwrite "
                "to replace it"
            )
        if not overwrite:
            return group, fs, None
    encoder = _build(plan, device)
    layout = _layout(encoder, plan, device)
    meta = {
        "model": encoder.describe(),
        "request": request,
        "layers": list(layout.layers),
        "pools": list(layout.pools),
        "tokens": layout.tokens,
        "dtype": layout.dtype,
        "chunk_rows": layout.chunk_rows,
        "dataset_fingerprint": fs.fingerprint,
        "versions": _versions(),
        "device": str(device),
    }
    return create_model_group(fs, plan.key, layout=layout, meta=meta), fs, encoder


def embed_shard(args: dict[str, Any], *, shard: str, progress: bool = False) -> EmbedReport:
    """``embed(**args, shard=shard)`` without taking the writer's locks: what each Ray task of
    ``embed --engine ray`` runs while its driver holds them."""
    t0 = time.perf_counter()
    plan = check_request(model=args["model"], layers=args["layers"], pools=args["pools"],
                  tokens=args["tokens"], dtype=args["dtype"], batch_size=args["batch_size"],
                  weights=args["weights"], random_init=args["random_init"],
                  model_kwargs=args["model_kwargs"], name=args["name"],
                  chunk_rows=args["chunk_rows"], overwrite=False, shard=shard,
                  engine="local")  # fmt: skip
    dev = resolve_device(args["device"])
    return run_embed(plan, parse_data(args["data"]), args["store"], dev, args=args,
                     overwrite=False, progress=progress, t0=t0)  # fmt: skip


def run_embed(
    plan: EmbedPlan,
    dataset: Dataset,
    store: str,
    dev: torch.device,
    *,
    args: dict[str, Any],
    overwrite: bool,
    progress: bool,
    t0: float,
    remote: Callable[[int], EmbedReport] | None = None,
) -> EmbedReport:
    """Create or resume the group, repair its ledger, then embed what is pending in this shard
    (or, with ``remote``, have it embed the group's chunks elsewhere: called with their
    number, it returns their report)."""
    import numpy as np

    from fmprobe.embed.shard import ShardRun, embed_chunks

    with creation_lock(store):  # shards started at once create the store and group once
        group, fs, encoder = _prepare_group(dataset, store, plan, overwrite=overwrite, device=dev)
        damaged = repair_ledger(group, verify=bool(args["verify"])) if encoder is None else []
    meta = group.attrs[ATTR]
    chunk_rows = plan.request.chunk_rows
    n_chunks = -(-fs.n // chunk_rows)
    resolved, pool_list = tuple(meta["layers"]), tuple(meta["pools"])
    features = [f"{plan.key}/block{i}/{p}" for i in resolved for p in pool_list]
    features += [f"{plan.key}/block{i}/tokens" for i in resolved] if plan.request.tokens else []
    features += [f"{plan.key}/embedding"] if "embedding" in group else []
    if remote is not None:
        report = remote(n_chunks)
    else:
        shard_i, shard_n = plan.shard
        done = np.asarray(group["_done"][:])
        lo, hi = (shard_i * n_chunks) // shard_n, ((shard_i + 1) * n_chunks) // shard_n
        pending = [int(c) for c in np.flatnonzero(~done) if lo <= c < hi]
        report = EmbedReport(store=str(store), model=plan.key, features=features,
                             rows_total=fs.n, rows_embedded=0, chunks_total=hi - lo,
                             chunks_already_done=(hi - lo) - len(pending),
                             device=str(dev))  # fmt: skip
        if pending:
            run = ShardRun(layers=resolved, pools=pool_list, tokens=plan.request.tokens,
                           embedding="embedding" in group, batch_size=args["batch_size"],
                           chunk_rows=chunk_rows, device=dev, num_workers=args["num_workers"],
                           strict=args["strict"], amp=args["amp"], progress=progress)  # fmt: skip
            report.rows_embedded, report.loop_seconds = embed_chunks(
                encoder or _build(plan, dev), dataset, group, pending=pending, run=run,
                label=plan.key,
            )  # fmt: skip
    report.features = features
    report.repaired = [d.text() for d in damaged]
    report.unreadable = list(fs.errors(plan.key).itertuples(index=False, name=None))
    report.seconds = time.perf_counter() - t0
    return report
